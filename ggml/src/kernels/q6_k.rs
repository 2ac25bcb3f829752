//! Q6_K weights · Q8_K activations. Per super-block of 256: the exact i32 sum over the
//! sixteen sub-blocks of `scale * Σ (q - 32) * a`, then `d * d_a * isum` in f32. The SIMD paths
//! multiply the unsigned `q` and take `32 * Σ scale * bsum` off afterwards.

use crate::quants::q6_k::BlockQ6K;
use crate::quants::q8_k::BlockQ8K;

/// Quant `32*k + i` (k < 4, i < 32) of one 128-value half: low nibble from `ql`, top two bits
/// from `qh`, as stored.
#[inline]
fn quant(ql: &[u8], qh: &[u8], k: usize, i: usize) -> u8 {
    let low = (ql[i + 32 * (k % 2)] >> (4 * (k / 2))) & 0xf;
    let high = (qh[i] >> (2 * k)) & 3;
    low | high << 4
}

/// The reference, structured like ggml's generic `ggml_vec_dot_q6_K_q8_K`: signed quants
/// `q - 32` times the activations, exact per super-block, then `sum += d * isum` in block
/// order.
pub fn dot_scalar(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut sum = 0.0f32;
    for (w, a) in w.iter().zip(a) {
        let mut isum = 0i32;
        for half in 0..2 {
            let ql = &w.ql[64 * half..64 * half + 64];
            let qh = &w.qh[32 * half..32 * half + 32];
            for k in 0..4 {
                for (part, i0) in [0, 16].into_iter().enumerate() {
                    let sub = 8 * half + 2 * k + part;
                    let q8 = &a.qs[16 * sub..16 * sub + 16];
                    let s: i32 = (0..16).map(|i| (quant(ql, qh, k, i0 + i) as i32 - 32) * q8[i] as i32).sum();
                    isum += w.scales[sub] as i32 * s;
                }
            }
        }
        sum += w.d.to_f32() * a.d * isum as f32;
    }
    sum
}

/// The activation layout of the tile kernel: in each block, 64-byte chunk `k` holds, for each
/// sub-block `s` of 16 in order, its four activations `4k..4k + 4` (so each 32-bit lane of a
/// chunk keeps its sub-block from chunk to chunk). `d` and `bsums` are unchanged.
pub fn prepare_tile_acts(blocks: &mut [BlockQ8K], _n: usize) {
    for block in blocks {
        let original = block.qs;
        for k in 0..4 {
            for s in 0..16 {
                block.qs[64 * k + 4 * s..][..4].copy_from_slice(&original[16 * s + 4 * k..][..4]);
            }
        }
    }
}

/// [`prepare_tile_acts`] for [`tile::Tiles`](crate::kernels::tile::Tiles).
pub const TILE_ACTS: Option<crate::kernels::tile::PrepareFn<BlockQ8K>> = Some(prepare_tile_acts);

