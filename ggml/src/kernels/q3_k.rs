//! Q3_K weights · Q8_K activations. Per super-block of 256: the exact i32 sum over the
//! sixteen sub-blocks of `(scale - 32) * Σ q * a` with signed 3-bit `q` (-4..=3), then
//! `d * d_a * isum` in f32. The SIMD paths multiply the unsigned `q + 4` (low two bits | high
//! bit << 2) and take `4 * Σ scale * bsum` off afterwards.

use crate::quants::kquants::bytes_2bit;
use crate::quants::q3_k::BlockQ3K;
use crate::quants::q8_k::BlockQ8K;

/// The sixteen 6-bit sub-block scales (0..64, not yet offset), one per byte, unpacked with a
/// few word operations.
#[inline]
pub(crate) fn scales(packed: &[u8; 12]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Low nibbles: scales 0..8 in the low halves of bytes 0..8, 8..16 in the high halves; the
    // top two bits of scale j sit at bits 2 * (j / 4) of byte 8 + j % 4.
    let words = [
        (w0 & LOW4) | (w2 & LOW2) << 4,
        (w1 & LOW4) | ((w2 >> 2) & LOW2) << 4,
        ((w0 >> 4) & LOW4) | ((w2 >> 4) & LOW2) << 4,
        ((w1 >> 4) & LOW4) | ((w2 >> 6) & LOW2) << 4,
    ];
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The reference, structured like ggml's generic `ggml_vec_dot_q3_K_q8_K`: signed quants
/// (a clear high bit means 4 lower) times the activations, exact per super-block, then
/// `sum += d * isum` in block order.
pub fn dot_scalar(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let scales = scales(&w.scales);
        let mut isum = 0i32;
        for (sub, q8) in a.qs.chunks_exact(16).enumerate() {
            let (qs, shift) = bytes_2bit(&w.qs, sub);
            // Value v = 16 * sub + i has its high bit at bit v / 32 of hmask[v % 32].
            let hmask = &w.hmask[16 * (sub % 2)..16 * (sub % 2) + 16];
            let s: i32 = (0..16)
                .map(|i| {
                    let high = (hmask[i] >> (sub / 2)) & 1;
                    let q = ((qs[i] >> shift) & 3) as i32 - if high != 0 { 0 } else { 4 };
                    q * q8[i] as i32
                })
                .sum();
            isum += (scales[sub] as i32 - 32) * s;
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

    use super::{scales, BlockQ3K, BlockQ8K};
    use crate::kernels::x86::{
        broadcast_32, f16_to_f32, hsum_f32x8, move_bit, quad_index, scale_halves, scaled_dot_512,
    };

    /// The sixteen signed sub-block scales (`scale - 32`) as i16, and `-4 * Σ scale * bsum`
    /// in eight i32 lanes (at most 16 * 32 * 2032 * 4 in magnitude).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn signed_scales_and_offset(w: &BlockQ3K, a: &BlockQ8K) -> (__m256i, __m256i) {
        let unpacked = scales(&w.scales);
        // SAFETY: both arrays are 16 and 32 bytes; loadu has no alignment requirement.
        let (sc8, bsums) =
            unsafe { (_mm_loadu_si128(unpacked.as_ptr().cast()), _mm256_loadu_si256(a.bsums.as_ptr().cast())) };
        let sc16 = _mm256_cvtepi8_epi16(_mm_sub_epi8(sc8, _mm_set1_epi8(32)));
        let offset = _mm256_slli_epi32::<2>(_mm256_madd_epi16(bsums, sc16));
        (sc16, _mm256_sub_epi32(_mm256_setzero_si256(), offset))
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

    /// AVX2: per 32 values (two sub-blocks) the unsigned quants `q + 4` (two low bits, bit
    /// `chunk` of `hmask` moved to bit 2) go through `maddubs` (pair sums at most 2 * 7 * 127)
    /// and `madd` against the two signed sub-block scales.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (sc16, mut sumi) = signed_scales_and_offset(w, a);
            let by_half =
                [_mm256_permute2x128_si256::<0x00>(sc16, sc16), _mm256_permute2x128_si256::<0x11>(sc16, sc16)];
            // SAFETY: `hmask` is 32 bytes; loadu has no alignment requirement.
            let hmask = unsafe { _mm256_loadu_si256(w.hmask.as_ptr().cast()) };
            for (half, &sc) in by_half.iter().enumerate() {
                // SAFETY: 32 bytes at 32 * half of the 64-byte `qs`.
                let q2 = unsafe { _mm256_loadu_si256(w.qs.as_ptr().add(32 * half).cast()) };
                for k in 0..4 {
                    let chunk = 4 * half + k;
                    let q = _mm256_or_si256(field(q2, k), move_bit(hmask, chunk as u32, 2));
                    // SAFETY: 32 bytes at 32 * chunk of the 256-byte `a.qs`.
                    let q8 = unsafe { _mm256_loadu_si256(a.qs.as_ptr().add(32 * chunk).cast()) };
                    let p = _mm256_maddubs_epi16(q, q8);
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_halves(sc, 2 * k, 2 * k + 1)));
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(w.d) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_f32x8(acc)
    }

    /// AVX-512 VNNI: as Q2_K's (64 quants in element order from one half's `qs` in both
    /// halves of a vector), with `hmask`, also in both halves, rotated per 256-bit half to
    /// bring bit `chunk` to bit 2 and merged by one ternary-logic op. `vpdpbusd` (at most
    /// 4 * 7 * 127 per lane) then `vpdpwssd` by the signed sub-block scale.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
        let three = _mm512_set1_epi8(3);
        let bit2 = _mm512_set1_epi8(4);
        let shifts = [_mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2), _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)];
        // Left rotation of a 64-bit lane taking bit `chunk` of every byte to bit 2.
        let rot = |chunk: i64| (2 - chunk).rem_euclid(64);
        let mut acc = _mm512_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (sc16, offset) = signed_scales_and_offset(w, a);
            // Each scale as an i16 in the low half of an i32 lane, zero in the high half.
            let sc32 = _mm512_cvtepu16_epi32(sc16);
            let mut sumi = _mm512_zextsi256_si512(offset);
            // SAFETY: `hmask` is 32 bytes.
            let hmask = unsafe { broadcast_32(w.hmask.as_ptr()) };
            for half in 0..2 {
                // SAFETY: 32 bytes at 32 * half of the 64-byte `qs`.
                let q2 = unsafe { broadcast_32(w.qs.as_ptr().add(32 * half)) };
                for (p, &shift) in shifts.iter().enumerate() {
                    let low = _mm512_and_si512(_mm512_srlv_epi64(q2, shift), three);
                    let chunk = (4 * half + 2 * p) as i64;
                    let (r0, r1) = (rot(chunk), rot(chunk + 1));
                    let high = _mm512_rolv_epi64(hmask, _mm512_setr_epi64(r0, r0, r0, r0, r1, r1, r1, r1));
                    // low | high & 0x04
                    let q = _mm512_ternarylogic_epi32::<0xf8>(low, high, bit2);
                    // SAFETY: 64 bytes at 128 * half + 64 * p of the 256-byte `a.qs`.
                    let q8 = unsafe { _mm512_loadu_si512(a.qs.as_ptr().add(128 * half + 64 * p).cast()) };
                    let s = (8 * half + 4 * p) as i32;
                    let idx = quad_index(s);
                    sumi = scaled_dot_512(sumi, q, q8, _mm512_permutexvar_epi32(idx, sc32));
                }
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
    use crate::quants::q3_k::{pack_scales, unpack_scales};
    use crate::types::QK_K;
    use crate::GgmlType;

    #[test]
    fn word_unpacking_matches_unpack_scales() {
        for base in 0..64usize {
            let sc: [u8; 16] = std::array::from_fn(|j| ((base * 5 + 11 * j) % 64) as u8);
            let packed = pack_scales(&sc);
            assert_eq!(scales(&packed), unpack_scales(&packed));
            assert_eq!(scales(&packed), sc);
        }
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 11] {
            let w: Vec<BlockQ3K> = random_blocks(GgmlType::Q3_K, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q3_K, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q3_k {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
