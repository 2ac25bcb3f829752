//! Attention over an f16 or f32 KV cache: for every query token `t` and head `h`,
//! `out[t][h] = softmax(scale · q[t][h] · Kᵀ + mask) · V` over the keys of KV head
//! `h / (n_head / n_kv_head)` (GQA: contiguous groups of query heads share a KV head).
//!
//! The mask is causal (`k_pos <= q_pos`) and, for sliding layers, also
//! `q_pos - k_pos < window`: a window of 1024 sees the current token and the 1023 before it.
//! It is computed from the position stored with each cache slot, never from the slot index,
//! so a ring-buffer cache (slots out of position order) needs nothing special. Gemma 4 uses
//! `scale = 1.0` (q_norm/k_norm set the scale; no 1/sqrt(d)).
//!
//! Two implementations, tested against each other:
//! - [`attention_reference`]: two passes per (token, head) in f64 — every score, their maximum,
//!   the exponentials and their sum, then the weighted sum of V rows. Slow and obviously right.
//! - [`attention`]: one streaming pass (online softmax, as in flash attention): per (token,
//!   head) a running maximum, a running sum of `e^(s - max)` and an f32 output accumulator that
//!   is rescaled whenever the maximum grows, so no `[n_tokens, n_keys]` score matrix exists.
//!   Scalar, AVX2 (+FMA, F16C) and AVX-512 paths. A unit of parallel work is one (token, KV
//!   head) pair with all its query heads, so each K/V row is read once per GQA group; in decode
//!   the keys are also split into chunks, merged at the end (as flash-decoding does).
//!
//! ## Element types
//!
//! K and V are f16 (as llama.cpp stores them by default: half the memory and half the bytes
//! read per decode step) or f32 (no rounding of K and V at all, to match a float32 reference
//! tightly). [`KvSlots`] says which; [`attention`] looks once per call and runs code
//! monomorphized for that type ([`KvElem`]), so the hot loops never branch on it. An f32 row
//! is read as it is (`loadu_ps`); an f16 row is widened on the fly (`cvtph_ps`).
//!
//! ## Cache layout: `[n_kv_head][capacity][head_dim]` (head-major)
//!
//! Each unit of work reads every key and value row of one KV head, in slot order. With the
//! head-major layout that is one contiguous stream of `capacity · head_dim` elements per tensor —
//! what the hardware prefetcher handles best in decode, where attention is bound by reading
//! the cache — and a key chunk is one contiguous range. The slot-major alternative
//! `[capacity][n_kv_head][head_dim]` would put a head's consecutive f16 rows 2-4 KiB apart
//! (2 × 512 × 2 bytes on full layers, 8 × 256 × 2 on sliding ones), touching a new page every
//! one or two rows. Its advantage, appending a token with one contiguous write, is worth
//! little: an append writes `n_kv_head` rows once per token, while decode reads them all on
//! every step.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels::Isa;
use crate::quants::float::f32_to_f16;

/// The shape of one attention layer's computation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; must divide `n_head`.
    pub n_kv_head: usize,
    /// Elements per head (256 or 512 for Gemma 4); a multiple of 16.
    pub head_dim: usize,
    /// Multiplies every score before the softmax (1.0 for Gemma 4).
    pub scale: f32,
    /// Sliding window: a query at position `p` sees keys at `p - window + 1 ..= p`. `None`:
    /// causal only.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Causal attention with scale 1.0 (Gemma 4's); set `window` for a sliding layer.
    pub fn new(n_head: usize, n_kv_head: usize, head_dim: usize) -> AttnShape {
        AttnShape { n_head, n_kv_head, head_dim, scale: 1.0, window: None }
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_head / self.n_kv_head
    }

    /// Whether a query at position `q_pos` attends to a key at position `k_pos`.
    #[inline(always)]
    pub fn visible(&self, q_pos: usize, k_pos: usize) -> bool {
        k_pos <= q_pos && self.window.is_none_or(|w| q_pos - k_pos < w)
    }

    /// Panics unless the buffers fit the shape; returns the cache capacity (slots per head).
    fn check<T: KvElem>(&self, q: &[f32], q_pos: &[usize], kv: &KvRows<T>, out: &[f32]) -> usize {
        let d = self.head_dim;
        assert!(
            self.n_kv_head > 0 && self.n_head.is_multiple_of(self.n_kv_head),
            "{self:?}: n_kv_head must divide n_head"
        );
        assert!(d > 0 && d.is_multiple_of(16), "{self:?}: head_dim must be a positive multiple of 16");
        let q_len = q_pos.len() * self.n_head * d;
        assert_eq!(q.len(), q_len, "q must hold [{}][{}][{d}]", q_pos.len(), self.n_head);
        assert_eq!(out.len(), q_len, "out must hold [{}][{}][{d}]", q_pos.len(), self.n_head);
        let row = self.n_kv_head * d;
        assert!(
            kv.k.len() == kv.v.len() && kv.k.len().is_multiple_of(row),
            "K and V must both hold [{}][capacity][{d}]",
            self.n_kv_head
        );
        let capacity = kv.k.len() / row;
        assert!(kv.pos.len() <= capacity, "{} used slots in a cache of {capacity}", kv.pos.len());
        capacity
    }
}

