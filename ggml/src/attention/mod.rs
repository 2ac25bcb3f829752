//! Attention over a KV cache of any [`KvType`] (K and V each their own): for every query token `t` and head `h`,
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
//! K and V are f16 by default (as llama.cpp stores them: half the memory and half the bytes
//! read per decode step), f32 (no rounding of K and V at all, to match a float32 reference
//! tightly), bf16, or the block formats q8_0 and q4_0 (a half and a quarter of f16's bytes
//! again), each tensor its own ([`kv`]). [`KvSlots`] says which; [`attention`] looks once per
//! call and runs code monomorphized for that pair of types ([`KvElem`]), so the hot loops
//! never branch on them. An f32 row is read as it is (`loadu_ps`); the others are widened or
//! dequantized on the fly, 8 or 16 elements at a time, and the queries stay f32.
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

use rayon::prelude::*;

use crate::kernels::Isa;
use crate::parallel::for_each_chunk_mut;

mod kv;
pub mod rotation;
#[cfg(target_arch = "x86_64")]
mod tiled;
pub(crate) use kv::{match_kv_data, match_kv_slots};
pub use kv::{KvData, KvElem, KvRows, KvSlots, KvType, ParseKvTypeError};

/// The shape of one attention layer's computation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; must divide `n_head`.
    pub n_kv_head: usize,
    /// Elements per head (256 or 512 for Gemma 4); a multiple of 16, and of 32 (whole blocks)
    /// for a block type.
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
        self.visible_to(q_pos, q_pos, k_pos)
    }

    /// Whether a query at position `q_pos` that sees up to `q_last` (itself, or the last
    /// position of its image on a sliding layer: GEMMA4.md 1.3) attends to a key at `k_pos`:
    /// `k_pos <= q_last`, and within the window below `q_pos`.
    #[inline(always)]
    pub fn visible_to(&self, q_pos: usize, q_last: usize, k_pos: usize) -> bool {
        k_pos <= q_last && self.window.is_none_or(|w| k_pos + w > q_pos)
    }

    /// Panics unless the buffers fit the shape; returns the cache capacity (slots per head).
    fn check<K: KvElem, V: KvElem>(&self, q: &[f32], q_pos: &[usize], kv: &KvRows<K, V>, out: &[f32]) -> usize {
        let d = self.head_dim;
        assert!(
            self.n_kv_head > 0 && self.n_head.is_multiple_of(self.n_kv_head),
            "{self:?}: n_kv_head must divide n_head"
        );
        assert!(d > 0 && d.is_multiple_of(16), "{self:?}: head_dim must be a positive multiple of 16");
        let q_len = q_pos.len() * self.n_head * d;
        assert_eq!(q.len(), q_len, "q must hold [{}][{}][{d}]", q_pos.len(), self.n_head);
        assert_eq!(out.len(), q_len, "out must hold [{}][{}][{d}]", q_pos.len(), self.n_head);
        assert!(
            d.is_multiple_of(K::BLOCK) && d.is_multiple_of(V::BLOCK),
            "head_dim {d} is not whole blocks of {} and {}",
            K::TYPE,
            V::TYPE
        );
        let (k_row, v_row) = (self.n_kv_head * K::units(d), self.n_kv_head * V::units(d));
        assert!(
            kv.k.len().is_multiple_of(k_row) && kv.v.len() == kv.k.len() / k_row * v_row,
            "K and V must both hold [{}][capacity][{d}]",
            self.n_kv_head
        );
        let capacity = kv.k.len() / k_row;
        assert!(kv.pos.len() <= capacity, "{} used slots in a cache of {capacity}", kv.pos.len());
        capacity
    }
}

/// One (token, head) pair of the reference: its query row and its KV head's rows
/// (`capacity · d` elements each).
struct Pair<'a, K, V> {
    q: &'a [f32],
    q_pos: usize,
    q_last: usize,
    k: &'a [K],
    v: &'a [V],
    pos: &'a [usize],
}

