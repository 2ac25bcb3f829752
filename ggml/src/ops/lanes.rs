//! Loops shared by the x86 op kernels: apply an 8- or 16-lane function along slices. The last
//! partial vector goes through masked loads and stores, so the tail gets the same arithmetic as
//! the body (no scalar fallback whose rounding would differ).
//!
//! Every helper is memory-safe for any slice lengths: loads read at most `len` values and
//! stores write at most `len`.

pub mod avx2 {
    use std::arch::x86_64::*;

    /// Lanes `0..min(n, 8)` all ones, the rest zero.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// The first `min(len, 8)` values of `x`, zeros in the other lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn load(x: &[f32]) -> __m256 {
        if x.len() >= 8 {
            // SAFETY: 8 values are readable; loadu has no alignment requirement.
            unsafe { _mm256_loadu_ps(x.as_ptr()) }
        } else {
            // SAFETY: the mask enables only the first `x.len()` lanes; masked-off lanes are not read.
            unsafe { _mm256_maskload_ps(x.as_ptr(), mask(x.len())) }
        }
    }

    /// Writes the first `min(len, 8)` lanes of `v` to `y`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn store(y: &mut [f32], v: __m256) {
        if y.len() >= 8 {
            // SAFETY: 8 values are writable; storeu has no alignment requirement.
            unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
        } else {
            // SAFETY: the mask enables only the first `y.len()` lanes; masked-off lanes are not written.
            unsafe { _mm256_maskstore_ps(y.as_mut_ptr(), mask(y.len()), v) }
        }
    }

    /// `v` with lanes `n..8` zeroed.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn keep(v: __m256, n: usize) -> __m256 {
        _mm256_and_ps(v, _mm256_castsi256_ps(mask(n)))
    }

    /// `y[i] = f(y[i])`, eight lanes at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn map(y: &mut [f32], f: impl Fn(__m256) -> __m256) {
        for y in y.chunks_mut(8) {
            store(y, f(load(y)));
        }
    }

    /// `y[i] = f(y[i], x[i])`, eight lanes at a time, over the first `min(y.len(), x.len())`
    /// values (rounded up to whole chunks of `y` when `x` is longer).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn map2(y: &mut [f32], x: &[f32], f: impl Fn(__m256, __m256) -> __m256) {
        for (y, x) in y.chunks_mut(8).zip(x.chunks(8)) {
            store(y, f(load(y), load(x)));
        }
    }

    /// The eight f32 lanes widened and added to two f64x4 accumulators.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn accumulate_f64(acc: &mut [__m256d; 2], v: __m256) {
        acc[0] = _mm256_add_pd(acc[0], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        acc[1] = _mm256_add_pd(acc[1], _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)));
    }

    /// Sum of the lanes of both accumulators.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn hsum_f64(acc: [__m256d; 2]) -> f64 {
        let v = _mm256_add_pd(acc[0], acc[1]);
        let pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
        _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)))
    }
}

pub mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes `0..min(n, 16)` set.
    #[inline]
    pub fn mask(n: usize) -> __mmask16 {
        if n >= 16 {
            0xffff
        } else {
            (1u16 << n) - 1
        }
    }

    /// The first `min(len, 16)` values of `x`, zeros in the other lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn load(x: &[f32]) -> __m512 {
        // SAFETY: the mask enables only the first `min(len, 16)` lanes; masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(mask(x.len()), x.as_ptr()) }
    }

    /// Writes the first `min(len, 16)` lanes of `v` to `y`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn store(y: &mut [f32], v: __m512) {
        // SAFETY: the mask enables only the first `min(len, 16)` lanes; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr(), mask(y.len()), v) }
    }

    /// `y[i] = f(y[i])`, sixteen lanes at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn map(y: &mut [f32], f: impl Fn(__m512) -> __m512) {
        for y in y.chunks_mut(16) {
            store(y, f(load(y)));
        }
    }

    /// `y[i] = f(y[i], x[i])`, sixteen lanes at a time (lengths as [`super::avx2::map2`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn map2(y: &mut [f32], x: &[f32], f: impl Fn(__m512, __m512) -> __m512) {
        for (y, x) in y.chunks_mut(16).zip(x.chunks(16)) {
            store(y, f(load(y), load(x)));
        }
    }

    /// The sixteen f32 lanes widened and added to two f64x8 accumulators.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn accumulate_f64(acc: &mut [__m512d; 2], v: __m512) {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        acc[0] = _mm512_add_pd(acc[0], _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        acc[1] = _mm512_add_pd(acc[1], _mm512_cvtps_pd(hi));
    }
}
