//! Attention for several query tokens (prompt processing) on AVX-512: blocks of query rows
//! against tiles of keys, as flash attention does.
//!
//! A *block* is [`LANES`] query rows of one KV head — whole GQA groups of consecutive tokens
//! (8 tokens of 2 heads on Gemma 4 sliding layers, 2 of 8 on full ones) — held transposed, so
//! that one f32 lane of a 512-bit vector is one query row. Then for each key the scores of all
//! the block's rows are `d` FMAs (`Σ_e k[e] · qᵀ[e]`, no horizontal sums), the online-softmax
//! bookkeeping (maximum, `e^(s - max)`, running sum) is one vector operation for all rows, and
//! each K and V row is widened to f32 once per block instead of once per token.
//!
//! Keys go by tiles of [`TILE`] consecutive slots: their scores, the tile's maximum per row,
//! one rescale of each row's accumulator by `e^(old max - new max)`, then `acc += Σ_j p_j ·
//! v_j` with four rows sharing each V load. The mask is the one of [`AttnShape::visible`],
//! computed per key for all lanes from the positions stored with the slots. A unit of parallel
//! work is a few consecutive blocks: each tile's K and V rows are read and widened once for
//! all of them, and a block skips the tiles none of its rows sees.
//!
//! **Batch invariance.** A row's result does not depend on the other rows of its block or
//! unit, so a token gets the same bits in any prompt batch of two or more tokens (a rewound
//! cache re-running part of a prompt matches a fresh run exactly): every operation is per
//! lane, the tiles are fixed slot ranges, and in a tile a row sees nothing of (or a key it
//! does not see) its weights are exactly 0, its maximum stays and its rescale is `e^0 = 1`.
//! (A V row holding ±inf would turn the 0 weights of the rows that do not see it into NaN;
//! an f16 cache overflows only past 65504.)
//!
//! The portable streaming path of `mod.rs` is the reference this is tested against (with the
//! f64 [`super::attention_reference`]); both reach the same sums in a different order.

use std::arch::x86_64::*;

use super::{AttnShape, KvElem, KvRows};
use crate::parallel::for_each_chunk_mut;

/// Query rows per block: one per f32 lane.
const LANES: usize = 16;
/// Slots per tile.
const TILE: usize = 16;

/// Whether the tiled path handles this call: several tokens, GQA groups that fit a block, and
/// rows of whole vectors.
pub(super) fn usable(shape: &AttnShape, n_tokens: usize) -> bool {
    n_tokens > 1 && shape.group() <= LANES && shape.head_dim.is_multiple_of(16)
}

/// The query rows' state (`qᵀ` and the accumulators) that a unit of work may hold: its blocks'
/// K and V tiles are read and widened once for all of them. On the vision tower's 2,304
/// patches (16 heads of 80) one block per unit took 245 ms, four 188, eight 170: each head's K
/// and V (1.5 MiB) are read from L3 once per unit rather than once per block.
const UNIT_STATE_BYTES: usize = 256 << 10;

/// Blocks per unit of work for `n_blocks` blocks of rows `d` wide: as many as
/// [`UNIT_STATE_BYTES`] holds, up to 8, while every thread still gets about four units.
fn blocks_per_unit(n_blocks: usize, d: usize) -> usize {
    let most = (UNIT_STATE_BYTES / (2 * d * LANES * 4)).clamp(1, 8);
    (n_blocks / (4 * crate::parallel::threads())).clamp(1, most)
}

/// [`super::attention`] for a call [`usable`] accepts, with runs of blocks as units of parallel
/// work: each unit is the tokens of a few consecutive blocks and all their heads, a contiguous
/// run of `out`.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
pub(super) unsafe fn attention<K: KvElem, V: KvElem>(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: &KvRows<K, V>,
    capacity: usize,
    out: &mut [f32],
) {
    let tokens_per_block = LANES / shape.group();
    let tokens_per_unit = tokens_per_block * blocks_per_unit(q_pos.len().div_ceil(tokens_per_block), shape.head_dim);
    for_each_chunk_mut(out, tokens_per_unit * shape.n_head * shape.head_dim, |u, out| {
        // SAFETY: the caller checked the CPU's features.
        unsafe { unit_tokens(shape, q, q_pos, q_last, kv, capacity, u * tokens_per_unit, out) }
    });
}

