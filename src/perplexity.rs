//! `gemma perplexity`: how well a model predicts a text, by llama-perplexity's method, and the
//! KL divergence of its predictions from a base model's (a quantization's or a KV cache type's
//! cost).
//!
//! The text is tokenized once (BOS as the model adds it, special-token text as plain text) and
//! cut into chunks of `n_ctx` tokens; each chunk runs from an empty cache with its first token
//! replaced by BOS (when the model adds one), and is scored on its second half: the logits at
//! position `j` (`n_ctx/2 <= j < n_ctx - 1`) predict token `j + 1`.
//!
//! ```text
//! nll_j = logsumexp(logits_j) - logits_j[t_{j+1}]
//! PPL = exp(mean nll) ± exp(mean nll) · sqrt((mean nll² - mean²) / (count - 1))
//! KLD_j = Σ_i p_base,i (log p_base,i - log p_i)       (over log p_base,i > -16)
//! ```
//!
//! The base file (`--kl-divergence-base`) is llama-perplexity's, so either tool reads the
//! other's: `_logits_`, then `n_ctx` (u32), `n_vocab` and `n_chunk` (i32), the chunks' tokens
//! (i32, as tokenized: the first not replaced by BOS), then per scored position
//! `2 ⌈n_vocab/2⌉ + 4` u16s: a scale and the smallest kept log-probability (two f32s), and each
//! token's log-probability quantized to 16 bits over the 16 nats below the largest.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use ggml::output::PendingFile;
use serde::Serialize;

use crate::kv_cache::KvTypes;
use crate::model::{Cancel, Logits, Model, Stopped};
use crate::run::RunError;

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error("the text is {tokens} tokens; a context of {n_ctx} needs at least {needed} (two chunks)")]
    TooShort { tokens: usize, n_ctx: usize, needed: usize },
    #[error("{path}: {problem}")]
    Base { path: String, problem: String },
    #[error("interrupted after {done} of {total} chunks")]
    Interrupted { done: usize, total: usize },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How the text is cut and run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Tokens per chunk (`-c`).
    pub n_ctx: usize,
    /// Tokens per forward pass (`-b`).
    pub batch: usize,
    pub kv_types: KvTypes,
}

/// The tokens to score: whole chunks of `n_ctx`.
pub struct Chunks {
    pub tokens: Vec<u32>,
    pub n_ctx: usize,
    pub n_chunk: usize,
}

impl Chunks {
    /// The whole chunks of `tokens` (at most `max`), or an error when there are fewer than two.
    pub fn new(mut tokens: Vec<u32>, n_ctx: usize, max: Option<usize>) -> Result<Chunks, PerplexityError> {
        if tokens.len() < 2 * n_ctx {
            return Err(PerplexityError::TooShort { tokens: tokens.len(), n_ctx, needed: 2 * n_ctx });
        }
        let n_chunk = (tokens.len() / n_ctx).min(max.unwrap_or(usize::MAX)).max(1);
        tokens.truncate(n_chunk * n_ctx);
        Ok(Chunks { tokens, n_ctx, n_chunk })
    }

    /// The first scored position of a chunk, and how many positions are scored.
    pub fn scored(&self) -> (usize, usize) {
        let first = self.n_ctx / 2;
        (first, self.n_ctx - 1 - first)
    }
}

/// What [`evaluate`] hands each chunk's results to: `(chunk, logits, targets)`.
pub type Sink<'a> = dyn FnMut(usize, &[f32], &[u32]) -> Result<(), PerplexityError> + 'a;

