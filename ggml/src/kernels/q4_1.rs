//! Q4_1 weights · Q8_1 activations: per 32-element block an exact i32 dot product of the
//! unsigned 4-bit levels with the activation bytes, scaled by `d_w * d_a`, plus the minimum's
//! share `m_w * s_a` (Q8_1 stores `s_a = d_a * Σ a`), summed in f32.

use crate::quants::q4_1::BlockQ4_1;
use crate::quants::q8_1::BlockQ8_1;

/// The reference, as ggml's generic `ggml_vec_dot_q4_1_q8_1`: the integer sum of each block,
/// then `sum += (d_w * d_a) * isum + m_w * s_a` in block order.
pub fn dot_scalar(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (a_lo, a_hi) = a.qs.split_at(16);
        let mut isum = 0i32;
        for ((&q, &x), &y) in w.qs.iter().zip(a_lo).zip(a_hi) {
            isum += (q & 0x0f) as i32 * x as i32 + (q >> 4) as i32 * y as i32;
        }
        sum += (w.d.to_f32() * a.d.to_f32()) * isum as f32 + w.m.to_f32() * a.s.to_f32();
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockQ4_1, BlockQ8_1};
    use crate::kernels::x86::{dot_u8i8_x4, f16_product, f16_product_x8, hsum_f32x8, nibbles_32};

    /// AVX2: the levels are already unsigned bytes (<= 15), so `maddubs` takes them as they
    /// are; one FMA per block, the `m_w * s_a` terms summed on the side and added at the end.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            let isum = dot_u8i8_x4(nibbles_32(&w.qs), qa);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f16_product_x8(w.d, a.d), acc);
            mins = _mm_add_ss(mins, f16_product(w.m, a.s));
        }
        hsum_f32x8(acc) + _mm_cvtss_f32(mins)
    }

    /// AVX-512 VNNI on 256-bit lanes: as AVX2 with `vpdpbusd` for the multiply and 4-way add.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            let isum = _mm256_dpbusd_epi32(_mm256_setzero_si256(), nibbles_32(&w.qs), qa);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f16_product_x8(w.d, a.d), acc);
            mins = _mm_add_ss(mins, f16_product(w.m, a.s));
        }
        hsum_f32x8(acc) + _mm_cvtss_f32(mins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::GgmlType;

    /// The SIMD kernel for `isa` applied to `w · a`, or `None` for the scalar reference itself.
    fn simd(isa: Isa, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> Option<f32> {
        let dot: DotFn<BlockQ4_1, BlockQ8_1> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 88] {
            let n = n_blocks * 32;
            let w: Vec<BlockQ4_1> = random_blocks(GgmlType::Q4_1, n, 1);
            let a: Vec<BlockQ8_1> = random_blocks(GgmlType::Q8_1, n, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q4_1, wb, GgmlType::Q8_1, ab, n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n_blocks, mag, &format!("q4_1 {isa:?} {n_blocks} blocks"));
                }
            }
        }
    }

    #[test]
    fn integer_sums_are_exact() {
        // With unit scales every path returns the plain sum of the per-block integer dots.
        let mut w: Vec<BlockQ4_1> = random_blocks(GgmlType::Q4_1, 8 * 32, 3);
        let mut a: Vec<BlockQ8_1> = random_blocks(GgmlType::Q8_1, 8 * 32, 4);
        w.iter_mut().for_each(|b| (b.d, b.m) = (half::f16::ONE, half::f16::ZERO));
        a.iter_mut().for_each(|b| b.d = half::f16::ONE);
        let want = dot_scalar(&w, &a);
        for isa in Isa::available() {
            if let Some(got) = simd(isa, &w, &a) {
                assert_eq!(got, want, "q4_1 {isa:?}");
            }
        }
    }
}
