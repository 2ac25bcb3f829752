//! F16 weights · F16 activations, widened to f32 (every product of two f16 values is exact in
//! f32).

use half::f16;

/// The reference, as ggml's portable `ggml_vec_dot_f16`: each product of the widened values in
/// f32 (exact), the sum kept in f64 (ggml's `ggml_float`) and rounded to f32 at the end.
pub fn dot_scalar(w: &[f16], a: &[f16]) -> f32 {
    let mut sum = 0.0f64;
    for (x, y) in w.iter().zip(a) {
        sum += (x.to_f32() * y.to_f32()) as f64;
    }
    sum as f32
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

/// The tile kernels take the activations as they are.
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<half::f16>> = None;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::tile::{group_float_avx512, ROWS};

    use super::f16;
    use crate::kernels::x86::{f16_to_f32, hsum_f32x8};

    /// AVX2: F16C widens 8 values a load; four independent FMA accumulators over 32 elements a
    /// step, then 8 at a time, then a scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[f16], a: &[f16]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let mut acc = [_mm256_setzero_ps(); 4];
        let (mut w32, mut a32) = (w.chunks_exact(32), a.chunks_exact(32));
        for (x, y) in (&mut w32).zip(&mut a32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 32 f16, so 8 (16 bytes) from offset 8k (k < 4) are in
                // bounds; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (_mm_loadu_si128(x.as_ptr().add(8 * k).cast()), _mm_loadu_si128(y.as_ptr().add(8 * k).cast()))
                };
                *acc = _mm256_fmadd_ps(_mm256_cvtph_ps(x), _mm256_cvtph_ps(y), *acc);
            }
        }
        let (mut w8, mut a8) = (w32.remainder().chunks_exact(8), a32.remainder().chunks_exact(8));
        for (x, y) in (&mut w8).zip(&mut a8) {
            // SAFETY: both chunks hold 8 f16 (16 bytes).
            let (x, y) = unsafe { (_mm_loadu_si128(x.as_ptr().cast()), _mm_loadu_si128(y.as_ptr().cast())) };
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(x), _mm256_cvtph_ps(y), acc[0]);
        }
        let tail: f32 = w8.remainder().iter().zip(a8.remainder()).map(|(&x, &y)| f16_to_f32(x) * f16_to_f32(y)).sum();
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_f32x8(acc) + tail
    }

    /// AVX-512: 16 values widened a load, four 16-lane FMA accumulators over 64 elements a
    /// step, then 16 at a time, then one masked load for the last 0..=15.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[f16], a: &[f16]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let mut acc = [_mm512_setzero_ps(); 4];
        let (mut w64, mut a64) = (w.chunks_exact(64), a.chunks_exact(64));
        for (x, y) in (&mut w64).zip(&mut a64) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 64 f16, so 16 (32 bytes) from offset 16k (k < 4) are
                // in bounds; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(x.as_ptr().add(16 * k).cast()),
                        _mm256_loadu_si256(y.as_ptr().add(16 * k).cast()),
                    )
                };
                *acc = _mm512_fmadd_ps(_mm512_cvtph_ps(x), _mm512_cvtph_ps(y), *acc);
            }
        }
        let (mut w16, mut a16) = (w64.remainder().chunks_exact(16), a64.remainder().chunks_exact(16));
        for (x, y) in (&mut w16).zip(&mut a16) {
            // SAFETY: both chunks hold 16 f16 (32 bytes).
            let (x, y) = unsafe { (_mm256_loadu_si256(x.as_ptr().cast()), _mm256_loadu_si256(y.as_ptr().cast())) };
            acc[1] = _mm512_fmadd_ps(_mm512_cvtph_ps(x), _mm512_cvtph_ps(y), acc[1]);
        }
        let (x, y) = (w16.remainder(), a16.remainder());
        let mask = ((1u32 << x.len()) - 1) as u16;
        // SAFETY: the mask enables only the first `x.len()` (== `y.len()`, < 16) 16-bit lanes,
        // all in bounds; masked-off lanes are not read (and load as +0).
        let (x, y) = unsafe {
            (_mm256_maskz_loadu_epi16(mask, x.as_ptr().cast()), _mm256_maskz_loadu_epi16(mask, y.as_ptr().cast()))
        };
        acc[2] = _mm512_fmadd_ps(_mm512_cvtph_ps(x), _mm512_cvtph_ps(y), acc[2]);
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// [`ROWS`] weight rows against every token (see [`group_float_avx512`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[f16]; ROWS], a: &[f16], n_tokens: usize, out: &mut [f32]) {
        group_float_avx512(w, a, n_tokens, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::GgmlType;

    /// The SIMD kernel for `isa` applied to `w · a`, or `None` for the scalar reference itself.
    fn simd(isa: Isa, w: &[f16], a: &[f16]) -> Option<f32> {
        let dot: DotFn<f16, f16> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    /// The products are exact; the SIMD sums are f32 (the reference's is f64): allow `(n + 8)`
    /// f32 epsilons of Σ|w_i a_i|, the classic bound for adding n terms in any order.
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<f16> = random_blocks(GgmlType::F16, n, 1);
            let a: Vec<f16> = random_blocks(GgmlType::F16, n, 2);
            let want = dot_scalar(&w, &a);
            let mag = magnitude(GgmlType::F16, bytemuck::cast_slice(&w), GgmlType::F16, bytemuck::cast_slice(&a), n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n, mag, &format!("f16 {isa:?} n={n}"));
                }
            }
        }
    }

    #[test]
    fn small_integers_sum_exactly() {
        // Every product and partial sum is an integer below 2^24: no rounding on any path, so
        // any element dropped or counted twice at a tail shows.
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<f16> = (0..n).map(|i| f16::from_f32(((i * 7) % 17) as f32 - 8.0)).collect();
            let a: Vec<f16> = (0..n).map(|i| f16::from_f32(((i * 5) % 13) as f32 - 6.0)).collect();
            let want = dot_scalar(&w, &a);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_eq!(got, want, "f16 {isa:?} n={n}");
                }
            }
        }
    }
}