/// Runs `f` on every (token, head) pair of the reference, in parallel: pair `i` is token
/// `i / n_head`, head `i % n_head`, and owns `out[i * d..(i + 1) * d]`.
fn for_each_pair<K: KvElem, V: KvElem>(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: &KvRows<K, V>,
    out: &mut [f32],
    f: impl Fn(&Pair<K, V>, &mut [f32]) + Sync,
) {
    let capacity = shape.check(q, q_pos, kv, out);
    let d = shape.head_dim;
    let (k_head, v_head) = (capacity * K::units(d), capacity * V::units(d));
    for_each_chunk_mut(out, d, |i, out| {
        let (t, h) = (i / shape.n_head, i % shape.n_head);
        let kv_head = h / shape.group();
        let pair = Pair {
            q: &q[i * d..(i + 1) * d],
            q_pos: q_pos[t],
            q_last: q_last[t],
            k: &kv.k[kv_head * k_head..(kv_head + 1) * k_head],
            v: &kv.v[kv_head * v_head..(kv_head + 1) * v_head],
            pos: kv.pos,
        };
        f(&pair, out);
    });
}

/// The reference: `out` (`[n_tokens][n_head][head_dim]`) for queries `q` (same shape) at
/// positions `q_pos`. Scores, softmax and the weighted sum are in f64, rounded to f32 at the
/// end, so the tests measure the fast path's rounding alone. A query that sees no key gets 0.
pub fn attention_reference(shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvSlots, out: &mut [f32]) {
    attention_reference_to(shape, q, q_pos, q_pos, kv, out)
}

/// [`attention_reference`] where query `t` sees keys up to `q_last[t]` ([`AttnShape::visible_to`]).
pub fn attention_reference_to(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: KvSlots,
    out: &mut [f32],
) {
    assert_eq!(q_pos.len(), q_last.len(), "one last position per query");
    match_kv_slots!(kv, rows => reference_rows(shape, q, q_pos, q_last, rows, out))
}