/// The query rows of one block and their running state.
struct Block {
    /// Rows in use (the rest of the lanes are padding).
    rows: usize,
    /// `qᵀ`, `[d][LANES]`: element `e` of every row's query (times the scale), 0 in unused lanes.
    qt: Vec<f32>,
    /// The last position each row's token sees (its own, or its image's last one in a
    /// sliding layer); -1 in unused lanes, so that no key is visible there.
    q_pos: __m512i,
    /// The lowest visible key position minus one, per lane (`q_pos - window`).
    lowest: __m512i,
    /// `[LANES][d]`: each row's unnormalized output.
    acc: Vec<f32>,
    /// The running maximum and sum of `e^(s - max)` per lane.
    max: __m512,
    sum: __m512,
    /// Which lanes see each slot of the tile in hand.
    masks: [__mmask16; TILE],
}

/// One tile of keys, shared by the blocks of a unit: its K and V rows widened to f32
/// (`[TILE][d]`, zero rows after the last slot up to a multiple of four), and the weights `p`
/// of the block in hand per key (`[TILE][LANES]`).
struct Tile {
    k: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
}

/// Tokens `t0..` (as many as `out` holds: a few blocks' worth) and all heads.
///
/// # Safety
/// The CPU must support AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
fn unit_tokens<K: KvElem, V: KvElem>(
    shape: &AttnShape,
    q: &[f32],
    q_pos: &[usize],
    q_last: &[usize],
    kv: &KvRows<K, V>,
    capacity: usize,
    t0: usize,
    out: &mut [f32],
) {
    let (d, group, n_head) = (shape.head_dim, shape.group(), shape.n_head);
    let tokens_per_block = LANES / group;
    let n_tokens = out.len() / (n_head * d);
    let (k_head, v_head) = (capacity * K::units(d), capacity * V::units(d));
    let (kr, vr) = (K::units(d), V::units(d));
    let window = shape.window.map_or(i32::MAX, |w| i32::try_from(w).unwrap_or(i32::MAX));
    // Block `b` holds tokens `t0 + b · tokens_per_block ..`; its row `i` is token
    // `t0 + b · tokens_per_block + i / group`, query head `kv_head · group + i % group`.
    let mut blocks: Vec<Block> = (0..n_tokens.div_ceil(tokens_per_block))
        .map(|b| {
            let first = t0 + b * tokens_per_block;
            let rows = (n_tokens - b * tokens_per_block).min(tokens_per_block) * group;
            let lanes = |of: &[usize]| -> [i32; LANES] {
                std::array::from_fn(|i| {
                    if i < rows {
                        i32::try_from(of[first + i / group]).expect("positions fit an i32")
                    } else {
                        -1
                    }
                })
            };
            let (lane_pos, lane_last) = (lanes(q_pos), lanes(q_last));
            // SAFETY: 16 i32 each; unaligned loads.
            let (pos, last) = unsafe {
                (_mm512_loadu_si512(lane_pos.as_ptr().cast()), _mm512_loadu_si512(lane_last.as_ptr().cast()))
            };
            Block {
                rows,
                qt: vec![0.0; d * LANES],
                q_pos: last,
                // q_pos - window, saturating at -1 (below every key).
                lowest: _mm512_max_epi32(_mm512_sub_epi32(pos, _mm512_set1_epi32(window)), _mm512_set1_epi32(-1)),
                acc: vec![0.0; LANES * d],
                max: _mm512_set1_ps(f32::NEG_INFINITY),
                sum: _mm512_setzero_ps(),
                masks: [0; TILE],
            }
        })
        .collect();
    let mut tile = Tile { k: vec![0.0; TILE * d], v: vec![0.0; TILE * d], p: vec![0.0; TILE * LANES] };
    for kv_head in 0..shape.n_kv_head {
        let row =
            |b: usize, i: usize| ((t0 + b * tokens_per_block + i / group) * n_head + kv_head * group + i % group) * d;
        for (b, block) in blocks.iter_mut().enumerate() {
            block.qt.fill(0.0);
            for i in 0..block.rows {
                for (e, &x) in q[row(b, i)..row(b, i) + d].iter().enumerate() {
                    block.qt[e * LANES + i] = x * shape.scale;
                }
            }
            block.acc.fill(0.0);
            block.max = _mm512_set1_ps(f32::NEG_INFINITY);
            block.sum = _mm512_setzero_ps();
        }
        let (k, v) = (&kv.k[kv_head * k_head..(kv_head + 1) * k_head], &kv.v[kv_head * v_head..(kv_head + 1) * v_head]);
        // Tiles are fixed runs of TILE slots, whatever the blocks hold, so that each row's
        // sums come out the same bits in any batch (see the module notes).
        for first in (0..kv.pos.len()).step_by(TILE) {
            let slots = first..(first + TILE).min(kv.pos.len());
            let mut seen = false;
            for block in blocks.iter_mut() {
                for (j, slot) in slots.clone().enumerate() {
                    let k_pos = _mm512_set1_epi32(kv.pos[slot] as i32);
                    block.masks[j] =
                        _mm512_cmple_epi32_mask(k_pos, block.q_pos) & _mm512_cmpgt_epi32_mask(k_pos, block.lowest);
                    seen |= block.masks[j] != 0;
                }
            }
            if !seen {
                continue;
            }
            // Widen the tile's K and V rows once for every block; a partial tile's last group
            // of four keys is padded with zero rows (their lanes are masked off).
            let n = slots.len();
            for (j, slot) in slots.enumerate() {
                widen(&k[slot * kr..(slot + 1) * kr], &mut tile.k[j * d..(j + 1) * d]);
                widen(&v[slot * vr..(slot + 1) * vr], &mut tile.v[j * d..(j + 1) * d]);
            }
            tile.k[n * d..n.next_multiple_of(4) * d].fill(0.0);
            for block in blocks.iter_mut().filter(|b| b.masks[..n].iter().any(|&m| m != 0)) {
                block.tile(&mut tile, n, d);
            }
        }
        // out = acc / sum (0 for a row that saw no key).
        for (b, block) in blocks.iter().enumerate() {
            let mut sums = [0f32; LANES];
            // SAFETY: 16 f32; unaligned store.
            unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), block.sum) };
            for (i, (&sum, acc)) in sums.iter().zip(block.acc.chunks_exact(d)).enumerate().take(block.rows) {
                let o = row(b, i) - t0 * n_head * d;
                let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
                for (o, &a) in out[o..o + d].iter_mut().zip(acc) {
                    *o = a * inv;
                }
            }
        }
    }
}

