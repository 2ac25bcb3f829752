//! Token sampling: turn one position's logits into one token id, the way llama.cpp's default
//! `common/sampling` chain does.
//!
//! The chain, in order (llama.cpp's default sampler order, less the stages that are off by
//! default there: DRY, top-n-sigma, typical-p, XTC):
//!
//! 1. **penalties**: for every token seen in the last `repeat_last_n` accepted tokens, a positive
//!    logit is divided by `repeat_penalty` and a non-positive one multiplied by it, then
//!    `count * frequency_penalty + presence_penalty` is subtracted.
//! 2. **top-k**: keep the `top_k` highest logits (0 = keep all).
//! 3. **top-p**: keep the smallest prefix, highest first, whose probability mass reaches `top_p`.
//! 4. **min-p**: drop tokens whose probability is below `min_p` times the top token's.
//! 5. **temperature**: divide the logits by `temperature`.
//! 6. **pick**: softmax over what is left and draw one token with the seeded PRNG.
//!
//! Because temperature comes after the filters, top-p and min-p see the probabilities at
//! temperature 1, as in llama.cpp. Temperature 0 is greedy: the penalised argmax, which every
//! filter keeps anyway, so the chain stops after penalties and draws no random number.
//!
//! Ties between equal logits always go to the lower token id, in top-k, in sorting, and in the
//! greedy argmax, so results do not depend on the order a selection algorithm visits tokens.
//! llama.cpp leaves that order to `std::partial_sort`; this is the only place we are stricter.
//!
//! Determinism: the PRNG is ChaCha8 keyed by the seed's little-endian bytes, and each
//! non-greedy [`Sampler::sample`] call draws exactly one 53-bit uniform from it, so the same seed,
//! logits and accepted history give the same tokens on every platform and crate version.
//!
//! Cost per call, for a vocabulary of n tokens (262,144 for Gemma 4): with `top_k > 0`, one pass
//! over the logits through a k-entry heap, then work on k candidates only; with `top_k = 0`, a
//! copy of n candidates, an O(n) selection of the top 256 for top-p (widened to a full sort only
//! when those 256 hold less than `top_p` of the mass) and an O(n) softmax. All buffers live in
//! the [`Sampler`] and are reused, so steady-state sampling does not allocate.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// Sampling settings; `Default` gives llama.cpp's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; 0 means greedy (argmax). Must be finite and >= 0.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables top-k.
    pub top_k: usize,
    /// Nucleus mass in (0, 1]; 1 disables top-p.
    pub top_p: f32,
    /// Relative probability floor in [0, 1]; 0 disables min-p.
    pub min_p: f32,
    /// Repetition penalty (> 0); 1 disables it.
    pub repeat_penalty: f32,
    /// How many of the most recently accepted tokens the penalties look at; 0 disables all three
    /// penalties. (llama.cpp's -1, "the whole context", is the caller passing the context length.)
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token in the penalty window; 0 disables it.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per occurrence in the penalty window; 0 disables it.
    pub frequency_penalty: f32,
    /// PRNG seed; `None` picks a fresh one (llama.cpp's default), readable from [`Sampler::seed`].
    pub seed: Option<u64>,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token: temperature 0, penalties off.
    pub fn greedy() -> Self {
        Self { temperature: 0.0, ..Self::default() }
    }

    /// Checks every field's range; [`Sampler::new`] calls this.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplerError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplerError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplerError::MinP(self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(SamplerError::RepeatPenalty(self.repeat_penalty));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !value.is_finite() {
                return Err(SamplerError::NotFinite { name, value });
            }
        }
        Ok(())
    }

    fn penalties_enabled(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0 || self.frequency_penalty != 0.0 || self.presence_penalty != 0.0)
    }
}

/// A [`SamplerConfig`] field out of range.
#[derive(Debug, Error, Clone, Copy, PartialEq)]
pub enum SamplerError {
    #[error("temperature must be finite and >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repeat_penalty must be finite and > 0, got {0}")]
    RepeatPenalty(f32),
    #[error("{name} must be finite, got {value}")]
    NotFinite { name: &'static str, value: f32 },
}

/// One candidate token and its (penalised) logit.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TokenLogit {
    id: u32,
    logit: f32,
}