/// An element type of K and V in a cache: `half::f16` or `f32` (sealed: each kernel path has
/// a row load for each). The row operations below are what the cache and the portable paths
/// need; the SIMD loads stay private.
pub trait KvElem: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// What a freshly allocated slot holds until written.
    const ZERO: Self;

    /// `dst = src` in this type: for f16 rounded as ggml rounds (nearest even, overflow to
    /// infinity, NaN to the canonical quiet NaN); for f32 a copy.
    fn store_row(src: &[f32], dst: &mut [Self]);

    /// The row in f32 (exact): `src` itself for f32, widened into `buf` for f16. Whole rows
    /// at a time, since `half`'s slice conversion checks the CPU once per call.
    fn as_f32<'b>(src: &'b [Self], buf: &'b mut [f32]) -> &'b [f32];

    /// `dst = src` widened to f64 (exact).
    fn to_f64_row(src: &[Self], dst: &mut [f64]);
}

impl KvElem for f16 {
    const ZERO: f16 = f16::ZERO;

    fn store_row(src: &[f32], dst: &mut [f16]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = f32_to_f16(src);
        }
    }

    fn as_f32<'b>(src: &'b [f16], buf: &'b mut [f32]) -> &'b [f32] {
        src.convert_to_f32_slice(buf);
        buf
    }

    fn to_f64_row(src: &[f16], dst: &mut [f64]) {
        src.convert_to_f64_slice(dst);
    }
}

impl KvElem for f32 {
    const ZERO: f32 = 0.0;

    fn store_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn as_f32<'b>(src: &'b [f32], _buf: &'b mut [f32]) -> &'b [f32] {
        src
    }

    fn to_f64_row(src: &[f32], dst: &mut [f64]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = src as f64;
        }
    }
}

mod sealed {
    use half::f16;

    use super::{KvRows, KvSlots};

    /// What only this module may use of an element type: its [`KvSlots`] variant and its
    /// SIMD row loads.
    pub trait Sealed: Sized {
        fn wrap(rows: KvRows<'_, Self>) -> KvSlots<'_>;

        /// 8 elements from `p`, widened to f32.
        ///
        /// # Safety
        /// 8 elements are readable from `p`; the CPU supports AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x8(p: *const Self) -> std::arch::x86_64::__m256;

        /// 16 elements from `p`, widened to f32.
        ///
        /// # Safety
        /// 16 elements are readable from `p`; the CPU supports AVX2, FMA, F16C and AVX-512
        /// F/BW/VL/VNNI.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x16(p: *const Self) -> std::arch::x86_64::__m512;
    }

    impl Sealed for f16 {
        fn wrap(rows: KvRows<'_, f16>) -> KvSlots<'_> {
            KvSlots::F16(rows)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(p: *const f16) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable elements (16 bytes); loadu has no
            // alignment requirement.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(p: *const f16) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 16 readable elements (32 bytes).
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
        }
    }