/// [`attention_reference`] for one pair of element types.
fn reference_rows<K: KvElem, V: KvElem>(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: KvRows<K, V>,
    out: &mut [f32],
) {
    let d = shape.head_dim;
    let (kr, vr) = (K::units(d), V::units(d));
    for_each_pair(shape, q, q_pos, q_last, &kv, out, |pair, out| {
        let mut row = vec![0.0f64; d];
        // (slot, score) for every visible key.
        let scores: Vec<(usize, f64)> = (pair.pos.iter().enumerate())
            .filter(|&(_, &k_pos)| shape.visible_to(pair.q_pos, pair.q_last, k_pos))
            .map(|(slot, _)| {
                K::to_f64_row(&pair.k[slot * kr..(slot + 1) * kr], &mut row);
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
            V::to_f64_row(&pair.v[slot * vr..(slot + 1) * vr], &mut row);
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
/// queries `q` (same shape) at positions `q_pos`, over the cache `kv` (its K and V types
/// matched once per call, not per row). A query that sees no key gets 0.
///
/// The unit of work is a (token, KV head) pair and its whole group of query heads: each K and
/// V row is read from memory once and reused from L1 by every head of the group (2 on Gemma 4
/// sliding layers, 8 on full ones). In decode, where that gives too few units for the threads,
/// the keys are also split into chunks whose partial results are merged at the end.
pub fn attention(isa: Isa, shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvSlots, out: &mut [f32]) {
    attention_to(isa, shape, q, q_pos, q_pos, kv, out)
}

/// [`attention`] where query `t` sees keys up to `q_last[t]` ([`AttnShape::visible_to`]): an
/// image's soft tokens see each other both ways on sliding layers.
pub fn attention_to(
    isa: Isa,
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: KvSlots,
    out: &mut [f32],
) {
    assert_eq!(q_pos.len(), q_last.len(), "one last position per query");
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && crate::kernels::cpu::detected().avx512 && tiled::usable(shape, q_pos.len()) {
        match_kv_slots!(kv, rows => {
            let capacity = shape.check(q, q_pos, &rows, out);
            // SAFETY: the guard checked that this CPU has AVX2, FMA, F16C and AVX-512
            // F/BW/VL/VNNI.
            unsafe { tiled::attention(shape, q, q_pos, q_last, &rows, capacity, out) }
        });
        return;
    }
    let n_chunks = key_chunks(q_pos.len() * shape.n_kv_head, kv.pos().len());
    match_kv_slots!(kv, rows => attention_split(isa, shape, q, q_pos, q_last, rows, out, n_chunks))
}

/// Shortest key chunk worth a unit of work of its own.
const MIN_CHUNK_KEYS: usize = 256;

/// Key chunks per (token, KV head): enough units to give every thread about four, without
/// chunks under [`MIN_CHUNK_KEYS`] keys; 1 (no split) when the pairs alone suffice.
fn key_chunks(n_pairs: usize, n_keys: usize) -> usize {
    let want = 4 * crate::parallel::threads();
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
/// KV head's rows (`capacity · d` elements each) and the slots of the key chunk to go through.
struct Unit<'a, K, V> {
    q: &'a [f32],
    q_pos: usize,
    q_last: usize,
    k: &'a [K],
    v: &'a [V],
    pos: &'a [usize],
    slots: std::ops::Range<usize>,
}

/// [`attention`] over rows of one pair of element types, with the keys split into `n_chunks`
/// chunks of consecutive slots.
#[allow(clippy::too_many_arguments)]
fn attention_split<K: KvElem, V: KvElem>(
    isa: Isa,
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: KvRows<K, V>,
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
    let (k_head, v_head) = (capacity * K::units(d), capacity * V::units(d));
    let run = |u: usize, chunk: usize, acc: &mut [f32], state: &mut [Running]| {
        let (t, kv_head) = (u / n_kv_head, u % n_kv_head);
        let unit = Unit {
            q: &q[u * unit_len..(u + 1) * unit_len],
            q_pos: q_pos[t],
            q_last: q_last[t],
            k: &kv.k[kv_head * k_head..(kv_head + 1) * k_head],
            v: &kv.v[kv_head * v_head..(kv_head + 1) * v_head],
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
        for_each_chunk_mut(out, unit_len, |u, out| {
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
    for_each_chunk_mut(out, d, |i, out| {
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
fn stream<K: KvElem, V: KvElem>(
    shape: &AttnShape,
    unit: &Unit<K, V>,
    acc: &mut [f32],
    state: &mut [Running],
    mut dot: impl FnMut(&[f32], &[K]) -> f32,
    mut mix: impl FnMut(&mut [f32], f32, &[V], f32),
) {
    let d = shape.head_dim;
    let (kr, vr) = (K::units(d), V::units(d));
    for slot in unit.slots.clone() {
        if !shape.visible_to(unit.q_pos, unit.q_last, unit.pos[slot]) {
            continue;
        }
        let (k, v) = (&unit.k[slot * kr..(slot + 1) * kr], &unit.v[slot * vr..(slot + 1) * vr]);
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

/// Portable streaming path (also the one non-x86 machines run). Rows other than f32 are
/// widened a whole row at a time ([`KvElem::as_f32`]); f32 rows are used as they are.
fn attend_scalar<K: KvElem, V: KvElem>(shape: &AttnShape, unit: &Unit<K, V>, acc: &mut [f32], state: &mut [Running]) {
    let (mut k_row, mut v_row) = (vec![0.0f32; shape.head_dim], vec![0.0f32; shape.head_dim]);
    stream(
        shape,
        unit,
        acc,
        state,
        |q, k| {
            let mut dot = 0.0f32;
            for (&q, &k) in q.iter().zip(K::as_f32(k, &mut k_row)) {
                dot += q * k;
            }
            dot
        },
        |acc, c, v, p| {
            for (a, &v) in acc.iter_mut().zip(V::as_f32(v, &mut v_row)) {
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
    pub fn attend_avx2<K: KvElem, V: KvElem>(
        shape: &AttnShape,
        unit: &Unit<K, V>,
        acc: &mut [f32],
        state: &mut [Running],
    ) {
        stream(shape, unit, acc, state, |q, k| dot_avx2(q, k), |out, c, v, p| mix_avx2(out, c, v, p));
    }

    /// The streaming pass with AVX-512 row operations.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub fn attend_avx512<K: KvElem, V: KvElem>(
        shape: &AttnShape,
        unit: &Unit<K, V>,
        acc: &mut [f32],
        state: &mut [Running],
    ) {
        stream(shape, unit, acc, state, |q, k| dot_avx512(q, k), |out, c, v, p| mix_avx512(out, c, v, p));
    }

    /// `q · k` for a key row of `q.len()` elements, a multiple of 8: four independent FMA
    /// chains over 32 elements a step, then 8 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_avx2<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        let n = q.len();
        debug_assert!(n.is_multiple_of(8) && k.len() * T::BLOCK == n);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut e = 0;
        while e + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: elements e + 8j .. + 8 (j < 4) are in both rows (e + 32 <= n); the
                // loads have no alignment requirement; this function's features are the loads'.
                let (q, k) =
                    unsafe { (_mm256_loadu_ps(q.as_ptr().add(e + 8 * j)), T::load_f32x8(k.as_ptr(), e + 8 * j)) };
                *acc = _mm256_fmadd_ps(q, k, *acc);
            }
            e += 32;
        }
        while e < n {
            // SAFETY: e + 8 <= n (n is a multiple of 8).
            let (qv, kv) = unsafe { (_mm256_loadu_ps(q.as_ptr().add(e)), T::load_f32x8(k.as_ptr(), e)) };
            acc[0] = _mm256_fmadd_ps(qv, kv, acc[0]);
            e += 8;
        }
        hsum_f32x8(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])))
    }

    /// `out = out · c + v · p` for a value row of `out.len()` elements, a multiple of 8.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mix_avx2<T: KvElem>(out: &mut [f32], c: f32, v: &[T], p: f32) {
        debug_assert!(out.len().is_multiple_of(8) && v.len() * T::BLOCK == out.len());
        let (c, p) = (_mm256_set1_ps(c), _mm256_set1_ps(p));
        for (i, o) in out.chunks_exact_mut(8).enumerate() {
            // SAFETY: elements 8i .. + 8 are in the row; this function's features are the load's.
            unsafe {
                let v = T::load_f32x8(v.as_ptr(), 8 * i);
                let kept = _mm256_mul_ps(_mm256_loadu_ps(o.as_ptr()), c);
                _mm256_storeu_ps(o.as_mut_ptr(), _mm256_fmadd_ps(v, p, kept));
            }
        }
    }

    /// `q · k` for a key row of `q.len()` elements, a multiple of 16: four independent
    /// 16-lane FMA chains over 64 elements a step, then 16 at a time.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dot_avx512<T: KvElem>(q: &[f32], k: &[T]) -> f32 {
        let n = q.len();
        debug_assert!(n.is_multiple_of(16) && k.len() * T::BLOCK == n);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut e = 0;
        while e + 64 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: elements e + 16j .. + 16 (j < 4) are in both rows (e + 64 <= n); the
                // loads have no alignment requirement; this function's features are the loads'.
                let (q, k) =
                    unsafe { (_mm512_loadu_ps(q.as_ptr().add(e + 16 * j)), T::load_f32x16(k.as_ptr(), e + 16 * j)) };
                *acc = _mm512_fmadd_ps(q, k, *acc);
            }
            e += 64;
        }
        let mut j = 0;
        while e < n {
            // SAFETY: e + 16 <= n (n is a multiple of 16).
            let (qv, kv) = unsafe { (_mm512_loadu_ps(q.as_ptr().add(e)), T::load_f32x16(k.as_ptr(), e)) };
            acc[j] = _mm512_fmadd_ps(qv, kv, acc[j]);
            e += 16;
            j += 1;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])))
    }

    /// `out = out · c + v · p` for a value row of `out.len()` elements, a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn mix_avx512<T: KvElem>(out: &mut [f32], c: f32, v: &[T], p: f32) {
        debug_assert!(out.len().is_multiple_of(16) && v.len() * T::BLOCK == out.len());
        let (c, p) = (_mm512_set1_ps(c), _mm512_set1_ps(p));
        for (i, o) in out.chunks_exact_mut(16).enumerate() {
            // SAFETY: elements 16i .. + 16 are in the row; this function's features are the load's.
            unsafe {
                let v = T::load_f32x16(v.as_ptr(), 16 * i);
                let kept = _mm512_mul_ps(_mm512_loadu_ps(o.as_ptr()), c);
                _mm512_storeu_ps(o.as_mut_ptr(), _mm512_fmadd_ps(v, p, kept));
            }
        }
    }
}

#[cfg(test)]
mod tests;
