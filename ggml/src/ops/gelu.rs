//! GELU, tanh approximation (GEMMA4.md 2.4): `gelu(x) = 0.5 x (1 + tanh(u))` with
//! `u = sqrt(2/pi) (x + 0.044715 x³)`, and the MLP's fused `gelu(gate) * up`.
//!
//! Computed as `x / (1 + exp(-2u))`, the same function (`1 + tanh(u) = 2 / (1 + e^-2u)`) without
//! the cancellation of `1 + tanh(u)` for negative x, so the error is relative everywhere.
//! (ggml's CPU backend instead rounds x to f16 and reads a 65536-entry table, about 1e-3
//! relative; HF computes the formula.) `u` is formed as ggml writes it,
//! `sqrt(2/pi) * x * (1 + 0.044715 * x * x)`, and identically on every path; its rounding is
//! amplified by `2|u|` through the exponential, so against exact math the error grows to
//! ~4.5|u| ulp (bound 8|u|) for x below about -3 (where gelu(x) < 4e-3). SIMD vs reference: 4 ulp.

use crate::kernels::Isa;

/// `sqrt(2 / pi)`.
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
pub const GELU_COEF_A: f32 = 0.044_715;

/// One value: the reference formula.
pub fn gelu_f32(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// `x = gelu(x)` in place.
pub fn gelu(x: &mut [f32]) {
    gelu_with(Isa::best(), x)
}

/// `gate = gelu(gate) * up` in place. `gate`, `up`: `[n]` (the MLP's intermediate width).
pub fn gelu_mul(gate: &mut [f32], up: &[f32]) {
    gelu_mul_with(Isa::best(), gate, up)
}

/// [`gelu`] at level `isa` (the reference if this CPU lacks it).
pub fn gelu_with(isa: Isa, x: &mut [f32]) {
    dispatch!(isa, gelu_scalar, gelu_avx2, gelu_avx512, (x))
}

/// [`gelu_mul`] at level `isa` (the reference if this CPU lacks it).
pub fn gelu_mul_with(isa: Isa, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "gelu_mul: lengths");
    dispatch!(isa, gelu_mul_scalar, gelu_mul_avx2, gelu_mul_avx512, (gate, up))
}

/// The reference.
pub fn gelu_scalar(x: &mut [f32]) {
    x.iter_mut().for_each(|v| *v = gelu_f32(*v));
}

/// The reference, over `min(gate.len(), up.len())` values.
pub fn gelu_mul_scalar(gate: &mut [f32], up: &[f32]) {
    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = gelu_f32(*g) * u);
}

#[cfg(target_arch = "x86_64")]
pub use x86::{gelu_avx2, gelu_avx512, gelu_mul_avx2, gelu_mul_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{GELU_COEF_A, SQRT_2_OVER_PI};
    use crate::ops::lanes::{avx2, avx512};
    use crate::ops::vmath;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn gelu8(x: __m256) -> __m256 {
        // u exactly as the reference rounds it: S * x * (1 + A * x * x), left to right, no FMA.
        let axx = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_COEF_A), x), x);
        let u =
            _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(SQRT_2_OVER_PI), x), _mm256_add_ps(_mm256_set1_ps(1.0), axx));
        let e = vmath::avx2::exp(_mm256_mul_ps(u, _mm256_set1_ps(-2.0)));
        _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    fn gelu16(x: __m512) -> __m512 {
        // u exactly as the reference rounds it: S * x * (1 + A * x * x), left to right, no FMA.
        let axx = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(GELU_COEF_A), x), x);
        let u =
            _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(SQRT_2_OVER_PI), x), _mm512_add_ps(_mm512_set1_ps(1.0), axx));
        let e = vmath::avx512::exp(_mm512_mul_ps(u, _mm512_set1_ps(-2.0)));
        _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_avx2(x: &mut [f32]) {
        avx2::map(x, |v| gelu8(v))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn gelu_mul_avx2(gate: &mut [f32], up: &[f32]) {
        avx2::map2(gate, up, |g, u| _mm256_mul_ps(gelu8(g), u))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn gelu_avx512(x: &mut [f32]) {
        avx512::map(x, |v| gelu16(v))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn gelu_mul_avx512(gate: &mut [f32], up: &[f32]) {
        avx512::map2(gate, up, |g, u| _mm512_mul_ps(gelu16(g), u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{random, ulps};

    const LENGTHS: [usize; 7] = [1, 7, 31, 256, 704, 2112, 2816];

    /// SIMD vs reference: the same `u` bit for bit, then the two exps (each within ~1 ulp of
    /// exact), `1 + e` and the divide.
    const SIMD_ULPS: f64 = 4.0;

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for (k, n) in LENGTHS.into_iter().enumerate() {
            let x = random(n, k as u64, -8.0, 8.0);
            let up = random(n, 50 + k as u64, -3.0, 3.0);
            let (mut want, mut want_mul) = (x.clone(), x.clone());
            gelu_scalar(&mut want);
            gelu_mul_scalar(&mut want_mul, &up);
            for isa in Isa::available() {
                let (mut got, mut got_mul) = (x.clone(), x.clone());
                gelu_with(isa, &mut got);
                gelu_mul_with(isa, &mut got_mul, &up);
                for i in 0..n {
                    let b = SIMD_ULPS;
                    let (u, um) = (ulps(got[i], want[i] as f64), ulps(got_mul[i], want_mul[i] as f64));
                    assert!(u <= b, "gelu {isa:?} n={n} x={}: got {} want {} ({u} ulp)", x[i], got[i], want[i]);
                    assert!(um <= b + 1.0, "gelu_mul {isa:?} n={n} x={}: {um} ulp", x[i]);
                }
            }
        }
    }

    #[test]
    fn reference_matches_the_tanh_formula_in_f64() {
        let s = (2.0 / std::f64::consts::PI).sqrt();
        for x in random(20_000, 3, -8.0, 8.0) {
            let xd = x as f64;
            let u = s * (xd + 0.044715 * xd * xd * xd);
            let tanh_form = 0.5 * xd * (1.0 + u.tanh());
            // The same function without the cancellation (f64's own `1 + tanh` loses every
            // digit below x = -7): the value to compare with.
            let want = xd / (1.0 + (-2.0 * u).exp());
            assert!((tanh_form - want).abs() <= 1e-15 * xd.abs(), "x={x}: the two forms differ");
            let got = gelu_f32(x);
            // u takes four roundings (up to 4 ulp relative), amplified by 2|u| through the exp;
            // then exp, 1 + e and the divide. (Seen: about 4.5|u|.)
            let err = ulps(got, want);
            assert!(err <= 4.0 + 8.0 * u.abs(), "x={x}: got {got}, want {want} ({err} ulp)");
        }
    }

    #[test]
    fn hand_checked_values() {
        for isa in Isa::available() {
            let mut x = [0.0f32, -0.0, 10.0, 50.0, 1e6, -10.0, -50.0, 1.0];
            gelu_with(isa, &mut x);
            assert_eq!(x[..5], [0.0, 0.0, 10.0, 50.0, 1e6], "{isa:?}: gelu(0) = 0, gelu(large) = x");
            assert!(x[5] <= 0.0 && x[5] > -1e-35 && x[6] == 0.0, "{isa:?}: gelu(very negative) -> 0: {x:?}");
            // 0.5 (1 + tanh(0.797885 * 1.044715)) = 0.841192 (the exact-erf GELU gives 0.841345).
            assert!((x[7] - 0.841_192).abs() < 1e-6, "{isa:?}: gelu(1) = {}", x[7]);
        }
    }
}