/// Runs every chunk and hands `sink` each chunk's scored logits `[n_scored][n_vocab]` and the
/// tokens they predict, in order. `bos` replaces each chunk's first token. Once `cancel` fires,
/// the pass under way stops before its next layer and no further chunk is handed on
/// ([`PerplexityError::Interrupted`]).
pub fn evaluate(
    model: &mut Model,
    chunks: &Chunks,
    bos: Option<u32>,
    options: &Options,
    cancel: &dyn Cancel,
    sink: &mut Sink,
) -> Result<(), PerplexityError> {
    let (n_ctx, n_vocab) = (chunks.n_ctx, model.n_vocab());
    let (first, n_scored) = chunks.scored();
    let batch = options.batch.max(1);
    for c in 0..chunks.n_chunk {
        let mut tokens = chunks.tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(bos) = bos {
            tokens[0] = bos;
        }
        let mut cache = model.new_cache_for(n_ctx, options.kv_types, Some(batch)).map_err(RunError::from)?;
        // logits: rows first .. n_ctx - 1 of the chunk.
        let mut logits = Vec::with_capacity(n_scored * n_vocab);
        for (b, piece) in tokens.chunks(batch).enumerate() {
            let pos = b * batch;
            let end = pos + piece.len();
            let which = if end <= first { Logits::Last } else { Logits::All };
            let out = match model.forward_cancellable(piece, pos, &mut cache, which, cancel) {
                Ok(out) => out,
                Err(Stopped::Cancelled(_)) => {
                    return Err(PerplexityError::Interrupted { done: c, total: chunks.n_chunk })
                }
                Err(Stopped::Device(e)) => return Err(RunError::Device(e).into()),
            };
            if which == Logits::All {
                let rows = pos.max(first)..end.min(n_ctx - 1);
                logits.extend_from_slice(&out[(rows.start - pos) * n_vocab..(rows.end - pos) * n_vocab]);
            }
        }
        let targets = &chunks.tokens[c * n_ctx + first + 1..(c + 1) * n_ctx];
        sink(c, &logits, targets)?;
    }
    Ok(())
}

/// `logsumexp(x)`, in f64.
fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// A mean and its standard error from sums of `x` and `x²` over `count` values (0 for fewer
/// than two).
fn mean_and_error(sum: f64, sum2: f64, count: usize) -> (f64, f64) {
    if count == 0 {
        return (0.0, 0.0);
    }
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() } else { 0.0 };
    (mean, err)
}

/// Perplexity so far: the sums of each scored token's negative log-likelihood and its square.
#[derive(Clone, Copy, Debug, Default)]
pub struct Nll {
    pub sum: f64,
    pub sum2: f64,
    pub count: usize,
}

impl Nll {
    /// Adds the scored rows `logits: [n][n_vocab]` predicting `targets: [n]`.
    pub fn add(&mut self, logits: &[f32], targets: &[u32]) {
        let n_vocab = logits.len() / targets.len().max(1);
        for (row, &t) in logits.chunks_exact(n_vocab).zip(targets) {
            self.push(log_sum_exp(row) - row[t as usize] as f64);
        }
    }

    /// Adds one token's negative log-likelihood.
    fn push(&mut self, nll: f64) {
        self.sum += nll;
        self.sum2 += nll * nll;
        self.count += 1;
    }

    /// `exp(mean nll)` and its standard error.
    pub fn ppl(&self) -> (f64, f64) {
        let (mean, err) = mean_and_error(self.sum, self.sum2, self.count);
        (mean.exp(), mean.exp() * err)
    }
}

/// u16s per scored row in a base file: two f32s, then the vocabulary rounded up to even.
fn row_words(n_vocab: usize) -> usize {
    2 * n_vocab.div_ceil(2) + 4
}

/// Writes a base file, llama-perplexity's format (module docs).
pub struct BaseWriter<W: Write> {
    out: W,
    n_vocab: usize,
}

impl<W: Write> BaseWriter<W> {
    pub fn new(mut out: W, chunks: &Chunks, n_vocab: usize) -> std::io::Result<BaseWriter<W>> {
        out.write_all(b"_logits_")?;
        out.write_all(&(chunks.n_ctx as u32).to_le_bytes())?;
        out.write_all(&(n_vocab as i32).to_le_bytes())?;
        out.write_all(&(chunks.n_chunk as i32).to_le_bytes())?;
        for &t in &chunks.tokens {
            out.write_all(&(t as i32).to_le_bytes())?;
        }
        Ok(BaseWriter { out, n_vocab })
    }

