//! Vectorized `exp` and `tanh` for the ops that need them (softmax, GELU, softcap), computed
//! rather than looked up.
//!
//! Both come from one kernel, `e^x = 2^n (1 + p)`: `n = round(x / ln 2)`, `r = x - n ln 2`
//! (|r| <= ln2/2, Cody-Waite with FMA) and `p = expm1(r)` by its Taylor series through r^7
//! (truncation below 2e-8 relative). Then `exp(x) = fma(2^n, p, 2^n)` and
//! `expm1(x) = fma(2^n, p, 2^n - 1)`, and `tanh(|x|) = -t / (t + 2)` with `t = expm1(-2|x|)`:
//! no cancellation near 0 and none near 1, so the error is relative everywhere.
//!
//! Measured max error against f64 (tests below, dense sweeps): `exp` 1.03 ulp on
//! [-87.3, 88.37], `tanh` 2.49 ulp on [-12, 12]; the tests allow 1.5 and 3.
//! Domain: `exp` gives 0 below -87.336 (results there would be subnormal) and +inf above
//! 88.37 (true overflow is at 88.72); `tanh` is ±1 beyond |x| = 10 (exactly what f32 rounds
//! tanh to there). NaN in gives NaN out.

use std::f32::consts::{LN_2, LOG2_E};

/// Below this `exp` flushes to 0: `ln(2^-126)`, the smallest normal result.
pub const EXP_MIN: f32 = -87.336_55;
/// Above this `exp` gives +inf: `127.5 ln 2` less a margin, so that `n <= 127`.
pub const EXP_MAX: f32 = 88.37;
/// `|x|` beyond which f32 `tanh(x)` rounds to ±1.
const TANH_SAT: f32 = 10.0;
/// `ln 2 = LN2_HI + LN2_LO`: the f32 nearest ln 2 and the remainder.
const LN2_HI: f32 = LN_2;
const LN2_LO: f32 = (std::f64::consts::LN_2 - LN_2 as f64) as f32;
/// `1/k!` for k = 7 down to 2: the Taylor series of `expm1(r) = r + r²(1/2! + r/3! + ...)`.
const INV_FACT: [f32; 6] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 1.0 / 2.0];

pub mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    /// `(2^n, p)` with `e^x = 2^n (1 + p)`, for x in [EXP_MIN, EXP_MAX].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp_parts(x: __m256) -> (__m256, __m256) {
        let n = _mm256_cvtps_epi32(_mm256_mul_ps(x, _mm256_set1_ps(LOG2_E)));
        let nf = _mm256_cvtepi32_ps(n);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_LO), r);
        let mut q = _mm256_set1_ps(INV_FACT[0]);
        for &c in &INV_FACT[1..] {
            q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(_mm256_mul_ps(r, r), q, r);
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127))));
        (scale, p)
    }

    /// `e^x` per lane.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn exp(x: __m256) -> __m256 {
        let clamped = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
        let (scale, p) = exp_parts(clamped);
        let e = _mm256_fmadd_ps(scale, p, scale);
        let e = _mm256_blendv_ps(e, _mm256_setzero_ps(), _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN)));
        let e =
            _mm256_blendv_ps(e, _mm256_set1_ps(f32::INFINITY), _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(EXP_MAX)));
        _mm256_blendv_ps(e, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }

    /// `tanh(x)` per lane.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn tanh(x: __m256) -> __m256 {
        let sign = _mm256_set1_ps(-0.0);
        let a = _mm256_min_ps(_mm256_andnot_ps(sign, x), _mm256_set1_ps(TANH_SAT));
        // t = expm1(-2|x|) in [-1, 0]; -2|x| >= -20 is inside exp's range.
        let (scale, p) = exp_parts(_mm256_mul_ps(a, _mm256_set1_ps(-2.0)));
        let t = _mm256_fmadd_ps(scale, p, _mm256_sub_ps(scale, _mm256_set1_ps(1.0)));
        let q = _mm256_div_ps(t, _mm256_add_ps(t, _mm256_set1_ps(2.0)));
        let y = _mm256_or_ps(_mm256_andnot_ps(sign, q), _mm256_and_ps(sign, x));
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

