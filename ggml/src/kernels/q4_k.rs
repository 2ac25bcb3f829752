//! Q4_K weights · Q8_K activations. Per super-block of 256: the exact i32 sum over the eight
//! sub-blocks of `scale * Σ q * a`, and the min term `Σ min * Σ a` from the activations'
//! `bsums`; then `d_a * (d * sums - dmin * mins)` in f32.

use crate::quants::q4_k::BlockQ4K;
use crate::quants::q8_k::BlockQ8K;

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K/Q5_K super-block, one per byte
/// (sub-block `j` in byte `j`, little-endian), unpacked with a few word operations.
#[inline]
pub(crate) fn scales_and_mins(packed: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    // Sub-blocks 0..4 keep both in the low 6 bits of bytes 0..4 (scales) and 4..8 (mins);
    // sub-blocks 4..8 take a nibble from bytes 8..12 and their top two bits from the spare
    // top bits of bytes 0..8.
    let scales_hi = (w2 & LOW4) | ((w0 >> 6) & LOW2) << 4;
    let mins_hi = ((w2 >> 4) & LOW4) | ((w1 >> 6) & LOW2) << 4;
    let scales = (w0 & LOW6) as u64 | (scales_hi as u64) << 32;
    let mins = (w1 & LOW6) as u64 | (mins_hi as u64) << 32;
    (scales, mins)
}

/// `Σ_j mins[j] * (bsums[2j] + bsums[2j+1])`: the activations summed per 32-element sub-block,
/// weighted by the sub-block mins.
#[inline]
pub(crate) fn min_sum(mins: u64, bsums: &[i16; 16]) -> i32 {
    let mins = mins.to_le_bytes();
    (0..8).map(|j| mins[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32)).sum()
}

/// The reference, structured like ggml's generic `ggml_vec_dot_q4_K_q8_K`: exact integer sums
/// per super-block, then `sum += d * isum - dmin * msum` in block order.
pub fn dot_scalar(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let (scales, mins) = scales_and_mins(&w.scales);
        let scales = scales.to_le_bytes();
        let mut isum = 0i32;
        // Bytes 32k..32k+32 of `qs` hold sub-block 2k in the low nibbles, 2k+1 in the high.
        for (k, (qs, q8)) in w.qs.chunks_exact(32).zip(a.qs.chunks_exact(64)).enumerate() {
            let (q8_lo, q8_hi) = q8.split_at(32);
            let lo: i32 = qs.iter().zip(q8_lo).map(|(&q, &y)| (q & 0xf) as i32 * y as i32).sum();
            let hi: i32 = qs.iter().zip(q8_hi).map(|(&q, &y)| (q >> 4) as i32 * y as i32).sum();
            isum += scales[2 * k] as i32 * lo + scales[2 * k + 1] as i32 * hi;
        }
        let msum = min_sum(mins, &a.bsums);
        let d = w.d.to_f32() * a.d;
        let dmin = w.dmin.to_f32() * a.d;
        sum += d * isum as f32 - dmin * msum as f32;
    }
    sum
}

/// The activation layout of the tile kernels: in each block, 64-byte chunk `k` holds, for
/// each sub-block `s` in order, its eight activations `8k..8k + 8` (so the lanes of a chunk
/// keep their sub-block from chunk to chunk), and the 32 bytes of `bsums` hold eight f32
/// instead: `d · Σ a` over each sub-block, the factor of its min term. `d` is unchanged.
pub fn prepare_tile_acts(blocks: &mut [BlockQ8K], _n: usize) {
    for block in blocks {
        let original = block.qs;
        for k in 0..4 {
            for s in 0..8 {
                block.qs[64 * k + 8 * s..][..8].copy_from_slice(&original[32 * s + 8 * k..][..8]);
            }
        }
        let sums: [f32; 8] =
            std::array::from_fn(|s| block.d * (block.bsums[2 * s] as i32 + block.bsums[2 * s + 1] as i32) as f32);
        block.bsums = bytemuck::cast(sums);
    }
}