    /// One chunk's scored rows `[n][n_vocab]`.
    pub fn write(&mut self, logits: &[f32]) -> std::io::Result<()> {
        let mut words = vec![0u16; row_words(self.n_vocab)];
        for row in logits.chunks_exact(self.n_vocab) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let min = row.iter().fold(f32::INFINITY, |m, &v| m.min(v)).max(max - 16.0);
            let lse = log_sum_exp(row) as f32 - max;
            // log p_i = scale · q_i + min_log_prob, q_i in 0..=65535 over [min, max].
            let scale = (max - min) / 65535.0;
            let min_log_prob = min - max - lse;
            words[0..2].copy_from_slice(&split(scale.to_bits()));
            words[2..4].copy_from_slice(&split(min_log_prob.to_bits()));
            for (q, &x) in words[4..4 + self.n_vocab].iter_mut().zip(row) {
                *q = if scale > 0.0 && x > min { ((x - min) / scale).round() as u16 } else { 0 };
            }
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A base file being written to a temporary file beside `path`, renamed into place by
/// [`persist`](Self::persist) once every chunk is in. Dropped before that (an error, Ctrl-C),
/// it removes the temporary file: nothing is left half-way.
pub struct PendingBase {
    out: BaseWriter<PendingFile>,
}

impl PendingBase {
    pub fn create(path: &Path, chunks: &Chunks, n_vocab: usize) -> Result<PendingBase, PerplexityError> {
        let at = |e: std::io::Error| PerplexityError::Base { path: path.display().to_string(), problem: e.to_string() };
        let out = BaseWriter::new(PendingFile::create(path).map_err(at)?, chunks, n_vocab).map_err(at)?;
        Ok(PendingBase { out })
    }

    /// One chunk's scored rows `[n][n_vocab]`.
    pub fn write(&mut self, logits: &[f32]) -> Result<(), PerplexityError> {
        Ok(self.out.write(logits)?)
    }

    /// Renames the file into place; returns its path.
    pub fn persist(self) -> Result<PathBuf, PerplexityError> {
        let file = self.out.finish()?;
        let path = file.path().display().to_string();
        file.finish().map_err(|e| PerplexityError::Base { path, problem: e.to_string() })
    }
}

/// An f32's bits as two u16s, low first (how the file stores them).
fn split(bits: u32) -> [u16; 2] {
    [bits as u16, (bits >> 16) as u16]
}

/// A base file being read: its header, then one chunk of rows at a time.
pub struct BaseReader<R: Read> {
    input: R,
    path: String,
    pub chunks: Chunks,
    pub n_vocab: usize,
}

impl BaseReader<BufReader<File>> {
    /// Opens the base file at `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, PerplexityError> {
        let shown = path.display().to_string();
        let file =
            File::open(path).map_err(|e| PerplexityError::Base { path: shown.clone(), problem: e.to_string() })?;
        BaseReader::new(BufReader::new(file), &shown)
    }
}

impl<R: Read> BaseReader<R> {
    /// Reads the header of the base file at `path` (for errors) from `input`.
    pub fn new(mut input: R, path: &str) -> Result<BaseReader<R>, PerplexityError> {
        let bad = |problem: String| PerplexityError::Base { path: path.to_string(), problem };
        let mut magic = [0u8; 8];
        let mut word = [0u8; 4];
        input.read_exact(&mut magic).map_err(|_| bad("not a base file (too short)".into()))?;
        if &magic != b"_logits_" {
            return Err(bad("not a base file: it does not start with `_logits_`".into()));
        }
        let mut int = |what: &str| -> Result<i64, PerplexityError> {
            input.read_exact(&mut word).map_err(|_| bad(format!("truncated in its header ({what})")))?;
            Ok(i32::from_le_bytes(word) as i64)
        };
        let n_ctx = int("n_ctx")? as u32 as usize;
        let (n_vocab, n_chunk) = (int("n_vocab")?, int("n_chunk")?);
        if n_ctx < 2 || n_vocab < 1 || n_chunk < 1 {
            return Err(bad(format!("a header of n_ctx {n_ctx}, n_vocab {n_vocab}, {n_chunk} chunks")));
        }
        let mut raw = vec![0u8; 4 * n_ctx * n_chunk as usize];
        input.read_exact(&mut raw).map_err(|_| bad("truncated in its tokens".into()))?;
        let tokens = raw.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect();
        let chunks = Chunks { tokens, n_ctx, n_chunk: n_chunk as usize };
        Ok(BaseReader { input, path: path.to_string(), chunks, n_vocab: n_vocab as usize })
    }

    /// The first `max` chunks (all by default), for a model of `n_vocab` tokens: an error when
    /// the base was written over another vocabulary.
    pub fn chunks_for(&self, n_vocab: usize, max: Option<usize>) -> Result<Chunks, PerplexityError> {
        if self.n_vocab != n_vocab {
            return Err(PerplexityError::Base {
                path: self.path.clone(),
                problem: format!(
                    "its logits are over {} tokens, the model's vocabulary has {n_vocab}: \
                     a base file from another model or vocabulary",
                    self.n_vocab
                ),
            });
        }
        let (n_ctx, take) = (self.chunks.n_ctx, self.chunks.n_chunk.min(max.unwrap_or(usize::MAX)));
        Ok(Chunks { tokens: self.chunks.tokens[..take * n_ctx].to_vec(), n_ctx, n_chunk: take })
    }

