//! IQ4_XS weights · Q8_K activations. Per super-block of 256: the exact i32 sum over the eight
//! groups of 32 of `(ls - 32) * Σ K[q] * a` (IQ4_NL's grid `K`, 6-bit group scales `ls`), then
//! `d * d_a * isum` in f32.

use crate::quants::iq4_nl::KVALUES_IQ4NL;
use crate::quants::iq4_xs::BlockIQ4XS;
use crate::quants::q8_k::BlockQ8K;

/// The eight 6-bit group scales (`ls`, not yet offset), group `g` in byte `g` (little-endian):
/// the eight nibbles of `scales_l` and the eight 2-bit fields of `scales_h` each spread out to
/// one byte by halving shifts.
#[inline]
pub(crate) fn group_scales(w: &BlockIQ4XS) -> u64 {
    let mut low = u32::from_le_bytes(w.scales_l) as u64;
    low = (low | low << 16) & 0x0000_ffff_0000_ffff;
    low = (low | low << 8) & 0x00ff_00ff_00ff_00ff;
    low = (low | low << 4) & 0x0f0f_0f0f_0f0f_0f0f;
    let mut high = w.scales_h as u64;
    high = (high | high << 24) & 0x0000_00ff_0000_00ff;
    high = (high | high << 12) & 0x000f_000f_000f_000f;
    high = (high | high << 6) & 0x0303_0303_0303_0303;
    low | high << 4
}

