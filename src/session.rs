//! A generation session: one loaded model's KV cache and the token ids it holds, kept from one
//! prompt to the next so that each prompt runs only what the cache does not already hold.
//!
//! A chat re-renders the whole conversation every turn. Turn N+1's prompt usually extends what
//! the cache holds after turn N (turn N's prompt and reply), and [`Session::prefill`] then runs
//! only the new tokens. When it does not — Gemma 4's template drops earlier thoughts and the
//! empty thought channel of the generation prompt, a reply re-tokenizes differently, the user
//! changed the system message — the cache is rewound to the longest common prefix
//! ([`KvCache::truncate`]) and the prompt runs from the first differing token. A sliding
//! layer's ring cannot always rewind that far; then the cache is cleared and the whole prompt
//! runs again.
//!
//! [`Session::generate`] samples from there: end-of-generation tokens, `n_predict`, stop
//! strings, a full context and a cancellation flag (checked before every token, so Ctrl-C stops
//! a reply within one token) end it. Text streams out UTF-8 safe as it is produced.
//!
//! The same flag stops a prefill between two layers of a batch (one batch of 512 tokens is
//! most of a minute on the full 26B-A4B on a small CPU): the batch's partial keys and values
//! are dropped, and the cache holds the batches before it, which the next prompt reuses.

use std::io;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::kv_cache::{KvCache, KvTypes};
use crate::model::{Cancel, Cancelled, ImageRows, Logits, Never, Stopped};
use crate::run::{uncancelled, Generator, RunError, StopReason, Timings};
use crate::sample::Sampler;
use crate::stop::StopStrings;
use crate::tokenizer::Tokenizer;
use crate::vision::ImageChunk;

/// A model's cache and what is in it.
pub struct Session<'g> {
    generator: &'g mut Generator,
    cache: KvCache,
    /// The tokens whose keys and values are in `cache`, one per position.
    ids: Vec<u32>,
    /// The images among `ids` (their soft tokens are all alike; the content hash tells them
    /// apart when a prompt is matched against the cache).
    images: Vec<ImageChunk>,
    /// `[n_vocab]` logits after the last of `ids`, when it was the last token of a finished
    /// prefill or a generated token; empty otherwise (nothing to sample from).
    logits: Vec<f32>,
    context: usize,
    /// Prompt tokens per forward pass.
    batch: usize,
}

/// Where [`Session::prefill_scored`] hands each batch's logits, `[batch][n_vocab]`.
type ScoreSink<'a> = &'a mut dyn FnMut(&[f32]) -> io::Result<()>;

/// What [`Session::prefill`] did with a prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Prefill {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of them, those already in the cache (a common prefix with what it held).
    pub reused: usize,
    /// Those run through the model now (`prompt_tokens - reused` unless cancelled).
    pub prefilled: usize,
    /// Cached positions dropped because the prompt diverged from them.
    pub dropped: usize,
    /// Whether the prompt was cut short by the cancellation flag (nothing to sample from).
    pub cancelled: bool,
    #[serde(skip)]
    pub time: Duration,
}

/// What [`Session::generate`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The text as streamed (without a stop string or what followed it).
    pub text: String,
    pub ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub time: Duration,
}

/// One prompt and its completion, for a stats line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TurnStats {
    #[serde(flatten)]
    pub prefill: Prefill,
    /// Tokens generated.
    pub generated: usize,
    /// Positions in the cache afterwards, and its size.
    pub context_used: usize,
    pub context: usize,
    /// Prompt speed is over the prefilled tokens only.
    pub timings: Timings,
}

impl TurnStats {
    pub fn new(prefill: Prefill, generation: &Generation, session: &Session) -> TurnStats {
        TurnStats {
            prefill,
            generated: generation.ids.len(),
            context_used: session.n_cached(),
            context: session.context(),
            timings: Timings::new(prefill.prefilled, prefill.time, generation.ids.len(), generation.time),
        }
    }
}

