//! Q5_0 weights · Q8_0 activations: per 32-element block an exact i32 dot product of the
//! weights' 5-bit levels minus 16 with the activation bytes, scaled by `d_w * d_a` and summed
//! in f32.

use crate::quants::q5_0::BlockQ5_0;
use crate::quants::q8_0::BlockQ8_0;

/// The reference, as ggml's generic `ggml_vec_dot_q5_0_q8_0`: the integer sum of each block's
/// two halves, then `sum += (d_w * d_a) * isum` in block order.
pub fn dot_scalar(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let high = u32::from_le_bytes(w.qh);
        let (a_lo, a_hi) = a.qs.split_at(16);
        let mut isum = 0i32;
        for (j, ((&q, &x), &y)) in w.qs.iter().zip(a_lo).zip(a_hi).enumerate() {
            let lo = (q & 0x0f) as i32 | ((high >> j & 1) << 4) as i32;
            let hi = (q >> 4) as i32 | ((high >> (j + 16) & 1) << 4) as i32;
            isum += (lo - 16) * x as i32 + (hi - 16) * y as i32;
        }
        sum += (w.d.to_f32() * a.d.to_f32()) * isum as f32;
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

    use super::{BlockQ5_0, BlockQ8_0};
    use crate::kernels::tile::{group_q8_avx512, SignedBytes, ROWS};
    use crate::kernels::x86::{
        bits_to_bytes_32, dot_u8i8_x4, f16_lookup, f16_product_x8, hsum_f32x8, nibbles_32, sign_split,
    };

    /// AVX2: the nibbles with `0xf0` or-ed in where the fifth bit is clear are the signed
    /// levels `q - 16` as bytes; then `maddubs` on `(|w|, a * sign(w))` (|w| <= 16) and one FMA
    /// per block.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
        let minus_16 = _mm256_set1_epi8(0xf0u8 as i8);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let fifth = bits_to_bytes_32(w.qh);
            let qw = _mm256_or_si256(nibbles_32(&w.qs), _mm256_andnot_si256(fifth, minus_16));
            // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
            let qa = unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) };
            let (abs_w, signed_a) = sign_split(qw, qa);
            let isum = dot_u8i8_x4(abs_w, signed_a);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), f16_product_x8(w.d, a.d), acc);
        }
        hsum_f32x8(acc)
    }

    /// AVX-512: two blocks per 512-bit vector. Their 32 bytes of nibbles become 64 levels in
    /// element order (one shift, one qword permute); the two `qh` words form one 64-bit mask,
    /// and a masked subtract makes the signed levels `q - 16`. The sign moves onto the
    /// activations (`|w| * (a * sign(w))`, as `_mm256_sign_epi8` does on AVX2), `vpdpbusd`
    /// sums four products per lane, and one FMA applies both blocks' scales (lanes 0..8 and
    /// 8..16). An odd last block goes through [`dot_avx2`]'s 256-bit form.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ5_0], a: &[BlockQ8_0]) -> f32 {
        let low4 = _mm512_set1_epi8(0x0f);
        let sixteen = _mm512_set1_epi8(16);
        // 128-bit lanes [w0.qs, w1.qs, w0.qs >> 4, w1.qs >> 4] to [w0 lo, w0 hi, w1 lo, w1 hi].
        let order = _mm512_setr_epi64(0, 1, 4, 5, 2, 3, 6, 7);
        let mut acc = _mm512_setzero_ps();
        let pairs = w.chunks_exact(2).zip(a.chunks_exact(2));
        for (w, a) in pairs {
            // SAFETY: `qs` is 16 bytes in each weight block and 32 in each activation block;
            // unaligned loads.
            let (qs, qa) = unsafe {
                (
                    _mm256_loadu2_m128i(w[1].qs.as_ptr().cast(), w[0].qs.as_ptr().cast()),
                    _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(_mm256_loadu_si256(a[0].qs.as_ptr().cast())),
                        _mm256_loadu_si256(a[1].qs.as_ptr().cast()),
                    ),
                )
            };
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qs), _mm256_srli_epi16::<4>(qs));
            let nib = _mm512_and_si512(_mm512_permutexvar_epi64(order, both), low4);
            let fifth = u32::from_le_bytes(w[0].qh) as u64 | (u32::from_le_bytes(w[1].qh) as u64) << 32;
            let qw = _mm512_mask_sub_epi8(nib, !fifth, nib, sixteen);
            let negative = _mm512_movepi8_mask(qw);
            let signed_a = _mm512_mask_sub_epi8(qa, negative, _mm512_setzero_si512(), qa);
            let isum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(qw), signed_a);
            let s0 = f16_lookup(w[0].d) * f16_lookup(a[0].d);
            let s1 = f16_lookup(w[1].d) * f16_lookup(a[1].d);
            let scales = _mm512_mask_broadcastss_ps(_mm512_set1_ps(s0), 0xff00, _mm_set_ss(s1));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scales, acc);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if w.len() % 2 == 1 {
            let last = w.len() - 1;
            sum += dot_avx2(&w[last..], &a[last..]);
        }
        sum
    }

    impl SignedBytes for BlockQ5_0 {
        /// The levels `q - 16`: the nibbles, less 16 where the fifth bit is clear.
        ///
        /// # Safety
        /// The CPU must support AVX2 and AVX-512 F/BW/VL.
        #[inline]
        #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
        unsafe fn levels(&self) -> __m256i {
            let nib = nibbles_32(&self.qs);
            _mm256_mask_sub_epi8(nib, !u32::from_le_bytes(self.qh), nib, _mm256_set1_epi8(16))
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
    pub fn group_avx512(w: &[&[BlockQ5_0]; ROWS], a: &[BlockQ8_0], n_tokens: usize, out: &mut [f32]) {
        group_q8_avx512(w, a, n_tokens, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::GgmlType;

    /// The SIMD kernel for `isa` applied to `w · a`, or `None` for the scalar reference itself.
    fn simd(isa: Isa, w: &[BlockQ5_0], a: &[BlockQ8_0]) -> Option<f32> {
        let dot: DotFn<BlockQ5_0, BlockQ8_0> = pick!(super, isa);
        // SAFETY: `pick!` only hands out kernels this CPU supports.
        (isa != Isa::Scalar).then(|| unsafe { dot(w, a) })
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 88] {
            let n = n_blocks * 32;
            let w: Vec<BlockQ5_0> = random_blocks(GgmlType::Q5_0, n, 1);
            let a: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, n, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q5_0, wb, GgmlType::Q8_0, ab, n);
            for isa in Isa::available() {
                if let Some(got) = simd(isa, &w, &a) {
                    assert_close(got, want, n_blocks, mag, &format!("q5_0 {isa:?} {n_blocks} blocks"));
                }
            }
        }
    }

    #[test]
    fn integer_sums_are_exact() {
        // With unit scales every path returns the plain sum of the per-block integer dots.
        let mut w: Vec<BlockQ5_0> = random_blocks(GgmlType::Q5_0, 8 * 32, 3);
        let mut a: Vec<BlockQ8_0> = random_blocks(GgmlType::Q8_0, 8 * 32, 4);
        w.iter_mut().for_each(|b| b.d = half::f16::ONE);
        a.iter_mut().for_each(|b| b.d = half::f16::ONE);
        let want = dot_scalar(&w, &a);
        for isa in Isa::available() {
            if let Some(got) = simd(isa, &w, &a) {
                assert_eq!(got, want, "q5_0 {isa:?}");
            }
        }
    }
}
