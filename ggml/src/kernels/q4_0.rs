//! Q4_0 weights · Q8_0 activations: per 32-element block an exact i32 dot product of the
//! weights' 4-bit levels minus 8 with the activation bytes, scaled by `d_w * d_a` and summed in
//! f32.

use crate::quants::q4_0::BlockQ4_0;
use crate::quants::q8_0::BlockQ8_0;

/// The reference, as ggml's generic `ggml_vec_dot_q4_0_q8_0`: the integer sum of each block,
/// then `sum += isum * d_w * d_a` in block order.
pub fn dot_scalar(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (a_lo, a_hi) = a.qs.split_at(16);
        let mut isum = 0i32;
        for ((&q, &x), &y) in w.qs.iter().zip(a_lo).zip(a_hi) {
            isum += ((q & 0x0f) as i32 - 8) * x as i32 + ((q >> 4) as i32 - 8) * y as i32;
        }
        sum += isum as f32 * w.d.to_f32() * a.d.to_f32();
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_0, BlockQ8_0};
    use crate::kernels::x86::{dot_u8i8_x4, f16_product_x8, hsum_f32x8, nibbles_32, sign_split};

    /// AVX2: nibbles minus 8 are the signed levels; `maddubs` on `(|w|, a * sign(w))`
    /// (|w| <= 8), widened by `madd`, and one FMA per block.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
        let eight = _mm256_set1_epi8(8);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let qw = _mm256_sub_epi8(nibbles_32(&w.qs), eight);
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            let (abs_w, signed_a) = sign_split(qw, qa);
            let isum = dot_u8i8_x4(abs_w, signed_a);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f16_product_x8(w.d, a.d), acc);
        }
        hsum_f32x8(acc)
    }

    /// AVX-512 VNNI on 256-bit lanes: as AVX2 with `vpdpbusd` for the multiply and 4-way add.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ4_0], a: &[BlockQ8_0]) -> f32 {
        let eight = _mm256_set1_epi8(8);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let qw = _mm256_sub_epi8(nibbles_32(&w.qs), eight);
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            let (abs_w, signed_a) = sign_split(qw, qa);
            let isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), abs_w, signed_a);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f16_product_x8(w.d, a.d), acc);
        }
        hsum_f32x8(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::GgmlType;

    /// The SIMD kernel for `isa` applied to `w · a`, or `None` for the scalar reference itself.
    fn simd(isa: Isa, w: &[BlockQ4_0], a: &[BlockQ8_0]) -> Option<f32> {
        let dot: DotFn<BlockQ4_0, BlockQ8_0> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 88] {
            let n = n_blocks * 32;
            let w: Vec<BlockQ4_0> = random_blocks(GgmlType::Q4_0, n, 1);
            let a: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, n, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q4_0, wb, GgmlType::Q8_0, ab, n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n_blocks, mag, &format!("q4_0 {isa:?} {n_blocks} blocks"));
                }
            }
        }
    }

    #[test]
    fn integer_sums_are_exact() {
        // With unit scales every path returns the plain sum of the per-block integer dots.
        let mut w: Vec<BlockQ4_0> = random_blocks(GgmlType::Q4_0, 8 * 32, 3);
        let mut a: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, 8 * 32, 4);
        w.iter_mut().for_each(|b| b.d = half::f16::ONE);
        a.iter_mut().for_each(|b| b.d = half::f16::ONE);
        let want = dot_scalar(&w, &a);
        for isa in Isa::available() {
            if let Some(got) = simd(isa, &w, &a) {
                assert_eq!(got, want, "q4_0 {isa:?}");
            }
        }
    }
}
