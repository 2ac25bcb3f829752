//! Q5_0: blocks of 32 weights, `x = d * (q - 16)` with an f16 scale and unsigned 5-bit q.
//!
//! Layout (22 bytes): `d: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`. The low four bits of each q are
//! nibbles as in Q4_0 (byte `j` holds element `j` low, element `j + 16` high); the fifth bit of
//! element `i` is bit `i` of `qh` read as a little-endian u32.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::rounding::trunc_to_i32;

pub const QK5_0: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// scale
    pub d: f16,
    /// fifth bit of every q: bit `i` of this little-endian u32 belongs to element `i`
    pub qh: [u8; 4],
    /// low four bits: element `j` in the low nibble of byte `j`, element `j + 16` in the high
    pub qs: [u8; QK5_0 / 2],
}

pub fn dequantize(blocks: &[BlockQ5_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK5_0)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, &q) in b.qs.iter().enumerate() {
            let lo = (q & 0x0f) as u32 | (qh >> j & 1) << 4;
            let hi = (q >> 4) as u32 | (qh >> (j + 16) & 1) << 4;
            y[j] = (lo as i32 - 16) as f32 * d;
            y[j + 16] = (hi as i32 - 16) as f32 * d;
        }
    }
}

/// ggml's reference quantizer: like Q4_0 with 32 levels, the value of largest magnitude taking
/// level 0 and every level `trunc(x / d + 16.5)` capped at 31.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ5_0]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK5_0)) {
        let (_, max) =
            x.iter().fold((0.0f32, 0.0f32), |(amax, max), &v| if amax < v.abs() { (v.abs(), v) } else { (amax, max) });
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let level = |v: f32| (trunc_to_i32(v * id + 16.5) as i8).min(31) as u8;
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let (lo, hi) = (level(x[j]), level(x[j + 16]));
            b.qs[j] = (lo & 0x0f) | (hi & 0x0f) << 4;
            qh |= ((lo >> 4 & 1) as u32) << j | ((hi >> 4 & 1) as u32) << (j + 16);
        }
        b.qh = qh.to_le_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bits_come_from_qh() {
        let mut qs = [0u8; 16];
        qs[1] = 0x3f; // element 1: low bits 15, element 17: low bits 3
        let qh = (1u32 << 1 | 1 << 17).to_le_bytes(); // fifth bits of elements 1 and 17
        let b = BlockQ5_0 { d: f16::from_f32(2.0), qh, qs };
        let mut y = [0.0f32; 32];
        dequantize(&[b], &mut y);
        // element 1: 31 - 16 = 15; element 17: 19 - 16 = 3; others: 0 - 16
        assert_eq!((y[1], y[17], y[0], y[16]), (30.0, 6.0, -32.0, -32.0));
    }

    #[test]
    fn quantize_sets_fifth_bits() {
        let mut x = [0.0f32; 32];
        x[0] = -8.0; // d = 0.5, level 0
        x[31] = 7.5; // 15 + 16.5 -> 31
        let mut b = [BlockQ5_0::zeroed()];
        quantize(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 0.5);
        let qh = u32::from_le_bytes(b[0].qh);
        // zeros sit on level 16: fifth bit set, low bits 0
        assert_eq!(qh, !1);
        assert_eq!(b[0].qs[0], 0x00);
        assert_eq!(b[0].qs[15], 0xf0);
    }
}