    impl Sealed for f32 {
        fn wrap(rows: KvRows<'_, f32>) -> KvSlots<'_> {
            KvSlots::F32(rows)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(p: *const f32) -> std::arch::x86_64::__m256 {
            // SAFETY: the caller guarantees 8 readable elements (32 bytes).
            unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(p: *const f32) -> std::arch::x86_64::__m512 {
            // SAFETY: the caller guarantees 16 readable elements (64 bytes).
            unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
        }
    }
}

/// A layer's KV cache in element type `T`: K and V laid out `[n_kv_head][capacity][head_dim]`
/// (capacity = `k.len() / (n_kv_head · head_dim)`), and the token position held by each used
/// slot. Slots `0..pos.len()` are used, in any position order; the rest are never read.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub pos: &'a [usize],
}

/// A layer's KV cache as [`attention`] takes it: [`KvRows`] of either element type.
#[derive(Clone, Copy, Debug)]
pub enum KvSlots<'a> {
    F16(KvRows<'a, f16>),
    F32(KvRows<'a, f32>),
}

impl<'a> KvSlots<'a> {
    /// K and V rows of type `T` (`[n_kv_head][capacity][head_dim]` each) and the positions of
    /// the used slots.
    pub fn new<T: KvElem>(k: &'a [T], v: &'a [T], pos: &'a [usize]) -> KvSlots<'a> {
        T::wrap(KvRows { k, v, pos })
    }

    /// The position held by each used slot.
    pub fn pos(&self) -> &'a [usize] {
        match self {
            KvSlots::F16(rows) => rows.pos,
            KvSlots::F32(rows) => rows.pos,
        }
    }
}

impl<'a, T: KvElem> From<KvRows<'a, T>> for KvSlots<'a> {
    fn from(rows: KvRows<'a, T>) -> KvSlots<'a> {
        T::wrap(rows)
    }
}

/// One (token, head) pair of the reference: its query row and its KV head's rows
/// (`capacity · d` each).
struct Pair<'a, T> {
    q: &'a [f32],
    q_pos: usize,
    k: &'a [T],
    v: &'a [T],
    pos: &'a [usize],
}

/// Runs `f` on every (token, head) pair of the reference, in parallel: pair `i` is token
/// `i / n_head`, head `i % n_head`, and owns `out[i * d..(i + 1) * d]`.
fn for_each_pair<T: KvElem>(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    kv: &KvRows<T>,
    out: &mut [f32],
    f: impl Fn(&Pair<T>, &mut [f32]) + Sync,
) {
    let capacity = shape.check(q, q_pos, kv, out);
    let d = shape.head_dim;
    let head_len = capacity * d;
    out.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
        let (t, h) = (i / shape.n_head, i % shape.n_head);
        let kv_head = h / shape.group();
        let rows = kv_head * head_len..(kv_head + 1) * head_len;
        let pair =
            Pair { q: &q[i * d..(i + 1) * d], q_pos: q_pos[t], k: &kv.k[rows.clone()], v: &kv.v[rows], pos: kv.pos };
        f(&pair, out);
    });
}

/// The reference: `out` (`[n_tokens][n_head][head_dim]`) for queries `q` (same shape) at
/// positions `q_pos`. Scores, softmax and the weighted sum are in f64, rounded to f32 at the
/// end, so the tests measure the fast path's rounding alone. A query that sees no key gets 0.
pub fn attention_reference(shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvSlots, out: &mut [f32]) {
    match kv {
        KvSlots::F16(rows) => reference_rows(shape, q, q_pos, rows, out),
        KvSlots::F32(rows) => reference_rows(shape, q, q_pos, rows, out),
    }
}

/// [`attention_reference`] for one element type.
fn reference_rows<T: KvElem>(shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvRows<T>, out: &mut [f32]) {
    let d = shape.head_dim;
    for_each_pair(shape, q, q_pos, &kv, out, |pair, out| {
        let mut row = vec![0.0f64; d];
        // (slot, score) for every visible key.
        let scores: Vec<(usize, f64)> = (pair.pos.iter().enumerate())
            .filter(|&(_, &k_pos)| shape.visible(pair.q_pos, k_pos))
            .map(|(slot, _)| {
                T::to_f64_row(&pair.k[slot * d..(slot + 1) * d], &mut row);
                let mut dot = 0.0f64;
                for (&q, &k) in pair.q.iter().zip(&row) {
                    dot += q as f64 * k;
                }
                (slot, dot * shape.scale as f64)
            })
            .collect();
        let max = scores.iter().map(|&(_, s)| s).fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<(usize, f64)> = scores.iter().map(|&(slot, s)| (slot, (s - max).exp())).collect();
        let sum: f64 = weights.iter().map(|&(_, w)| w).sum();
        let mut weighted = vec![0.0f64; d];
        for &(slot, w) in &weights {
            T::to_f64_row(&pair.v[slot * d..(slot + 1) * d], &mut row);
            for (acc, &v) in weighted.iter_mut().zip(&row) {
                *acc += w * v;
            }
        }
        for (out, weighted) in out.iter_mut().zip(weighted) {
            *out = if sum > 0.0 { (weighted / sum) as f32 } else { 0.0 };
        }
    });
}

/// Attention at instruction-set level `isa` (callers pass [`Isa::best`]; a level this CPU
/// lacks falls back to the portable path): `out` (`[n_tokens][n_head][head_dim]`, f32) for
/// queries `q` (same shape) at positions `q_pos`, over the cache `kv` (f16 or f32: matched
/// once per call, not per row). A query that sees no key gets 0.
///
/// The unit of work is a (token, KV head) pair and its whole group of query heads: each K and
/// V row is read from memory once and reused from L1 by every head of the group (2 on Gemma 4
/// sliding layers, 8 on full ones). In decode, where that gives too few units for the threads,
/// the keys are also split into chunks whose partial results are merged at the end.
pub fn attention(isa: Isa, shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvSlots, out: &mut [f32]) {
    let n_chunks = key_chunks(q_pos.len() * shape.n_kv_head, kv.pos().len());
    match kv {
        KvSlots::F16(rows) => attention_split(isa, shape, q, q_pos, rows, out, n_chunks),
        KvSlots::F32(rows) => attention_split(isa, shape, q, q_pos, rows, out, n_chunks),
    }
}

/// Shortest key chunk worth a unit of work of its own.
const MIN_CHUNK_KEYS: usize = 256;

/// Key chunks per (token, KV head): enough units to give every thread about four, without
/// chunks under [`MIN_CHUNK_KEYS`] keys; 1 (no split) when the pairs alone suffice.
fn key_chunks(n_pairs: usize, n_keys: usize) -> usize {
    let want = 4 * rayon::current_num_threads();
    want.div_ceil(n_pairs.max(1)).min(n_keys / MIN_CHUNK_KEYS).max(1)
}

/// The online-softmax state of one query head: the largest score so far and the sum of
/// `e^(score - max)` over the keys seen.
#[derive(Clone, Copy, Debug)]
struct Running {
    max: f32,
    sum: f32,
}

impl Running {
    const EMPTY: Running = Running { max: f32::NEG_INFINITY, sum: 0.0 };
}

/// One unit of work: the `group` query rows of one (token, KV head) pair (`group · d`), that
/// KV head's rows (`capacity · d` each) and the slots of the key chunk to go through.
struct Unit<'a, T> {
    q: &'a [f32],
    q_pos: usize,
    k: &'a [T],
    v: &'a [T],
    pos: &'a [usize],
    slots: std::ops::Range<usize>,
}

/// [`attention`] over rows of one element type, with the keys split into `n_chunks` chunks of
/// consecutive slots.
#[allow(clippy::too_many_arguments)]
fn attention_split<T: KvElem>(
    isa: Isa,
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    kv: KvRows<T>,
    out: &mut [f32],
    n_chunks: usize,
) {
    let capacity = shape.check(q, q_pos, &kv, out);
    let (d, group, n_kv_head) = (shape.head_dim, shape.group(), shape.n_kv_head);
    let n_keys = kv.pos.len();
    let chunk_len = n_keys.div_ceil(n_chunks).max(1);
    // Unit `u` is token `u / n_kv_head`, KV head `u % n_kv_head`; its query heads are
    // consecutive, so its queries and outputs are `[u * group * d, (u + 1) * group * d)`.
    let unit_len = group * d;
    let head_len = capacity * d;
    let run = |u: usize, chunk: usize, acc: &mut [f32], state: &mut [Running]| {
        let (t, kv_head) = (u / n_kv_head, u % n_kv_head);
        let rows = kv_head * head_len..(kv_head + 1) * head_len;
        let unit = Unit {
            q: &q[u * unit_len..(u + 1) * unit_len],
            q_pos: q_pos[t],
            k: &kv.k[rows.clone()],
            v: &kv.v[rows],
            pos: kv.pos,
            slots: (chunk * chunk_len).min(n_keys)..((chunk + 1) * chunk_len).min(n_keys),
        };
        acc.fill(0.0);
        state.fill(Running::EMPTY);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checked that this CPU has AVX2, FMA and F16C.
            Isa::Avx2 if crate::kernels::cpu::detected().avx2 => unsafe { x86::attend_avx2(shape, &unit, acc, state) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checked that this CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
            Isa::Avx512 if crate::kernels::cpu::detected().avx512 => unsafe {
                x86::attend_avx512(shape, &unit, acc, state)
            },
            _ => attend_scalar(shape, &unit, acc, state),
        }
    };

    if n_chunks == 1 {
        // Accumulate straight into `out`, then divide by the sums.
        out.par_chunks_mut(unit_len).enumerate().for_each(|(u, out)| {
            let mut state = vec![Running::EMPTY; group];
            run(u, 0, out, &mut state);
            for (out, state) in out.chunks_exact_mut(d).zip(&state) {
                let inv = if state.sum > 0.0 { 1.0 / state.sum } else { 0.0 };
                out.iter_mut().for_each(|o| *o *= inv);
            }
        });
        return;
    }

    // Partial results `[unit][chunk][group]`: an unnormalized accumulator of d and a state each.
    let n_units = q_pos.len() * n_kv_head;
    let mut acc = vec![0.0f32; n_units * n_chunks * unit_len];
    let mut states = vec![Running::EMPTY; n_units * n_chunks * group];
    (acc.par_chunks_mut(unit_len).zip(states.par_chunks_mut(group)))
        .enumerate()
        .for_each(|(i, (acc, state))| run(i / n_chunks, i % n_chunks, acc, state));
    // Merge per (token, head): rescale each chunk to the overall maximum, as the streaming
    // loop does when its maximum grows. Output row `i` is unit `i / group`, head `i % group`.
    out.par_chunks_mut(d).enumerate().for_each(|(i, out)| {
        let (u, j) = (i / group, i % group);
        let part = |chunk: usize| (u * n_chunks + chunk) * group + j;
        let max = (0..n_chunks).map(|c| states[part(c)].max).fold(f32::NEG_INFINITY, f32::max);
        out.fill(0.0);
        if max == f32::NEG_INFINITY {
            return; // No visible key in any chunk.
        }
        let mut sum = 0.0f32;
        for c in 0..n_chunks {
            let (state, acc) = (states[part(c)], &acc[part(c) * d..(part(c) + 1) * d]);
            let w = (state.max - max).exp();
            sum += state.sum * w;
            out.iter_mut().zip(acc).for_each(|(o, &a)| *o += a * w);
        }
        let inv = 1.0 / sum;
        out.iter_mut().for_each(|o| *o *= inv);
    });
}

/// The online softmax for one unit, over the visible keys of its chunk in slot order: for
/// each query head, `acc = Σ e^(s_j - max) v_j` and `state.sum = Σ e^(s_j - max)` with
/// `state.max` the largest score so far (the caller divides). When a key raises a head's
/// maximum, that head's accumulator and sum are first multiplied by `e^(old max - new max)`
/// (0 at its first key, where the old maximum is -inf). The heads take turns on each key, so
/// its K and V rows come from memory once per group.
///
/// `dot(q, k)` is the dot product of a query row with a key row; `mix(acc, c, v, p)` sets
/// `acc = acc · c + v · p`. Inlined into each ISA's function, so the closures get its features.
#[inline(always)]
fn stream<T>(
    shape: &AttnShape,
    unit: &Unit<T>,
    acc: &mut [f32],
    state: &mut [Running],
    mut dot: impl FnMut(&[f32], &[T]) -> f32,
    mut mix: impl FnMut(&mut [f32], f32, &[T], f32),
) {
    let d = shape.head_dim;
    for slot in unit.slots.clone() {
        if !shape.visible(unit.q_pos, unit.pos[slot]) {
            continue;
        }
        let (k, v) = (&unit.k[slot * d..(slot + 1) * d], &unit.v[slot * d..(slot + 1) * d]);
        for ((q, acc), state) in unit.q.chunks_exact(d).zip(acc.chunks_exact_mut(d)).zip(state.iter_mut()) {
            let s = dot(q, k) * shape.scale;
            if s > state.max {
                let c = (state.max - s).exp();
                state.sum = state.sum * c + 1.0;
                mix(acc, c, v, 1.0);
                state.max = s;
            } else {
                let p = (s - state.max).exp();
                state.sum += p;
                mix(acc, 1.0, v, p);
            }
        }
    }
}

/// Portable streaming path (also the one non-x86 machines run). f16 rows are widened a whole
/// row at a time ([`KvElem::as_f32`]); f32 rows are used as they are.
fn attend_scalar<T: KvElem>(shape: &AttnShape, unit: &Unit<T>, acc: &mut [f32], state: &mut [Running]) {
    let (mut k_row, mut v_row) = (vec![0.0f32; shape.head_dim], vec![0.0f32; shape.head_dim]);
    stream(
        shape,
        unit,
        acc,
        state,
        |q, k| {
            let mut dot = 0.0f32;
            for (&q, &k) in q.iter().zip(T::as_f32(k, &mut k_row)) {
                dot += q * k;
            }
            dot
        },
        |acc, c, v, p| {
            for (a, &v) in acc.iter_mut().zip(T::as_f32(v, &mut v_row)) {
                *a = *a * c + v * p;
            }
        },
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{stream, AttnShape, KvElem, Running, Unit};
    use crate::kernels::x86::hsum_f32x8;

    /// The streaming pass with AVX2 row operations.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn attend_avx2<T: KvElem>(shape: &AttnShape, unit: &Unit<T>, acc: &mut [f32], state: &mut [Running]) {
        stream(shape, unit, acc, state, |q, k| dot_avx2(q, k), |out, c, v, p| mix_avx2(out, c, v, p));
    }

    /// The streaming pass with AVX-512 row operations.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn attend_avx512<T: KvElem>(shape: &AttnShape, unit: &Unit<T>, acc: &mut [f32], state: &mut [Running]) {
        stream(shape, unit, acc, state, |q, k| dot_avx512(q, k), |out, c, v, p| mix_avx512(out, c, v, p));
    }

