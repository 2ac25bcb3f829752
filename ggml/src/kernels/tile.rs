//! Kernels for matrix products with several tokens (prompt processing). A *row-group kernel*
//! takes [`ROWS`] weight rows and every token: it unpacks the rows' blocks once into a small
//! buffer (L1/L2-resident), then runs [`TOKENS`] tokens at a time against them (the rest one
//! by one), so each weight block is decoded once per matmul rather than once per token, each
//! activation chunk is loaded once for every row, and the accumulators stay in registers. They
//! run the prompt tokens of a matmul, however few; generated tokens, which gain little from
//! them, stay on the plain dot kernels ([`super::matmul::QuantizedActs`]).
//!
//! So far on AVX-512 VNNI: for the weight types whose dot type is Q8_0 and whose blocks decode
//! to 32 signed bytes and one f16 scale (Q8_0, Q5_0: [`group_q8_avx512`]), for Q4_K and Q6_K
//! (in `q4_k.rs`, `q6_k.rs`), and for the float types F32, F16 and BF16 ([`group_float_avx512`]).

/// Weight rows per group.
pub const ROWS: usize = 4;
/// Tokens per tile inside a group.
pub const TOKENS: usize = 4;
// A tile's sums go through one `sums_16`.
const _: () = assert!(ROWS * TOKENS <= 16);

/// `out[r * n_tokens + t] = w[r] · a[t]` for a group of [`ROWS`] weight rows and all
/// `n_tokens` activation rows of `a` (contiguous, in the type's tile layout). Every token's
/// results are the same bits whatever the number of tokens. Unsafe to call because SIMD
/// kernels need CPU features; `pick_tile!` only hands out ones this CPU has.
pub(crate) type GroupFn<W, A> = unsafe fn(&[&[W]; ROWS], &[A], usize, &mut [f32]);

/// The rearrangement of a matmul's activations (rows of the given number of blocks) that a
/// type's row-group kernel expects, done once per matmul.
pub type PrepareFn<A> = fn(&mut [A], usize);

/// Every token of a row group: `f(t0, true)` for each whole tile of [`TOKENS`] tokens from
/// `t0`, then `f(t, false)` for each token left over.
#[inline(always)]
pub(crate) fn by_tiles(n_tokens: usize, mut f: impl FnMut(usize, bool)) {
    let whole = n_tokens / TOKENS * TOKENS;
    (0..whole).step_by(TOKENS).for_each(|t0| f(t0, true));
    (whole..n_tokens).for_each(|t| f(t, false));
}

/// A type's tile kernels: the row-group kernel, and the rearrangement of the activations it
/// expects, if any.
pub(crate) struct Tiles<W, A> {
    pub group: GroupFn<W, A>,
    pub prepare: Option<PrepareFn<A>>,
}