impl Block {
    /// The `n` keys of `tile` against every row; a key no lane of a row sees (its mask bit is
    /// clear) weighs exactly 0 there, which leaves the row's sums as they were.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn tile(&mut self, tile: &mut Tile, n: usize, d: usize) {
        let padded = n.next_multiple_of(4);

        // Scores, four keys at a time: s_j = Σ_e k_j[e] · qᵀ[e], in two chains per key.
        let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut scores = [neg_inf; TILE];
        for j0 in (0..padded).step_by(4) {
            let mut acc = [[_mm512_setzero_ps(); 2]; 4];
            let k = tile.k[j0 * d..(j0 + 4) * d].as_ptr();
            let qt = self.qt.as_ptr();
            for e in (0..d).step_by(2) {
                // SAFETY: e + 1 < d (d is even): rows e and e + 1 of qᵀ ([d][LANES]) and
                // elements e, e + 1 of each of the four key rows (4 · d from `k`) are in
                // bounds; unaligned loads.
                unsafe {
                    let qt = [_mm512_loadu_ps(qt.add(e * LANES)), _mm512_loadu_ps(qt.add((e + 1) * LANES))];
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let k = k.add(j * d + e);
                        acc[0] = _mm512_fmadd_ps(_mm512_set1_ps(*k), qt[0], acc[0]);
                        acc[1] = _mm512_fmadd_ps(_mm512_set1_ps(*k.add(1)), qt[1], acc[1]);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate().take(n.saturating_sub(j0)) {
                scores[j0 + j] = _mm512_mask_mov_ps(neg_inf, self.masks[j0 + j], _mm512_add_ps(acc[0], acc[1]));
            }
        }

        // The online softmax for all rows at once. A lane that has seen no visible key yet
        // keeps max = -inf; it subtracts 0 instead, so no -inf - -inf appears.
        let tile_max = scores[..n].iter().fold(neg_inf, |m, &s| _mm512_max_ps(m, s));
        let new_max = _mm512_max_ps(self.max, tile_max);
        let seen = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(new_max, neg_inf);
        let shift = _mm512_maskz_mov_ps(seen, new_max);
        let had = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(self.max, neg_inf);
        let rescale = _mm512_maskz_mov_ps(had, exp(_mm512_sub_ps(self.max, shift)));
        let mut sum = _mm512_mul_ps(self.sum, rescale);
        for (j, &mask) in self.masks[..n].iter().enumerate() {
            let p = _mm512_maskz_mov_ps(mask, exp(_mm512_sub_ps(scores[j], shift)));
            sum = _mm512_add_ps(sum, p);
            // SAFETY: 16 f32 at row j of the [TILE][LANES] weights; unaligned store.
            unsafe { _mm512_storeu_ps(tile.p[j * LANES..].as_mut_ptr(), p) };
        }
        self.sum = sum;
        self.max = new_max;
        // `e^(old max - new max)` per row, for the accumulators below.
        let rescale = {
            let mut lanes = [0f32; LANES];
            // SAFETY: 16 f32; unaligned store.
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), rescale) };
            lanes
        };

        // acc_i = acc_i · rescale_i + Σ_j p_j[i] · v_j, four rows at a time sharing each V
        // load. Unused lanes have p = 0 and stay 0.
        let (v, p) = (tile.v.as_ptr(), tile.p.as_ptr());
        for i0 in (0..LANES).step_by(4) {
            for c in (0..d).step_by(16) {
                let acc = self.acc[i0 * d + c..].as_mut_ptr();
                // SAFETY: rows i0..i0 + 4 (< LANES) of the [LANES][d] accumulators, columns
                // c..c + 16 (c + 16 <= d); rows j < n <= TILE of the [TILE][d] values and the
                // [TILE][LANES] weights; unaligned loads and stores.
                unsafe {
                    let mut o: [__m512; 4] = std::array::from_fn(|r| {
                        _mm512_mul_ps(_mm512_loadu_ps(acc.add(r * d)), _mm512_set1_ps(rescale[i0 + r]))
                    });
                    for j in 0..n {
                        let v = _mm512_loadu_ps(v.add(j * d + c));
                        let p = p.add(j * LANES + i0);
                        for (r, o) in o.iter_mut().enumerate() {
                            *o = _mm512_fmadd_ps(_mm512_set1_ps(*p.add(r)), v, *o);
                        }
                    }
                    for (r, o) in o.iter().enumerate() {
                        _mm512_storeu_ps(acc.add(r * d), *o);
                    }
                }
            }
        }
    }
}

