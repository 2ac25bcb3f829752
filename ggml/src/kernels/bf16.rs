//! BF16 weights · BF16 activations, widened to f32 (a bf16 is the top half of an f32, and
//! every product of two is exact in f32).
//!
//! The SIMD paths widen without a shuffle: a 32-bit lane holding two bf16 values is the odd
//! one as an f32 once its low half is masked off, and the even one once shifted left by 16.
//! Sums of even and odd products land in separate lanes, which the final reduction adds.

use half::bf16;

/// bf16 -> f32: the bits become the top half of the f32 (exact; NaNs stay NaN).
#[inline]
fn widen(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// The reference, as ggml's portable `ggml_vec_dot_bf16`: each product of the widened values
/// in f32 (exact), the sum kept in f64 (ggml's `ggml_float`) and rounded to f32 at the end.
pub fn dot_scalar(w: &[bf16], a: &[bf16]) -> f32 {
    let mut sum = 0.0f64;
    for (&x, &y) in w.iter().zip(a) {
        sum += (widen(x) * widen(y)) as f64;
    }
    sum as f32
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

/// The tile kernels take the activations as they are.
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<half::bf16>> = None;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::tile::{group_float_avx512, ROWS};

    use super::{bf16, widen};
    use crate::kernels::x86::hsum_f32x8;

    /// AVX2: 16 values a 256-bit load, split into even and odd f32 lanes; four independent FMA
    /// accumulators over 32 elements a step, then 16 at a time, then a scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[bf16], a: &[bf16]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let high = _mm256_set1_epi32(0xffff_0000u32 as i32);
        // (even lanes, odd lanes) of 16 bf16 as two f32 vectors.
        let split = |v: __m256i| {
            (_mm256_castsi256_ps(_mm256_slli_epi32::<16>(v)), _mm256_castsi256_ps(_mm256_and_si256(v, high)))
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        let (mut w32, mut a32) = (w.chunks_exact(32), a.chunks_exact(32));
        for (x, y) in (&mut w32).zip(&mut a32) {
            for k in 0..2 {
                // SAFETY: both chunks hold 32 bf16, so 16 (32 bytes) from offset 16k (k < 2)
                // are in bounds; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(x.as_ptr().add(16 * k).cast()),
                        _mm256_loadu_si256(y.as_ptr().add(16 * k).cast()),
                    )
                };
                let ((xe, xo), (ye, yo)) = (split(x), split(y));
                acc[2 * k] = _mm256_fmadd_ps(xe, ye, acc[2 * k]);
                acc[2 * k + 1] = _mm256_fmadd_ps(xo, yo, acc[2 * k + 1]);
            }
        }
        let (mut w16, mut a16) = (w32.remainder().chunks_exact(16), a32.remainder().chunks_exact(16));
        for (x, y) in (&mut w16).zip(&mut a16) {
            // SAFETY: both chunks hold 16 bf16 (32 bytes).
            let (x, y) = unsafe { (_mm256_loadu_si256(x.as_ptr().cast()), _mm256_loadu_si256(y.as_ptr().cast())) };
            let ((xe, xo), (ye, yo)) = (split(x), split(y));
            acc[0] = _mm256_fmadd_ps(xe, ye, acc[0]);
            acc[1] = _mm256_fmadd_ps(xo, yo, acc[1]);
        }
        let tail: f32 = w16.remainder().iter().zip(a16.remainder()).map(|(&x, &y)| widen(x) * widen(y)).sum();
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_f32x8(acc) + tail
    }

    /// AVX-512 (no AVX512_BF16 needed): 32 values a 512-bit load, split into even and odd f32
    /// lanes; four 16-lane FMA accumulators over 64 elements a step, then 32 at a time, then
    /// one masked load for the last 0..=31.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[bf16], a: &[bf16]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let split = |v: __m512i| {
            (_mm512_castsi512_ps(_mm512_slli_epi32::<16>(v)), _mm512_castsi512_ps(_mm512_and_si512(v, high)))
        };
        let mut acc = [_mm512_setzero_ps(); 4];
        let (mut w64, mut a64) = (w.chunks_exact(64), a.chunks_exact(64));
        for (x, y) in (&mut w64).zip(&mut a64) {
            for k in 0..2 {
                // SAFETY: both chunks hold 64 bf16, so 32 (64 bytes) from offset 32k (k < 2)
                // are in bounds; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_si512(x.as_ptr().add(32 * k).cast()),
                        _mm512_loadu_si512(y.as_ptr().add(32 * k).cast()),
                    )
                };
                let ((xe, xo), (ye, yo)) = (split(x), split(y));
                acc[2 * k] = _mm512_fmadd_ps(xe, ye, acc[2 * k]);
                acc[2 * k + 1] = _mm512_fmadd_ps(xo, yo, acc[2 * k + 1]);
            }
        }
        let (mut w32, mut a32) = (w64.remainder().chunks_exact(32), a64.remainder().chunks_exact(32));
        for (x, y) in (&mut w32).zip(&mut a32) {
            // SAFETY: both chunks hold 32 bf16 (64 bytes).
            let (x, y) = unsafe { (_mm512_loadu_si512(x.as_ptr().cast()), _mm512_loadu_si512(y.as_ptr().cast())) };
            let ((xe, xo), (ye, yo)) = (split(x), split(y));
            acc[0] = _mm512_fmadd_ps(xe, ye, acc[0]);
            acc[1] = _mm512_fmadd_ps(xo, yo, acc[1]);
        }
        let (x, y) = (w32.remainder(), a32.remainder());
        let mask = ((1u64 << x.len()) - 1) as u32;
        // SAFETY: the mask enables only the first `x.len()` (== `y.len()`, < 32) 16-bit lanes,
        // all in bounds; masked-off lanes are not read (and load as +0).
        let (x, y) = unsafe {
            (_mm512_maskz_loadu_epi16(mask, x.as_ptr().cast()), _mm512_maskz_loadu_epi16(mask, y.as_ptr().cast()))
        };
        let ((xe, xo), (ye, yo)) = (split(x), split(y));
        acc[2] = _mm512_fmadd_ps(xe, ye, acc[2]);
        acc[3] = _mm512_fmadd_ps(xo, yo, acc[3]);
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// [`ROWS`] weight rows against every token (see [`group_float_avx512`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[bf16]; ROWS], a: &[bf16], n_tokens: usize, out: &mut [f32]) {
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
    fn simd(isa: Isa, w: &[bf16], a: &[bf16]) -> Option<f32> {
        let dot: DotFn<bf16, bf16> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    /// The products are exact; the SIMD sums are f32 (the reference's is f64): allow `(n + 8)`
    /// f32 epsilons of Σ|w_i a_i|, the classic bound for adding n terms in any order.
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<bf16> = random_blocks(GgmlType::BF16, n, 1);
            let a: Vec<bf16> = random_blocks(GgmlType::BF16, n, 2);
            let want = dot_scalar(&w, &a);
            let mag = magnitude(GgmlType::BF16, bytemuck::cast_slice(&w), GgmlType::BF16, bytemuck::cast_slice(&a), n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n, mag, &format!("bf16 {isa:?} n={n}"));
                }
            }
        }
    }

    #[test]
    fn small_integers_sum_exactly() {
        // Every product and partial sum is an integer below 2^24: no rounding on any path, so
        // any element dropped, counted twice or paired with the wrong partner shows.
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<bf16> = (0..n).map(|i| bf16::from_f32(((i * 7) % 17) as f32 - 8.0)).collect();
            let a: Vec<bf16> = (0..n).map(|i| bf16::from_f32(((i * 5) % 13) as f32 - 6.0)).collect();
            let want = dot_scalar(&w, &a);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_eq!(got, want, "bf16 {isa:?} n={n}");
                }
            }
        }
    }
}
