//! RMSNorm, `y = x / sqrt(mean(x²) + eps) * w` (GEMMA4.md 2.1; plain `w`, not `1 + w`): with a
//! weight (the layer norms; q_norm and k_norm per head) or without (v_norm, the router's
//! input norm).
//!
//! Arithmetic as ggml's `rms_norm` followed by `mul`: each square rounded to f32, the squares
//! summed in **f64** (ggml's `ggml_float`), `mean = (sum / n) as f32`,
//! `scale = 1 / sqrtf(mean + eps)`, then `y = (x * scale) * w`, two f32 roundings and no FMA.
//! The f64 sum costs one widening per 8 values and makes the result independent of the order
//! of summation in all but rare ties: the SIMD paths add in another order, then match the
//! reference bit for bit except when the f64 sums round to different f32 means (1 ulp).

use crate::kernels::Isa;

/// `y = rmsnorm(x) * w` (`w: None` for the weightless norm). `x`, `y` and `w`: `[n]`.
pub fn rms_norm(x: &[f32], w: Option<&[f32]>, eps: f32, y: &mut [f32]) {
    y.copy_from_slice(x);
    rms_norm_inplace(y, w, eps);
}

/// [`rms_norm`] in place. `x`, `w`: `[n]`.
pub fn rms_norm_inplace(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    rms_norm_inplace_with(Isa::best(), x, w, eps)
}

/// RMSNorm of each head of `x: [n_heads, head_dim]` in place, each with the same `w:
/// [head_dim]` (q_norm, k_norm) or none (v_norm).
pub fn rms_norm_heads(x: &mut [f32], head_dim: usize, w: Option<&[f32]>, eps: f32) {
    assert!(
        head_dim > 0 && x.len().is_multiple_of(head_dim),
        "rms_norm_heads: {} values, head_dim {head_dim}",
        x.len()
    );
    let isa = Isa::best();
    for head in x.chunks_exact_mut(head_dim) {
        rms_norm_inplace_with(isa, head, w, eps);
    }
}

/// [`rms_norm_inplace`] at level `isa` (the reference if this CPU lacks it).
pub fn rms_norm_inplace_with(isa: Isa, x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    if let Some(w) = w {
        assert_eq!(w.len(), x.len(), "rms_norm: weight length");
    }
    dispatch!(isa, rms_norm_scalar, rms_norm_avx2, rms_norm_avx512, (x, w, eps))
}

/// `1 / sqrtf((sum / n) + eps)` as ggml rounds it.
fn inv_rms(sum_sq: f64, n: usize, eps: f32) -> f32 {
    let mean = (sum_sq / n as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// The reference. Multiplies by `w` over `min(x.len(), w.len())` values.
pub fn rms_norm_scalar(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    let sum: f64 = x.iter().map(|&v| (v * v) as f64).sum();
    let scale = inv_rms(sum, x.len(), eps);
    match w {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, &w)| *v = *v * scale * w),
        None => x.iter_mut().for_each(|v| *v *= scale),
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{rms_norm_avx2, rms_norm_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::inv_rms;
    use crate::ops::lanes::{avx2, avx512};

    /// AVX2: squares in f32, widened to two f64x4 accumulators; then one pass scaling.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn rms_norm_avx2(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
        let mut acc = [_mm256_setzero_pd(); 2];
        for c in x.chunks(8) {
            let v = avx2::load(c); // zeros past the end square to zeros
            avx2::accumulate_f64(&mut acc, _mm256_mul_ps(v, v));
        }
        let scale = _mm256_set1_ps(inv_rms(avx2::hsum_f64(acc), x.len(), eps));
        match w {
            Some(w) => avx2::map2(x, w, |v, w| _mm256_mul_ps(_mm256_mul_ps(v, scale), w)),
            None => avx2::map(x, |v| _mm256_mul_ps(v, scale)),
        }
    }

    /// AVX-512: as AVX2, sixteen lanes, two f64x8 accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn rms_norm_avx512(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
        let mut acc = [_mm512_setzero_pd(); 2];
        for c in x.chunks(16) {
            let v = avx512::load(c);
            avx512::accumulate_f64(&mut acc, _mm512_mul_ps(v, v));
        }
        let sum = _mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1]));
        let scale = _mm512_set1_ps(inv_rms(sum, x.len(), eps));
        match w {
            Some(w) => avx512::map2(x, w, |v, w| _mm512_mul_ps(_mm512_mul_ps(v, scale), w)),
            None => avx512::map(x, |v| _mm512_mul_ps(v, scale)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_ulps, random, ulps};

    const LENGTHS: [usize; 8] = [1, 7, 16, 31, 256, 512, 2816, 4099];

    /// SIMD vs reference: the same f32 operations after a sum that differs only in f64
    /// rounding, so at most the last bit of the mean: 2 ulp allowed.
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for (k, n) in LENGTHS.into_iter().enumerate() {
            let x = random(n, k as u64, -4.0, 4.0);
            let w = random(n, 100 + k as u64, -2.0, 2.0);
            for weight in [Some(&w[..]), None] {
                let mut want = x.clone();
                rms_norm_scalar(&mut want, weight, 1e-6);
                for isa in Isa::available() {
                    let mut got = x.clone();
                    rms_norm_inplace_with(isa, &mut got, weight, 1e-6);
                    assert_ulps(&got, &want, 2.0, 0.0, &format!("rms_norm {isa:?} n={n} weight={}", weight.is_some()));
                }
            }
        }
    }

    #[test]
    fn reference_matches_f64_math() {
        for (k, n) in LENGTHS.into_iter().enumerate() {
            let x = random(n, k as u64, -4.0, 4.0);
            let w = random(n, 100 + k as u64, -2.0, 2.0);
            let mut got = x.clone();
            rms_norm_scalar(&mut got, Some(&w), 1e-6);
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for i in 0..n {
                // squares and the mean rounded once each, sqrt, divide, two products: < 4 ulp
                let u = ulps(got[i], x[i] as f64 * inv * w[i] as f64);
                assert!(u <= 4.0, "n={n} [{i}]: {u} ulp");
            }
        }
    }

    #[test]
    fn hand_checked_values() {
        // mean(x²) = (9 + 16) / 2 = 12.5 -> x / sqrt(12.5) (eps 0): 3 / 3.5355 = 0.848528.
        let mut x = [3.0f32, -4.0];
        rms_norm_scalar(&mut x, None, 0.0);
        assert!((x[0] - 0.848_528_1).abs() < 1e-6 && (x[1] + 1.131_370_8).abs() < 1e-6, "{x:?}");
        // A constant row normalizes to ±1, times the weight.
        let mut x = [2.0f32; 4];
        rms_norm_scalar(&mut x, Some(&[1.0, 0.5, -1.0, 0.0]), 0.0);
        assert_eq!(x, [1.0, 0.5, -1.0, 0.0]);
    }

    #[test]
    fn per_head_is_one_norm_per_head() {
        let (n_heads, head_dim) = (3, 256);
        let x = random(n_heads * head_dim, 7, -3.0, 3.0);
        let w = random(head_dim, 8, 0.5, 1.5);
        for weight in [Some(&w[..]), None] {
            let mut got = x.clone();
            rms_norm_heads(&mut got, head_dim, weight, 1e-6);
            for (h, head) in x.chunks(head_dim).enumerate() {
                let mut want = head.to_vec();
                rms_norm_inplace(&mut want, weight, 1e-6);
                assert_eq!(&got[h * head_dim..(h + 1) * head_dim], &want[..], "head {h}");
            }
        }
    }
}
