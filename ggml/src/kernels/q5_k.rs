//! Q5_K weights · Q8_K activations: Q4_K's scheme with a fifth quant bit. Per super-block of
//! 256: the exact i32 sum over the eight sub-blocks of `scale * Σ q * a`, and the min term
//! `Σ min * Σ a` from the activations' `bsums`; then `d_a * (d * sums - dmin * mins)` in f32.

use super::q4_k::{min_sum, scales_and_mins};
use crate::quants::q5_k::BlockQ5K;
use crate::quants::q8_k::BlockQ8K;

/// The reference, structured like ggml's generic `ggml_vec_dot_q5_K_q8_K`: exact integer sums
/// per super-block, then `sum += d * isum - dmin * msum` in block order.
pub fn dot_scalar(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = scales_and_mins(&w.scales).0.to_le_bytes();
        let mut isum = 0i32;
        for (sub, q8) in a.qs.chunks_exact(32).enumerate() {
            // Low nibbles of `qs[32k..32k+32]` for sub-block 2k, high for 2k+1; bit `sub` of
            // `qh[i]` on top.
            let qs = &w.qs[32 * (sub / 2)..32 * (sub / 2) + 32];
            let shift = 4 * (sub % 2);
            let s: i32 = (0..32)
                .map(|i| {
                    let q = ((qs[i] >> shift) & 0xf) | ((w.qh[i] >> sub) & 1) << 4;
                    q as i32 * q8[i] as i32
                })
                .sum();
            isum += scales[sub] as i32 * s;
        }
        let msum = min_sum(scales_and_mins(&w.scales).1, &a.bsums);
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

    use super::{scales_and_mins, BlockQ5K, BlockQ8K};
    use crate::kernels::q4_k::min_sums;
    use crate::kernels::x86::{broadcast_32, f16_to_f32, hsum_f32x8, move_bit, scale_halves, scaled_dot_512};

    /// AVX2: Q4_K's kernel with bit `sub` of each `qh` byte moved to bit 4 of the sub-block's
    /// quants (pair sums at most 2 * 31 * 127).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, mins) = scales_and_mins(&w.scales);
            let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
            // SAFETY: `qh` is 32 bytes; loadu has no alignment requirement.
            let qh = unsafe { _mm256_loadu_si256(w.qh.as_ptr().cast()) };
            let mut sumi = _mm256_setzero_si256();
            for k in 0..4 {
                // SAFETY: 32 bytes at 32k of the 128-byte `qs`, 64 bytes at 64k of the 256-byte
                // `a.qs`; unaligned loads.
                let (q4, q8_lo, q8_hi) = unsafe {
                    (
                        _mm256_loadu_si256(w.qs.as_ptr().add(32 * k).cast()),
                        _mm256_loadu_si256(a.qs.as_ptr().add(64 * k).cast()),
                        _mm256_loadu_si256(a.qs.as_ptr().add(64 * k + 32).cast()),
                    )
                };
                let lo = _mm256_or_si256(_mm256_and_si256(q4, low4), move_bit(qh, 2 * k as u32, 4));
                let hi = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low4),
                    move_bit(qh, 2 * k as u32 + 1, 4),
                );
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, q8_lo), scale_halves(sc, 2 * k, 2 * k));
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, q8_hi), scale_halves(sc, 2 * k + 1, 2 * k + 1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            let msum = min_sums(mins, &a.bsums);
            let d = _mm256_set1_ps(f16_to_f32(w.d) * a.d);
            let dmin = _mm256_set1_ps(f16_to_f32(w.dmin) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
            acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(msum), acc_min);
        }
        hsum_f32x8(acc) - hsum_f32x8(acc_min)
    }

    /// AVX-512 VNNI: Q4_K's kernel (two whole sub-blocks per vector); the `qh` bytes, in both
    /// halves of a vector, are rotated per 256-bit half to bring bit `sub` to bit 4, and
    /// merged with one ternary-logic op. Four-product sums at most 4 * 31 * 127, an i16.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm512_set1_epi8(0x0f);
        let bit4 = _mm512_set1_epi8(0x10);
        let shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
        // Left rotation of a 64-bit lane taking bit `sub` of every byte to bit 4.
        let rot = |sub: i64| (4 - sub).rem_euclid(64);
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, mins) = scales_and_mins(&w.scales);
            let sc = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(scales as i64));
            // SAFETY: `qh` is 32 bytes.
            let qh = unsafe { broadcast_32(w.qh.as_ptr()) };
            let mut sumi = _mm512_setzero_si512();
            for k in 0..4 {
                // SAFETY: 32 bytes at 32k of the 128-byte `qs`, 64 bytes at 64k of the 256-byte
                // `a.qs`; unaligned loads.
                let (q4, q8) = unsafe {
                    (broadcast_32(w.qs.as_ptr().add(32 * k)), _mm512_loadu_si512(a.qs.as_ptr().add(64 * k).cast()))
                };
                let nibbles = _mm512_and_si512(_mm512_srlv_epi64(q4, shifts), low4);
                let (r0, r1) = (rot(2 * k as i64), rot(2 * k as i64 + 1));
                let high = _mm512_rolv_epi64(qh, _mm512_setr_epi64(r0, r0, r0, r0, r1, r1, r1, r1));
                // nibbles | high & 0x10
                let q = _mm512_ternarylogic_epi32::<0xf8>(nibbles, high, bit4);
                let (s0, s1) = (2 * k as i32, 2 * k as i32 + 1);
                let idx = _mm512_setr_epi32(s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1);
                sumi = scaled_dot_512(sumi, q, q8, _mm512_permutexvar_epi32(idx, sc));
            }
            let msum = min_sums(mins, &a.bsums);
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
            let w: Vec<BlockQ5K> = random_blocks(GgmlType::Q5_K, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q5_K, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q5_k {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