impl<'g> Session<'g> {
    /// An empty session over `generator` with a cache of `context` positions of K and V of `types`
    /// (allocated lazily as it fills).
    pub fn new(
        generator: &'g mut Generator,
        context: usize,
        types: impl Into<KvTypes>,
        batch: usize,
    ) -> Result<Self, RunError> {
        let cache = generator.model.new_cache_for(context, types, Some(batch.max(1)))?;
        Ok(Session {
            generator,
            cache,
            ids: Vec::new(),
            images: Vec::new(),
            logits: Vec::new(),
            context,
            batch: batch.max(1),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.generator.tokenizer
    }

    pub fn generator(&self) -> &Generator {
        self.generator
    }

    /// Positions the cache can hold.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Positions the cache holds now.
    pub fn n_cached(&self) -> usize {
        self.ids.len()
    }

    /// The tokens in the cache, one per position.
    pub fn cached_ids(&self) -> &[u32] {
        &self.ids
    }

    /// Bytes the cache has allocated.
    pub fn cache_bytes(&self) -> usize {
        self.cache.allocated_bytes()
    }

    /// Forgets everything cached (keeps the memory).
    pub fn reset(&mut self) {
        self.cache.clear();
        self.ids.clear();
        self.images.clear();
        self.logits.clear();
    }

    /// Brings the cache to hold exactly `prompt`, running only the tokens it does not hold yet
    /// (see the module docs), and keeps the logits after its last token for
    /// [`generate`](Self::generate). The last two tokens always run, even when the cache already
    /// held the whole prompt: the last one's logits are what the first sample needs
    /// ([`reusable`]).
    ///
    /// `cancel` is checked before every layer; a cancelled prefill leaves the cache holding the
    /// batches that ran whole (none of the one it stopped) and nothing to sample from.
    pub fn prefill(&mut self, prompt: &[u32], cancel: &dyn Cancel) -> Result<Prefill, RunError> {
        self.run_prompt(prompt, &[], cancel, None)
    }

    /// [`prefill`](Self::prefill) of a prompt with images ([`crate::vision::prompt::expand`]
    /// made it): an image's soft tokens run whole in one pass, and a cached image is reused only
    /// where the prompt has the same image (by content) at the same place.
    pub fn prefill_images(
        &mut self,
        prompt: &[u32],
        images: &[ImageChunk],
        cancel: &dyn Cancel,
    ) -> Result<Prefill, RunError> {
        self.run_prompt(prompt, images, cancel, None)
    }

    /// Teacher-forced scoring: runs all of `prompt` from an empty cache as
    /// [`prefill`](Self::prefill) would, and hands the logits of every position to `scores`,
    /// one batch at a time in prompt order (`[batch][n_vocab]`). Slower than `prefill`, which
    /// runs the output head for the last position only.
    pub fn prefill_scored(
        &mut self,
        prompt: &[u32],
        cancel: &dyn Cancel,
        scores: &mut dyn FnMut(&[f32]) -> io::Result<()>,
    ) -> Result<Prefill, RunError> {
        self.run_prompt(prompt, &[], cancel, Some(scores))
    }

    /// [`prefill_scored`](Self::prefill_scored) of a prompt with images.
    pub fn prefill_scored_images(
        &mut self,
        prompt: &[u32],
        images: &[ImageChunk],
        cancel: &dyn Cancel,
        scores: &mut dyn FnMut(&[f32]) -> io::Result<()>,
    ) -> Result<Prefill, RunError> {
        self.run_prompt(prompt, images, cancel, Some(scores))
    }

    fn run_prompt(
        &mut self,
        prompt: &[u32],
        images: &[ImageChunk],
        cancel: &dyn Cancel,
        mut scores: Option<ScoreSink<'_>>,
    ) -> Result<Prefill, RunError> {
        if prompt.is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        if prompt.len() > self.context {
            return Err(RunError::PromptTooLong { prompt: prompt.len(), context: self.context });
        }
        // Ids come from users too (`gemma run --ids`); one past the embedding table is an
        // error, not a panic inside the model.
        let n_vocab = self.generator.model.n_vocab();
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= n_vocab) {
            return Err(RunError::TokenOutOfRange { id, n_vocab });
        }
        if let Some(big) = images.iter().find(|c| c.image.n_soft + 1 > self.batch) {
            return Err(RunError::Images(format!(
                "an image of {} soft tokens runs in one pass with the token before it, more than the batch of {} (-b): use -b {} or more, or fewer --image-tokens",
                big.image.n_soft,
                self.batch,
                big.image.n_soft + 1
            )));
        }
        let start = Instant::now();
        // Scoring needs every position's logits, so it reuses nothing.
        let keep = if scores.is_some() { 0 } else { reusable(&self.ids, prompt) };
        let keep = images_reusable(&self.images, images, keep);
        let held = self.ids.len();
        if keep < held {
            // `keep`, or 0 where a sliding ring no longer holds what position `keep` must see.
            let kept = self.cache.truncate(keep);
            self.ids.truncate(kept);
        }
        self.images.retain(|c| c.rows().end <= self.ids.len());
        let reused = self.ids.len();
        self.logits.clear();
        let which = if scores.is_some() { Logits::All } else { Logits::Last };
        let mut cancelled = false;
        while self.ids.len() < prompt.len() {
            let pos = self.ids.len();
            let end = image_chunk_end(images, pos, pos + prompt_chunk(prompt.len() - pos, self.batch));
            let chunk = &prompt[pos..end];
            let rows: Vec<ImageRows> = (images.iter())
                .filter(|c| c.start >= pos && c.start < end)
                .map(|c| ImageRows { rows: c.start - pos..c.rows().end - pos, embd: &c.image.embd })
                .collect();
            // [chunk.len()][n_vocab] for `Logits::All`, [n_vocab] for `Logits::Last`
            let pass = self.generator.model.forward_images(chunk, &rows, pos, &mut self.cache, which, cancel);
            let mut logits = match pass {
                Ok(logits) => logits,
                Err(Stopped::Cancelled(Cancelled { kept })) => {
                    self.ids.truncate(kept);
                    self.logits.clear();
                    cancelled = true;
                    break;
                }
                Err(Stopped::Device(e)) => return Err(RunError::Device(e)),
            };
            self.ids.extend_from_slice(chunk);
            self.images.extend(images.iter().filter(|c| c.start >= pos && c.start < end).cloned());
            if let Some(scores) = scores.as_mut() {
                scores(&logits).map_err(RunError::Logits)?;
                logits.drain(..logits.len() - n_vocab);
            }
            self.logits = logits;
        }
        // The first token can be sampled now: map the rest of the weights for generation.
        self.generator.model.prefetch();
        Ok(Prefill {
            prompt_tokens: prompt.len(),
            reused,
            // Saturating: a cancel that had to clear the cache keeps less than `reused`
            // (see `Cancelled::kept`).
            prefilled: self.ids.len().saturating_sub(reused),
            dropped: held - reused.min(held),
            cancelled,
            time: start.elapsed(),
        })
    }

    /// Samples tokens after the prompt of the last [`prefill`](Self::prefill), running each
    /// one through the model to get the next logits, and hands the text to `out` as it
    /// becomes printable. Ends at an end-of-generation token (not printed, not cached),
    /// `n_predict` tokens, a stop string, a full context or `cancel`. The last sampled token
    /// is not run (nothing would read its logits), so the cache ends one token short of the
    /// completion.
    pub fn generate(
        &mut self,
        sampler: &mut Sampler,
        n_predict: Option<usize>,
        stop: &[String],
        cancel: &dyn Cancel,
        out: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> Result<Generation, RunError> {
        let start = Instant::now();
        let Generator { model, tokenizer } = &mut *self.generator;
        sampler.reset();
        let history = self.ids.len().saturating_sub(sampler.config().repeat_last_n);
        for &t in &self.ids[history..] {
            sampler.accept(t);
        }
        let mut detok = tokenizer.detokenizer(false);
        let mut stops = StopStrings::new(stop);
        let (mut text, mut ids) = (String::new(), Vec::new());
        let mut emit = |piece: String, text: &mut String| -> Result<(), RunError> {
            if piece.is_empty() {
                return Ok(());
            }
            text.push_str(&piece);
            out(&piece).map_err(RunError::Output)
        };
        let stop_reason = loop {
            if self.logits.is_empty() || cancel.is_cancelled() {
                break StopReason::Cancelled;
            }
            if n_predict.is_some_and(|n| ids.len() >= n) {
                break StopReason::Length;
            }
            let token = sampler.sample(&self.logits);
            if tokenizer.is_eog(token) {
                break StopReason::Eog;
            }
            sampler.accept(token);
            ids.push(token);
            emit(stops.push(&detok.push(token)), &mut text)?;
            if stops.stopped() {
                break StopReason::StopString;
            }
            if n_predict.is_some_and(|n| ids.len() >= n) {
                break StopReason::Length;
            }
            if self.ids.len() >= self.context {
                break StopReason::ContextFull;
            }
            let pass = model.forward_cancellable(&[token], self.ids.len(), &mut self.cache, Logits::Last, &Never);
            self.logits = uncancelled(pass)?;
            self.ids.push(token);
        };
        let tail = stops.push(&detok.finish()) + &stops.finish();
        emit(tail, &mut text)?;
        Ok(Generation { text, ids, stop_reason, time: start.elapsed() })
    }
}

/// How many leading tokens of `prompt` a cache holding `cached` can keep: their common prefix,
/// less whatever would leave fewer than two prompt tokens to run. The last token must run (its
/// logits are what the first sample needs), and it runs beside the one before it so that it
/// takes the same attention path as in a prompt run from scratch (one query row alone goes
/// another way, whose sums round differently): so a prompt's logits do not depend on what the
/// cache held before.
pub fn reusable(cached: &[u32], prompt: &[u32]) -> usize {
    common_prefix(cached, prompt).min(prompt.len().saturating_sub(2))
}

/// Prompt tokens to run in the next pass, of `left` still to run, at most `room`: never a lone
/// token while more follow, nor a remainder of one (see [`reusable`]), unless a pass holds only
/// one token. 0: wait for more room.
pub fn prompt_chunk(left: usize, room: usize) -> usize {
    if left <= room || room < 2 {
        return left.min(room);
    }
    let n = if left - room == 1 { room - 1 } else { room };
    if n < 2 {
        0
    } else {
        n
    }
}

/// How much of a reusable prefix of `keep` positions survives the images: a cached image is
/// kept only if the prompt has the same image at the same place; otherwise the prefix ends
/// before its soft tokens. A prefix never ends inside an image of the prompt (its soft tokens
/// run together).
pub fn images_reusable(cached: &[ImageChunk], prompt: &[ImageChunk], keep: usize) -> usize {
    let mut keep = keep;
    for c in cached {
        let same =
            |p: &ImageChunk| p.start == c.start && p.image.hash == c.image.hash && p.image.n_soft == c.image.n_soft;
        if c.start < keep && !prompt.iter().any(same) {
            keep = c.start;
        }
    }
    for p in prompt {
        if p.start < keep && keep < p.rows().end {
            keep = p.start;
        }
    }
    keep
}

/// Where a prompt pass from `pos` that would end at `end` ends so that no image is cut: before
/// an image it would cut, or, when the pass starts at that image (or one token before it), after
/// it, which may be past the batch size ([`Session::run_prompt`] refuses an image larger than
/// the batch: the sliding rings hold one batch beside the window).
pub fn image_chunk_end(images: &[ImageChunk], pos: usize, end: usize) -> usize {
    let mut end = end;
    for c in images {
        let rows = c.rows();
        if rows.start < end && end < rows.end {
            end = if rows.start > pos + 1 { rows.start } else { rows.end };
        }
    }
    end
}

/// Length of the longest common prefix of `a` and `b`.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::AtomicBool;

    use ggml::gguf::GgufFile;

    use super::*;
    use crate::kv_cache::KvType;
    use crate::model::offload::MoeUpload;
    use crate::model::{CancelAfter, Offload};
    use crate::sample::SamplerConfig;

    fn generator(name: &str) -> Generator {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
        assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
        Generator::load(GgufFile::open(&path).unwrap()).unwrap()
    }

    /// The model on the CPU, then with every layer and the head on lavapipe (`-ngl 99`,
    /// its KV cache in VRAM), then the same with the experts in RAM (`--cpu-moe`), run by the
    /// CPU and copied to VRAM: the session tests hold for all four.
    fn generators(name: &str) -> Vec<Generator> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
        let vk = ggml::vulkan::Vulkan::load().expect("the GPU tests need Vulkan: run scripts/setup.sh");
        let devices = vk.devices().unwrap();
        let lavapipe = devices.iter().find(|d| d.kind == ggml::vulkan::DeviceKind::Cpu).expect("lavapipe");
        let offload = Offload { gpu_layers: Some(99), device: Some(lavapipe.index), ..Offload::default() };
        let on_gpu = Generator::load_with(GgufFile::open(&path).unwrap(), &offload).unwrap();
        assert!(on_gpu.model.placement().contains("llvmpipe"), "{}", on_gpu.model.placement());
        // And every layer there with its experts in RAM, run by the CPU mid-pass, or copied to
        // VRAM for every batch (each choice made the same way every time: `auto` decides by
        // measured speeds, and the expert cache by what was routed before, so with them logits
        // may differ in the last bits from run to run; these tests ask for equal bits).
        let hybrid = |moe_upload| {
            let o = Offload { n_cpu_moe: Some(usize::MAX), moe_upload, expert_cache: Some(0), ..offload.clone() };
            Generator::load_with(GgufFile::open(&path).unwrap(), &o).unwrap()
        };
        vec![generator(name), on_gpu, hybrid(MoeUpload::Off), hybrid(MoeUpload::On)]
    }

