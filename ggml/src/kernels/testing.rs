//! Helpers for the kernel tests: random quantized rows and a tolerance for float sums.

use bytemuck::Pod;

use crate::quants::quantize_row;
use crate::types::GgmlType;

/// `n` pseudo-random normal-ish values (deterministic for a seed), quantized to `ty`.
pub fn random_blocks<T: Pod>(ty: GgmlType, n: usize, seed: u64) -> Vec<T> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        // xorshift64*: good enough to fill test rows.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32
    };
    // Sum of three uniforms: a bell shape, with a few larger values.
    let x: Vec<f32> = (0..n).map(|_| (next() + next() + next() - 1.5) * 2.0).collect();
    let mut blocks = vec![T::zeroed(); n / ty.block_size()];
    quantize_row(ty, &x, bytemuck::cast_slice_mut(&mut blocks)).unwrap();
    blocks
}

/// Σ|w_i · a_i| over the dequantized rows: the scale of the rounding error of a dot product.
pub fn magnitude(w_ty: GgmlType, w: &[u8], a_ty: GgmlType, a: &[u8], n: usize) -> f32 {
    let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
    crate::quants::dequantize_row(w_ty, w, &mut wf).unwrap();
    crate::quants::dequantize_row(a_ty, a, &mut af).unwrap();
    wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum()
}

/// SIMD paths sum the same exact per-block integer products as the reference but add the
/// scaled block sums in another order (and with FMA): allow `(blocks + 8)` f32 epsilons of
/// the magnitude Σ|w_i a_i|.
pub fn assert_close(got: f32, want: f32, n_blocks: usize, magnitude: f32, what: &str) {
    let bound = (n_blocks as f32 + 8.0) * f32::EPSILON * magnitude;
    assert!((got - want).abs() <= bound, "{what}: got {got}, want {want} (bound {bound})");
}