/// The Q8_0 activations as [`group_q8_avx512`] takes them, rows of `n` blocks: each byte
/// `a + 128`, an unsigned byte; and each pair of blocks `2i, 2i + 1` of a row (68 bytes)
/// rearranged as its 64 quant bytes then its two f16 scales, so that one load takes the
/// quants of both and one the scales. The last block of an odd row keeps its layout.
pub fn prepare_q8_0_acts(blocks: &mut [crate::quants::q8_0::BlockQ8_0], n: usize) {
    assert!(n > 0 && blocks.len().is_multiple_of(n), "{} blocks are not rows of {n}", blocks.len());
    for row in blocks.chunks_exact_mut(n) {
        for block in row.iter_mut() {
            block.qs = block.qs.map(|q| q ^ i8::MIN);
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(row);
        for pair in bytes.chunks_exact_mut(68) {
            let (d0, d1) = ([pair[0], pair[1]], [pair[34], pair[35]]);
            pair.copy_within(2..34, 0);
            pair.copy_within(36..68, 32);
            pair[64..68].copy_from_slice(&[d0[0], d0[1], d1[0], d1[1]]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{group_float_avx512, group_q8_avx512, store_sums, SignedBytes};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    use super::{by_tiles, ROWS, TOKENS};
    use crate::kernels::x86::sums_16;
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

    /// Two consecutive blocks (64 elements) of [`ROWS`] weight rows, unpacked: block `2i` in
    /// the low 256 bits, `2i + 1` in the high ones (zero past the end of an odd row).
    #[derive(Clone, Copy)]
    struct Unpacked {
        levels: [__m512i; ROWS],
        /// `-128 · Σ w` over each group of four bytes: the surplus of the `a + 128` bias.
        seeds: [__m512i; ROWS],
        scales: [__m512; ROWS],
    }

    thread_local! {
        /// The unpacked blocks of the row group in hand: for a 2816-wide row 44 pairs, 33 KiB.
        static UNPACKED: RefCell<Vec<Unpacked>> = const { RefCell::new(Vec::new()) };
    }

    /// The 512 bits of two 256-bit halves.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn join(lo: __m256i, hi: __m256i) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }

    /// The 512 bits of two eight-lane broadcasts.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn join_ps(lo: f32, hi: f32) -> __m512 {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_set1_ps(lo))),
            _mm256_castps_pd(_mm256_set1_ps(hi)),
        ))
    }

    /// Blocks `2i` and `2i + 1` of each row, unpacked.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn unpack<W: SignedBytes>(w: &[&[W]; ROWS], i: usize) -> Unpacked {
        let zero = _mm512_setzero_si512();
        let bias = _mm512_set1_epi8(i8::MIN);
        let mut u = Unpacked { levels: [zero; ROWS], seeds: [zero; ROWS], scales: [_mm512_setzero_ps(); ROWS] };
        for (r, row) in w.iter().enumerate() {
            let (first, second) = (&row[2 * i], row.get(2 * i + 1));
            // SAFETY: the CPU has the features `levels` needs (this function's).
            let levels = unsafe { (first.levels(), second.map_or(_mm256_setzero_si256(), |b| b.levels())) };
            u.levels[r] = join(levels.0, levels.1);
            u.seeds[r] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, bias, u.levels[r]));
            u.scales[r] = join_ps(first.scale(), second.map_or(0.0, |b| b.scale()));
        }
        u
    }

    /// The row-group kernel for weights decoding to signed bytes against Q8_0 activations
    /// given as `a + 128`, in pairs of blocks ([`super::prepare_q8_0_acts`]). `vpdpbusd`
    /// multiplies unsigned by signed bytes; with the activations made unsigned, the surplus
    /// `128 · Σw` (once per row and block, at unpacking) seeds the integer sum negated, so each
    /// (row, token) pair costs one `vpdpbusd`, one conversion, one scale product and one FMA
    /// per two blocks.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn group_q8_avx512<W: SignedBytes>(w: &[&[W]; ROWS], a: &[BlockQ8_0], n_tokens: usize, out: &mut [f32]) {
        let n = w[0].len();
        assert!(w.iter().all(|row| row.len() == n) && a.len() == n * n_tokens && out.len() == ROWS * n_tokens);
        UNPACKED.with_borrow_mut(|unpacked| {
            unpacked.clear();
            unpacked.extend((0..n.div_ceil(2)).map(|i| unpack(w, i)));
            by_tiles(n_tokens, |t, whole| match whole {
                true => tokens::<TOKENS>(unpacked, a, n, t, n_tokens, out),
                false => tokens::<1>(unpacked, a, n, t, n_tokens, out),
            });
        });
    }

    /// Tokens `t0..t0 + T` against the unpacked rows (`n` blocks each), the activations laid
    /// out by [`super::prepare_q8_0_acts`].
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn tokens<const T: usize>(
        unpacked: &[Unpacked],
        a: &[BlockQ8_0],
        n: usize,
        t0: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let a: [&[u8]; T] = std::array::from_fn(|t| bytemuck::cast_slice(&a[(t0 + t) * n..][..n]));
        // Lanes 0..8 take the first of two scales, lanes 8..16 the second.
        let halves = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let mut acc = [[_mm512_setzero_ps(); T]; ROWS];
        for (i, u) in unpacked.iter().enumerate() {
            for (t, a) in a.iter().enumerate() {
                let (qa, da) = if 2 * i + 1 < n {
                    // SAFETY: a whole pair: 68 bytes at 68i of the row's 34n; unaligned loads.
                    let (qs, ds) = unsafe {
                        let p = a.as_ptr().add(68 * i);
                        (_mm512_loadu_si512(p.cast()), p.add(64).cast::<i32>().read_unaligned())
                    };
                    (qs, _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128(ds)))))
                } else {
                    // The last block of an odd row, in its own layout; its zero levels meet
                    // zero activations in the high half.
                    // SAFETY: 34 bytes at 68i: the f16 scale, then 32 quant bytes.
                    let (qs, d) = unsafe {
                        let p = a.as_ptr().add(68 * i);
                        (_mm256_loadu_si256(p.add(2).cast()), p.cast::<u16>().read_unaligned())
                    };
                    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(d as i32));
                    (_mm512_zextsi256_si512(qs), _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(d)))
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let isum = _mm512_dpbusd_epi32(u.seeds[r], qa, u.levels[r]);
                    let d = _mm512_mul_ps(u.scales[r], da);
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[t]);
                }
            }
        }
        store_sums(&acc, t0, n_tokens, out);
    }

    /// Float elements that widen to sixteen f32 lanes at a time, exactly.
    pub(crate) trait Floats: Copy {
        /// `p[..16]` as f32.
        ///
        /// # Safety
        /// 16 elements must be readable at `p`; the CPU must support AVX-512 F/BW/VL.
        unsafe fn widen(p: *const Self) -> __m512;
        /// `p[..k]` (`k < 16`) as f32, zero in the lanes after.
        ///
        /// # Safety
        /// `k` elements must be readable at `p`; the CPU must support AVX-512 F/BW/VL.
        unsafe fn widen_first(p: *const Self, k: usize) -> __m512;
    }

    impl Floats for f32 {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn widen(p: *const f32) -> __m512 {
            // SAFETY: the caller's: 16 f32 at `p`; unaligned load.
            unsafe { _mm512_loadu_ps(p) }
        }

        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn widen_first(p: *const f32, k: usize) -> __m512 {
            // SAFETY: only the first `k` lanes are read (masked-off lanes are not).
            unsafe { _mm512_maskz_loadu_ps(((1u32 << k) - 1) as u16, p) }
        }
    }

    impl Floats for half::f16 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        unsafe fn widen(p: *const half::f16) -> __m512 {
            // SAFETY: the caller's: 16 f16 (32 bytes) at `p`; unaligned load.
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        unsafe fn widen_first(p: *const half::f16, k: usize) -> __m512 {
            // SAFETY: only the first `k` 16-bit lanes are read; the rest load as +0.
            _mm512_cvtph_ps(unsafe { _mm256_maskz_loadu_epi16(((1u32 << k) - 1) as u16, p.cast()) })
        }
    }

    impl Floats for half::bf16 {
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn widen(p: *const half::bf16) -> __m512 {
            // SAFETY: the caller's: 16 bf16 (32 bytes) at `p`; unaligned load. A bf16 is the
            // top half of its f32.
            let x = unsafe { _mm256_loadu_si256(p.cast()) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)))
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn widen_first(p: *const half::bf16, k: usize) -> __m512 {
            // SAFETY: only the first `k` 16-bit lanes are read; the rest load as +0.
            let x = unsafe { _mm256_maskz_loadu_epi16(((1u32 << k) - 1) as u16, p.cast()) };
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(x)))
        }
    }

    thread_local! {
        /// The row group in hand widened to f32, sixteen elements of each row in turn:
        /// `[step][ROWS]` (a 4304-wide row is 269 steps, 69 KiB).
        static WIDENED: RefCell<Vec<__m512>> = const { RefCell::new(Vec::new()) };
    }

    /// The row-group kernel for float weights against activations of the same type (F32, F16,
    /// BF16): the rows are widened to f32 once, then each (row, token) pair keeps one 16-lane
    /// FMA accumulator over the row, summed at the end by [`store_sums`]. Every product is exact
    /// in f32 (the reference sums in f64 and differs by the f32 additions alone).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn group_float_avx512<E: Floats>(w: &[&[E]; ROWS], a: &[E], n_tokens: usize, out: &mut [f32]) {
        let n = w[0].len();
        assert!(w.iter().all(|row| row.len() == n) && a.len() == n * n_tokens && out.len() == ROWS * n_tokens);
        WIDENED.with_borrow_mut(|widened| {
            widened.clear();
            let (whole, rest) = (n / 16, n % 16);
            for s in 0..whole {
                // SAFETY: 16 elements from 16s < n of each row.
                widened.extend(w.iter().map(|row| unsafe { E::widen(row.as_ptr().add(16 * s)) }));
            }
            if rest > 0 {
                // SAFETY: the last `rest` elements of each row.
                widened.extend(w.iter().map(|row| unsafe { E::widen_first(row.as_ptr().add(16 * whole), rest) }));
            }
            by_tiles(n_tokens, |t, whole| match whole {
                true => float_tokens::<TOKENS, E>(widened, a, n, t, n_tokens, out),
                false => float_tokens::<1, E>(widened, a, n, t, n_tokens, out),
            });
        });
    }

    /// Tokens `t0..t0 + T` (rows of `n` elements of `a`) against the widened rows.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn float_tokens<const T: usize, E: Floats>(
        widened: &[__m512],
        a: &[E],
        n: usize,
        t0: usize,
        n_tokens: usize,
        out: &mut [f32],
    ) {
        let a: [&[E]; T] = std::array::from_fn(|t| &a[(t0 + t) * n..][..n]);
        let (whole, rest) = (n / 16, n % 16);
        let mut acc = [[_mm512_setzero_ps(); T]; ROWS];
        let mut step = |s: usize, x: [__m512; T]| {
            let w = &widened[s * ROWS..(s + 1) * ROWS];
            for (acc, &w) in acc.iter_mut().zip(w) {
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm512_fmadd_ps(w, x, *acc);
                }
            }
        };
        for s in 0..whole {
            // SAFETY: 16 elements from 16s < n of each token's row.
            step(s, std::array::from_fn(|t| unsafe { E::widen(a[t].as_ptr().add(16 * s)) }));
        }
        if rest > 0 {
            // SAFETY: the last `rest` elements of each token's row.
            step(whole, std::array::from_fn(|t| unsafe { E::widen_first(a[t].as_ptr().add(16 * whole), rest) }));
        }
        store_sums(&acc, t0, n_tokens, out);
    }

    /// `out[r * n_tokens + t0 + t] = Σ acc[r][t]` through [`sums_16`] (unused vectors zero),
    /// so each sum is the same bits whatever `T` is.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(crate) fn store_sums<const T: usize>(acc: &[[__m512; T]; ROWS], t0: usize, n_tokens: usize, out: &mut [f32]) {
        let mut v = [_mm512_setzero_ps(); 16];
        for (r, acc) in acc.iter().enumerate() {
            v[r * T..(r + 1) * T].copy_from_slice(acc);
        }
        let mut sums = [0f32; 16];
        // SAFETY: 16 f32; unaligned store.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), sums_16(&v)) };
        for r in 0..ROWS {
            out[r * n_tokens + t0..][..T].copy_from_slice(&sums[r * T..(r + 1) * T]);
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::kernels::testing::{assert_close, magnitude, random_blocks};
    use crate::kernels::{bf16, cpu, f16, f32, q4_k, q5_0, q6_k, q8_0, DotFn};
    use crate::quants::q8_0::BlockQ8_0;
    use crate::GgmlType;

    /// The row-group kernel `group` against the scalar reference on every (row, token) pair,
    /// for token counts with and without leftovers; and each token's results are the same bits
    /// whether it came in a batch of 11 or alone.
    fn check_group<W: bytemuck::Pod, A: bytemuck::Pod>(
        ty: GgmlType,
        group: GroupFn<W, A>,
        prepare: Option<PrepareFn<A>>,
        scalar: DotFn<W, A>,
    ) {
        if !cpu::detected().avx512 {
            return;
        }
        let a_ty = crate::kernels::dot_type(ty).unwrap();
        // Float rows (blocks of one) also in 16-lane steps, whole and with a tail.
        let sizes: &[usize] = if ty.block_size() == 1 { &[1, 3, 11, 16, 17, 48, 101] } else { &[1, 3, 11] };
        for &n_blocks in sizes {
            let n = n_blocks * ty.block_size();
            let w: Vec<Vec<W>> = (0..ROWS as u64).map(|r| random_blocks(ty, n, 50 + r)).collect();
            let w: [&[W]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let a: Vec<A> = random_blocks(a_ty, 11 * n, 60);
            let run = |a: &[A]| {
                let n_tokens = a.len() / n_blocks;
                let mut laid_out = a.to_vec();
                if let Some(prepare) = prepare {
                    prepare(&mut laid_out, n_blocks);
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
        check_group(GgmlType::Q6_K, q6_k::group_avx512, q6_k::TILE_ACTS, q6_k::dot_scalar);
        check_group(GgmlType::F32, f32::group_avx512, f32::TILE_ACTS, f32::dot_scalar);
        check_group(GgmlType::F16, f16::group_avx512, f16::TILE_ACTS, f16::dot_scalar);
        check_group(GgmlType::BF16, bf16::group_avx512, bf16::TILE_ACTS, bf16::dot_scalar);
    }

    #[test]
    fn q4_k_extreme_sums_stay_exact() {
        // Every nibble 15, every scale and min 63, activations -128 or 127: the sixteen-product
        // lane sums reach ±30720 and every block the same min term.
        if !cpu::detected().avx512 {
            return;
        }
        use crate::quants::{q4_k::BlockQ4K, q8_k::BlockQ8K};
        let w = [BlockQ4K { d: half::f16::ONE, dmin: half::f16::ONE, scales: [0xff; 12], qs: [0xff; 128] }; 2];
        let act = |q: i8| [BlockQ8K { d: 1.0, qs: [q; 256], bsums: [16 * q as i16; 16] }; 2];
        let a: Vec<BlockQ8K> = [act(-128), act(127), act(-128), act(1), act(127)].concat();
        let mut laid_out = a.clone();
        q4_k::prepare_tile_acts(&mut laid_out, 2);
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
    fn q6_k_extreme_sums_stay_exact() {
        // Quants all 63 or all 0 (q - 32 at either end), scales at -128 and 127, activations
        // -128 or 127: the seeded lane sums reach ±65536 and the offset 32 · 2048.
        if !cpu::detected().avx512 {
            return;
        }
        use crate::quants::{q6_k::BlockQ6K, q8_k::BlockQ8K};
        let block =
            |bits: u8, scale: i8| BlockQ6K { ql: [bits; 128], qh: [bits; 64], scales: [scale; 16], d: half::f16::ONE };
        let rows = [[block(0xff, 127); 2], [block(0, 127); 2], [block(0xff, -128); 2], [block(0, -128); 2]];
        let act = |q: i8| [BlockQ8K { d: 1.0, qs: [q; 256], bsums: [16 * q as i16; 16] }; 2];
        let a: Vec<BlockQ8K> = [act(-128), act(127), act(-128), act(1), act(127)].concat();
        let mut laid_out = a.clone();
        q6_k::prepare_tile_acts(&mut laid_out, 2);
        let w: [&[BlockQ6K]; ROWS] = std::array::from_fn(|r| &rows[r][..]);
        let mut got = [0f32; ROWS * 5];
        // SAFETY: the AVX-512 level was detected above.
        unsafe { q6_k::group_avx512(&w, &laid_out, 5, &mut got) };
        for (t, a) in a.chunks_exact(2).enumerate() {
            for r in 0..ROWS {
                let want = q6_k::dot_scalar(w[r], a);
                let g = got[r * 5 + t];
                assert!((g - want).abs() <= 1e-6 * want.abs(), "row {r} token {t}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn extreme_bytes_stay_exact() {
        // -128 in either operand and ±127 everywhere: the a + 128 bias and its correction
        // must stay exact in i32. Three blocks: a whole pair and an odd one.
        if !cpu::detected().avx512 {
            return;
        }
        let block = |q: i8| BlockQ8_0 { d: half::f16::ONE, qs: [q; 32] };
        for (x, y) in [(-128, -128), (-128, 127), (127, -128), (127, 127), (-127, 5)] {
            let w = [vec![block(x); 3], vec![block(y); 3], vec![block(x); 3], vec![block(0); 3]];
            let a = [vec![block(y); 3], vec![block(x); 3], vec![block(-128); 3], vec![block(127); 3]].concat();
            let mut laid_out = a.clone();
            prepare_q8_0_acts(&mut laid_out, 3);
            let w: [&[BlockQ8_0]; ROWS] = std::array::from_fn(|r| &w[r][..]);
            let mut got = [0f32; ROWS * 4];
            // SAFETY: the AVX-512 level was detected above.
            unsafe { q8_0::group_avx512(&w, &laid_out, 4, &mut got) };
            for (t, a) in a.chunks_exact(3).enumerate() {
                for r in 0..ROWS {
                    assert_eq!(got[r * 4 + t], q8_0::dot_scalar(w[r], a), "bytes {x}, {y}, row {r} token {t}");
                }
            }
        }
    }
}
