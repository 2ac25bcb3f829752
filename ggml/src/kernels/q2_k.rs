//! Q2_K weights · Q8_K activations. Per super-block of 256: the exact i32 sum over the
//! sixteen sub-blocks of `scale * Σ q * a` (4-bit scales, 2-bit quants), and the min term
//! `Σ min * bsum` from the activations' `bsums`; then `d_a * (d * sums - dmin * mins)` in f32.

use crate::quants::kquants::bytes_2bit;
use crate::quants::q2_k::BlockQ2K;
use crate::quants::q8_k::BlockQ8K;

/// The reference, structured like ggml's generic `ggml_vec_dot_q2_K_q8_K`: exact integer sums
/// per super-block, then `sum += d * isum - dmin * msum` in block order.
pub fn dot_scalar(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let msum: i32 = w.scales.iter().zip(&a.bsums).map(|(&sc, &b)| (sc >> 4) as i32 * b as i32).sum();
        let mut isum = 0i32;
        for (sub, q8) in a.qs.chunks_exact(16).enumerate() {
            let (qs, shift) = bytes_2bit(&w.qs, sub);
            let s: i32 = qs.iter().zip(q8).map(|(&q, &y)| ((q >> shift) & 3) as i32 * y as i32).sum();
            isum += (w.scales[sub] & 0xf) as i32 * s;
        }
        let d = w.d.to_f32() * a.d;
        let dmin = w.dmin.to_f32() * a.d;
        sum += d * isum as f32 - dmin * msum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{BlockQ2K, BlockQ8K};
    use crate::kernels::x86::{broadcast_32, f16_to_f32, hsum_f32x8, quad_index, scale_halves, scaled_dot_512};

    /// The sixteen 4-bit scales and the sixteen 4-bit mins of a super-block, one per byte, and
    /// `Σ min * bsum` in eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scales_and_min_sums(w: &BlockQ2K, a: &BlockQ8K) -> (__m128i, __m256i) {
        let low4 = _mm_set1_epi8(0x0f);
        // SAFETY: `scales` is 16 bytes and `bsums` 32; loadu has no alignment requirement.
        let (packed, bsums) =
            unsafe { (_mm_loadu_si128(w.scales.as_ptr().cast()), _mm256_loadu_si256(a.bsums.as_ptr().cast())) };
        let mins = _mm_and_si128(_mm_srli_epi16::<4>(packed), low4);
        (_mm_and_si128(packed, low4), _mm256_madd_epi16(bsums, _mm256_cvtepu8_epi16(mins)))
    }

    /// The 2-bit fields at bits `2k..2k+2` of every byte.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn field(q: __m256i, k: usize) -> __m256i {
        let shifted = match k {
            0 => q,
            1 => _mm256_srli_epi16::<2>(q),
            2 => _mm256_srli_epi16::<4>(q),
            _ => _mm256_srli_epi16::<6>(q),
        };
        _mm256_and_si256(shifted, _mm256_set1_epi8(3))
    }

    /// AVX2: per 32 values (two sub-blocks) one `maddubs` (pair sums at most 2 * 3 * 127) and
    /// one `madd` against the two sub-block scales; the min terms are one `madd` of `bsums`
    /// against the mins per super-block, accumulated apart.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, msum) = scales_and_min_sums(w, a);
            let sc16 = _mm256_cvtepu8_epi16(scales);
            let by_half =
                [_mm256_permute2x128_si256::<0x00>(sc16, sc16), _mm256_permute2x128_si256::<0x11>(sc16, sc16)];
            let mut sumi = _mm256_setzero_si256();
            for (half, &sc) in by_half.iter().enumerate() {
                // SAFETY: 32 bytes at 32 * half of the 64-byte `qs`.
                let q2 = unsafe { _mm256_loadu_si256(w.qs.as_ptr().add(32 * half).cast()) };
                for k in 0..4 {
                    // SAFETY: 32 bytes at 128 * half + 32 * k of the 256-byte `a.qs`.
                    let q8 = unsafe { _mm256_loadu_si256(a.qs.as_ptr().add(128 * half + 32 * k).cast()) };
                    let p = _mm256_maddubs_epi16(field(q2, k), q8);
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_halves(sc, 2 * k, 2 * k + 1)));
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(w.d) * a.d);
            let dmin = _mm256_set1_ps(f16_to_f32(w.dmin) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
            acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(msum), acc_min);
        }
        hsum_f32x8(acc) - hsum_f32x8(acc_min)
    }

    /// AVX-512 VNNI: each half's 32 bytes of `qs`, in both halves of a vector and shifted by
    /// `2k` and `2k + 2`, give 64 quants in element order (four sub-blocks); `vpdpbusd` (at most
    /// 4 * 3 * 127 per lane) then `vpdpwssd` by the sub-block scale.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
        let three = _mm512_set1_epi8(3);
        let shifts = [_mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)];
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, msum) = scales_and_min_sums(w, a);
            let sc = _mm512_cvtepu8_epi32(scales);
            let mut sumi = _mm512_setzero_si512();
            for half in 0..2 {
                // SAFETY: 32 bytes at 32 * half of the 64-byte `qs`.
                let q2 = unsafe { broadcast_32(w.qs.as_ptr().add(32 * half)) };
                for (p, &shift) in shifts.iter().enumerate() {
                    let q = _mm512_and_si512(_mm512_srlv_epi64(q2, shift), three);
                    // SAFETY: 64 bytes at 128 * half + 64 * p of the 256-byte `a.qs`.
                    let q8 = unsafe { _mm512_loadu_si512(a.qs.as_ptr().add(128 * half + 64 * p).cast()) };
                    let s = (8 * half + 4 * p) as i32;
                    let idx = quad_index(s);
                    sumi = scaled_dot_512(sumi, q, q8, _mm512_permutexvar_epi32(idx, sc));
                }
            }
            let d = _mm512_set1_ps(f16_to_f32(w.d) * a.d);
            let dmin = _mm256_set1_ps(f16_to_f32(w.dmin) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
            acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(msum), acc_min);
        }
        _mm512_reduce_add_ps(acc) - hsum_f32x8(acc_min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::types::QK_K;
    use crate::GgmlType;

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 11] {
            let w: Vec<BlockQ2K> = random_blocks(GgmlType::Q2_K, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q2_K, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q2_k {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