/// Best first: higher logit, then lower id. Never sees NaN: candidates enter with NaN as -inf.
fn rank(a: &TokenLogit, b: &TokenLogit) -> Ordering {
    b.logit.partial_cmp(&a.logit).unwrap_or(Ordering::Equal).then(a.id.cmp(&b.id))
}

/// Heap entry ordered by [`rank`], so a max-heap's top is the worst candidate kept so far.
#[derive(Debug, Clone, Copy)]
struct Worst(TokenLogit);

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        rank(&self.0, &other.0)
    }
}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst {}

/// The candidate set as it moves down the chain.
#[derive(Debug, Clone, Default)]
struct Candidates {
    items: Vec<TokenLogit>,
    /// Whether `items` is in [`rank`] order.
    sorted: bool,
}

/// Draws tokens from logits; holds the seeded PRNG, the penalty history and reused buffers.
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplerConfig,
    seed: u64,
    rng: ChaCha8Rng,
    /// The last `repeat_last_n` accepted tokens, oldest first.
    history: VecDeque<u32>,
    // Scratch, reused across calls.
    /// Sorted copy of `history`, to count occurrences without a map.
    window: Vec<u32>,
    /// Penalised logits of the tokens in the window, ascending id.
    penalized: Vec<TokenLogit>,
    heap: BinaryHeap<Worst>,
    candidates: Candidates,
    /// exp((logit - max) / temperature) per candidate.
    weights: Vec<f32>,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Self, SamplerError> {
        config.validate()?;
        let seed = config.seed.unwrap_or_else(fresh_seed);
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Ok(Self {
            config,
            seed,
            rng: ChaCha8Rng::from_seed(key),
            history: VecDeque::with_capacity(config.repeat_last_n),
            window: Vec::with_capacity(config.repeat_last_n),
            penalized: Vec::with_capacity(config.repeat_last_n),
            heap: BinaryHeap::with_capacity(config.top_k),
            candidates: Candidates::default(),
            weights: Vec::new(),
        })
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// The seed in use: the configured one, or the fresh one drawn for `seed: None`.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Records a token (generated or from the prompt) in the penalty history.
    pub fn accept(&mut self, token: u32) {
        if self.config.repeat_last_n == 0 {
            return;
        }
        if self.history.len() == self.config.repeat_last_n {
            self.history.pop_front();
        }
        self.history.push_back(token);
    }

    /// Forgets the penalty history (a new conversation); the PRNG stream carries on.
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Runs the chain (see the module docs) on one position's logits, `(n_vocab)`, and returns
    /// the chosen token id. Does not [`accept`](Self::accept) it. NaN logits are never chosen.
    /// This is the hot function: it runs once per generated token.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "cannot sample from empty logits");
        self.penalize(logits);

        let greedy = self.config.temperature == 0.0;
        let k = if greedy { 1 } else { self.config.top_k };
        if k == 0 || k >= logits.len() {
            collect_all(logits, &self.penalized, &mut self.candidates);
        } else {
            collect_top_k(logits, &self.penalized, k, &mut self.heap, &mut self.candidates);
        }
        if greedy {
            return self.candidates.items[0].id;
        }

        top_p(&mut self.candidates, self.config.top_p);
        min_p(&mut self.candidates, self.config.min_p);
        let u = unit_f64(&mut self.rng);
        pick(&self.candidates, self.config.temperature, u, &mut self.weights)
    }

    /// Fills `self.penalized` with the penalised logit of every distinct token in the history
    /// window that is inside the vocabulary.
    fn penalize(&mut self, logits: &[f32]) {
        self.penalized.clear();
        if !self.config.penalties_enabled() {
            return;
        }
        self.window.clear();
        self.window.extend(&self.history);
        self.window.sort_unstable();

        let SamplerConfig { repeat_penalty, frequency_penalty, presence_penalty, .. } = self.config;
        for run in self.window.chunk_by(|a, b| a == b) {
            let id = run[0];
            let Some(&raw) = logits.get(id as usize) else {
                continue;
            };
            let mut logit = not_nan(raw);
            if logit <= 0.0 {
                logit *= repeat_penalty;
            } else {
                logit /= repeat_penalty;
            }
            logit -= run.len() as f32 * frequency_penalty + presence_penalty;
            self.penalized.push(TokenLogit { id, logit });
        }
    }
}

