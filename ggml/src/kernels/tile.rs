//! Micro-kernels for matrix products with several tokens (prompt processing): a tile of
//! [`ROWS`] weight rows × [`TOKENS`] activation rows per call, so that each weight block is
//! decoded once and used against every token of the tile from registers, and each activation
//! block is loaded once for every row. A matvec has little reuse to gain and stays on the
//! plain dot kernels.
//!
//! So far for the weight types whose dot type is Q8_0 and whose blocks decode to 32 signed
//! bytes and one f16 scale (Q8_0, Q5_0), on AVX-512 VNNI.

/// Weight rows per tile.
pub const ROWS: usize = 4;
/// Activation rows (tokens) per tile.
pub const TOKENS: usize = 4;

/// `out[r][t] = w[r] · a[t]` for one tile of `T` tokens. All rows hold the same number of
/// blocks. Unsafe to call because SIMD tiles need CPU features; `pick_tile!` only hands out
/// ones this CPU has.
pub(crate) type TileFn<W, A, const T: usize> = unsafe fn(&[&[W]; ROWS], &[&[A]; T]) -> [[f32; T]; ROWS];

/// A type's tile kernels: [`TOKENS`] tokens for matmuls, and one token for the tokens left
/// over, where the [`ROWS`] rows still share each activation block's load and scale.
pub(crate) struct Tiles<W, A> {
    pub many: TileFn<W, A, TOKENS>,
    pub one: TileFn<W, A, 1>,
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
    use crate::kernels::{cpu, q5_0, q8_0, DotFn};
    use crate::quants::q8_0::BlockQ8_0;
    use crate::GgmlType;

    /// `tile` against the scalar reference (within rounding) and against the single-pair
    /// AVX-512 kernel `simd` (bit for bit: the per-lane arithmetic is the same).
    fn check<W: bytemuck::Pod, const T: usize>(
        ty: GgmlType,
        tile: TileFn<W, BlockQ8_0, T>,
        scalar: DotFn<W, BlockQ8_0>,
        simd: DotFn<W, BlockQ8_0>,
    ) {
        if !cpu::detected().avx512 {
            return;
        }
        for n_blocks in [1, 3, 88] {
            let n = n_blocks * 32;
            let w: Vec<Vec<W>> = (0..ROWS as u64).map(|r| random_blocks(ty, n, 10 + r)).collect();
            let a: Vec<Vec<BlockQ8_0>> = (0..T as u64).map(|t| random_blocks(GgmlType::Q8_0, n, 20 + t)).collect();
            let w: [&[W]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let a: [&[BlockQ8_0]; T] = std::array::from_fn(|t| &a[t][..]);
            // SAFETY: the AVX-512 level was detected above; the scalar kernel runs anywhere.
            let (got, want, pairs) = unsafe { (tile(&w, &a), tile_with(scalar, &w, &a), tile_with(simd, &w, &a)) };
            assert_eq!(got, pairs, "{ty:?} tile vs pairs, {n_blocks} blocks");
            for r in 0..ROWS {
                for t in 0..T {
                    let mag = magnitude(ty, bytemuck::cast_slice(w[r]), GgmlType::Q8_0, bytemuck::cast_slice(a[t]), n);
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
        check::<_, TOKENS>(GgmlType::Q8_0, q8_0::tile_avx512, q8_0::dot_scalar, q8_0::dot_avx512);
        check::<_, 1>(GgmlType::Q8_0, q8_0::tile_avx512, q8_0::dot_scalar, q8_0::dot_avx512);
    }

    #[test]
    fn q5_0_tile_matches_the_references() {
        check::<_, TOKENS>(GgmlType::Q5_0, q5_0::tile_avx512, q5_0::dot_scalar, q5_0::dot_avx512);
        check::<_, 1>(GgmlType::Q5_0, q5_0::tile_avx512, q5_0::dot_scalar, q5_0::dot_avx512);
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
