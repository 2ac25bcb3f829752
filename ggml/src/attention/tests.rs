use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use half::{bf16, f16};

use super::*;
use crate::quants::q4_0::BlockQ4_0;
use crate::quants::q8_0::BlockQ8_0;

/// One attention call's inputs, with K of type `K` and V of type `V`. Built by
/// [`Case::random`].
struct Case<K: KvElem, V: KvElem = K> {
    shape: AttnShape,
    q: Vec<f32>,
    q_pos: Vec<usize>,
    k: Vec<K>,
    v: Vec<V>,
    pos: Vec<usize>,
}

/// `x` in f32.
fn widen<T: KvElem>(x: &[T]) -> Vec<f32> {
    T::as_f32(x, &mut vec![0.0; x.len() * T::BLOCK]).to_vec()
}

/// `x` stored as a cache of type `T` stores it (NaN poison in a block type becomes whatever
/// its quantizer makes of it).
fn stored<T: KvElem>(x: &[f32]) -> Vec<T> {
    let mut stored = vec![T::ZERO; x.len() / T::BLOCK];
    T::store_row(x, &mut stored);
    stored
}

impl<K: KvElem, V: KvElem> Case<K, V> {
    /// Random queries and a cache of `n_keys` used slots (plus two unused ones, poisoned
    /// with NaN so that reading them shows) holding positions `first..first + n_keys`
    /// rotated by `rotate` slots, as a ring buffer leaves them.
    fn random(shape: AttnShape, n_tokens: usize, n_keys: usize, rotate: usize, seed: u64) -> Case<K, V> {
        let mut rng = StdRng::seed_from_u64(seed);
        let d = shape.head_dim;
        let capacity = n_keys + 2;
        // Scores q·k with a standard deviation of about 2 (uniform q in ±6/√d, k in ±1; the
        // largest of 3000 near 8): peaked enough that the running maximum moves several
        // times. The error grows with |score| (an f32 score is off by ~eps·|s|, which shifts
        // a weight by the same relative amount): at a deviation of 3 it reaches 8e-6.
        let q_range = 6.0 / (d as f32).sqrt();
        let q = (0..n_tokens * shape.n_head * d).map(|_| rng.gen_range(-q_range..q_range)).collect();
        let cache = |rng: &mut StdRng| -> Vec<f32> {
            let mut x = vec![f32::NAN; shape.n_kv_head * capacity * d];
            for head in x.chunks_exact_mut(capacity * d) {
                head[..n_keys * d].iter_mut().for_each(|x| *x = rng.gen_range(-1.0..1.0));
            }
            x
        };
        let (k, v) = (stored(&cache(&mut rng)), stored(&cache(&mut rng)));
        let first = 7;
        let pos = (0..n_keys).map(|slot| first + (slot + rotate) % n_keys).collect();
        // Queries spread over the cached positions, the last at the newest key, so that the
        // causal mask cuts each at a different place.
        let q_pos = (0..n_tokens).map(|t| first + ((t + 1) * n_keys / n_tokens).saturating_sub(1)).collect();
        Case { shape, q, q_pos, k, v, pos }
    }

    fn rows(&self) -> KvRows<'_, K, V> {
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
        let vr = V::units(self.shape.head_dim);
        widen(&self.v[slot * vr..(slot + 1) * vr])
    }
}