/// `dst = src` widened (or dequantized) to f32, for rows whose length is a multiple of 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn widen<T: KvElem>(src: &[T], dst: &mut [f32]) {
    assert_eq!(src.len() * T::BLOCK, dst.len());
    for (i, d) in dst.chunks_exact_mut(16).enumerate() {
        // SAFETY: elements 16i .. + 16 are in the row (the assert); this function's features
        // are the load's.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr(), T::load_f32x16(src.as_ptr(), 16 * i)) };
    }
}

/// `e^x` per lane, within 1 ulp of the exact value (0.88 at worst on a sweep of [-87, 8], the
/// test below), and 0 below -104:
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2` (ln 2 split in two so that `n ln 2` is exact in its
/// high part), `e^r` by its Taylor series to degree 7 (truncation error below `r^8 / 8!`,
/// 5e-9 relative), then `· 2^n` by `vscalefps`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) fn exp(x: __m512) -> __m512 {
    const LN2_HIGH: f32 = 0.693_359_4; // 0.693359375: 9 significant bits, so n · it is exact
    const LN2_LOW: f32 = -2.121_944_4e-4; // ln 2 - LN2_HIGH
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0)), _mm512_set1_ps(88.5));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
    // 1/k! for k = 7 down to 0, by Horner's rule.
    const INV_FACTORIAL: [f32; 8] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
    let mut p = _mm512_set1_ps(INV_FACTORIAL[0]);
    for &c in &INV_FACTORIAL[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `exp` against f64's on a sweep of the range attention uses (scores minus their maximum:
    /// 0 and below) and a little above, in units in the last place of the f32 result; and 0
    /// far below.
    #[test]
    fn exp_is_within_one_ulp() {
        if !crate::kernels::cpu::detected().avx512 {
            return;
        }
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (95.0 / 200_000.0);
            let mut got = [0f32; 16];
            // SAFETY: the CPU has AVX-512 (checked above); 16 f32 stored.
            unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_set1_ps(x))) };
            let want = (x as f64).exp();
            let ulp = (want as f32).next_up() as f64 - want as f32 as f64;
            worst = worst.max((got[0] as f64 - want).abs() / ulp);
        }
        assert!(worst <= 1.0, "exp is off by {worst} ulp");
        let mut got = [1f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), exp(_mm512_set1_ps(-200.0))) };
        assert_eq!(got[0], 0.0);
    }
}