    static NEVER: AtomicBool = AtomicBool::new(false);

    /// Greedy tokens after whatever was prefilled last.
    fn greedy(session: &mut Session, n: usize) -> Generation {
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        session.generate(&mut sampler, Some(n), &[], &NEVER, &mut |_| Ok(())).unwrap()
    }

    #[test]
    fn prompt_chunks_never_leave_a_lone_token() {
        // (left, room) -> tokens now
        for (left, room, n) in [
            (10, 512, 10),
            (513, 512, 511),
            (514, 512, 512),
            (1, 512, 1),
            (5, 4, 3),
            (3, 2, 0),
            (4, 2, 2),
            (7, 1, 1),
            (2, 1, 1),
        ] {
            assert_eq!(prompt_chunk(left, room), n, "left {left}, room {room}");
        }
        assert_eq!(reusable(&[1, 2, 3, 4], &[1, 2, 3, 4]), 2);
        assert_eq!(reusable(&[1, 2, 3, 4], &[1, 2, 9, 9, 9]), 2);
        assert_eq!(reusable(&[1], &[1]), 0);
    }

    #[test]
    fn common_prefix_counts_equal_leading_ids() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }

    /// Turn 2 extends turn 1's prompt and reply: only its new tokens run, and the logits and
    /// greedy tokens are those of a fresh session over the whole conversation.
    #[test]
    fn a_second_turn_prefills_only_its_new_tokens_and_matches_a_fresh_session() {
        for (model, mut gen) in ["tiny-gemma4-moe.gguf", "tiny-gemma4-dense.gguf"]
            .into_iter()
            .flat_map(|m| generators(m).into_iter().map(move |g| (m, g)))
        {
            let turn1 = gen.tokenize_prompt("<|turn>user\nHello there<turn|>\n<|turn>model\n", true);
            let mut session = Session::new(&mut gen, 256, KvType::F32, 4).unwrap();
            let p1 = session.prefill(&turn1, &NEVER).unwrap();
            assert_eq!((p1.reused, p1.prefilled, p1.dropped), (0, turn1.len(), 0));
            let reply = greedy(&mut session, 6).ids;
            assert_eq!(reply.len(), 6, "{model}");
            assert_eq!(session.n_cached(), turn1.len() + 5, "the last sample is not run");

            // The conversation so far (the reply ids as generated) and a new user turn.
            let mut turn2 = turn1.clone();
            turn2.extend(&reply);
            let next_turn = "<turn|>\n<|turn>user\nAnd then?<turn|>\n<|turn>model\n";
            turn2.extend(session.tokenizer().encode(next_turn, false, true));
            let p2 = session.prefill(&turn2, &NEVER).unwrap();
            assert_eq!((p2.reused, p2.prefilled, p2.dropped), (turn1.len() + 5, turn2.len() - turn1.len() - 5, 0));
            let logits = session.logits.clone();
            let next = greedy(&mut session, 8);
            drop(session);

            let mut fresh = Session::new(&mut gen, 256, KvType::F32, 512).unwrap();
            fresh.prefill(&turn2, &NEVER).unwrap();
            let max_diff = logits.iter().zip(&fresh.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // Only rounding: the reply ran one token per pass here, in one batch there (7e-6).
            assert!(max_diff < 1e-4, "{model}: logits differ by {max_diff}");
            assert_eq!(greedy(&mut fresh, 8).ids, next.ids, "{model}");
        }
    }

    /// A re-render that differs early rewinds the cache to the common prefix and runs from
    /// there; the result is the same as a fresh session's.
    #[test]
    fn a_divergent_prompt_rewinds_to_the_common_prefix() {
        for mut gen in generators("tiny-gemma4-moe.gguf") {
            let a = gen.tokenize_prompt("<|turn>user\nabc<turn|>\n<|turn>model\n<|channel>thought\n<channel|>", true);
            let b = gen.tokenize_prompt("<|turn>user\nabc<turn|>\n<|turn>model\nxyz<turn|>\n", true);
            let common = common_prefix(&a, &b);
            assert!(common > 4 && common < a.len(), "{common} of {}", a.len());

            let mut session = Session::new(&mut gen, 64, KvType::F32, 512).unwrap();
            session.prefill(&a, &NEVER).unwrap();
            let p = session.prefill(&b, &NEVER).unwrap();
            assert_eq!((p.reused, p.dropped, p.prefilled), (common, a.len() - common, b.len() - common));
            let rewound = session.logits.clone();
            let tokens = greedy(&mut session, 5).ids;
            drop(session);

            let mut fresh = Session::new(&mut gen, 64, KvType::F32, 512).unwrap();
            fresh.prefill(&b, &NEVER).unwrap();
            assert_eq!(fresh.logits, rewound);
            assert_eq!(greedy(&mut fresh, 5).ids, tokens);
        }
    }

    /// Past a sliding ring's reach the cache cannot rewind to the common prefix: it is
    /// cleared and the whole prompt runs again, with the same result.
    #[test]
    fn a_rewind_past_the_sliding_window_re_prefills_everything() {
        for mut gen in generators("tiny-gemma4-moe.gguf") {
            let words = "one two three four five six seven eight nine ten";
            let a = gen.tokenize_prompt(&format!("A {words} end"), true);
            let b = gen.tokenize_prompt(&format!("A {words} and more"), true);
            // One token per forward pass: the rings hold exactly the window of 16, so a rewind of
            // more than one position reaches past what they hold.
            let mut session = Session::new(&mut gen, 128, KvType::F32, 1).unwrap();
            session.prefill(&a, &NEVER).unwrap();
            greedy(&mut session, 20);
            let p = session.prefill(&b, &NEVER).unwrap();
            assert!(common_prefix(&a, &b) > 16);
            assert_eq!((p.reused, p.prefilled, p.dropped), (0, b.len(), a.len() + 19));
            let logits = session.logits.clone();
            drop(session);
            let mut fresh = Session::new(&mut gen, 128, KvType::F32, 1).unwrap();
            fresh.prefill(&b, &NEVER).unwrap();
            assert_eq!(fresh.logits, logits);
        }
    }

    /// The same prompt again reuses all but its last two tokens (the last one's logits are
    /// needed, and it runs beside the one before it, as in a fresh prefill).
    #[test]
    fn an_identical_prompt_reruns_only_its_last_token() {
        let mut gen = generator("tiny-gemma4-moe.gguf");
        let p = gen.tokenize_prompt("Hello world, again", true);
        let mut session = Session::new(&mut gen, 64, KvType::F16, 512).unwrap();
        session.prefill(&p, &NEVER).unwrap();
        let first = greedy(&mut session, 4).ids;
        let again = session.prefill(&p, &NEVER).unwrap();
        assert_eq!((again.reused, again.prefilled), (p.len() - 2, 2));
        assert_eq!(greedy(&mut session, 4).ids, first);
    }

    /// Scoring hands over every position's logits batch by batch, reuses no cached prefix,
    /// and keeps the last row for sampling as `prefill` does; ids past the vocabulary are an
    /// error before anything runs.
    #[test]
    fn a_scored_prefill_gives_every_position() {
        let mut gen = generator("tiny-gemma4-moe.gguf");
        let n_vocab = gen.model.n_vocab();
        let p = gen.tokenize_prompt("Hello world, once more with feeling", true);
        let mut session = Session::new(&mut gen, 64, KvType::F32, 3).unwrap();
        session.prefill(&p, &NEVER).unwrap();
        let last = session.logits.clone();
        let mut rows = Vec::new();
        let scored = session
            .prefill_scored(&p, &NEVER, &mut |batch| {
                rows.extend_from_slice(batch);
                Ok(())
            })
            .unwrap();
        assert_eq!((scored.reused, scored.prefilled, scored.dropped), (0, p.len(), p.len()));
        assert_eq!(rows.len(), p.len() * n_vocab);
        assert_eq!(session.logits, rows[rows.len() - n_vocab..]);
        // The output head over one row or many: only rounding apart.
        let max_diff = last.iter().zip(&session.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_diff < 1e-4, "{max_diff}");

        let bad = [p[0], n_vocab as u32];
        let err = session.prefill(&bad, &NEVER).unwrap_err();
        assert!(matches!(err, RunError::TokenOutOfRange { id, n_vocab: n } if id as usize == n_vocab && n == n_vocab));
        assert_eq!(session.n_cached(), p.len(), "nothing ran");
    }

    #[test]
    fn cancel_and_context_limits_end_generation() {
        let mut gen = generator("tiny-gemma4-moe.gguf");
        let p = gen.tokenize_prompt("Hello", true);
        let mut session = Session::new(&mut gen, p.len() + 3, KvType::F16, 512).unwrap();
        session.prefill(&p, &NEVER).unwrap();
        let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap();
        let cancel = AtomicBool::new(true);
        let g = session.generate(&mut sampler, None, &[], &cancel, &mut |_| Ok(())).unwrap();
        assert_eq!((g.stop_reason, g.ids.len()), (StopReason::Cancelled, 0));

        // Prompt + 3 positions: 3 tokens run, a 4th is sampled and the context is full.
        let g = session.generate(&mut sampler, None, &[], &NEVER, &mut |_| Ok(())).unwrap();
        assert_eq!((g.stop_reason, g.ids.len(), session.n_cached()), (StopReason::ContextFull, 4, p.len() + 3));

        let too_long = vec![p[0]; p.len() + 4];
        assert!(matches!(session.prefill(&too_long, &NEVER), Err(RunError::PromptTooLong { .. })));
        let cancelled = session.prefill(&too_long[..p.len() + 2], &cancel).unwrap();
        assert!(cancelled.cancelled);
        let g = session.generate(&mut sampler, None, &[], &NEVER, &mut |_| Ok(())).unwrap();
        assert_eq!(g.stop_reason, StopReason::Cancelled, "nothing to sample after a cancelled prefill");
    }

    /// Ctrl-C in the middle of a batch's forward pass, after the rings have wrapped: the
    /// layers that ran drop the batch again, the cache holds the batches before it, and the
    /// next prefill runs from there to the logits and greedy tokens of a fresh session.
    #[test]
    fn a_prefill_cancelled_between_layers_resumes_like_a_fresh_session() {
        for (model, mut gen) in ["tiny-gemma4-moe.gguf", "tiny-gemma4-dense.gguf"]
            .into_iter()
            .flat_map(|m| generators(m).into_iter().map(move |g| (m, g)))
        {
            let p = gen.tokenize_prompt("Count: one two three four five six seven eight nine ten.", true);
            // Batches of 4: batch 6 (positions 20..24) is past the window of 16.
            assert!(p.len() > 28, "{model}: {} tokens", p.len());
            let mut session = Session::new(&mut gen, 128, KvType::F32, 4).unwrap();
            let n_layer = session.cache.n_layers();
            // Five batches run whole; the sixth stops before its last layer.
            let cancel = CancelAfter::new(5 * n_layer + n_layer - 1);
            let cut = session.prefill(&p, &cancel).unwrap();
            assert!(cut.cancelled, "{model}");
            assert_eq!((cut.reused, cut.prefilled, session.n_cached()), (0, 20, 20), "{model}");
            for il in 0..n_layer {
                assert_eq!(session.cache.layer(il).n_positions(), 20, "{model}: layer {il}");
            }
            assert!(session.logits.is_empty(), "nothing to sample from");
            assert!(cancel.is_cancelled(), "{model}: the flag fired inside the sixth pass");

            let resumed = session.prefill(&p, &NEVER).unwrap();
            assert_eq!((resumed.reused, resumed.prefilled, resumed.dropped), (20, p.len() - 20, 0), "{model}");
            let logits = session.logits.clone();
            let tokens = greedy(&mut session, 8).ids;
            drop(session);

            let mut fresh = Session::new(&mut gen, 128, KvType::F32, 4).unwrap();
            fresh.prefill(&p, &NEVER).unwrap();
            let max_diff = logits.iter().zip(&fresh.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            // Only the order of the rewound rings' slots differs, so only summation order.
            assert!(max_diff < 1e-4, "{model}: logits differ by {max_diff}");
            assert_eq!(greedy(&mut fresh, 8).ids, tokens, "{model}");
        }
    }
}
