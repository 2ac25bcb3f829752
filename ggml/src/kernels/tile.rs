//! Micro-kernels for matrix products with several tokens (prompt processing): a tile of
//! [`ROWS`] weight rows × [`TOKENS`] activation rows per call, so that each weight block is
//! decoded once and used against every token of the tile from registers, and each activation
//! block is loaded once for every row. A matvec has little reuse to gain and stays on the
//! plain dot kernels.
//!
//! So far on AVX-512 VNNI, for the weight types whose dot type is Q8_0 and whose blocks decode
//! to 32 signed bytes and one f16 scale (Q8_0, Q5_0, through [`tile_q8_avx512`]), and for
//! Q4_K (its own tile, in `q4_k.rs`).

/// Weight rows per tile.
pub const ROWS: usize = 4;
/// Activation rows (tokens) per tile.
pub const TOKENS: usize = 4;

/// `out[r][t] = w[r] · a[t]` for one tile of `T` tokens. All rows hold the same number of
/// blocks. Unsafe to call because SIMD tiles need CPU features; `pick_tile!` only hands out
/// ones this CPU has.
pub(crate) type TileFn<W, A, const T: usize> = unsafe fn(&[&[W]; ROWS], &[&[A]; T]) -> [[f32; T]; ROWS];

/// `out[r * n_tokens + t] = w[r] · a[t]` for a group of [`ROWS`] weight rows and all
/// `n_tokens` activation rows of `a` (contiguous, in the type's tile layout). Unsafe to call
/// because SIMD kernels need CPU features; `pick_tile!` only hands out ones this CPU has.
pub(crate) type GroupFn<W, A> = unsafe fn(&[&[W]; ROWS], &[A], usize, &mut [f32]);

/// A type's tile kernels: the row-group kernel, and the rearrangement of the activations it
/// expects (done once per matmul), if any.
pub(crate) struct Tiles<W, A> {
    pub group: GroupFn<W, A>,
    pub prepare: Option<fn(&mut [A])>,
}

/// A [`GroupFn`] from tile kernels: [`TOKENS`] tokens at a time through `many`, then the
/// tokens left over through `one`, where the [`ROWS`] rows still share each activation
/// block's load and scale.
///
/// # Safety
/// `many` and `one` must be safe to call on this CPU.
#[inline]
pub(crate) unsafe fn by_tiles<W, A>(
    many: TileFn<W, A, TOKENS>,
    one: TileFn<W, A, 1>,
    w: &[&[W]; ROWS],
    a: &[A],
    n_tokens: usize,
    out: &mut [f32],
) {
    let n = w[0].len();
    let whole = n_tokens / TOKENS * TOKENS;
    for t0 in (0..whole).step_by(TOKENS) {
        let a_tile: [&[A]; TOKENS] = std::array::from_fn(|j| &a[(t0 + j) * n..][..n]);
        // SAFETY: the caller guarantees `many` runs on this CPU.
        let dots = unsafe { many(w, &a_tile) };
        for (r, per_token) in dots.iter().enumerate() {
            out[r * n_tokens + t0..][..TOKENS].copy_from_slice(per_token);
        }
    }
    for t in whole..n_tokens {
        // SAFETY: the caller guarantees `one` runs on this CPU.
        let dots = unsafe { one(w, &[&a[t * n..][..n]]) };
        for (r, [dot]) in dots.iter().enumerate() {
            out[r * n_tokens + t] = *dot;
        }
    }
}

