//! Q5_1: blocks of 32 weights, `x = d * q + m` with f16 scale and minimum and unsigned 5-bit q.
//!
//! Layout (24 bytes): `d: f16`, `m: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`, packed as in Q5_0: low
//! nibbles in `qs` (byte `j` holds elements `j` and `j + 16`), fifth bit of element `i` in bit
//! `i` of `qh` read as a little-endian u32.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::q4_1::min_max;
use super::rounding::trunc_to_i32;

pub const QK5_1: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// scale
    pub d: f16,
    /// minimum (the value of level 0)
    pub m: f16,
    /// fifth bit of every q: bit `i` of this little-endian u32 belongs to element `i`
    pub qh: [u8; 4],
    /// low four bits: element `j` in the low nibble of byte `j`, element `j + 16` in the high
    pub qs: [u8; QK5_1 / 2],
}

pub fn dequantize(blocks: &[BlockQ5_1], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK5_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for (j, &q) in b.qs.iter().enumerate() {
            let lo = (q & 0x0f) as u32 | (qh >> j & 1) << 4;
            let hi = (q >> 4) as u32 | (qh >> (j + 16) & 1) << 4;
            y[j] = lo as f32 * d + m;
            y[j + 16] = hi as f32 * d + m;
        }
    }
}

/// ggml's reference quantizer: 32 levels from the block's minimum to its maximum, each value
/// taking `trunc((x - min) / d + 0.5)`. Unlike Q4_1 there is no cap at the top level (the
/// largest value lands on 31 anyway).
pub fn quantize(x: &[f32], blocks: &mut [BlockQ5_1]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK5_1)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let level = |v: f32| trunc_to_i32((v - min) * id + 0.5) as u8;
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
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
        qs[15] = 0x21; // element 15: low bits 1, element 31: low bits 2
        let qh = (1u32 << 31).to_le_bytes(); // element 31 gets its fifth bit
        let b = BlockQ5_1 { d: f16::from_f32(0.5), m: f16::from_f32(1.0), qh, qs };
        let mut y = [0.0f32; 32];
        dequantize(&[b], &mut y);
        assert_eq!((y[15], y[31], y[0]), (1.5, 10.0, 1.0));
    }

    #[test]
    fn maximum_takes_level_31() {
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let mut b = [BlockQ5_1::zeroed()];
        quantize(&x, &mut b);
        assert_eq!((b[0].d.to_f32(), b[0].m.to_f32()), (1.0, 0.0));
        let mut y = [0.0f32; 32];
        dequantize(&b, &mut y);
        assert_eq!(y.to_vec(), x);
    }
}