    /// The next chunk's rows, as log-probabilities `[n_scored][n_vocab]`.
    pub fn next_chunk(&mut self, chunk: usize) -> Result<Vec<f32>, PerplexityError> {
        let (_, n_scored) = self.chunks.scored();
        let words = row_words(self.n_vocab);
        let mut raw = vec![0u8; 2 * words * n_scored];
        self.input.read_exact(&mut raw).map_err(|_| PerplexityError::Base {
            path: self.path.clone(),
            problem: format!("truncated in chunk {} of {}", chunk + 1, self.chunks.n_chunk),
        })?;
        let mut out = Vec::with_capacity(n_scored * self.n_vocab);
        for row in raw.chunks_exact(2 * words) {
            let f = |i: usize| f32::from_le_bytes(row[4 * i..4 * i + 4].try_into().unwrap());
            let (scale, min_log_prob) = (f(0), f(1));
            let q = row[8..].chunks_exact(2).take(self.n_vocab);
            out.extend(q.map(|b| scale * u16::from_le_bytes([b[0], b[1]]) as f32 + min_log_prob));
        }
        Ok(out)
    }
}

/// What the KL divergence from a base adds up, position by position.
#[derive(Clone, Debug, Default)]
pub struct Divergence {
    pub nll: Nll,
    pub nll_base: Nll,
    pub sum_nll_nll_base: f64,
    pub kld: Vec<f32>,
    /// `p(token) - p_base(token)` at each position.
    pub p_diff: Vec<f32>,
    pub same_top: usize,
}

impl Divergence {
    /// Adds the rows `logits: [n][n_vocab]` against the base's log-probabilities `base: [n]
    /// [n_vocab]`, predicting `targets: [n]`.
    pub fn add(&mut self, logits: &[f32], base: &[f32], targets: &[u32]) {
        let n_vocab = logits.len() / targets.len().max(1);
        for ((row, b), &t) in logits.chunks_exact(n_vocab).zip(base.chunks_exact(n_vocab)).zip(targets) {
            let lse = log_sum_exp(row);
            let nll = lse - row[t as usize] as f64;
            let nll_base = -(b[t as usize] as f64);
            self.nll.push(nll);
            self.nll_base.push(nll_base);
            self.sum_nll_nll_base += nll * nll_base;
            let kld: f64 = (b.iter().zip(row))
                .filter(|&(&lb, _)| lb > -16.0)
                .map(|(&lb, &x)| (lb as f64).exp() * (lb as f64 - (x as f64 - lse)))
                .sum();
            self.kld.push(kld as f32);
            self.p_diff.push(((-nll).exp() - (-nll_base).exp()) as f32);
            let argmax = |v: &[f32]| (0..v.len()).fold(0, |m, i| if v[i] > v[m] { i } else { m });
            self.same_top += (argmax(row) == argmax(b)) as usize;
        }
    }