/// [`prepare_tile_acts`] for [`tile::Tiles`](crate::kernels::tile::Tiles).
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<BlockQ8K>> = Some(prepare_tile_acts);

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::min_sums;
#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use std::cell::RefCell;

    use super::{scales_and_mins, BlockQ4K, BlockQ8K};
    use crate::kernels::tile::{by_tiles, store_sums, ROWS, TOKENS};
    use crate::kernels::x86::{broadcast_32, f16_to_f32, hsum_f32x8, scale_halves, scaled_dot_512};

    /// `Σ_j mins[j] * (bsums[2j] + bsums[2j+1])` in eight i32 lanes (one `madd` against the
    /// mins, each repeated for its two bsums).
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn min_sums(mins: u64, bsums: &[i16; 16]) -> __m256i {
        let m = _mm_cvtsi64_si128(mins as i64);
        let m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
        // SAFETY: `bsums` is 32 bytes; loadu has no alignment requirement.
        let b = unsafe { _mm256_loadu_si256(bsums.as_ptr().cast()) };
        _mm256_madd_epi16(b, m16)
    }

    /// AVX2: per 32 bytes of `qs`, the low and the high nibbles (two sub-blocks) each go through
    /// `maddubs` against the activations (pair sums at most 2 * 15 * 127) and `madd` against
    /// their sub-block scale. The min terms come from one `madd` of `bsums` against the mins,
    /// accumulated apart so the two FMA chains run side by side.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, mins) = scales_and_mins(&w.scales);
            let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
            let mut sumi = _mm256_setzero_si256();
            for k in 0..4 {
                // SAFETY: `qs` holds 128 bytes and `a.qs` 256, so 32 bytes at 32k and 64 bytes
                // at 64k are in bounds; loadu has no alignment requirement.
                let (q4, q8_lo, q8_hi) = unsafe {
                    (
                        _mm256_loadu_si256(w.qs.as_ptr().add(32 * k).cast()),
                        _mm256_loadu_si256(a.qs.as_ptr().add(64 * k).cast()),
                        _mm256_loadu_si256(a.qs.as_ptr().add(64 * k + 32).cast()),
                    )
                };
                let lo = _mm256_and_si256(q4, low4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q4), low4);
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

    /// AVX-512 VNNI: each 32 bytes of `qs` are loaded into both halves of a 512-bit vector and
    /// the high half shifted by 4, so one vector holds two whole sub-blocks in element order,
    /// against 64 contiguous activations. `vpdpbusd` sums four products per lane (at most
    /// 4 * 15 * 127, an i16), and `vpdpwssd` multiplies by the sub-block scale and
    /// accumulates.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm512_set1_epi8(0x0f);
        let shifts = _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4);
        let mut acc = _mm512_setzero_ps();
        let mut acc_min = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            let (scales, mins) = scales_and_mins(&w.scales);
            let sc = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128(scales as i64));
            // Two chains of `vpdpwssd` (even and odd chunks), so that a block's four do not
            // wait on each other.
            let mut sumi = [_mm512_setzero_si512(); 2];
            for k in 0..4 {
                // SAFETY: 32 bytes at 32k of the 128-byte `qs`, 64 bytes at 64k of the 256-byte
                // `a.qs`; unaligned loads.
                let (q4, q8) = unsafe {
                    (broadcast_32(w.qs.as_ptr().add(32 * k)), _mm512_loadu_si512(a.qs.as_ptr().add(64 * k).cast()))
                };
                let q = _mm512_and_si512(_mm512_srlv_epi64(q4, shifts), low4);
                let (s0, s1) = (2 * k as i32, 2 * k as i32 + 1);
                let idx = _mm512_setr_epi32(s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1);
                sumi[k % 2] = scaled_dot_512(sumi[k % 2], q, q8, _mm512_permutexvar_epi32(idx, sc));
            }
            let sumi = _mm512_add_epi32(sumi[0], sumi[1]);
            let msum = min_sums(mins, &a.bsums);
            let d = _mm512_set1_ps(f16_to_f32(w.d) * a.d);
            let dmin = _mm256_set1_ps(f16_to_f32(w.dmin) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
            acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(msum), acc_min);
        }
        _mm512_reduce_add_ps(acc) - hsum_f32x8(acc_min)
    }

    /// One super-block of [`ROWS`] weight rows, unpacked for the tile kernels.
    #[derive(Clone, Copy)]
    struct Unpacked {
        /// Chunk `k` of row `r`: the 64 nibbles whose lanes match [`super::prepare_tile_acts`].
        q: [[__m512i; 4]; ROWS],
        /// Lane `l`: `d` times the scale of sub-block `l / 2`.
        scales: [__m512; ROWS],
        /// Lanes 0..8: `dmin` times the min of each sub-block; lanes 8..16: zero.
        mins: [__m512; ROWS],
    }

    thread_local! {
        /// The unpacked blocks of the row group in hand: for a 2816-wide row 11 blocks, 17 KiB.
        static UNPACKED: RefCell<Vec<Unpacked>> = const { RefCell::new(Vec::new()) };
    }

    /// Row `r`'s block, unpacked. Chunk `k` takes qword `k` of each 32-byte group of `qs`
    /// twice (eight bytes: their low nibbles belong to sub-block `2g`, their high nibbles to
    /// `2g + 1`), so qword lane `j` of every chunk holds sub-block `j`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn unpack(w: [&BlockQ4K; ROWS]) -> Unpacked {
        let low4 = _mm512_set1_epi8(0x0f);
        let nibble_shifts = _mm512_setr_epi64(0, 4, 0, 4, 0, 4, 0, 4);
        let mut u = Unpacked {
            q: [[_mm512_setzero_si512(); 4]; ROWS],
            scales: [_mm512_setzero_ps(); ROWS],
            mins: [_mm512_setzero_ps(); ROWS],
        };
        for (r, w) in w.iter().enumerate() {
            // SAFETY: `qs` is 128 bytes; unaligned loads.
            let (lo, hi) =
                unsafe { (_mm512_loadu_si512(w.qs.as_ptr().cast()), _mm512_loadu_si512(w.qs[64..].as_ptr().cast())) };
            for k in 0..4i64 {
                let idx = _mm512_setr_epi64(k, k, 4 + k, 4 + k, 8 + k, 8 + k, 12 + k, 12 + k);
                let picked = _mm512_permutex2var_epi64(lo, idx, hi);
                u.q[r][k as usize] = _mm512_and_si512(_mm512_srlv_epi64(picked, nibble_shifts), low4);
            }
            let (scales, mins) = scales_and_mins(&w.scales);
            let scales = _mm_cvtsi64_si128(scales as i64);
            let scales = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(scales, scales)));
            u.scales[r] = _mm512_mul_ps(scales, _mm512_set1_ps(f16_to_f32(w.d)));
            let mins = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mins as i64)));
            u.mins[r] = _mm512_zextps256_ps512(_mm256_mul_ps(mins, _mm256_set1_ps(f16_to_f32(w.dmin))));
        }
        u
    }

    /// `out[r * n_tokens + t] = w[r] · a[t]` for [`ROWS`] weight rows and every token of `a`
    /// (`n_tokens` rows of activations in the layout of [`super::prepare_tile_acts`]). The
    /// rows' blocks are unpacked once, then [`TOKENS`] tokens at a time (the rest one by one)
    /// run against them: each activation chunk is loaded once for every row, and the four
    /// chunks of a block accumulate in one `vpdpbusd` chain per (row, token), exact in i32.
    /// Per block, a pair then costs a conversion, a product by the scaled sub-block scales, an
    /// FMA by the activations' `d`, and one FMA for all eight min terms (the activation side
    /// of those prepared once per matmul). Every token's result is the same whatever the
    /// tile width.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[BlockQ4K]; ROWS], a: &[BlockQ8K], n_tokens: usize, out: &mut [f32]) {
        let n = w[0].len();
        assert!(w.iter().all(|row| row.len() == n) && a.len() == n * n_tokens && out.len() == ROWS * n_tokens);
        UNPACKED.with_borrow_mut(|unpacked| {
            unpacked.clear();
            unpacked.extend((0..n).map(|b| unpack(w.map(|row| &row[b]))));
            by_tiles(n_tokens, |t, whole| match whole {
                true => tokens::<TOKENS>(unpacked, a, t, n_tokens, out),
                false => tokens::<1>(unpacked, a, t, n_tokens, out),
            });
        });
    }

    /// Tokens `t0..t0 + T` against the unpacked rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn tokens<const T: usize>(unpacked: &[Unpacked], a: &[BlockQ8K], t0: usize, n_tokens: usize, out: &mut [f32]) {
        let n = unpacked.len();
        let a: [&[BlockQ8K]; T] = std::array::from_fn(|t| &a[(t0 + t) * n..][..n]);
        let mut acc = [[_mm512_setzero_ps(); T]; ROWS];
        for (b, u) in unpacked.iter().enumerate() {
            let mut sumi = [[_mm512_setzero_si512(); T]; ROWS];
            for k in 0..4 {
                for t in 0..T {
                    // SAFETY: 64 bytes at 64k of the 256-byte `qs`; unaligned load.
                    let q8 = unsafe { _mm512_loadu_si512(a[t][b].qs[64 * k..].as_ptr().cast()) };
                    for (sumi, q) in sumi.iter_mut().zip(&u.q) {
                        sumi[t] = _mm512_dpbusd_epi32(sumi[t], q[k], q8);
                    }
                }
            }
            for t in 0..T {
                let da = _mm512_set1_ps(a[t][b].d);
                // SAFETY: `bsums` holds eight f32 in this layout (32 bytes); unaligned load.
                let sums = _mm512_zextps256_ps512(unsafe { _mm256_loadu_ps(a[t][b].bsums.as_ptr().cast()) });
                for (r, acc) in acc.iter_mut().enumerate() {
                    let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi[r][t]), u.scales[r]);
                    acc[t] = _mm512_fnmadd_ps(u.mins[r], sums, _mm512_fmadd_ps(scaled, da, acc[t]));
                }
            }
        }
        store_sums(&acc, t0, n_tokens, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{pick, DotFn, Isa};
    use crate::quants::kquants::{pack_scale_min_k4, scale_min_k4};
    use crate::types::QK_K;
    use crate::GgmlType;

    #[test]
    fn word_unpacking_matches_scale_min_k4() {
        for base in 0..64u8 {
            let sc: [u8; 8] = std::array::from_fn(|j| ((base as usize * 5 + 13 * j) % 64) as u8);
            let m: [u8; 8] = std::array::from_fn(|j| ((base as usize * 3 + 7 * j + 1) % 64) as u8);
            let packed = pack_scale_min_k4(&sc, &m);
            let (scales, mins) = scales_and_mins(&packed);
            for j in 0..8 {
                assert_eq!((scales.to_le_bytes()[j], mins.to_le_bytes()[j]), scale_min_k4(j, &packed));
            }
        }
    }

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 11] {
            let w: Vec<BlockQ4K> = random_blocks(GgmlType::Q4_K, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q4_K, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q4_k {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
