//! Softmax over a row, in place, and the MoE router's top-k selection (GEMMA4.md 2.3, 2.5).
//!
//! As ggml's `soft_max`: `m = max(x)`, `e_i = exp(x_i - m)` in f32, `sum = Σ e_i` in **f64**,
//! then `y_i = e_i * (1 / sum) as f32` (a multiply by the rounded reciprocal, not a divide).
//! A row of all -inf (fully masked) gives NaN, as in ggml.

use crate::kernels::Isa;

/// `x = softmax(x)` in place. `x`: `[n]`, one row (attention scores of one head, router logits).
pub fn softmax(x: &mut [f32]) {
    softmax_with(Isa::best(), x)
}

/// [`softmax`] at level `isa` (the reference if this CPU lacks it).
pub fn softmax_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, softmax_scalar, softmax_avx2, softmax_avx512, (x))
}

/// The reference, with the standard library's `exp`.
pub fn softmax_scalar(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// The router's choice (GEMMA4.md 2.5): softmax over all experts' `logits: [n_expert]`, the `k`
/// largest probabilities (largest first; equal ones in index order, like a stable sort), and
/// their weights renormalized to sum to 1. Returns `(indices, weights)`, each `[k]`.
///
/// llama.cpp clamps the renormalizing sum to at least 6.1e-5; the k largest of n
/// probabilities sum to at least k/n, so the clamp never applies and is left out.
pub fn softmax_top_k(logits: &[f32], k: usize) -> (Vec<usize>, Vec<f32>) {
    assert!(k <= logits.len(), "top-{k} of {} experts", logits.len());
    let mut probs = logits.to_vec();
    softmax(&mut probs);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable: ties keep ascending index order.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.truncate(k);
    let sum: f32 = order.iter().map(|&i| probs[i]).sum();
    let weights = order.iter().map(|&i| probs[i] / sum).collect();
    (order, weights)
}

#[cfg(target_arch = "x86_64")]
pub use x86::{softmax_avx2, softmax_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::ops::lanes::{avx2, avx512};
    use crate::ops::vmath;

    /// AVX2: vector max, then exp and an f64 sum in one pass, then the scale.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn softmax_avx2(x: &mut [f32]) {
        let mut chunks = x.chunks_exact(8);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in &mut chunks {
            vmax = _mm256_max_ps(vmax, avx2::load(c));
        }
        let mut lanes = [0f32; 8];
        avx2::store(&mut lanes, vmax);
        let max = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
        let max = _mm256_set1_ps(max);
        let mut acc = [_mm256_setzero_pd(); 2];
        for c in x.chunks_mut(8) {
            let e = avx2::keep(vmath::avx2::exp(_mm256_sub_ps(avx2::load(c), max)), c.len());
            avx2::store(c, e);
            avx2::accumulate_f64(&mut acc, e);
        }
        let inv = _mm256_set1_ps((1.0 / avx2::hsum_f64(acc)) as f32);
        avx2::map(x, |v| _mm256_mul_ps(v, inv));
    }

    /// AVX-512: as AVX2, sixteen lanes; the tail's max through a masked max.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn softmax_avx512(x: &mut [f32]) {
        let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in x.chunks(16) {
            vmax = _mm512_mask_max_ps(vmax, avx512::mask(c.len()), vmax, avx512::load(c));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
        let mut acc = [_mm512_setzero_pd(); 2];
        for c in x.chunks_mut(16) {
            let e = _mm512_maskz_mov_ps(avx512::mask(c.len()), vmath::avx512::exp(_mm512_sub_ps(avx512::load(c), max)));
            avx512::store(c, e);
            avx512::accumulate_f64(&mut acc, e);
        }
        let inv = _mm512_set1_ps((1.0 / _mm512_reduce_add_pd(_mm512_add_pd(acc[0], acc[1]))) as f32);
        avx512::map(x, |v| _mm512_mul_ps(v, inv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_ulps, random, ulps};

    /// SIMD vs reference: each exp within 1 ulp of f64 (the reference's libm exp within 1
    /// too), the f64 sums agree to ~1e-16, one more rounding in the scale: 3 ulp, and an
    /// absolute 1e-37 for values the vector exp flushes to zero (below 2^-126).
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for (k, n) in [1, 7, 31, 128, 256, 2816, 4099].into_iter().enumerate() {
            for spread in [1.0, 30.0] {
                let x = random(n, k as u64, -spread, spread);
                let mut want = x.clone();
                softmax_scalar(&mut want);
                for isa in Isa::available() {
                    let mut got = x.clone();
                    softmax_with(isa, &mut got);
                    assert_ulps(&got, &want, 3.0, 1e-37, &format!("softmax {isa:?} n={n} spread={spread}"));
                }
            }
        }
    }

    #[test]
    fn reference_matches_f64_math() {
        let x = random(1000, 9, -20.0, 20.0);
        let mut got = x.clone();
        softmax_scalar(&mut got);
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        for (i, &v) in x.iter().enumerate() {
            let d = v as f64 - max;
            let want = d.exp() / sum;
            // `x - max` rounded to f32 (half an ulp of d, which exp turns into |d| 2^-24
            // relative: up to 2|d| ulp), then exp, the sum and the scale.
            let bound = 4.0 + 2.0 * d.abs();
            let u = ulps(got[i], want);
            assert!(u <= bound || (got[i] as f64 - want).abs() < 1e-37, "[{i}] d={d}: {u} ulp");
        }
    }

    #[test]
    fn hand_checked_values() {
        for isa in Isa::available() {
            // Equal inputs: uniform.
            let mut x = [3.5f32; 5];
            softmax_with(isa, &mut x);
            assert!(x.iter().all(|&p| (p - 0.2).abs() <= 1e-7), "{isa:?}: {x:?}");
            // [0, ln 3]: 1/4, 3/4. A masked (-inf) score gets exactly 0.
            let mut x = [0.0f32, 3f32.ln(), f32::NEG_INFINITY];
            softmax_with(isa, &mut x);
            assert!((x[0] - 0.25).abs() < 1e-7 && (x[1] - 0.75).abs() < 1e-7 && x[2] == 0.0, "{isa:?}: {x:?}");
            // Shift invariance (the max subtraction): large logits do not overflow.
            let mut x = [1000.0f32, 1000.0 + 3f32.ln()];
            let d = (x[1] - x[0]) as f64; // ln 3 to f32's precision at 1000
            softmax_with(isa, &mut x);
            let p0 = 1.0 / (1.0 + d.exp());
            assert!((x[0] as f64 - p0).abs() < 1e-7 && (x[1] as f64 - (1.0 - p0)).abs() < 1e-7, "{isa:?}: {x:?}");
        }
    }

    #[test]
    fn top_k_picks_the_largest_and_renormalizes() {
        let logits = [0.1f32, 2.0, -1.0, 3.0, 2.0, 0.5, 2.0, -4.0];
        let (idx, w) = softmax_top_k(&logits, 3);
        // 3.0 first, then the tied 2.0s in index order (1, 4; 6 is left out).
        assert_eq!(idx, [3, 1, 4]);
        let (e3, e2) = (1f64.exp(), 1.0); // relative to exp(2)
        let want = [e3 / (e3 + 2.0 * e2), e2 / (e3 + 2.0 * e2), e2 / (e3 + 2.0 * e2)];
        for (g, w) in w.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        assert!((w.iter().sum::<f32>() - 1.0).abs() <= 2.0 * f32::EPSILON);
        // The router's shape: top-8 of 128, sums to 1, weights descending.
        let logits = random(128, 11, -5.0, 5.0);
        let (idx, w) = softmax_top_k(&logits, 8);
        assert_eq!(idx.len(), 8);
        assert!((w.iter().sum::<f32>() - 1.0).abs() <= 4.0 * f32::EPSILON, "{w:?}");
        assert!(w.windows(2).all(|p| p[0] >= p[1]));
        let mut sorted = logits.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(logits[idx[7]], sorted[7]);
        // All equal: the first k, equal weights.
        let (idx, w) = softmax_top_k(&[1.0; 6], 4);
        assert_eq!((idx, w), (vec![0, 1, 2, 3], vec![0.25; 4]));
    }
}