    /// The report's numbers.
    pub fn report(&self) -> DivergenceReport {
        let n = self.kld.len();
        let mean = |v: &[f32]| {
            let (s, s2) = v.iter().fold((0.0, 0.0), |(s, s2), &x| (s + x as f64, s2 + (x as f64).powi(2)));
            mean_and_error(s, s2, v.len())
        };
        let sorted = |v: &[f32]| {
            let mut v = v.to_vec();
            v.sort_by(f32::total_cmp);
            v
        };
        let (kld, p_diff) = (sorted(&self.kld), sorted(&self.p_diff));
        let at = |v: &[f32], fraction: f64| percentile(v, fraction);
        let (ppl, ppl_base) = (self.nll.ppl(), self.nll_base.ppl());
        let (ln_q, ln_q_err) = mean_and_error(self.nll.sum, self.nll.sum2, n);
        let (ln_b, ln_b_err) = mean_and_error(self.nll_base.sum, self.nll_base.sum2, n);
        let cov = if n > 1 { (self.sum_nll_nll_base / n as f64 - ln_q * ln_b) / (n - 1) as f64 } else { 0.0 };
        let ratio_err = (ln_q_err.powi(2) + ln_b_err.powi(2) - 2.0 * cov).max(0.0).sqrt();
        let p2: Vec<f32> = self.p_diff.iter().map(|d| d * d).collect();
        let (mse, mse_err) = mean(&p2);
        let ((kld_mean, kld_mean_error), (p_diff_mean, p_diff_mean_error)) = (mean(&self.kld), mean(&self.p_diff));
        let same = self.same_top as f64 / n.max(1) as f64;
        DivergenceReport {
            count: n,
            ppl: ppl.0,
            ppl_error: ppl.1,
            ppl_base: ppl_base.0,
            ppl_base_error: ppl_base.1,
            ln_ppl_ratio: ln_q - ln_b,
            ln_ppl_ratio_error: ratio_err,
            kld_mean,
            kld_mean_error,
            kld_max: kld.last().copied().unwrap_or(0.0) as f64,
            kld_99_9: at(&kld, 0.999),
            kld_99: at(&kld, 0.99),
            kld_90: at(&kld, 0.90),
            kld_median: at(&kld, 0.5),
            kld_min: kld.first().copied().unwrap_or(0.0) as f64,
            same_top: same,
            same_top_error: if n > 1 { (same * (1.0 - same) / (n - 1) as f64).sqrt() } else { 0.0 },
            p_diff_mean,
            p_diff_mean_error,
            p_diff_rms: mse.sqrt(),
            p_diff_rms_error: if mse > 0.0 { 0.5 / mse.sqrt() * mse_err } else { 0.0 },
            p_diff_max: p_diff.last().copied().unwrap_or(0.0) as f64,
            p_diff_99: at(&p_diff, 0.99),
            p_diff_median: at(&p_diff, 0.5),
            p_diff_1: at(&p_diff, 0.01),
            p_diff_min: p_diff.first().copied().unwrap_or(0.0) as f64,
        }
    }
}

/// The value at `fraction` of the sorted `v`, interpolated between neighbours.
fn percentile(v: &[f32], fraction: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let p = fraction.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (p.floor() as usize, p - p.floor());
    let next = v[(i + 1).min(v.len() - 1)] as f64;
    (1.0 - frac) * v[i] as f64 + frac * next
}

/// The KL-divergence report (llama-perplexity's statistics).
#[derive(Clone, Debug, Serialize)]
pub struct DivergenceReport {
    pub count: usize,
    pub ppl: f64,
    pub ppl_error: f64,
    pub ppl_base: f64,
    pub ppl_base_error: f64,
    pub ln_ppl_ratio: f64,
    pub ln_ppl_ratio_error: f64,
    pub kld_mean: f64,
    pub kld_mean_error: f64,
    pub kld_max: f64,
    pub kld_99_9: f64,
    pub kld_99: f64,
    pub kld_90: f64,
    pub kld_median: f64,
    pub kld_min: f64,
    /// How often the most probable token is the base's.
    pub same_top: f64,
    pub same_top_error: f64,
    pub p_diff_mean: f64,
    pub p_diff_mean_error: f64,
    pub p_diff_rms: f64,
    pub p_diff_rms_error: f64,
    pub p_diff_max: f64,
    pub p_diff_99: f64,
    pub p_diff_median: f64,
    pub p_diff_1: f64,
    pub p_diff_min: f64,
}

impl DivergenceReport {
    pub fn to_text(&self) -> String {
        let pct = |v: f64| 100.0 * v;
        [
            format!("Mean PPL(Q)                   : {:10.6} ± {:10.6}", self.ppl, self.ppl_error),
            format!("Mean PPL(base)                : {:10.6} ± {:10.6}", self.ppl_base, self.ppl_base_error),
            format!("Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}", self.ln_ppl_ratio, self.ln_ppl_ratio_error),
            format!("Mean    KLD: {:10.6} ± {:10.6}", self.kld_mean, self.kld_mean_error),
            format!("Maximum KLD: {:10.6}", self.kld_max),
            format!("99.9%   KLD: {:10.6}", self.kld_99_9),
            format!("99.0%   KLD: {:10.6}", self.kld_99),
            format!("90.0%   KLD: {:10.6}", self.kld_90),
            format!("Median  KLD: {:10.6}", self.kld_median),
            format!("Minimum KLD: {:10.6}", self.kld_min),
            format!("Mean    Δp: {:6.3} ± {:5.3} %", pct(self.p_diff_mean), pct(self.p_diff_mean_error)),
            format!("Maximum Δp: {:6.3}%", pct(self.p_diff_max)),
            format!("99.0%   Δp: {:6.3}%", pct(self.p_diff_99)),
            format!("Median  Δp: {:6.3}%", pct(self.p_diff_median)),
            format!(" 1.0%   Δp: {:6.3}%", pct(self.p_diff_1)),
            format!("Minimum Δp: {:6.3}%", pct(self.p_diff_min)),
            format!("RMS Δp    : {:6.3} ± {:5.3} %", pct(self.p_diff_rms), pct(self.p_diff_rms_error)),
            format!("Same top p: {:6.3} ± {:5.3} %", pct(self.same_top), pct(self.same_top_error)),
        ]
        .join("\n")
            + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_file_round_trips_log_probabilities_within_its_16_bit_steps() {
        // Two chunks of 6 tokens over a vocabulary of 5: 2 scored rows each.
        let chunks = Chunks::new((0..14).map(|i| i % 5).collect(), 6, None).unwrap();
        assert_eq!((chunks.n_chunk, chunks.tokens.len(), chunks.scored()), (2, 12, (3, 2)));
        let rows: Vec<f32> = vec![1.0, -3.0, 0.5, 2.0, -30.0, 0.0, 0.1, 0.2, 0.3, 0.4];
        let mut w = BaseWriter::new(Vec::new(), &chunks, 5).unwrap();
        w.write(&rows).unwrap();
        w.write(&rows).unwrap();
        let bytes = w.finish().unwrap();
        // Header 8 + 3·4 + 12 tokens · 4; rows of 2·3 + 4 = 10 u16s.
        assert_eq!(bytes.len(), 20 + 48 + 4 * 10 * 2);
        let mut r = BaseReader::new(&bytes[..], "base").unwrap();
        assert_eq!((r.n_vocab, r.chunks.n_ctx, r.chunks.n_chunk), (5, 6, 2));
        assert_eq!(r.chunks.tokens, chunks.tokens);
        let back = r.next_chunk(0).unwrap();
        for (row, got) in rows.chunks(5).zip(back.chunks(5)) {
            let lse = log_sum_exp(row);
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            for (&x, &g) in row.iter().zip(got) {
                let want = x as f64 - lse;
                // Kept: within half a step of 16 nats / 65535 (and f32 rounding); below the
                // 16-nat floor: the floor.
                match x > max - 16.0 {
                    true => assert!((g as f64 - want).abs() < 2e-4, "{x}: {g} vs {want}"),
                    false => assert!((g as f64 - (max as f64 - 16.0 - lse)).abs() < 2e-4, "{x}: {g}"),
                }
            }
        }
        assert!(r.next_chunk(1).is_ok());
        let err = r.next_chunk(2).unwrap_err().to_string();
        assert!(err.contains("truncated in chunk 3 of 2"), "{err}");
        let err = BaseReader::new(&b"_logits"[..], "x.kld").err().unwrap().to_string();
        assert!(err.contains("x.kld: not a base file"), "{err}");
    }

    #[test]
    fn perplexity_and_divergence_by_hand() {
        // Two positions over 3 tokens: uniform logits, then certain of token 2.
        let logits = [0.0, 0.0, 0.0, -100.0, -100.0, 100.0];
        let mut nll = Nll::default();
        nll.add(&logits, &[1, 2]);
        // nll: ln 3, then ~0: PPL = exp(ln 3 / 2) = sqrt 3.
        assert!((nll.ppl().0 - 3f64.sqrt()).abs() < 1e-9);
        // Against itself as the base: KLD 0, same top everywhere, Δp 0.
        let base: Vec<f32> = logits
            .chunks(3)
            .flat_map(|r| {
                let lse = log_sum_exp(r);
                r.iter().map(move |&x| (x as f64 - lse) as f32)
            })
            .collect();
        let mut d = Divergence::default();
        d.add(&logits, &base, &[1, 2]);
        let r = d.report();
        assert!(r.kld_mean.abs() < 1e-7 && r.same_top == 1.0 && r.p_diff_max.abs() < 1e-7, "{r:?}");
        // A base sure of token 0 at the first position: KLD = ln(1/ (1/3)) = ln 3 there.
        let mut d = Divergence::default();
        let sure = [0.0, -1000.0, -1000.0, base[3], base[4], base[5]];
        d.add(&logits, &sure, &[1, 2]);
        assert!((d.kld[0] as f64 - 3f64.ln()).abs() < 1e-6 && d.kld[1].abs() < 1e-6, "{:?}", d.kld);
        // Position 0: the uniform row's first maximum is token 0, the base's too.
        assert_eq!(d.same_top, 2);
    }
}