/// A seed for `seed: None`: std's per-process random hash keys mixed with the clock.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// Uniform in [0, 1) from the top 53 bits of one `u64`: defined here, not by a crate version.
fn unit_f64(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn not_nan(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// No top-k: every token is a candidate, unsorted, NaN logits as -inf.
/// `penalized` holds ids inside `logits`.
fn collect_all(logits: &[f32], penalized: &[TokenLogit], out: &mut Candidates) {
    out.items.clear();
    out.items.extend(logits.iter().enumerate().map(|(id, &raw)| TokenLogit { id: id as u32, logit: not_nan(raw) }));
    for p in penalized {
        out.items[p.id as usize].logit = p.logit;
    }
    out.sorted = false;
}

/// Top-k in one pass over the logits, through a k-entry heap whose top is the worst token kept.
/// Once the heap is full most tokens cost one comparison with that worst logit (NaN fails it
/// too). Tokens arrive in ascending id, so a tie with the worst kept token, whose id is lower,
/// loses, as the tie rule wants. `penalized` (ascending id, inside `logits`) replaces those
/// tokens' logits. Leaves the k winners sorted.
fn collect_top_k(
    logits: &[f32],
    penalized: &[TokenLogit],
    k: usize,
    heap: &mut BinaryHeap<Worst>,
    out: &mut Candidates,
) {
    debug_assert!(k > 0);
    heap.clear();
    let mut worst = f32::NEG_INFINITY;
    // Runs of untouched logits, each followed by one penalised token (the last by none).
    let runs = penalized.iter().map(|p| (p.id as usize, Some(*p))).chain(std::iter::once((logits.len(), None)));
    let mut start = 0;
    for (end, penalized) in runs {
        for (i, &raw) in logits[start..end].iter().enumerate() {
            if raw > worst || heap.len() < k {
                let id = (start + i) as u32;
                offer(heap, k, TokenLogit { id, logit: not_nan(raw) }, &mut worst);
            }
        }
        if let Some(token) = penalized {
            offer(heap, k, token, &mut worst);
        }
        start = end + 1;
    }
    out.items.clear();
    out.items.extend(heap.drain().map(|w| w.0));
    out.items.sort_unstable_by(rank);
    out.sorted = true;
}

/// Adds `token` to the k-best heap if it beats the worst kept one; keeps `worst` equal to the
/// worst kept logit once the heap is full (-inf before).
fn offer(heap: &mut BinaryHeap<Worst>, k: usize, token: TokenLogit, worst: &mut f32) {
    if heap.len() < k {
        heap.push(Worst(token));
    } else if token.logit > *worst {
        *heap.peek_mut().expect("k > 0") = Worst(token);
    } else {
        return;
    }
    if heap.len() == k {
        *worst = heap.peek().expect("k > 0").0.logit;
    }
}

/// The top logit (the first candidate once sorted).
fn max_logit(c: &Candidates) -> f32 {
    if c.sorted {
        c.items[0].logit
    } else {
        c.items.iter().map(|t| t.logit).fold(f32::NEG_INFINITY, f32::max)
    }
}

/// Keeps the smallest best-first prefix whose probability mass (softmax at temperature 1 over
/// the current candidates) reaches `p`. Unsorted sets over 1024 first sort only their top 256,
/// and sort the rest only if those fall short of `p`. Leaves the candidates sorted.
fn top_p(c: &mut Candidates, p: f32) {
    if p >= 1.0 || c.items.len() <= 1 {
        return;
    }
    let max = max_logit(c);
    let sum: f64 = c.items.iter().map(|t| f64::from((t.logit - max).exp())).sum();

    let n = c.items.len();
    let mut sorted_len = n;
    if !c.sorted {
        if n > 1024 {
            sorted_len = 256;
            c.items.select_nth_unstable_by(sorted_len - 1, rank);
            c.items[..sorted_len].sort_unstable_by(rank);
        } else {
            c.items.sort_unstable_by(rank);
        }
    }

    let mut cumulative = 0.0f64;
    let mut keep = n;
    for i in 0..n {
        cumulative += f64::from((c.items[i].logit - max).exp()) / sum;
        if cumulative >= f64::from(p) {
            keep = i + 1;
            break;
        }
        if i + 1 == sorted_len && sorted_len < n {
            // Everything after the selected prefix ranks below it, so sorting the tail
            // completes the order.
            c.items[sorted_len..].sort_unstable_by(rank);
            sorted_len = n;
        }
    }
    c.items.truncate(keep);
    // Either `keep` fell inside the sorted prefix or the loop sorted the rest on its way.
    c.sorted = true;
}

/// Keeps tokens with probability >= `p` × the top token's, i.e. logit >= max + ln p.
fn min_p(c: &mut Candidates, p: f32) {
    if p <= 0.0 || c.items.is_empty() {
        return;
    }
    let threshold = max_logit(c) + p.ln();
    if c.sorted {
        // The first token always passes (ln p <= 0), so at least one is kept.
        let keep = c.items.iter().position(|t| t.logit < threshold).unwrap_or(c.items.len()).max(1);
        c.items.truncate(keep);
    } else {
        c.items.retain(|t| t.logit >= threshold);
    }
}

/// Softmax at `temperature` over the candidates, then the first token whose cumulative weight
/// exceeds `u` × total, `u` in [0, 1). Zero-weight tokens can never be picked.
fn pick(c: &Candidates, temperature: f32, u: f64, weights: &mut Vec<f32>) -> u32 {
    let best = if c.sorted { c.items[0] } else { *c.items.iter().min_by(|a, b| rank(a, b)).expect("non-empty") };
    // With an infinite top logit the softmax is undefined: +inf wins outright, and all -inf
    // (e.g. every logit NaN) leaves nothing better than the tie rule.
    if c.items.len() == 1 || !best.logit.is_finite() {
        return best.id;
    }

    weights.clear();
    let mut total = 0.0f64;
    for t in &c.items {
        let w = ((t.logit - best.logit) / temperature).exp();
        weights.push(w);
        total += f64::from(w);
    }
    let target = u * total;
    let mut running = 0.0f64;
    for (t, &w) in c.items.iter().zip(weights.iter()) {
        running += f64::from(w);
        if running > target {
            return t.id;
        }
    }
    // Unreachable: `running` ends equal to `total`, which exceeds `target` since u < 1.
    best.id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SamplerConfig {
        SamplerConfig { seed: Some(1), ..SamplerConfig::default() }
    }

    /// No truncation, no penalties: plain softmax sampling at `temperature`.
    fn untruncated(temperature: f32, seed: u64) -> SamplerConfig {
        SamplerConfig { temperature, top_k: 0, top_p: 1.0, min_p: 0.0, seed: Some(seed), ..SamplerConfig::default() }
    }

    fn candidates(logits: &[f32], sorted: bool) -> Candidates {
        let mut c = Candidates::default();
        collect_all(logits, &[], &mut c);
        if sorted {
            c.items.sort_unstable_by(rank);
            c.sorted = true;
        }
        c
    }

    fn ids(c: &Candidates) -> Vec<u32> {
        let mut ids: Vec<u32> = c.items.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids
    }

    /// ln of probabilities 0.1, 0.2, 0.3, 0.4: softmax gives them back.
    fn four() -> Vec<f32> {
        [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect()
    }

    #[test]
    fn defaults_are_llama_cpp_defaults() {
        let c = SamplerConfig::default();
        assert_eq!((c.temperature, c.top_k, c.top_p, c.min_p), (0.8, 40, 0.95, 0.05));
        assert_eq!((c.repeat_penalty, c.repeat_last_n), (1.0, 64));
        assert_eq!((c.presence_penalty, c.frequency_penalty), (0.0, 0.0));
        assert_eq!(SamplerConfig::greedy().temperature, 0.0);
        assert!(c.validate().is_ok() && SamplerConfig::greedy().validate().is_ok());
    }

    #[test]
    fn invalid_config_is_an_error() {
        let bad = |f: fn(&mut SamplerConfig)| {
            let mut c = config();
            f(&mut c);
            Sampler::new(c).unwrap_err()
        };
        assert_eq!(bad(|c| c.temperature = -0.1), SamplerError::Temperature(-0.1));
        assert!(matches!(bad(|c| c.temperature = f32::NAN), SamplerError::Temperature(_)));
        assert!(matches!(bad(|c| c.temperature = f32::INFINITY), SamplerError::Temperature(_)));
        assert_eq!(bad(|c| c.top_p = 0.0), SamplerError::TopP(0.0));
        assert_eq!(bad(|c| c.top_p = 1.5), SamplerError::TopP(1.5));
        assert_eq!(bad(|c| c.min_p = -0.1), SamplerError::MinP(-0.1));
        assert_eq!(bad(|c| c.min_p = 1.1), SamplerError::MinP(1.1));
        assert_eq!(bad(|c| c.repeat_penalty = 0.0), SamplerError::RepeatPenalty(0.0));
        assert!(matches!(
            bad(|c| c.presence_penalty = f32::NAN),
            SamplerError::NotFinite { name: "presence_penalty", .. }
        ));
        assert!(matches!(
            bad(|c| c.frequency_penalty = f32::INFINITY),
            SamplerError::NotFinite { name: "frequency_penalty", .. }
        ));
    }

    #[test]
    fn greedy_is_argmax_with_ties_to_lowest_id() {
        let logits = [1.0, 3.0, -2.0, 3.0, 2.0];
        let mut s = Sampler::new(SamplerConfig::greedy()).unwrap();
        assert_eq!(s.sample(&logits), 1);
        let mut s = Sampler::new(SamplerConfig { temperature: 0.0, ..config() }).unwrap();
        assert_eq!(s.sample(&[0.0, 0.0, 0.0]), 0);
        assert_eq!(s.sample(&[-5.0, -1.0, -1.0, -7.0]), 1);
        assert_eq!(s.sample(&[4.0]), 0);
    }

    #[test]
    fn top_k_one_is_greedy_at_any_temperature() {
        let logits = [1.0, 3.0, -2.0, 3.0, 2.0];
        for temperature in [0.5, 1.0, 100.0] {
            let mut s = Sampler::new(SamplerConfig { temperature, top_k: 1, ..config() }).unwrap();
            for _ in 0..100 {
                assert_eq!(s.sample(&logits), 1);
            }
        }
    }

    #[test]
    fn top_k_heap_matches_full_sort() {
        // 262,144 logits on a coarse grid so ties are common; reference = full sort by rank.
        let mut rng = ChaCha8Rng::from_seed([7; 32]);
        let logits: Vec<f32> = (0..262_144).map(|_| (rng.next_u32() % 2000) as f32 / 100.0).collect();
        // Penalties on a few tokens, including two that were in the top ranks.
        let mut penalized = vec![TokenLogit { id: 3, logit: 25.0 }, TokenLogit { id: 1000, logit: -1.0 }];
        let top = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0))).unwrap().0 as u32;
        penalized.push(TokenLogit { id: top, logit: -3.0 });
        penalized.sort_by_key(|t| t.id);
        penalized.dedup_by_key(|t| t.id);

        let mut reference = Candidates::default();
        collect_all(&logits, &penalized, &mut reference);
        reference.items.sort_by(rank);

        let mut heap = BinaryHeap::new();
        for k in [1, 2, 40, 1000] {
            let mut c = Candidates::default();
            collect_top_k(&logits, &penalized, k, &mut heap, &mut c);
            assert!(c.sorted);
            assert_eq!(c.items, reference.items[..k], "k = {k}");
        }
        assert_eq!(reference.items[0].id, 3);
        assert!(!reference.items[..1000].iter().any(|t| t.id == top));
    }

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_p() {
        // Probabilities 0.1, 0.2, 0.3, 0.4; best first: 3 (0.4), 2 (0.7), 1 (0.9), 0 (1.0).
        for sorted in [false, true] {
            for (p, kept) in [(0.35, vec![3]), (0.65, vec![2, 3]), (0.75, vec![1, 2, 3]), (0.95, vec![0, 1, 2, 3])] {
                let mut c = candidates(&four(), sorted);
                top_p(&mut c, p);
                assert_eq!(ids(&c), kept, "p = {p}, sorted = {sorted}");
                assert!(c.sorted);
            }
        }
    }

    #[test]
    fn top_p_widens_past_its_first_256_on_large_vocabularies() {
        // 2000 equal logits: each token 1/2000. Mass 0.50025 needs 1000.5 -> 1001 tokens, more
        // than the first partial sort covers; ties go to the lowest ids.
        let mut c = candidates(&[0.0; 2000], false);
        top_p(&mut c, 0.50025);
        assert_eq!(ids(&c), (0..1001).collect::<Vec<u32>>());
        assert!(c.sorted);
        // Within the first 256: 0.0501 needs 100.2 -> 101 tokens.
        let mut c = candidates(&[0.0; 2000], false);
        top_p(&mut c, 0.0501);
        assert_eq!(ids(&c), (0..101).collect::<Vec<u32>>());
    }

    #[test]
    fn min_p_drops_tokens_below_fraction_of_top() {
        for sorted in [false, true] {
            // Top probability 0.4: min_p 0.6 -> floor 0.24 keeps 0.3, 0.4; 0.3 -> floor 0.12
            // also keeps 0.2.
            for (p, kept) in [(0.6, vec![2, 3]), (0.3, vec![1, 2, 3]), (0.0, vec![0, 1, 2, 3])] {
                let mut c = candidates(&four(), sorted);
                min_p(&mut c, p);
                assert_eq!(ids(&c), kept, "p = {p}, sorted = {sorted}");
            }
            // Default 0.05: ln 0.05 = -2.996, so from a top logit of 0, -2.9 stays and -3.1 goes.
            let mut c = candidates(&[0.0, -2.9, -3.1, -1.0], sorted);
            min_p(&mut c, 0.05);
            assert_eq!(ids(&c), vec![0, 1, 3]);
        }
    }

    #[test]
    fn penalties_change_logits_by_hand_computed_amounts() {
        let logits = [2.0, -1.0, 0.5, 3.0, 0.0];
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            ..config()
        })
        .unwrap();
        for t in [0, 1, 1, 4, 99] {
            s.accept(t);
        }
        s.penalize(&logits);
        // Token 0, once: 2.0 / 2 - (1 * 0.5 + 0.25) = 0.25.
        // Token 1, twice: -1.0 * 2 - (2 * 0.5 + 0.25) = -3.25.
        // Token 4, once: 0.0 * 2 - 0.75 = -0.75. Token 99 is outside the vocabulary.
        let expected = [(0, 0.25), (1, -3.25), (4, -0.75)].map(|(id, logit)| TokenLogit { id, logit });
        assert_eq!(s.penalized, expected);

        // Only the last `repeat_last_n` count: window [1, 1] leaves token 0 alone.
        let mut s = Sampler::new(SamplerConfig {
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            repeat_last_n: 2,
            ..config()
        })
        .unwrap();
        for t in [0, 1, 1] {
            s.accept(t);
        }
        s.penalize(&logits);
        assert_eq!(s.penalized, [TokenLogit { id: 1, logit: -3.25 }]);

        // Repeat penalty alone, end to end: 2.0 / 2 = 1.0 now loses to 1.5.
        let mut s = Sampler::new(SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() }).unwrap();
        assert_eq!(s.sample(&[2.0, 1.5]), 0);
        s.accept(0);
        assert_eq!(s.sample(&[2.0, 1.5]), 1);
        s.reset();
        assert_eq!(s.sample(&[2.0, 1.5]), 0);

        // Frequency penalty alone, through the top-k path: 5.0 - 3 * 1.0 = 2.0 < 4.0.
        let mut s = Sampler::new(SamplerConfig { frequency_penalty: 1.0, ..SamplerConfig::greedy() }).unwrap();
        for _ in 0..3 {
            s.accept(2);
        }
        assert_eq!(s.sample(&[0.0, 4.0, 5.0, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_different_tokens() {
        // 64 equally likely tokens (plus a penalty, so history matters too).
        let logits = [0.0f32; 64];
        let draws = |seed| {
            let mut s = Sampler::new(SamplerConfig { presence_penalty: 0.5, ..untruncated(1.0, seed) }).unwrap();
            (0..100)
                .map(|_| {
                    let t = s.sample(&logits);
                    s.accept(t);
                    t
                })
                .collect::<Vec<u32>>()
        };
        assert_eq!(draws(42), draws(42));
        assert_ne!(draws(42), draws(43));
        let s = Sampler::new(config()).unwrap();
        assert_eq!(s.seed(), 1);
    }

    /// Chi-square statistic of `counts` against `probs` over `n` draws.
    fn chi_square(counts: &[u32], probs: &[f64], n: u32) -> f64 {
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let expected = p * f64::from(n);
                (f64::from(c) - expected).powi(2) / expected
            })
            .sum()
    }

    fn histogram(config: SamplerConfig, logits: &[f32], n: u32) -> Vec<u32> {
        let mut s = Sampler::new(config).unwrap();
        let mut counts = vec![0; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits) as usize] += 1;
        }
        counts
    }

    // 99.9th percentiles of chi-square: 16.27 with 3 degrees of freedom, 10.83 with 1.
    #[test]
    fn temperature_one_matches_softmax() {
        let n = 20_000;
        let counts = histogram(untruncated(1.0, 2024), &four(), n);
        let chi2 = chi_square(&counts, &[0.1, 0.2, 0.3, 0.4], n);
        assert!(chi2 < 16.27, "counts {counts:?}, chi2 {chi2}");
    }

    #[test]
    fn temperature_half_squares_probabilities() {
        // Logits / 0.5 = 2 ln p, so probabilities go as p^2: 1, 4, 9, 16 over 30.
        let n = 20_000;
        let counts = histogram(untruncated(0.5, 7), &four(), n);
        let chi2 = chi_square(&counts, &[1.0 / 30.0, 4.0 / 30.0, 9.0 / 30.0, 16.0 / 30.0], n);
        assert!(chi2 < 16.27, "counts {counts:?}, chi2 {chi2}");
    }

    #[test]
    fn top_k_renormalizes_what_it_keeps() {
        // top_k 2 keeps 0.3 and 0.4: 3/7 and 4/7.
        let n = 20_000;
        let config = SamplerConfig { top_k: 2, ..untruncated(1.0, 99) };
        let counts = histogram(config, &four(), n);
        assert_eq!(&counts[..2], [0, 0]);
        let chi2 = chi_square(&counts[2..], &[3.0 / 7.0, 4.0 / 7.0], n);
        assert!(chi2 < 10.83, "counts {counts:?}, chi2 {chi2}");
    }

    #[test]
    fn pick_walks_the_cumulative_distribution() {
        // Weights at temperature 1: 0.1, 0.2, 0.3, 0.4 in id order (unsorted path).
        let c = candidates(&four(), false);
        let mut w = Vec::new();
        for (u, id) in [(0.0, 0), (0.09, 0), (0.11, 1), (0.29, 1), (0.31, 2), (0.61, 3), (0.999, 3)] {
            assert_eq!(pick(&c, 1.0, u, &mut w), id, "u = {u}");
        }
    }

    #[test]
    fn non_finite_logits() {
        let mut s = Sampler::new(config()).unwrap();
        // NaN is never chosen; +inf wins.
        assert_eq!(s.sample(&[f32::NAN, 1.0, f32::INFINITY, 0.0]), 2);
        // Nothing finite: the tie rule picks the lowest id.
        assert_eq!(s.sample(&[f32::NAN, f32::NEG_INFINITY, f32::NAN]), 0);
        let mut s = Sampler::new(untruncated(1.0, 3)).unwrap();
        for _ in 0..50 {
            assert_ne!(s.sample(&[f32::NAN, 0.0, f32::NAN, 0.0]) % 2, 0);
        }
    }
}