#[cfg(target_arch = "x86_64")]
pub use x86::{dot_avx2, dot_avx512, group_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::{BlockQ6K, BlockQ8K};
    use crate::kernels::tile::{by_tiles, store_sums, ROWS, TOKENS};
    use crate::kernels::x86::{broadcast_32, f16_to_f32, hsum_f32x8, quad_index, scale_halves, scaled_dot_512};

    /// `Σ_sub scale * bsum` of a super-block in eight i32 lanes; `sc16` holds the sixteen scales
    /// as i16. At most 16 * 128 * 2032, so `32 *` it still fits an i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scaled_bsums(sc16: __m256i, bsums: &[i16; 16]) -> __m256i {
        // SAFETY: `bsums` is 32 bytes; loadu has no alignment requirement.
        let b = unsafe { _mm256_loadu_si256(bsums.as_ptr().cast()) };
        _mm256_madd_epi16(b, sc16)
    }

    /// The top two bits of quants `32*k + i` (from `qh[i]`, bits `2k..2k+2`) moved to bits 4..6.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn top_bits(qh: __m256i, k: usize) -> __m256i {
        let m = _mm256_set1_epi8(0x30);
        match k {
            0 => _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m),
            1 => _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m),
            2 => _mm256_and_si256(qh, m),
            _ => _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m),
        }
    }

    /// AVX2: per 32 values the unsigned 6-bit quants (low nibble | top bits) go through
    /// `maddubs` (pair sums at most 2 * 63 * 127) and `madd` against the two sub-block scales
    /// they span; the offset of 32 is one `madd` of `bsums` against the scales per super-block.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn dot_avx2(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        let low4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: `scales` is 16 bytes; loadu has no alignment requirement.
            let sc8 = unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) };
            let sc16 = _mm256_cvtepi8_epi16(sc8);
            let by_half =
                [_mm256_permute2x128_si256::<0x00>(sc16, sc16), _mm256_permute2x128_si256::<0x11>(sc16, sc16)];
            let mut sumi =
                _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(scaled_bsums(sc16, &a.bsums)));
            for (half, &sc) in by_half.iter().enumerate() {
                // SAFETY: 64 bytes at 64 * half of the 128-byte `ql`, 32 at 32 * half of the
                // 64-byte `qh`; unaligned loads.
                let (ql0, ql1, qh) = unsafe {
                    (
                        _mm256_loadu_si256(w.ql.as_ptr().add(64 * half).cast()),
                        _mm256_loadu_si256(w.ql.as_ptr().add(64 * half + 32).cast()),
                        _mm256_loadu_si256(w.qh.as_ptr().add(32 * half).cast()),
                    )
                };
                for k in 0..4 {
                    let low = match k {
                        0 => ql0,
                        1 => ql1,
                        2 => _mm256_srli_epi16::<4>(ql0),
                        _ => _mm256_srli_epi16::<4>(ql1),
                    };
                    let q = _mm256_or_si256(_mm256_and_si256(low, low4), top_bits(qh, k));
                    // SAFETY: 32 bytes at 128 * half + 32 * k of the 256-byte `a.qs`.
                    let q8 = unsafe { _mm256_loadu_si256(a.qs.as_ptr().add(128 * half + 32 * k).cast()) };
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, q8), scale_halves(sc, 2 * k, 2 * k + 1));
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            let d = _mm256_set1_ps(f16_to_f32(w.d) * a.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_f32x8(acc)
    }

    /// The 256 unsigned 6-bit quants of a block in element order, 64 per vector: the 64 bytes
    /// of a half's `ql` give 64 quants at once (low nibbles: quants 0..64 of the half, high
    /// nibbles: 64..128); the matching `qh` bytes, in both halves of a vector, are rotated per
    /// 256-bit half to bring the right bit pair to bits 4..6.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn quants_in_order(w: &BlockQ6K) -> [__m512i; 4] {
        let low4 = _mm512_set1_epi8(0x0f);
        let top = _mm512_set1_epi8(0x30);
        // Left rotations of 64-bit lanes: bits 0..2 (low half) and 2..4 (high half) to 4..6,
        // then bits 4..6 and 6..8.
        let rot = [_mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2), _mm512_setr_epi64(0, 0, 0, 0, 62, 62, 62, 62)];
        std::array::from_fn(|c| {
            let (half, p) = (c / 2, c % 2);
            // SAFETY: 64 bytes at 64 * half of the 128-byte `ql`, 32 at 32 * half of the
            // 64-byte `qh`; unaligned loads.
            let (ql, qh) = unsafe {
                (_mm512_loadu_si512(w.ql.as_ptr().add(64 * half).cast()), broadcast_32(w.qh.as_ptr().add(32 * half)))
            };
            let low = if p == 0 { ql } else { _mm512_srli_epi16::<4>(ql) };
            let high = _mm512_rolv_epi64(qh, rot[p]);
            // low & 0x0f | high & 0x30
            _mm512_ternarylogic_epi32::<0xf8>(_mm512_and_si512(low, low4), high, top)
        })
    }

    /// AVX-512 VNNI: the quants in element order ([`quants_in_order`]) against 64 contiguous
    /// activations, `vpdpbusd` (four products per lane, at most 4 * 63 * 127, an i16) then
    /// `vpdpwssd` by the sub-block scale.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn dot_avx512(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for (w, a) in w.iter().zip(a) {
            // SAFETY: `scales` is 16 bytes; loadu has no alignment requirement.
            let sc16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) });
            // Each scale as an i16 in the low half of an i32 lane, zero in the high half.
            let sc32 = _mm512_cvtepu16_epi32(sc16);
            let offset = _mm256_slli_epi32::<5>(scaled_bsums(sc16, &a.bsums));
            // Two chains of `vpdpwssd` (even and odd vectors), so that a block's four do not
            // wait on each other.
            let mut sumi =
                [_mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offset)), _mm512_setzero_si512()];
            for (c, q) in quants_in_order(w).into_iter().enumerate() {
                // SAFETY: 64 bytes at 64 * c of the 256-byte `a.qs`.
                let q8 = unsafe { _mm512_loadu_si512(a.qs.as_ptr().add(64 * c).cast()) };
                let scales = _mm512_permutexvar_epi32(quad_index(4 * c as i32), sc32);
                sumi[c % 2] = scaled_dot_512(sumi[c % 2], q, q8, scales);
            }
            let sumi = _mm512_add_epi32(sumi[0], sumi[1]);
            let d = _mm512_set1_ps(f16_to_f32(w.d) * a.d);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
    /// One super-block of [`ROWS`] weight rows, unpacked for the tile kernel.
    #[derive(Clone, Copy)]
    struct Unpacked {
        /// Chunk `k` of row `r`: lane `s` holds quants `16s + 4k..16s + 4k + 4`, matching
        /// [`super::prepare_tile_acts`].
        q: [[__m512i; 4]; ROWS],
        /// Lane `s`: `d` times the scale of sub-block `s`.
        scales: [__m512; ROWS],
    }

    thread_local! {
        /// The unpacked blocks of the row group in hand: for a 2816-wide row 11 blocks, 13 KiB.
        static UNPACKED: RefCell<Vec<Unpacked>> = const { RefCell::new(Vec::new()) };
    }

    /// Row `r`'s block, unpacked: the in-order quants (vector `c` holds sub-blocks `4c..4c + 4`,
    /// four lanes each) transposed so that lane `s` of every chunk holds sub-block `s`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    fn unpack(w: [&BlockQ6K; ROWS]) -> Unpacked {
        let mut u = Unpacked { q: [[_mm512_setzero_si512(); 4]; ROWS], scales: [_mm512_setzero_ps(); ROWS] };
        for (r, w) in w.iter().enumerate() {
            let v = quants_in_order(w);
            let picks = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
            for k in 0..4i32 {
                // Lane s takes lane 4 (s % 4) + k of vector s / 4: lanes 0..8 from v[0] and
                // v[1] (indices 16.. name the second operand), lanes 8..16 from v[2] and v[3].
                let idx = _mm512_add_epi32(picks, _mm512_set1_epi32(k));
                let low = _mm512_permutex2var_epi32(v[0], idx, v[1]);
                let high = _mm512_permutex2var_epi32(v[2], idx, v[3]);
                u.q[r][k as usize] = _mm512_mask_blend_epi32(0xff00, low, high);
            }
            // SAFETY: `scales` is 16 bytes; unaligned load.
            let scales = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(w.scales.as_ptr().cast()) }));
            u.scales[r] = _mm512_mul_ps(scales, _mm512_set1_ps(f16_to_f32(w.d)));
        }
        u
    }

    /// `out[r * n_tokens + t] = w[r] · a[t]` for [`ROWS`] weight rows and every token of `a`
    /// (`n_tokens` rows of activations in the layout of [`super::prepare_tile_acts`]). The
    /// rows' blocks are unpacked once, then [`TOKENS`] tokens at a time (the rest one by one)
    /// run against them. Per (row, token, block): four `vpdpbusd` of the unsigned quants into
    /// one i32 lane per sub-block, seeded with the offset `-32 · bsum` (exact), then a
    /// conversion, a product by the scaled sub-block scales and an FMA by the activations'
    /// `d`. Every token's result is the same whatever the tile width.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn group_avx512(w: &[&[BlockQ6K]; ROWS], a: &[BlockQ8K], n_tokens: usize, out: &mut [f32]) {
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
            for t in 0..T {
                let a = &a[t][b];
                // SAFETY: `qs` is 256 bytes and `bsums` 32; unaligned loads.
                let (q8, bsums) = unsafe {
                    (
                        std::array::from_fn::<_, 4, _>(|k| _mm512_loadu_si512(a.qs[64 * k..].as_ptr().cast())),
                        _mm256_loadu_si256(a.bsums.as_ptr().cast()),
                    )
                };
                // -32 · Σ a per sub-block: what the unsigned quants count in excess.
                let seed =
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(_mm512_cvtepi16_epi32(bsums)));
                let da = _mm512_set1_ps(a.d);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let mut sumi = seed;
                    for (q, q8) in u.q[r].iter().zip(&q8) {
                        sumi = _mm512_dpbusd_epi32(sumi, *q, *q8);
                    }
                    let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sumi), u.scales[r]);
                    acc[t] = _mm512_fmadd_ps(scaled, da, acc[t]);
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
    use crate::types::QK_K;
    use crate::GgmlType;

    #[test]
    fn simd_paths_match_the_scalar_reference() {
        for n_blocks in [1, 2, 7, 11] {
            let w: Vec<BlockQ6K> = random_blocks(GgmlType::Q6_K, n_blocks * QK_K, 1);
            let a: Vec<BlockQ8K> = random_blocks(GgmlType::Q8_K, n_blocks * QK_K, 2);
            let want = dot_scalar(&w, &a);
            let (wb, ab) = (bytemuck::cast_slice(&w), bytemuck::cast_slice(&a));
            let mag = magnitude(GgmlType::Q6_K, wb, GgmlType::Q8_K, ab, n_blocks * QK_K);
            for isa in Isa::available() {
                if isa == Isa::Scalar {
                    continue;
                }
                let dot: DotFn<_, _> = pick!(super, isa);
                // SAFETY: `pick!` only hands out kernels this CPU supports.
                let got = unsafe { dot(&w, &a) };
                assert_close(got, want, n_blocks, mag, &format!("q6_k {isa:?} {n_blocks} blocks"));
            }
        }
    }
}