/// The reference. ggml's generic `ggml_vec_dot_iq4_xs_q8_K` adds one f32 term per group; here
/// the group sums are combined exactly first and scaled once per super-block (the same value
/// up to the f32 rounding of the terms).
pub fn dot_scalar(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = group_scales(w).to_le_bytes();
        let mut isum = 0i32;
        for (g, (qs, q8)) in w.qs.chunks_exact(16).zip(a.qs.chunks_exact(32)).enumerate() {
            // Byte j holds element j in its low nibble and element j + 16 in its high.
            let (lo, hi) = q8.split_at(16);
            let s: i32 = (0..16)
                .map(|j| {
                    KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as i32 * lo[j] as i32
                        + KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32 * hi[j] as i32
                })
                .sum();
            isum += (scales[g] as i32 - 32) * s;
        }
        sum += w.d.to_f32() * a.d * isum as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{group_scales, BlockIQ4XS, BlockQ8K, KVALUES_IQ4NL};
    use crate::kernels::x86::{f16_to_f32, hsum_f32x8, scale_halves, sign_split};

    /// The eight signed group scales `ls - 32` as i16.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn signed_scales(w: &BlockIQ4XS) -> __m128i {
        let ls = _mm_cvtsi64_si128(group_scales(w) as i64);
        _mm_cvtepi8_epi16(_mm_sub_epi8(ls, _mm_set1_epi8(32)))
    }

    /// AVX2: two groups at a time. The low nibbles of their 32 bytes are elements 0..16 of
    /// each (one group per 128-bit half), the high nibbles elements 16..32, so the activations
    /// are loaded to match (`loadu2`) and both halves share one scale vector. Grid values via
    /// `pshufb`, signed products by the sign split and `maddubs` (pair sums at most
    /// 2 * 127 * 127), `madd` by the group scale.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm256_set1_epi8(0x0f);
        // SAFETY: the grid is 16 bytes; loadu has no alignment requirement.
        let grid = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) });
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let sc = _mm256_broadcastsi128_si256(signed_scales(w));
            let mut sumi = _mm256_setzero_si256();
            for m in 0..4 {
                // SAFETY: 32 bytes at 32m of the 128-byte `qs`; 16-byte pieces at 64m..64m+64 of
                // the 256-byte `a.qs`; unaligned loads.
                let (qs, q8_lo, q8_hi) = unsafe {
                    let q8 = a.qs.as_ptr().add(64 * m);
                    (
                        _mm256_loadu_si256(w.qs.as_ptr().add(32 * m).cast()),
                        _mm256_loadu2_m128i(q8.add(32).cast(), q8.cast()),
                        _mm256_loadu2_m128i(q8.add(48).cast(), q8.add(16).cast()),
                    )
                };
                let k_lo = _mm256_shuffle_epi8(grid, _mm256_and_si256(qs, low4));
                let k_hi = _mm256_shuffle_epi8(grid, _mm256_and_si256(_mm256_srli_epi16::<4>(qs), low4));
                let (u_lo, s_lo) = sign_split(k_lo, q8_lo);
                let (u_hi, s_hi) = sign_split(k_hi, q8_hi);
                let scale = scale_halves(sc, 2 * m, 2 * m + 1);
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(u_lo, s_lo), scale);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(u_hi, s_hi), scale);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            let d = _mm256_set1_ps(f16_to_f32(w.d) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_f32x8(acc)
    }

    /// AVX-512: two groups per vector in element order (each group's 16 bytes in two 128-bit
    /// lanes, the second shifted by 4). Grid magnitudes via `pshufb` of `|K|`; the activations
    /// are negated where the index is below 8 (the negative half of the grid), `maddubs` (pair
    /// sums at most 2 * 127 * 127) and `vpdpwssd` by the group scale.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm512_set1_epi8(0x0f);
        let bit3 = _mm512_set1_epi8(8);
        let shifts = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        let magnitudes: [i8; 16] = std::array::from_fn(|i| KVALUES_IQ4NL[i].unsigned_abs() as i8);
        // SAFETY: 16 bytes; loadu has no alignment requirement.
        let grid = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(magnitudes.as_ptr().cast()) });
        let mut acc = _mm512_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let sc = _mm512_castsi128_si512(signed_scales(w));
            let mut sumi = _mm512_setzero_si512();
            for m in 0..4 {
                // SAFETY: 32 bytes at 32m of the 128-byte `qs`, 64 at 64m of the 256-byte
                // `a.qs`; unaligned loads.
                let (qs, q8) = unsafe {
                    (
                        _mm256_loadu_si256(w.qs.as_ptr().add(32 * m).cast()),
                        _mm512_loadu_si512(a.qs.as_ptr().add(64 * m).cast()),
                    )
                };
                // 128-bit lanes: group 2m, group 2m, group 2m + 1, group 2m + 1.
                let doubled =
                    _mm512_shuffle_i64x2::<0b0101_0000>(_mm512_castsi256_si512(qs), _mm512_castsi256_si512(qs));
                let idx = _mm512_and_si512(_mm512_srlv_epi64(doubled, shifts), low4);
                let magnitude = _mm512_shuffle_epi8(grid, idx);
                let negative = _mm512_testn_epi8_mask(idx, bit3);
                let signed = _mm512_mask_sub_epi8(q8, negative, _mm512_setzero_si512(), q8);
                let p = _mm512_maddubs_epi16(magnitude, signed);
                let (g0, g1) = (2 * m as i16, 2 * m as i16 + 1);
                // i16 lanes 0..16 take group 2m's scale, 16..32 group 2m + 1's.
                let lanes = _mm512_mask_set1_epi16(_mm512_set1_epi16(g0), 0xffff_0000, g1);
                sumi = _mm512_dpwssd_epi32(sumi, p, _mm512_permutexvar_epi16(lanes, sc));
            }
            let d = _mm512_set1_ps(f16_to_f32(w.d) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc)
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
    fn group_scales_match_the_layout() {
        let mut b: BlockIQ4XS = bytemuck::Zeroable::zeroed();
        for seed in 0..200u32 {
            let x = seed.wrapping_mul(0x9e37_79b9) ^ seed << 7;
            b.scales_l = x.to_le_bytes();
            b.scales_h = (x >> 9) as u16 ^ seed as u16;
            let got = group_scales(&b).to_le_bytes();
            for (g, &ls) in got.iter().enumerate() {
                let low = (b.scales_l[g / 2] >> (4 * (g % 2))) & 0xf;
                let high = ((b.scales_h >> (2 * g)) & 3) as u8;
                assert_eq!(ls, low | high << 4, "seed {seed} group {g}");
            }
        }
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 11] {
            let w: Vec<BlockIQ4XS> = random_blocks(GgmlType::IQ4_XS, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::IQ4_XS, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("iq4_xs {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