/// Every streaming path (and with several tokens on AVX-512, the tiled one) against the f64
/// reference, on random data (ring-ordered slots, GQA groups of 1, 2, 4 and 8, 1, 5 and 17
/// query tokens: blocks whole and partial, 1 to 3000 keys: tiles whole and partial, causal
/// only and with windows of 1024 and 3). The output is a convex combination of V rows, and the f32 rounding of
/// the scores, exponentials and running sums perturbs each weight by a relative ~1e-6 at
/// these sizes (worst seen: 2.3e-6 · max |v| with f16 K/V, 1.3e-6 with f32; the element
/// type hardly enters, since the reference reads the same stored values): require
/// `max |got - want| <= 1e-5 · max |v|`.
fn streaming_matches_reference<K: KvElem, V: KvElem>(head_dim: usize) {
    for (n_kv_head, group) in [(2, 2), (1, 8), (1, 4), (3, 1)] {
        for n_tokens in [1, 5, 17] {
            for n_keys in [1, 2, 37, 3000] {
                // One key count also checks that the scale is applied.
                let scale = if n_keys == 37 { 0.5 } else { 1.0 };
                let shape = AttnShape { n_head: n_kv_head * group, n_kv_head, head_dim, scale, window: None };
                let seed = (head_dim * 1000 + group * 100 + n_tokens * 10000 + n_keys) as u64;
                let mut case = Case::<K, V>::random(shape, n_tokens, n_keys, n_keys / 3, seed);
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
                            "{isa:?} {} {} {shape:?} tokens={n_tokens} keys={n_keys}: max error {err} > {bound}",
                            K::TYPE,
                            V::TYPE
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn streaming_matches_reference_d256() {
    streaming_matches_reference::<f16, f16>(256);
}

#[test]
fn streaming_matches_reference_d512() {
    streaming_matches_reference::<f16, f16>(512);
}

#[test]
fn f32_streaming_matches_reference_d256() {
    streaming_matches_reference::<f32, f32>(256);
}

#[test]
fn f32_streaming_matches_reference_d512() {
    streaming_matches_reference::<f32, f32>(512);
}

#[test]
fn bf16_streaming_matches_reference_d256() {
    streaming_matches_reference::<bf16, bf16>(256);
}

#[test]
fn q8_0_streaming_matches_reference_d256() {
    streaming_matches_reference::<BlockQ8_0, BlockQ8_0>(256);
}

#[test]
fn q4_0_streaming_matches_reference_d512() {
    streaming_matches_reference::<BlockQ4_0, BlockQ4_0>(512);
}

/// K and V of different types: each path reads K with K's loads and V with V's.
#[test]
fn mixed_types_stream_as_the_reference() {
    streaming_matches_reference::<BlockQ8_0, f16>(256);
    streaming_matches_reference::<f16, BlockQ4_0>(256);
}

/// The key split and the merge of its partial results, for 1 chunk up to more chunks than
/// keys (some empty, and with a window of 1 most of them see no key), against the
/// reference with the same bound as above.
fn key_splits_match_the_reference<T: KvElem>() {
    // 64: two blocks a row for the block types.
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
                    attention_split(
                        isa,
                        &case.shape,
                        &case.q,
                        &case.q_pos,
                        &case.q_pos,
                        case.rows(),
                        &mut got,
                        n_chunks,
                    );
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

#[test]
fn key_splits_match_the_reference_quantized() {
    key_splits_match_the_reference::<BlockQ8_0>();
    key_splits_match_the_reference::<BlockQ4_0>();
    key_splits_match_the_reference::<bf16>();
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
    check::<bf16>();
    check::<BlockQ8_0>();
    check::<BlockQ4_0>();
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
    check::<bf16>();
    check::<BlockQ8_0>();
    check::<BlockQ4_0>();
}

#[test]
fn equal_scores_average_the_values() {
    fn check<T: KvElem>() {
        let mut case = Case::<T>::random(shape(None), 1, 2, 0, 3);
        let kr = T::units(32);
        let (k0, rest) = case.k.split_at_mut(kr);
        rest[..kr].copy_from_slice(k0);
        // (v0 + v1) / 2: every path rounds the sum to f32 once (exact for f16 values) and
        // halves it exactly.
        let avg: Vec<f32> = case.v_row(0).iter().zip(case.v_row(1)).map(|(a, b)| (a + b) * 0.5).collect();
        check_exact(&case, &[avg.clone(), avg].concat(), "two equal keys");
    }
    check::<f16>();
    check::<f32>();
    check::<bf16>();
    check::<BlockQ8_0>();
    check::<BlockQ4_0>();
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
    check::<bf16>();
    check::<BlockQ8_0>();
    check::<BlockQ4_0>();
}

/// An image's soft tokens on a sliding layer (`visible_to`): a query sees the later keys of its
/// image up to `q_last` but not past it, and the window still counts back from its own
/// position. Query at 2000 seeing up to 2002, window 1024: keys at 976 (outside the window),
/// 977 (its oldest), 2002 (a later soft token of its image) and 2003 (past the image), all
/// with score 0: the mean of the two visible values, on every path.
#[test]
fn image_tokens_see_their_image_and_no_further() {
    fn check<T: KvElem>() {
        let mut case = Case::<T>::random(shape(Some(1024)), 1, 4, 0, 5);
        case.k.iter_mut().for_each(|k| *k = T::ZERO);
        case.pos = vec![976, 977, 2002, 2003];
        case.q_pos = vec![2000];
        let avg: Vec<f32> = case.v_row(1).iter().zip(case.v_row(2)).map(|(a, b)| (a + b) * 0.5).collect();
        let want = [avg.clone(), avg].concat();
        let q_last = [2002];
        let mut out = vec![f32::NAN; case.q.len()];
        attention_reference_to(&case.shape, &case.q, &case.q_pos, &q_last, case.rows().into(), &mut out);
        assert_eq!(out, want, "reference, {}", T::TYPE);
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; case.q.len()];
            attention_to(isa, &case.shape, &case.q, &case.q_pos, &q_last, case.rows().into(), &mut out);
            assert_eq!(out, want, "{isa:?}, {}", T::TYPE);
        }
    }
    check::<f16>();
    check::<f32>();
    check::<BlockQ8_0>();
}

/// `visible_to` on every path against the f64 reference on random data: 17 queries (blocks of
/// the tiled path whole and partial) of which a run of 9 in the middle are an image's soft
/// tokens seeing up to the run's last position, windows of 3 and 1024 and none. Bound as in
/// [`streaming_matches_reference`].
#[test]
fn image_masks_stream_as_the_reference() {
    for (n_kv_head, group) in [(2, 2), (1, 8)] {
        let shape = AttnShape { n_head: n_kv_head * group, n_kv_head, head_dim: 64, scale: 1.0, window: None };
        let mut case = Case::<f16>::random(shape, 17, 40, 13, 77 + group as u64);
        // Queries at the last 17 of the 40 cached positions (7..47), in order.
        case.q_pos = (30..47).collect();
        let q_last: Vec<usize> = case.q_pos.iter().map(|&p| if (34..43).contains(&p) { 42 } else { p }).collect();
        let bound = 1e-5 * case.max_v();
        for window in [None, Some(1024), Some(3)] {
            case.shape.window = window;
            let mut want = vec![f32::NAN; case.q.len()];
            attention_reference_to(&case.shape, &case.q, &case.q_pos, &q_last, case.rows().into(), &mut want);
            // The image rows differ from plain causal attention (the mask matters here).
            let mut causal = vec![f32::NAN; case.q.len()];
            attention_reference(&case.shape, &case.q, &case.q_pos, case.rows().into(), &mut causal);
            assert!(want.iter().zip(&causal).any(|(a, b)| (a - b).abs() > 1e-3), "{window:?}: no row changed");
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; case.q.len()];
                attention_to(isa, &case.shape, &case.q, &case.q_pos, &q_last, case.rows().into(), &mut got);
                let err = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
                assert!(err <= bound, "{isa:?} group {group} window {window:?}: max error {err} > {bound}");
            }
        }
    }
}

/// The slots carry K and V of any types unchanged, each its own.
#[test]
fn kv_slots_wrap_any_types() {
    let (k16, k32, q8, pos) = ([f16::ONE; 16], [1.0f32; 16], [BlockQ8_0::ZERO; 2], [3usize]);
    let slots = KvSlots::new(&k16, &k32, &pos);
    assert!(matches!(slots.k, KvData::F16(k) if k.as_ptr() == k16.as_ptr()));
    assert!(matches!(slots.v, KvData::F32(v) if v.as_ptr() == k32.as_ptr()));
    let slots = KvSlots::new(&q8, &k16, &pos);
    assert!(matches!(slots.k, KvData::Q8_0(k) if k.as_ptr() == q8.as_ptr()));
    assert_eq!(
        (slots.k.kv_type(), slots.v.kv_type(), slots.k.len(), slots.pos()),
        (KvType::Q8_0, KvType::F16, 2, &[3][..])
    );
}

/// The names llama.cpp's `-ctk` takes, the bytes of a 256-element row (ggml's block sizes:
/// 34 bytes per 32 for q8_0, 18 for q4_0), and a clear error for anything else.
#[test]
fn kv_type_names_and_sizes() {
    let want = [("f32", 1024, 1), ("f16", 512, 1), ("bf16", 512, 1), ("q8_0", 272, 32), ("q4_0", 144, 32)];
    for (t, (name, bytes, block)) in KvType::ALL.into_iter().zip(want) {
        assert_eq!((t.name(), t.row_bytes(256), t.block()), (name, bytes, block));
        assert_eq!(name.parse::<KvType>(), Ok(t));
        assert_eq!(t.is_quantized(), block > 1);
    }
    assert_eq!(
        "q4_1".parse::<KvType>().unwrap_err().to_string(),
        "unknown KV cache type \"q4_1\": expected f32, f16, bf16, q8_0 or q4_0"
    );
}

/// Each type's SIMD loads (through the streaming paths, one key so the output is its V row
/// exactly) give every element as the portable dequantization does, including a q8_0 byte of
/// -128 and q4_0's level 0, which no quantizer of a random row is sure to produce.
#[test]
fn simd_loads_give_the_stored_values() {
    let shape = AttnShape { n_head: 1, n_kv_head: 1, head_dim: 64, scale: 1.0, window: None };
    let mut case = Case::<BlockQ8_0, BlockQ8_0>::random(shape, 1, 1, 0, 10);
    case.v[0].qs[5] = -128;
    case.v[1].qs[31] = 127;
    check_exact(&case, &case.v_row(0), "q8_0 extremes");
    let mut case = Case::<BlockQ4_0, BlockQ4_0>::random(shape, 1, 1, 0, 11);
    case.v[0].qs[0] = 0xf0;
    case.v[1].qs[15] = 0x0f;
    check_exact(&case, &case.v_row(0), "q4_0 extremes");
    let mut case = Case::<bf16, bf16>::random(shape, 1, 1, 0, 12);
    case.v[7] = bf16::from_bits(0xc2f7);
    check_exact(&case, &case.v_row(0), "bf16");
}

/// The same with batches long enough that a unit of work holds several blocks (one thread:
/// up to 8 blocks a unit): 150 tokens in one call against calls over parts of it, with and
/// without a window, and the result against the reference.
#[test]
fn outputs_do_not_depend_on_the_blocks_sharing_a_unit() {
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    for (group, window) in [(1, None), (2, Some(40)), (8, None)] {
        let shape = AttnShape { n_head: 2 * group, n_kv_head: 2, head_dim: 64, scale: 1.0, window };
        let case = Case::<f32>::random(shape, 150, 200, 13, 21);
        let row = shape.n_head * shape.head_dim;
        for isa in Isa::available() {
            let mut all = vec![f32::NAN; case.q.len()];
            one_thread.install(|| attention(isa, &shape, &case.q, &case.q_pos, case.rows().into(), &mut all));
            let err = all.iter().zip(case.reference()).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5 * case.max_v(), "{isa:?} group {group} window {window:?}: max error {err}");
            let mut t0 = 0;
            for n in [2, 37, 111] {
                let (q, q_pos) = (&case.q[t0 * row..(t0 + n) * row], &case.q_pos[t0..t0 + n]);
                let mut part = vec![f32::NAN; n * row];
                attention(isa, &shape, q, q_pos, case.rows().into(), &mut part);
                assert_eq!(part[..], all[t0 * row..(t0 + n) * row], "{isa:?} group {group}, tokens {t0}..{}", t0 + n);
                t0 += n;
            }
        }
    }
}

