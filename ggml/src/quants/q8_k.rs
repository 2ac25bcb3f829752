//! Q8_K: blocks of 256 values, `x = d * q` with an f32 scale and signed 8-bit q, plus the sum of
//! each 16 consecutive quants (`bsums`) for the K-quant dot products. An activation format:
//! ggml quantizes matmul inputs to it, never stores weights in it.

use bytemuck::{Pod, Zeroable};

use super::kquants::largest_magnitude;
use super::rounding::nearest_int;
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    /// sum of each 16 quants
    pub bsums: [i16; QK_K / 16],
}

pub fn dequantize(blocks: &[BlockQ8K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * q as f32;
        }
    }
}

/// ggml's reference quantizer: the value of largest magnitude maps to -127 (so quants stay in
/// -127..=127), rounding ties to even.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ8K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let max = largest_magnitude(x);
        if max == 0.0 {
            // ggml leaves bsums untouched here; zero is what they would sum to.
            *b = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantizes_against_the_largest_magnitude_with_ties_to_even() {
        let mut x = [0.0f32; QK_K];
        // 127 is the largest magnitude, so the scale is exactly -1: q = -round(x).
        x[0] = 2.5;
        x[1] = 127.0;
        x[17] = 1.5;
        x[18] = -0.5;
        let mut b = [BlockQ8K::zeroed()];
        quantize(&x, &mut b);
        let b = &b[0];
        assert_eq!(b.d, -1.0);
        // Ties go to even (-2.5 -> -2), where round() would give -3.
        assert_eq!(&b.qs[..2], &[-2, -127]);
        assert_eq!((b.qs[17], b.qs[18]), (-2, 0));
        assert_eq!(&b.bsums[..3], &[-129, -2, 0]);
        let mut y = [0.0f32; QK_K];
        dequantize(&[*b], &mut y);
        assert_eq!(&y[..2], &[2.0, 127.0]);
    }
}
