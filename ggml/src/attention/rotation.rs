//! The Walsh–Hadamard rotation of a quantized cache's rows.
//!
//! A block format spends its 8 or 4 bits a value on a grid scaled to the block's largest
//! |value|, so one outlier coarsens the grid for the other 31. Keys and values have outlier
//! dimensions. An orthonormal rotation `H` spreads every outlier over the whole rotated block
//! and leaves the attention unchanged in exact arithmetic:
//!
//! - scores: `(H q) · (H k) = q · k`, so K is stored rotated and each query is rotated too;
//! - values: `Σ p_j (H v_j) = H Σ p_j v_j`, so V is stored rotated and the output is rotated
//!   back (`H` is symmetric and `H H = I`).
//!
//! `H` is the normalized Walsh–Hadamard matrix of size `n` (Sylvester's construction, `1/√n`
//! times ±1), applied to each run of `n` elements of a row, as llama.cpp rotates its quantized
//! caches (since its commit of PR 21038): K by the largest power of two from 64 that divides
//! the head size, V by blocks of 64; f32, f16 and bf16 caches and rows that are not whole
//! blocks of 64 are not rotated.

use super::KvType;

/// The size of the rotation of K rows of `head_dim` elements in a cache of type `t`.
pub fn k_rotation(t: KvType, head_dim: usize) -> Option<usize> {
    if !t.is_quantized() || !head_dim.is_multiple_of(64) {
        return None;
    }
    let mut n = 64;
    while head_dim.is_multiple_of(2 * n) {
        n *= 2;
    }
    Some(n)
}

/// The size of the rotation of V rows of `head_dim` elements in a cache of type `t`.
pub fn v_rotation(t: KvType, head_dim: usize) -> Option<usize> {
    (t.is_quantized() && head_dim.is_multiple_of(64)).then_some(64)
}

/// `x = H x` for each run of `n` elements of `x` (`n` a power of two dividing `x.len()`): the
/// fast transform, `log2 n` passes of butterflies `(a, b) -> (a + b, a - b)`, then `1/√n`.
pub fn rotate(x: &mut [f32], n: usize) {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n), "rotations of {n} over a row of {}", x.len());
    let scale = 1.0 / (n as f32).sqrt();
    for run in x.chunks_exact_mut(n) {
        let mut h = 1;
        while h < n {
            for pair in run.chunks_exact_mut(2 * h) {
                let (a, b) = pair.split_at_mut(h);
                for (a, b) in a.iter_mut().zip(b) {
                    (*a, *b) = (*a + *b, *a - *b);
                }
            }
            h *= 2;
        }
        run.iter_mut().for_each(|v| *v *= scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sylvester's Hadamard matrix of size `n`, normalized, built entry by entry:
    /// `H[i][j] = (-1)^popcount(i & j) / √n`.
    fn hadamard(n: usize) -> Vec<f64> {
        let s = 1.0 / (n as f64).sqrt();
        (0..n * n).map(|ij| if ((ij / n) & (ij % n)).count_ones().is_multiple_of(2) { s } else { -s }).collect()
    }

    #[test]
    fn rotate_is_the_hadamard_product_and_its_own_inverse() {
        for n in [64, 128, 512] {
            let x: Vec<f32> = (0..2 * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let mut y = x.clone();
            rotate(&mut y, n);
            let h = hadamard(n);
            for (run, (x, y)) in x.chunks(n).zip(y.chunks(n)).enumerate() {
                for i in 0..n {
                    let want: f64 = (0..n).map(|j| h[i * n + j] * x[j] as f64).sum();
                    assert!((y[i] as f64 - want).abs() < 1e-5, "n {n} run {run} row {i}: {} vs {want}", y[i]);
                }
            }
            rotate(&mut y, n);
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-5, "n {n}: H H x differs from x by {err}");
        }
    }

    /// llama.cpp's sizes: K by the head size's largest power-of-two factor from 64 (256 and 512
    /// on Gemma 4), V by 64; nothing for float types or heads of fewer than whole 64s.
    #[test]
    fn rotation_sizes() {
        assert_eq!(k_rotation(KvType::Q8_0, 256), Some(256));
        assert_eq!(k_rotation(KvType::Q4_0, 512), Some(512));
        assert_eq!(k_rotation(KvType::Q8_0, 192), Some(64));
        assert_eq!(k_rotation(KvType::Q8_0, 96), None);
        assert_eq!(k_rotation(KvType::F16, 256), None);
        assert_eq!(v_rotation(KvType::Q4_0, 512), Some(64));
        assert_eq!(v_rotation(KvType::Bf16, 512), None);
        assert_eq!(v_rotation(KvType::Q8_0, 32), None);
    }
}
