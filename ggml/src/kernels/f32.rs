//! F32 weights · F32 activations.

/// The reference, as ggml's portable `ggml_vec_dot_f32`: each product rounded to f32, the sum
/// kept in f64 (ggml's `ggml_float`) and rounded to f32 at the end.
pub fn dot_scalar(w: &[f32], a: &[f32]) -> f32 {
    let mut sum = 0.0f64;
    for (&x, &y) in w.iter().zip(a) {
        sum += (x * y) as f64;
    }
    sum as f32
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

/// The tile kernels take the activations as they are.
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<f32>> = None;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::kernels::tile::{group_float_avx512, ROWS};

    use crate::kernels::x86::hsum_f32x8;

    /// AVX2: four independent 8-lane FMA accumulators over 32 elements a step (enough to hide
    /// the FMA latency), then 8 at a time, then a scalar tail.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[f32], a: &[f32]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let mut acc = [_mm256_setzero_ps(); 4];
        let (mut w32, mut a32) = (w.chunks_exact(32), a.chunks_exact(32));
        for (x, y) in (&mut w32).zip(&mut a32) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 32 f32, so 8 from offset 8k (k < 4) are in bounds.
                let (x, y) =
                    unsafe { (_mm256_loadu_ps(x.as_ptr().add(8 * k)), _mm256_loadu_ps(y.as_ptr().add(8 * k))) };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
        }
        let (mut w8, mut a8) = (w32.remainder().chunks_exact(8), a32.remainder().chunks_exact(8));
        for (x, y) in (&mut w8).zip(&mut a8) {
            // SAFETY: both chunks hold 8 f32.
            let (x, y) = unsafe { (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())) };
            acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        }
        let tail: f32 = w8.remainder().iter().zip(a8.remainder()).map(|(x, y)| x * y).sum();
        let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_f32x8(acc) + tail
    }

    /// AVX-512: four 16-lane FMA accumulators over 64 elements a step, then 16 at a time, then
    /// one masked load for the last 0..=15.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[f32], a: &[f32]) -> f32 {
        let n = w.len().min(a.len());
        let (w, a) = (&w[..n], &a[..n]);
        let mut acc = [_mm512_setzero_ps(); 4];
        let (mut w64, mut a64) = (w.chunks_exact(64), a.chunks_exact(64));
        for (x, y) in (&mut w64).zip(&mut a64) {
            for (k, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 64 f32, so 16 from offset 16k (k < 4) are in bounds.
                let (x, y) =
                    unsafe { (_mm512_loadu_ps(x.as_ptr().add(16 * k)), _mm512_loadu_ps(y.as_ptr().add(16 * k))) };
                *acc = _mm512_fmadd_ps(x, y, *acc);
            }
        }
        let (mut w16, mut a16) = (w64.remainder().chunks_exact(16), a64.remainder().chunks_exact(16));
        for (x, y) in (&mut w16).zip(&mut a16) {
            // SAFETY: both chunks hold 16 f32.
            let (x, y) = unsafe { (_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(y.as_ptr())) };
            acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
        }
        let (x, y) = (w16.remainder(), a16.remainder());
        let mask = ((1u32 << x.len()) - 1) as u16;
        // SAFETY: the mask enables only the first `x.len()` (== `y.len()`, < 16) lanes, all in
        // bounds; masked-off lanes are not read.
        let (x, y) = unsafe { (_mm512_maskz_loadu_ps(mask, x.as_ptr()), _mm512_maskz_loadu_ps(mask, y.as_ptr())) };
        acc[2] = _mm512_fmadd_ps(x, y, acc[2]);
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// [`ROWS`] weight rows against every token (see [`group_float_avx512`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[f32]; ROWS], a: &[f32], n_tokens: usize, out: &mut [f32]) {
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
    fn simd(isa: Isa, w: &[f32], a: &[f32]) -> Option<f32> {
        let dot: DotFn<f32, f32> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    /// The SIMD sums are f32 (the reference's is f64): allow `(n + 8)` f32 epsilons of
    /// Σ|w_i a_i|, the classic bound for adding n rounded products in any order.
    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<f32> = random_blocks(GgmlType::F32, n, 1);
            let a: Vec<f32> = random_blocks(GgmlType::F32, n, 2);
            let want = dot_scalar(&w, &a);
            let mag = magnitude(GgmlType::F32, bytemuck::cast_slice(&w), GgmlType::F32, bytemuck::cast_slice(&a), n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n, mag, &format!("f32 {isa:?} n={n}"));
                }
            }
        }
    }

    #[test]
    fn small_integers_sum_exactly() {
        // Every product and partial sum is an integer below 2^24: no rounding on any path, so
        // any element dropped or counted twice at a tail shows.
        for n in [1, 7, 8, 15, 16, 31, 33, 63, 64, 100, 704, 4099] {
            let w: Vec<f32> = (0..n).map(|i| ((i * 7) % 17) as f32 - 8.0).collect();
            let a: Vec<f32> = (0..n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
            let want = dot_scalar(&w, &a);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_eq!(got, want, "f32 {isa:?} n={n}");
                }
            }
        }
    }
}