pub mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// `(2^n, p)` with `e^x = 2^n (1 + p)`, for x in [EXP_MIN, EXP_MAX].
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    fn exp_parts(x: __m512) -> (__m512, __m512) {
        let n = _mm512_cvtps_epi32(_mm512_mul_ps(x, _mm512_set1_ps(LOG2_E)));
        let nf = _mm512_cvtepi32_ps(n);
        let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_LO), r);
        let mut q = _mm512_set1_ps(INV_FACT[0]);
        for &c in &INV_FACT[1..] {
            q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(_mm512_mul_ps(r, r), q, r);
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))));
        (scale, p)
    }

    /// `e^x` per lane.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let clamped = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(EXP_MAX));
        let (scale, p) = exp_parts(clamped);
        let e = _mm512_fmadd_ps(scale, p, scale);
        let e =
            _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_MIN)), e, _mm512_setzero_ps());
        let e = _mm512_mask_blend_ps(
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(EXP_MAX)),
            e,
            _mm512_set1_ps(f32::INFINITY),
        );
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), e, x)
    }

    /// `tanh(x)` per lane.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn tanh(x: __m512) -> __m512 {
        let sign = _mm512_set1_epi32(i32::MIN);
        let xi = _mm512_castps_si512(x);
        let a = _mm512_min_ps(_mm512_castsi512_ps(_mm512_andnot_si512(sign, xi)), _mm512_set1_ps(TANH_SAT));
        // t = expm1(-2|x|) in [-1, 0]; -2|x| >= -20 is inside exp's range.
        let (scale, p) = exp_parts(_mm512_mul_ps(a, _mm512_set1_ps(-2.0)));
        let t = _mm512_fmadd_ps(scale, p, _mm512_sub_ps(scale, _mm512_set1_ps(1.0)));
        let q = _mm512_castps_si512(_mm512_div_ps(t, _mm512_add_ps(t, _mm512_set1_ps(2.0))));
        let y = _mm512_or_si512(_mm512_andnot_si512(sign, q), _mm512_and_si512(sign, xi));
        _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x), _mm512_castsi512_ps(y), x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use crate::ops::testing::ulps;

    /// `f` on every lane of `xs`, at `isa` (None for levels without a version).
    fn run(isa: Isa, xs: &[f32], tanh: bool) -> Option<Vec<f32>> {
        let mut y = xs.to_vec();
        match isa {
            // SAFETY: callers pass levels from `Isa::available`, which this CPU has.
            Isa::Avx2 => unsafe {
                crate::ops::lanes::avx2::map(&mut y, |v| if tanh { avx2::tanh(v) } else { avx2::exp(v) })
            },
            // SAFETY: as above.
            Isa::Avx512 => unsafe {
                crate::ops::lanes::avx512::map(&mut y, |v| if tanh { avx512::tanh(v) } else { avx512::exp(v) })
            },
            _ => return None,
        }
        Some(y)
    }

    /// `n` points spread over [lo, hi], plus their neighbours one ulp away.
    fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..=n)
            .map(|i| lo + (hi - lo) * i as f32 / n as f32)
            .flat_map(|x| [x, f32::from_bits(x.to_bits() + 1), f32::from_bits(x.to_bits().saturating_sub(1))])
            .filter(|x| (lo..=hi).contains(x))
            .collect()
    }

    #[test]
    fn exp_is_within_1_5_ulp_of_f64() {
        let xs = sweep(EXP_MIN + 1e-4, EXP_MAX, 200_000);
        for isa in Isa::available() {
            let Some(got) = run(isa, &xs, false) else { continue };
            let worst = xs.iter().zip(&got).map(|(&x, &y)| ulps(y, (x as f64).exp())).fold(0.0, f64::max);
            eprintln!("exp {isa:?}: max {worst:.3} ulp");
            assert!(worst <= 1.5, "exp {isa:?}: {worst} ulp");
        }
    }

    #[test]
    fn tanh_is_within_3_ulp_of_f64() {
        let mut xs = sweep(-12.0, 12.0, 400_000);
        xs.extend(sweep(-1e-3, 1e-3, 10_000));
        xs.extend([0.0, -0.0, 1e-30, -1e-30, 1e-40]);
        for isa in Isa::available() {
            let Some(got) = run(isa, &xs, true) else { continue };
            let worst = xs.iter().zip(&got).map(|(&x, &y)| ulps(y, (x as f64).tanh())).fold(0.0, f64::max);
            eprintln!("tanh {isa:?}: max {worst:.3} ulp");
            assert!(worst <= 3.0, "tanh {isa:?}: {worst} ulp");
        }
    }

    #[test]
    fn edges_and_nan() {
        let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -100.0, 100.0, 0.0, -0.0];
        for isa in Isa::available() {
            let (Some(e), Some(t)) = (run(isa, &xs, false), run(isa, &xs, true)) else { continue };
            assert!(e[0].is_nan() && t[0].is_nan(), "{isa:?}");
            assert_eq!(e[1..], [f32::INFINITY, 0.0, 0.0, f32::INFINITY, 1.0, 1.0], "exp {isa:?}");
            assert_eq!(t[1..], [1.0, -1.0, -1.0, 1.0, 0.0, -0.0], "tanh {isa:?}");
            assert!(t[5].is_sign_positive() && t[6].is_sign_negative(), "tanh keeps the sign of zero");
        }
    }
}