/// A token's output is the same bits whichever batch of two or more tokens it comes in: one
/// call over 17 tokens against calls over 2, 7 and 8 of them (GQA groups of 1, 2 and 8, so
/// blocks of 16, 8 and 2 tokens split differently).
#[test]
fn outputs_do_not_depend_on_the_batch() {
    for group in [1, 2, 8] {
        let shape = AttnShape { n_head: 2 * group, n_kv_head: 2, head_dim: 256, scale: 1.0, window: Some(40) };
        let case = Case::<f16>::random(shape, 17, 100, 33, 9);
        let row = shape.n_head * shape.head_dim;
        for isa in Isa::available() {
            let mut all = vec![f32::NAN; case.q.len()];
            attention(isa, &shape, &case.q, &case.q_pos, case.rows().into(), &mut all);
            let mut t0 = 0;
            for n in [2, 7, 8] {
                let (q, q_pos) = (&case.q[t0 * row..(t0 + n) * row], &case.q_pos[t0..t0 + n]);
                let mut part = vec![f32::NAN; n * row];
                attention(isa, &shape, q, q_pos, case.rows().into(), &mut part);
                assert_eq!(part[..], all[t0 * row..(t0 + n) * row], "{isa:?} group {group}, tokens {t0}..{}", t0 + n);
                t0 += n;
            }
        }
    }
}
