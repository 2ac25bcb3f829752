//! Small AVX2 building blocks shared by the x86 kernels.

use std::arch::x86_64::*;

/// Split a signed-by-signed byte product into the unsigned-by-signed form `maddubs` and
/// `vpdpbusd` take: `(|w|, a * sign(w))`, so that `|w| * (a * sign(w)) = w * a`.
#[inline]
#[target_feature(enable = "avx2")]
pub fn sign_split(w: __m256i, a: __m256i) -> (__m256i, __m256i) {
    (_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub fn hsum_f32x8(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_movehdup_ps(pair));
    _mm_cvtss_f32(single)
}
