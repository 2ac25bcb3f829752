//! Q4_1: blocks of 32 weights, `x = d * q + m` with f16 scale and minimum and unsigned 4-bit q.
//!
//! Layout (20 bytes): `d: f16`, `m: f16`, then `qs: [u8; 16]`. Byte `j` holds element `j` in
//! its low nibble and element `j + 16` in its high nibble.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::rounding::trunc_to_i32;

pub const QK4_1: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// scale
    pub d: f16,
    /// minimum (the value of level 0)
    pub m: f16,
    /// element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble
    pub qs: [u8; QK4_1 / 2],
}

pub fn dequantize(blocks: &[BlockQ4_1], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK4_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_1 / 2);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *lo = (q & 0x0f) as f32 * d + m;
            *hi = (q >> 4) as f32 * d + m;
        }
    }
}

/// ggml's reference quantizer: 16 levels spread evenly from the block's minimum to its maximum,
/// each value taking `trunc((x - min) / d + 0.5)` capped at 15. The levels are computed from the
/// exact f32 minimum and scale, not their f16 roundings.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ4_1]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK4_1)) {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        b.m = f32_to_f16(min);
        let level = |v: f32| (trunc_to_i32((v - min) * id + 0.5) as i8).min(15) as u8;
        let (lo, hi) = x.split_at(QK4_1 / 2);
        for ((q, &lo), &hi) in b.qs.iter_mut().zip(lo).zip(hi) {
            *q = level(lo) | level(hi) << 4;
        }
    }
}

/// The block's minimum and maximum, starting from `(f32::MAX, -f32::MAX)` and replacing only on
/// a strict comparison, as ggml does (so NaNs are skipped and an all-NaN block keeps the seeds).
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::MAX, -f32::MAX), |(min, max), &v| (if v < min { v } else { min }, if v > max { v } else { max }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_up_from_the_minimum() {
        let mut qs = [0u8; 16];
        qs[2] = 0xa3; // element 2: level 3, element 18: level 10
        let b = BlockQ4_1 { d: f16::from_f32(0.25), m: f16::from_f32(-1.0), qs };
        let mut y = [0.0f32; 32];
        dequantize(&[b], &mut y);
        assert_eq!((y[2], y[18], y[0], y[31]), (-0.25, 1.5, -1.0, -1.0));
    }

    #[test]
    fn minimum_and_maximum_take_the_end_levels() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 - 2.0).collect();
        let mut b = [BlockQ4_1::zeroed()];
        quantize(&x, &mut b);
        // range 15.5 over 15 steps
        assert_eq!(b[0].d, f32_to_f16(15.5 / 15.0));
        assert_eq!(b[0].m.to_f32(), -2.0);
        assert_eq!(b[0].qs[0] & 0x0f, 0);
        assert_eq!(b[0].qs[15] >> 4, 15);
    }
}