    /// `q · k` for rows whose length is a multiple of 8: four independent FMA chains over 32
    /// elements a step, then 8 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        debug_assert!(q.len() == k.len() && q.len().is_multiple_of(8));
        let mut acc = [_mm256_setzero_ps(); 4];
        let (mut q32, mut k32) = (q.chunks_exact(32), k.chunks_exact(32));
        for (q, k) in (&mut q32).zip(&mut k32) {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 32 elements, so 8 from offset 8j (j < 4) are in
                // bounds; the loads have no alignment requirement; this function's features
                // are the loads'.
                let (q, k) = unsafe { (_mm256_loadu_ps(q.as_ptr().add(8 * j)), T::load_f32x8(k.as_ptr().add(8 * j))) };
                *acc = _mm256_fmadd_ps(q, k, *acc);
            }
        }
        for (q, k) in q32.remainder().chunks_exact(8).zip(k32.remainder().chunks_exact(8)) {
            // SAFETY: both chunks hold 8 elements.
            let (q, k) = unsafe { (_mm256_loadu_ps(q.as_ptr()), T::load_f32x8(k.as_ptr())) };
            acc[0] = _mm256_fmadd_ps(q, k, acc[0]);
        }
        hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
    }

    /// `out = out · c + v · p` for rows whose length is a multiple of 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mix_avx2<T: KvElem>(out: &mut [f32], c: f32, v: &[T], p: f32) {
        debug_assert!(out.len() == v.len() && out.len().is_multiple_of(8));
        let (c, p) = (_mm256_set1_ps(c), _mm256_set1_ps(p));
        for (o, v) in out.chunks_exact_mut(8).zip(v.chunks_exact(8)) {
            // SAFETY: both chunks hold 8 elements; this function's features are the load's.
            unsafe {
                let v = T::load_f32x8(v.as_ptr());
                let kept = _mm256_mul_ps(_mm256_loadu_ps(o.as_ptr()), c);
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_fmadd_ps(v, p, kept));
            }
        }
    }

    /// `q · k` for rows whose length is a multiple of 16: four independent 16-lane FMA chains
    /// over 64 elements a step, then 16 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dot_avx512<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        debug_assert!(q.len() == k.len() && q.len().is_multiple_of(16));
        let mut acc = [_mm512_setzero_ps(); 4];
        let (mut q64, mut k64) = (q.chunks_exact(64), k.chunks_exact(64));
        for (q, k) in (&mut q64).zip(&mut k64) {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: both chunks hold 64 elements, so 16 from offset 16j (j < 4) are in
                // bounds; the loads have no alignment requirement; this function's features
                // are the loads'.
                let (q, k) =
                    unsafe { (_mm512_loadu_ps(q.as_ptr().add(16 * j)), T::load_f32x16(k.as_ptr().add(16 * j))) };
                *acc = _mm512_fmadd_ps(q, k, *acc);
            }
        }
        for (j, (q, k)) in q64.remainder().chunks_exact(16).zip(k64.remainder().chunks_exact(16)).enumerate() {
            // SAFETY: both chunks hold 16 elements.
            let (q, k) = unsafe { (_mm512_loadu_ps(q.as_ptr()), T::load_f32x16(k.as_ptr())) };
            acc[j] = _mm512_fmadd_ps(q, k, acc[j]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// `out = out · c + v · p` for rows whose length is a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn mix_avx512<T: KvElem>(out: &mut [f32], c: f32, v: &[T], p: f32) {
        debug_assert!(out.len() == v.len() && out.len().is_multiple_of(16));
        let (c, p) = (_mm512_set1_ps(c), _mm512_set1_ps(p));
        for (o, v) in out.chunks_exact_mut(16).zip(v.chunks_exact(16)) {
            // SAFETY: both chunks hold 16 elements; this function's features are the load's.
            unsafe {
                let v = T::load_f32x16(v.as_ptr());
                let kept = _mm512_mul_ps(_mm512_loadu_ps(o.as_ptr()), c);
                _mm512_storeu_ps(o.as_mut_ptr(), _mm512_fmadd_ps(v, p, kept));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// One attention call's inputs, with K and V of type `T`. Built by [`Case::random`].
    struct Case<T: KvElem> {
        shape: AttnShape,
        q: Vec<f32>,
        q_pos: Vec<usize>,
        k: Vec<T>,
        v: Vec<T>,
        pos: Vec<usize>,
    }

    /// `x` in f32.
    fn widen<T: KvElem>(x: &[T]) -> Vec<f32> {
        T::as_f32(x, &mut vec![0.0; x.len()]).to_vec()
    }

    impl<T: KvElem> Case<T> {
        /// Random queries and a cache of `n_keys` used slots (plus two unused ones, poisoned
        /// with NaN so that reading them shows) holding positions `first..first + n_keys`
        /// rotated by `rotate` slots, as a ring buffer leaves them.
        fn random(shape: AttnShape, n_tokens: usize, n_keys: usize, rotate: usize, seed: u64) -> Case<T> {
            let mut rng = StdRng::seed_from_u64(seed);
            let d = shape.head_dim;
            let capacity = n_keys + 2;
            // Scores q·k with a standard deviation of about 2 (uniform q in ±6/√d, k in ±1; the
            // largest of 3000 near 8): peaked enough that the running maximum moves several
            // times. The error grows with |score| (an f32 score is off by ~eps·|s|, which shifts
            // a weight by the same relative amount): at a deviation of 3 it reaches 8e-6.
            let q_range = 6.0 / (d as f32).sqrt();
            let q = (0..n_tokens * shape.n_head * d).map(|_| rng.gen_range(-q_range..q_range)).collect();
            let cache = |rng: &mut StdRng| -> Vec<T> {
                let mut x = vec![f32::NAN; shape.n_kv_head * capacity * d];
                for head in x.chunks_exact_mut(capacity * d) {
                    head[..n_keys * d].iter_mut().for_each(|x| *x = rng.gen_range(-1.0..1.0));
                }
                let mut stored = vec![T::ZERO; x.len()];
                T::store_row(&x, &mut stored);
                stored
            };
            let (k, v) = (cache(&mut rng), cache(&mut rng));
            let first = 7;
            let pos = (0..n_keys).map(|slot| first + (slot + rotate) % n_keys).collect();
            // Queries spread over the cached positions, the last at the newest key, so that the
            // causal mask cuts each at a different place.
            let q_pos = (0..n_tokens).map(|t| first + ((t + 1) * n_keys / n_tokens).saturating_sub(1)).collect();
            Case { shape, q, q_pos, k, v, pos }
        }

        fn rows(&self) -> KvRows<'_, T> {
            KvRows { k: &self.k, v: &self.v, pos: &self.pos }
        }

        fn reference(&self) -> Vec<f32> {
            let mut out = vec![f32::NAN; self.q.len()];
            attention_reference(&self.shape, &self.q, &self.q_pos, self.rows().into(), &mut out);
            out
        }

        fn streaming(&self, isa: Isa) -> Vec<f32> {
            let mut out = vec![f32::NAN; self.q.len()];
            attention(isa, &self.shape, &self.q, &self.q_pos, self.rows().into(), &mut out);
            out
        }

        /// `max |v|` over the used slots (f32::max skips the NaN of the unused ones).
        fn max_v(&self) -> f32 {
            widen(&self.v).iter().fold(0.0, |m, v| m.max(v.abs()))
        }

        /// V row `slot` of KV head 0, in f32.
        fn v_row(&self, slot: usize) -> Vec<f32> {
            let d = self.shape.head_dim;
            widen(&self.v[slot * d..(slot + 1) * d])
        }
    }

    /// Every streaming path against the f64 reference, on random data (ring-ordered slots, GQA
    /// groups of 2 and 8, 1 and 5 query tokens, 1 to 3000 keys, causal only and with windows
    /// of 1024 and 3). The output is a convex combination of V rows, and the f32 rounding of
    /// the scores, exponentials and running sums perturbs each weight by a relative ~1e-6 at
    /// these sizes (worst seen: 2.3e-6 · max |v| with f16 K/V, 1.3e-6 with f32; the element
    /// type hardly enters, since the reference reads the same stored values): require
    /// `max |got - want| <= 1e-5 · max |v|`.
    fn streaming_matches_reference<T: KvElem>(head_dim: usize) {
        for (n_kv_head, group) in [(2, 2), (1, 8)] {
            for n_tokens in [1, 5] {
                for n_keys in [1, 2, 37, 3000] {
                    // One key count also checks that the scale is applied.
                    let scale = if n_keys == 37 { 0.5 } else { 1.0 };
                    let shape = AttnShape { n_head: n_kv_head * group, n_kv_head, head_dim, scale, window: None };
                    let seed = (head_dim * 1000 + group * 100 + n_tokens * 10000 + n_keys) as u64;
                    let mut case = Case::<T>::random(shape, n_tokens, n_keys, n_keys / 3, seed);
                    let bound = 1e-5 * case.max_v();
                    for window in [None, Some(1024), Some(3)] {
                        case.shape.window = window;
                        let shape = case.shape;
                        let want = case.reference();
                        for isa in Isa::available() {
                            let got = case.streaming(isa);
                            let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
                            assert!(
                                err <= bound,
                                "{isa:?} {shape:?} tokens={n_tokens} keys={n_keys}: max error {err} > {bound}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn streaming_matches_reference_d256() {
        streaming_matches_reference::<f16>(256);
    }

    #[test]
    fn streaming_matches_reference_d512() {
        streaming_matches_reference::<f16>(512);
    }

    #[test]
    fn f32_streaming_matches_reference_d256() {
        streaming_matches_reference::<f32>(256);
    }

    #[test]
    fn f32_streaming_matches_reference_d512() {
        streaming_matches_reference::<f32>(512);
    }

    /// The key split and the merge of its partial results, for 1 chunk up to more chunks than
    /// keys (some empty, and with a window of 1 most of them see no key), against the
    /// reference with the same bound as above.
    fn key_splits_match_the_reference<T: KvElem>() {
        let shape = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 64, scale: 1.0, window: None };
        for n_keys in [37, 300] {
            let mut case = Case::<T>::random(shape, 2, n_keys, n_keys / 3, 5);
            let bound = 1e-5 * case.max_v();
            for window in [None, Some(100), Some(1)] {
                case.shape.window = window;
                let want = case.reference();
                for isa in Isa::available() {
                    for n_chunks in [1, 2, 3, 7, 50] {
                        let mut got = vec![f32::NAN; case.q.len()];
                        attention_split(isa, &case.shape, &case.q, &case.q_pos, case.rows(), &mut got, n_chunks);
                        let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
                        assert!(err <= bound, "{isa:?} keys={n_keys} {window:?} chunks={n_chunks}: error {err}");
                    }
                }
            }
        }
    }

    #[test]
    fn key_splits_match_the_reference_f16() {
        key_splits_match_the_reference::<f16>();
    }

    #[test]
    fn key_splits_match_the_reference_f32() {
        key_splits_match_the_reference::<f32>();
    }

    /// Every path (the reference included) on a hand-built case, compared exactly.
    fn check_exact<T: KvElem>(case: &Case<T>, want: &[f32], what: &str) {
        let what = format!("{what}, {}", std::any::type_name::<T>());
        assert_eq!(case.reference(), want, "reference: {what}");
        for isa in Isa::available() {
            assert_eq!(case.streaming(isa), want, "{isa:?}: {what}");
        }
    }

    fn shape(window: Option<usize>) -> AttnShape {
        AttnShape { n_head: 2, n_kv_head: 1, head_dim: 32, scale: 1.0, window }
    }

    #[test]
    fn a_single_key_gives_its_value() {
        fn check<T: KvElem>() {
            let case = Case::<T>::random(shape(None), 1, 1, 0, 1);
            // Weight e^0 / e^0 = 1 exactly, for both query heads.
            check_exact(&case, &[case.v_row(0), case.v_row(0)].concat(), "one key");
        }
        check::<f16>();
        check::<f32>();
    }

    #[test]
    fn a_window_of_one_sees_only_the_current_token() {
        fn check<T: KvElem>() {
            // 10 keys in ring order; the query at the newest position, window 1.
            let case = Case::<T>::random(shape(Some(1)), 1, 10, 4, 2);
            let slot = case.pos.iter().position(|&p| p == case.q_pos[0]).unwrap();
            check_exact(&case, &[case.v_row(slot), case.v_row(slot)].concat(), "window 1");
        }
        check::<f16>();
        check::<f32>();
    }

    #[test]
    fn equal_scores_average_the_values() {
        fn check<T: KvElem>() {
            let mut case = Case::<T>::random(shape(None), 1, 2, 0, 3);
            let (k0, rest) = case.k.split_at_mut(32);
            rest[..32].copy_from_slice(k0);
            // (v0 + v1) / 2: every path rounds the sum to f32 once (exact for f16 values) and
            // halves it exactly.
            let avg: Vec<f32> = case.v_row(0).iter().zip(case.v_row(1)).map(|(a, b)| (a + b) * 0.5).collect();
            check_exact(&case, &[avg.clone(), avg].concat(), "two equal keys");
        }
        check::<f16>();
        check::<f32>();
    }

    #[test]
    fn the_window_edge_and_the_future_are_masked() {
        fn check<T: KvElem>() {
            // Query at position 2000. Keys at 2000 - 1024 (outside a 1024 window), 2000 - 1023
            // (the oldest inside it) and 2001 (the future), all with score 0 (K = 0).
            let mut case = Case::<T>::random(shape(Some(1024)), 1, 3, 0, 4);
            case.k.iter_mut().for_each(|k| *k = T::ZERO);
            case.pos = vec![976, 977, 2001];
            case.q_pos = vec![2000];
            let inside = case.v_row(1);
            check_exact(&case, &[inside.clone(), inside].concat(), "window 1024");
            // Causal only: the two past keys, equally weighted.
            case.shape.window = None;
            let avg: Vec<f32> = case.v_row(0).iter().zip(case.v_row(1)).map(|(a, b)| (a + b) * 0.5).collect();
            check_exact(&case, &[avg.clone(), avg].concat(), "causal");
        }
        check::<f16>();
        check::<f32>();
    }

    /// The enum carries the rows of either type unchanged.
    #[test]
    fn kv_slots_wrap_either_type() {
        let (k16, k32, pos) = ([f16::ONE; 16], [1.0f32; 16], [3usize]);
        assert!(matches!(KvSlots::new(&k16, &k16, &pos), KvSlots::F16(r) if r.k.as_ptr() == k16.as_ptr()));
        assert!(matches!(KvSlots::new(&k32, &k32, &pos), KvSlots::F32(r) if r.v.as_ptr() == k32.as_ptr()));
        assert_eq!(KvSlots::new(&k32, &k32, &pos).pos(), [3]);
    }
}
