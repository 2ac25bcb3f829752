//! Small in-place vector ops: `y += x`, `y *= x`, `y *= a`, `y += a x` (FMA), and the final
//! logit softcap `y = c tanh(y / c)`. Every slice argument has the same length `[n]`.
//!
//! All but the softcap are single correctly rounded operations, so every path gives the same
//! bits (the reference's `y + a x` is `f32::mul_add`, one rounding, like the SIMD FMA). The
//! softcap is `c * tanh(y * (1 / c))`, as llama.cpp builds it (scale, tanh, scale); the SIMD
//! paths use [`crate::ops::vmath`]'s tanh (2 ulp) where the reference uses libm's.

use crate::kernels::Isa;

macro_rules! public_op {
    ($(#[$doc:meta])* $name:ident, $with:ident, $scalar:ident, $avx2:ident, $avx512:ident, ($($arg:ident: $ty:ty),*)) => {
        $(#[$doc])*
        pub fn $name(y: &mut [f32], $($arg: $ty),*) {
            $with(Isa::best(), y, $($arg),*)
        }

        #[doc = concat!("[`", stringify!($name), "`] at level `isa` (the reference if this CPU lacks it).")]
        pub fn $with(isa: Isa, y: &mut [f32], $($arg: $ty),*) {
            dispatch!(isa, $scalar, $avx2, $avx512, (y, $($arg),*))
        }
    };
}

public_op!(
    /// `y += x`, as the residual adds. Panics if the lengths differ.
    add, add_with, add_scalar, add_avx2, add_avx512, (x: &[f32])
);
public_op!(
    /// `y *= x` element-wise. Panics if the lengths differ.
    mul, mul_with, mul_scalar, mul_avx2, mul_avx512, (x: &[f32])
);
public_op!(
    /// `y *= a`.
    scale, scale_with, scale_scalar, scale_avx2, scale_avx512, (a: f32)
);
public_op!(
    /// `y += a * x`, one rounding per element (accumulating the experts' outputs). Panics if the
    /// lengths differ.
    add_scaled, add_scaled_with, add_scaled_scalar, add_scaled_avx2, add_scaled_avx512, (a: f32, x: &[f32])
);
public_op!(
    /// `y = c * tanh(y / c)`: the final logit softcap (Gemma 4: c = 30).
    softcap, softcap_with, softcap_scalar, softcap_avx2, softcap_avx512, (c: f32)
);

/// Panics unless `y` and `x` have the same length (the per-ISA functions stop at the shorter).
#[track_caller]
fn same_len(y: &[f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "element-wise op: lengths differ");
}

/// The reference `y += x`.
pub fn add_scalar(y: &mut [f32], x: &[f32]) {
    same_len(y, x);
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x);
}

/// The reference `y *= x`.
pub fn mul_scalar(y: &mut [f32], x: &[f32]) {
    same_len(y, x);
    y.iter_mut().zip(x).for_each(|(y, x)| *y *= x);
}

/// The reference `y *= a`.
pub fn scale_scalar(y: &mut [f32], a: f32) {
    y.iter_mut().for_each(|y| *y *= a);
}

/// The reference `y += a * x`, fused.
pub fn add_scaled_scalar(y: &mut [f32], a: f32, x: &[f32]) {
    same_len(y, x);
    y.iter_mut().zip(x).for_each(|(y, &x)| *y = a.mul_add(x, *y));
}

/// The reference softcap.
pub fn softcap_scalar(y: &mut [f32], c: f32) {
    let inv = 1.0 / c;
    y.iter_mut().for_each(|y| *y = c * (*y * inv).tanh());
}

#[cfg(target_arch = "x86_64")]
pub use x86::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::same_len;
    use crate::ops::lanes::{avx2, avx512};
    use crate::ops::vmath;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn add_avx2(y: &mut [f32], x: &[f32]) {
        same_len(y, x);
        avx2::map2(y, x, |y, x| _mm256_add_ps(y, x))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn mul_avx2(y: &mut [f32], x: &[f32]) {
        same_len(y, x);
        avx2::map2(y, x, |y, x| _mm256_mul_ps(y, x))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn scale_avx2(y: &mut [f32], a: f32) {
        let a = _mm256_set1_ps(a);
        avx2::map(y, |y| _mm256_mul_ps(y, a))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn add_scaled_avx2(y: &mut [f32], a: f32, x: &[f32]) {
        same_len(y, x);
        let a = _mm256_set1_ps(a);
        avx2::map2(y, x, |y, x| _mm256_fmadd_ps(a, x, y))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn softcap_avx2(y: &mut [f32], c: f32) {
        let (inv, c) = (_mm256_set1_ps(1.0 / c), _mm256_set1_ps(c));
        avx2::map(y, |y| _mm256_mul_ps(c, vmath::avx2::tanh(_mm256_mul_ps(y, inv))))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn add_avx512(y: &mut [f32], x: &[f32]) {
        same_len(y, x);
        avx512::map2(y, x, |y, x| _mm512_add_ps(y, x))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn mul_avx512(y: &mut [f32], x: &[f32]) {
        same_len(y, x);
        avx512::map2(y, x, |y, x| _mm512_mul_ps(y, x))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn scale_avx512(y: &mut [f32], a: f32) {
        let a = _mm512_set1_ps(a);
        avx512::map(y, |y| _mm512_mul_ps(y, a))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn add_scaled_avx512(y: &mut [f32], a: f32, x: &[f32]) {
        same_len(y, x);
        let a = _mm512_set1_ps(a);
        avx512::map2(y, x, |y, x| _mm512_fmadd_ps(a, x, y))
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn softcap_avx512(y: &mut [f32], c: f32) {
        let (inv, c) = (_mm512_set1_ps(1.0 / c), _mm512_set1_ps(c));
        avx512::map(y, |y| _mm512_mul_ps(c, vmath::avx512::tanh(_mm512_mul_ps(y, inv))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_ulps, random, ulps};

    const LENGTHS: [usize; 7] = [1, 7, 16, 31, 256, 2816, 4099];

    #[test]
    fn simd_paths_equal_the_scalar_reference() {
        for (k, n) in LENGTHS.into_iter().enumerate() {
            let (y0, x) = (random(n, k as u64, -10.0, 10.0), random(n, 40 + k as u64, -10.0, 10.0));
            let run = |isa: Isa| {
                let mut out = [y0.clone(), y0.clone(), y0.clone(), y0.clone()];
                add_with(isa, &mut out[0], &x);
                mul_with(isa, &mut out[1], &x);
                scale_with(isa, &mut out[2], 0.018_844);
                add_scaled_with(isa, &mut out[3], -0.37, &x);
                out
            };
            let want = run(Isa::Scalar);
            for isa in Isa::available() {
                assert_eq!(run(isa), want, "{isa:?} n={n}");
            }
        }
    }

    /// SIMD softcap vs the reference: both tanh within 2 ulp of exact (libm's within 1), plus
    /// the final product: 4 ulp.
    #[test]
    fn softcap_simd_paths_match_the_scalar_reference() {
        for (k, n) in [1usize, 7, 31, 256, 2816, 262_144].into_iter().enumerate() {
            let x = random(n, k as u64, -150.0, 150.0);
            let mut want = x.clone();
            softcap_scalar(&mut want, 30.0);
            for isa in Isa::available() {
                let mut got = x.clone();
                softcap_with(isa, &mut got, 30.0);
                assert_ulps(&got, &want, 4.0, 0.0, &format!("softcap {isa:?} n={n}"));
            }
        }
    }

    #[test]
    fn reference_matches_f64_math() {
        let (y0, x) = (random(1000, 1, -10.0, 10.0), random(1000, 2, -10.0, 10.0));
        let mut y = y0.clone();
        add_scaled_scalar(&mut y, 0.3, &x);
        for i in 0..1000 {
            assert_eq!(y[i], (y0[i] as f64 + 0.3f32 as f64 * x[i] as f64) as f32, "one rounding");
        }
        let mut y = y0.clone();
        softcap_scalar(&mut y, 30.0);
        for i in 0..1000 {
            // 1/c and y/c rounded (1 ulp of the argument, <= 1 ulp after tanh), tanh, product.
            let u = ulps(y[i], 30.0 * (y0[i] as f64 / 30.0).tanh());
            assert!(u <= 4.0, "softcap({}) {u} ulp", y0[i]);
        }
    }

    #[test]
    fn hand_checked_values() {
        for isa in Isa::available() {
            let mut y = [0.0f32, 1e-3, -1e-3, 30.0, 1e4, -1e4, f32::INFINITY];
            softcap_with(isa, &mut y, 30.0);
            // Small logits pass nearly unchanged, large ones saturate at ±c.
            assert_eq!(y[0], 0.0);
            assert!((y[1] - 1e-3).abs() < 1e-9 && (y[2] + 1e-3).abs() < 1e-9, "{isa:?}: {y:?}");
            assert!((y[3] - 30.0 * 1f32.tanh()).abs() < 1e-5, "{isa:?}: {y:?}");
            assert_eq!(y[4..], [30.0, -30.0, 30.0], "{isa:?}");
        }
    }

    #[test]
    #[should_panic(expected = "lengths differ")]
    fn length_mismatch_panics() {
        add(&mut [0.0; 3], &[1.0; 4]);
    }
}
