//! Q4_0: blocks of 32 weights, `x = d * (q - 8)` with an f16 scale and unsigned 4-bit q.
//!
//! Layout (18 bytes): `d: f16`, then `qs: [u8; 16]`. Byte `j` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::rounding::trunc_to_i32;

pub const QK4_0: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// scale
    pub d: f16,
    /// element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble
    pub qs: [u8; QK4_0 / 2],
}

pub fn dequantize(blocks: &[BlockQ4_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK4_0)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *lo = ((q & 0x0f) as i32 - 8) as f32 * d;
            *hi = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the signed value of largest magnitude maps to level 0 (-8), so
/// the scale is negative when that value is positive; levels are `trunc(x / d + 8.5)` capped at 15.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ4_0]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK4_0)) {
        // The first value of largest magnitude wins, sign included.
        let (_, max) =
            x.iter().fold((0.0f32, 0.0f32), |(amax, max), &v| if amax < v.abs() { (v.abs(), v) } else { (amax, max) });
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        let level = |v: f32| (trunc_to_i32(v * id + 8.5) as i8).min(15) as u8;
        let (lo, hi) = x.split_at(QK4_0 / 2);
        for ((q, &lo), &hi) in b.qs.iter_mut().zip(lo).zip(hi) {
            *q = level(lo) | level(hi) << 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_split_the_block_in_halves() {
        let mut qs = [0x88u8; 16];
        qs[0] = 0xf0; // element 0: 0 - 8 = -8, element 16: 15 - 8 = 7
        qs[3] = 0x19; // element 3: 9 - 8 = 1, element 19: 1 - 8 = -7
        let b = BlockQ4_0 { d: f16::from_f32(0.5), qs };
        let mut y = [1.0f32; 32];
        dequantize(&[b], &mut y);
        assert_eq!((y[0], y[16], y[3], y[19]), (-4.0, 3.5, 0.5, -3.5));
        assert!(y.iter().enumerate().all(|(i, &v)| [0, 3, 16, 19].contains(&i) || v == 0.0));
    }

    #[test]
    fn largest_magnitude_takes_level_zero() {
        let mut x = [0.0f32; 32];
        x[5] = 4.0; // d = -0.5: 4.0 -> level 0
        x[20] = -3.5; // -3.5 / -0.5 + 8.5 = 15.5 -> 15
        x[1] = 1.0; // 1 / -0.5 + 8.5 = 6.5 -> 6
        let mut b = [BlockQ4_0::zeroed()];
        quantize(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), -0.5);
        assert_eq!(b[0].qs[5] & 0x0f, 0);
        assert_eq!(b[0].qs[4] >> 4, 15);
        assert_eq!(b[0].qs[1] & 0x0f, 6);
        assert_eq!(b[0].qs[0], 0x88);
    }
}
