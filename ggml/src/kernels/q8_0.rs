//! Q8_0 weights · Q8_0 activations: per 32-element block an exact i32 dot product of the
//! signed bytes, scaled by `d_w * d_a` and summed in f32.

use crate::quants::q8_0::BlockQ8_0;

/// The reference: integer sum per block, then `sum += isum * (d_w * d_a)` in block order
/// (ggml's generic `ggml_vec_dot_q8_0_q8_0` does the same).
pub fn dot_scalar(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let isum: i32 = w.qs.iter().zip(&a.qs).map(|(&x, &y)| x as i32 * y as i32).sum();
        sum += isum as f32 * (w.d.to_f32() * a.d.to_f32());
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

/// The tile kernels take the activations biased to unsigned bytes.
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<crate::quants::q8_0::BlockQ8_0>> =
    Some(crate::kernels::tile::prepare_q8_0_acts);

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8_0;
    use crate::kernels::tile::{group_q8_avx512, SignedBytes, ROWS};
    use crate::kernels::x86::{f16_lookup, f16_product_x8, hsum_f32x8, sign_split};

    /// AVX2: `maddubs(|w|, a * sign(w))` gives 16 pairwise i16 sums (at most 2 * 128 * 127, no
    /// saturation), `madd` by ones widens them to 8 i32, then one FMA per block.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: each `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let (qw, qa) =
                unsafe { (_mm256_loadu_si256(w.qs.as_ptr().cast()), _mm256_loadu_si256(a.qs.as_ptr().cast())) };
            let (abs_w, signed_a) = sign_split(qw, qa);
            let pairs = _mm256_maddubs_epi16(abs_w, signed_a);
            let isum = _mm256_madd_epi16(pairs, ones);
            let d = f16_product_x8(w.d, a.d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
        }
        hsum_f32x8(acc)
    }

    /// AVX-512 VNNI on 256-bit lanes: `vpdpbusd` does the multiply and the 4-way widening add
    /// in one instruction.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ8_0], a: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: each `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let (qw, qa) =
                unsafe { (_mm256_loadu_si256(w.qs.as_ptr().cast()), _mm256_loadu_si256(a.qs.as_ptr().cast())) };
            let (abs_w, signed_a) = sign_split(qw, qa);
            let isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs_w, signed_a);
            let d = f16_product_x8(w.d, a.d);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc);
        }
        hsum_f32x8(acc)
    }

    impl SignedBytes for BlockQ8_0 {
        /// # Safety
        /// The CPU must support AVX2.
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn levels(&self) -> __m256i {
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            unsafe { _mm256_loadu_si256(self.qs.as_ptr().cast()) }
        }

        #[inline]
        fn scale(&self) -> f32 {
            f16_lookup(self.d)
        }
    }

    /// [`ROWS`] weight rows against every token (see [`group_q8_avx512`]).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[BlockQ8_0]; ROWS], a: &[BlockQ8_0], n_tokens: usize, out: &mut [f32]) {
        group_q8_avx512(w, a, n_tokens, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::quants::q8_0::QK8_0;
    use crate::GgmlType;

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 88] {
            let w: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, n_blocks * QK8_0, 1);
            let a: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, n_blocks * QK8_0, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q8_0, wb, GgmlType::Q8_0, ab, n_blocks * QK8_0);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q8_0 {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
