//! Q8_1: blocks of 32 weights, `x = d * q` with an f16 scale and signed 8-bit q, plus an f16
//! `s = d * sum(q)` that lets dot products fold in another format's minimum cheaply.
//!
//! Layout (36 bytes): `d: f16`, `s: f16`, `qs: [i8; 32]` in element order. ggml uses it only for
//! activations, so it has no dequantizer of its own; ours decodes `d * q` as Q8_0 does.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::rounding::trunc_to_i32;

pub const QK8_1: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// scale
    pub d: f16,
    /// `d * sum(qs)`, computed from the unrounded f32 `d`
    pub s: f16,
    /// quants, -127..=127 from the quantizer
    pub qs: [i8; QK8_1],
}

pub fn dequantize(blocks: &[BlockQ8_1], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK8_1)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// ggml's reference quantizer: as Q8_0 (largest |x| maps to 127, `roundf` rounding), and `s`
/// from the integer sum of the stored quants times the f32 scale.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ8_1]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK8_1)) {
        let amax = x.iter().fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = trunc_to_i32((v * id).round()) as i8;
        }
        let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
        b.s = f32_to_f16(sum as f32 * d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_uses_the_stored_quants() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0; // d = 1
        x[1] = -2.5; // rounds away from zero: -3
        x[2] = 0.5; // 1
        let mut b = [BlockQ8_1::zeroed()];
        quantize(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 1.0);
        assert_eq!(&b[0].qs[..4], &[127, -3, 1, 0]);
        assert_eq!(b[0].s.to_f32(), 125.0);
        let mut y = [0.0f32; 32];
        dequantize(&b, &mut y);
        assert_eq!(&y[..4], &[127.0, -3.0, 1.0, 0.0]);
    }
}