/// The reference tile: every (row, token) pair through the dot kernel `dot`.
///
/// # Safety
/// `dot` must be safe to call on this CPU.
#[cfg(test)]
pub(crate) unsafe fn tile_with<W, A, const T: usize>(
    dot: super::DotFn<W, A>,
    w: &[&[W]; ROWS],
    a: &[&[A]; T],
) -> [[f32; T]; ROWS] {
    // SAFETY: the caller guarantees `dot` runs on this CPU.
    w.map(|w| a.map(|a| unsafe { dot(w, a) }))
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{tile_q8_avx512, SignedBytes};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::ROWS;
    use crate::kernels::x86::{f16_lookup, hsum_f32x8};
    use crate::quants::q8_0::BlockQ8_0;

    /// A weight block of 32 elements that decodes to signed bytes times one scale.
    pub(crate) trait SignedBytes {
        /// The 32 weights as i8, in element order.
        ///
        /// # Safety
        /// The CPU must support AVX2 and AVX-512 F/BW/VL.
        unsafe fn levels(&self) -> __m256i;
        /// The block's scale.
        fn scale(&self) -> f32;
    }

    /// The tile for weights decoding to signed bytes against Q8_0 activations.
    ///
    /// `vpdpbusd` multiplies unsigned by signed bytes. The single-pair kernels make the weight
    /// unsigned with `sign` tricks that touch both operands — one extra µop per pair. Here the
    /// activations are made unsigned instead, `a + 128` (an xor, once per token and block), and
    /// the surplus `128 · Σw` (once per row and block) seeds the integer accumulator negated,
    /// so each (row, token) pair costs one `vpdpbusd`, one conversion, one scale product and
    /// one FMA. The per-lane arithmetic equals the single-pair AVX-512 kernels', so results
    /// are bit-identical to them.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512 F/BW/VL/VNNI.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn tile_q8_avx512<W: SignedBytes, const T: usize>(
        w: &[&[W]; ROWS],
        a: &[&[BlockQ8_0]; T],
    ) -> [[f32; T]; ROWS] {
        let n = w[0].len();
        // Equal lengths let the compiler drop the bounds checks in the loop.
        let w = w.map(|row| &row[..n]);
        let a = a.map(|row| &row[..n]);
        let bias = _mm256_set1_epi8(0x80u8 as i8);
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); T]; ROWS];
        for b in 0..n {
            let (mut levels, mut scales, mut seeds) = ([zero; ROWS], [_mm256_setzero_ps(); ROWS], [zero; ROWS]);
            for r in 0..ROWS {
                // SAFETY: the CPU has the features `levels` needs (this function's).
                levels[r] = unsafe { w[r][b].levels() };
                scales[r] = _mm256_set1_ps(w[r][b].scale());
                // -128 · Σw over each group of four lanes: vpdpbusd(0x80 bytes, w), negated.
                seeds[r] = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, levels[r]));
            }
            for t in 0..T {
                // SAFETY: `qs` is exactly 32 bytes; loadu has no alignment requirement.
                let qa = unsafe { _mm256_loadu_si256(a[t][b].qs.as_ptr().cast()) };
                let unsigned = _mm256_xor_si256(qa, bias);
                let da = _mm256_set1_ps(f16_lookup(a[t][b].d));
                for r in 0..ROWS {
                    let isum = _mm256_dpbusd_epi32(seeds[r], unsigned, levels[r]);
                    let d = _mm256_mul_ps(scales[r], da);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), d, acc[r][t]);
                }
            }
        }
        let mut out = [[0f32; T]; ROWS];
        for r in 0..ROWS {
            for t in 0..T {
                out[r][t] = hsum_f32x8(acc[r][t]);
            }
        }
        out
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{cpu, q4_k, q5_0, q8_0, DotFn};
    use crate::quants::q8_0::BlockQ8_0;
    use crate::GgmlType;

    /// `tile` against the scalar reference (within rounding) and against the single-pair
    /// AVX-512 kernel `simd` (bit for bit: the per-lane arithmetic is the same), for weights of
    /// type `ty` against activations of its dot type.
    fn check<W: bytemuck::Pod, A: bytemuck::Pod, const T: usize>(
        ty: GgmlType,
        tile: TileFn<W, A, T>,
        scalar: DotFn<W, A>,
        simd: DotFn<W, A>,
    ) {
        if !cpu::detected().avx512 {
            return;
        }
        let a_ty = crate::kernels::dot_type(ty).unwrap();
        for n_blocks in [1, 3, 88] {
            let n = n_blocks * ty.block_size();
            let w: Vec<Vec<W>> = (0..ROWS as u64).map(|r| random_blocks(ty, n, 10 + r)).collect();
            let a: Vec<Vec<A>> = (0..T as u64).map(|t| random_blocks(a_ty, n, 20 + t)).collect();
            let w: [&[W]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let a: [&[A]; T] = std::array::from_fn(|t| &a[t][..]);
            // SAFETY: the AVX-512 level was detected above; the scalar kernel runs anywhere.
            let (got, want, pairs) = unsafe { (tile(&w, &a), tile_with(scalar, &w, &a), tile_with(simd, &w, &a)) };
            assert_eq!(got, pairs, "{ty:?} tile vs pairs, {n_blocks} blocks");
            for r in 0..ROWS {
                for t in 0..T {
                    let mag = magnitude(ty, bytemuck::cast_slice(w[r]), a_ty, bytemuck::cast_slice(a[t]), n);
                    assert_close(
                        got[r][t],
                        want[r][t],
                        n_blocks,
                        mag,
                        &format!("{ty:?} tile ({r}, {t}), {n_blocks} blocks"),
                    );
                }
            }
        }
    }

    #[test]
    fn q8_0_tile_matches_the_references() {
        check::<_, _, TOKENS>(GgmlType::Q8_0, q8_0::tile_avx512, q8_0::dot_scalar, q8_0::dot_avx512);
        check::<_, _, 1>(GgmlType::Q8_0, q8_0::tile_avx512, q8_0::dot_scalar, q8_0::dot_avx512);
    }

    #[test]
    fn q5_0_tile_matches_the_references() {
        check::<_, _, TOKENS>(GgmlType::Q5_0, q5_0::tile_avx512, q5_0::dot_scalar, q5_0::dot_avx512);
        check::<_, _, 1>(GgmlType::Q5_0, q5_0::tile_avx512, q5_0::dot_scalar, q5_0::dot_avx512);
    }

    /// The row-group kernel `group` against the scalar reference on every (row, token) pair,
    /// for token counts with and without leftovers; and each token's results are the same bits
    /// whether it came in a batch of 11 or alone.
    fn check_group<W: bytemuck::Pod, A: bytemuck::Pod>(
        ty: GgmlType,
        group: GroupFn<W, A>,
        prepare: Option<fn(&mut [A])>,
        scalar: DotFn<W, A>,
    ) {
        if !cpu::detected().avx512 {
            return;
        }
        let a_ty = crate::kernels::dot_type(ty).unwrap();
        for n_blocks in [1, 3, 11] {
            let n = n_blocks * ty.block_size();
            let w: Vec<Vec<W>> = (0..ROWS as u64).map(|r| random_blocks(ty, n, 50 + r)).collect();
            let w: [&[W]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let a: Vec<A> = random_blocks(a_ty, 11 * n, 60);
            let run = |a: &[A]| {
                let n_tokens = a.len() / n_blocks;
                let mut laid_out = a.to_vec();
                if let Some(prepare) = prepare {
                    prepare(&mut laid_out);
                }
                let mut out = vec![0f32; ROWS * n_tokens];
                // SAFETY: the AVX-512 level was detected above.
                unsafe { group(&w, &laid_out, n_tokens, &mut out) };
                out
            };
            let all = run(&a);
            for (t, a_t) in a.chunks_exact(n_blocks).enumerate() {
                let alone = run(a_t);
                for r in 0..ROWS {
                    // SAFETY: the scalar kernel runs anywhere.
                    let want = unsafe { scalar(w[r], a_t) };
                    let mag = magnitude(ty, bytemuck::cast_slice(w[r]), a_ty, bytemuck::cast_slice(a_t), n);
                    let what = format!("{ty:?} group ({r}, {t}), {n_blocks} blocks");
                    assert_close(all[r * 11 + t], want, n_blocks, mag, &what);
                    assert_eq!(all[r * 11 + t], alone[r], "{what}: in a batch vs alone");
                }
            }
        }
    }

    #[test]
    fn group_kernels_match_the_scalar_reference() {
        check_group(GgmlType::Q8_0, q8_0::group_avx512, q8_0::TILE_ACTS, q8_0::dot_scalar);
        check_group(GgmlType::Q5_0, q5_0::group_avx512, q5_0::TILE_ACTS, q5_0::dot_scalar);
        check_group(GgmlType::Q4_K, q4_k::group_avx512, q4_k::TILE_ACTS, q4_k::dot_scalar);
    }

    #[test]
    fn q4_k_extreme_sums_stay_exact() {
        // Every nibble 15, every scale and min 63, activations -128 or 127: the sixteen-product
        // lane sums reach ±30720 and must survive the i16 scale step.
        if !cpu::detected().avx512 {
            return;
        }
        use crate::quants::{q4_k::BlockQ4K, q8_k::BlockQ8K};
        let w = [BlockQ4K { d: half::f16::ONE, dmin: half::f16::ONE, scales: [0xff; 12], qs: [0xff; 128] }; 2];
        let act = |q: i8| [BlockQ8K { d: 1.0, qs: [q; 256], bsums: [16 * q as i16; 16] }; 2];
        let a: Vec<BlockQ8K> = [act(-128), act(127), act(-128), act(1), act(127)].concat();
        let mut laid_out = a.clone();
        q4_k::prepare_tile_acts(&mut laid_out);
        let mut got = [0f32; ROWS * 5];
        // SAFETY: the AVX-512 level was detected above.
        unsafe { q4_k::group_avx512(&[&w[..]; ROWS], &laid_out, 5, &mut got) };
        for (t, a) in a.chunks_exact(2).enumerate() {
            let want = q4_k::dot_scalar(&w, a);
            for r in 0..ROWS {
                let g = got[r * 5 + t];
                assert!((g - want).abs() <= 1e-6 * want.abs(), "row {r} token {t}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn extreme_bytes_stay_exact() {
        // -128 in either operand and ±127 everywhere: the a + 128 bias and its correction
        // must stay exact in i32.
        if !cpu::detected().avx512 {
            return;
        }
        let block = |q: i8| BlockQ8_0 { d: half::f16::ONE, qs: [q; 32] };
        for (x, y) in [(-128, -128), (-128, 127), (127, -128), (127, 127), (-127, 5)] {
            let w = [vec![block(x); 4], vec![block(y); 4], vec![block(x); 4], vec![block(0); 4]];
            let a = [vec![block(y); 4], vec![block(x); 4], vec![block(-128); 4], vec![block(127); 4]];
            let w: [&[BlockQ8_0]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let a: [&[BlockQ8_0]; TOKENS] = std::array::from_fn(|t| &a[t][..]);
            // SAFETY: the AVX-512 level was detected above.
            let (got, want) = unsafe { (q8_0::tile_avx512::<TOKENS>(&w, &a), tile_with(q8_0::dot_scalar, &w, &a)) };
            assert_eq!(got, want, "bytes {x}, {y}");
        }
    }
}
