//! The model's side of `gemma serve`: one thread that owns the model and its slots, and runs
//! continuous batching.
//!
//! A slot is one KV cache sequence (`-c / --parallel` positions) and the token ids it holds;
//! it keeps them after its request ends, so the next request that starts the same way (the
//! same system prompt, a conversation grown by one turn) runs only its new tokens. A request
//! ([`Job`]) waits in the bounded queue until a slot is free, then takes the free slot whose
//! cache shares the longest prefix with its prompt (the least recently used on a tie).
//!
//! Every step is one forward pass ([`Decoder::forward_seqs`]) over the work of all busy slots:
//! the next token of each generating slot, then prompt chunks of the prefilling ones while
//! the batch (`-b`) has room, so users share the weight reads and a long prompt does not stall
//! the others' replies. A token's logits do not depend on what else is in its pass (the matmuls
//! take the same kernels for any token count), so a reply at temperature 0 is the same whoever
//! else is being served, and the same as `gemma run`'s. Prompt chunks are cut as `gemma run`
//! cuts them ([`prompt_chunk`], [`reusable`]): never a lone token, whose attention would take
//! another path than in a chunk of several.
//!
//! Before each step, a slot whose client has gone (its event receiver dropped) is freed: a
//! disconnect cancels a request within one step.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::kv_cache::{KvCache, KvTypes};
use crate::model::{ImageRows, Logits, Model, Seq};
use crate::run::{Generator, StopReason};
use crate::sample::{Sampler, SamplerConfig};
use crate::session::{common_prefix, image_chunk_end, images_reusable, prompt_chunk, reusable};
use crate::stop::StopStrings;
use crate::tokenizer::{Detokenizer, Tokenizer};
use crate::vision::ImageChunk;

/// One request, as the engine runs it.
pub struct Job {
    /// The prompt's token ids (non-empty, shorter than a slot's context, inside the
    /// vocabulary: the HTTP side checks).
    pub prompt: Vec<u32>,
    /// Where the prompt's images are: their soft tokens are in `prompt`, their embeddings
    /// here (each at most a batch, less the other slots' decode tokens: the HTTP side checks).
    pub images: Vec<ImageChunk>,
    pub sampling: SamplerConfig,
    /// Tokens to generate at most (`None`: until the slot's context is full).
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Never end at an end-of-generation token (llama-server's `ignore_eos`: benchmarks ask
    /// for exactly `max_tokens`).
    pub ignore_eos: bool,
    /// Where the reply goes; dropping the receiver cancels the request.
    pub events: UnboundedSender<Event>,
}

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// A slot took the request: this many prompt tokens were already in its cache.
    Started { cached_tokens: usize },
    /// Completion text, in order.
    Text(String),
    /// The end.
    Done(Done),
    /// The request could not be served (the GPU failed mid-pass).
    Failed(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Done {
    pub stop_reason: StopReason,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// From taking a slot to the first token, and from there to the end.
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// Counters for `/metrics`, shared with the HTTP side.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens run through the model (the rest came from slots' caches).
    pub prompt_tokens_run: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Requests waiting for a slot.
    pub queued: AtomicUsize,
    /// Slots serving a request.
    pub busy_slots: AtomicUsize,
    /// Nanoseconds spent in forward passes, and the passes.
    pub busy_ns: AtomicU64,
    pub passes: AtomicU64,
    /// Tokens (prompt and generated) those passes ran.
    pub pass_tokens: AtomicU64,
}

/// How the engine is set up.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    pub slots: usize,
    /// Positions per slot.
    pub slot_context: usize,
    /// Tokens per forward pass at most (decode tokens always run).
    pub batch: usize,
    pub kv_types: KvTypes,
}

/// A request in a slot.
struct Task<'t> {
    job: Job,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    stops: StopStrings,
    cached_tokens: usize,
    generated: usize,
    /// The sampled token the next pass runs, once the prompt is in.
    next: Option<u32>,
    admitted: Instant,
    first_token: Option<Instant>,
}

struct Slot<'t> {
    cache: KvCache,
    /// The tokens whose keys and values are in `cache`.
    ids: Vec<u32>,
    /// The images among `ids` (which image a run of soft tokens was).
    images: Vec<ImageChunk>,
    task: Option<Task<'t>>,
    /// When it last took a request (a step count), for choosing between equal prefixes.
    last_used: u64,
}

/// One slot's part of a pass.
enum Work {
    Prompt(std::ops::Range<usize>),
    Token(u32),
}

/// Runs requests from `jobs` until every sender is gone.
pub fn run(generator: Generator, jobs: Receiver<Job>, options: EngineOptions, metrics: Arc<Metrics>) {
    let Generator { model, tokenizer } = generator;
    let mut engine = Engine { model, options, metrics };
    engine.serve(jobs, &tokenizer)
}

struct Engine {
    model: Model,
    options: EngineOptions,
    metrics: Arc<Metrics>,
}

impl Engine {
    fn serve(&mut self, jobs: Receiver<Job>, tokenizer: &Tokenizer) {
        let mut slots: Vec<Slot> = Vec::with_capacity(self.options.slots);
        for _ in 0..self.options.slots {
            match self.model.new_cache_for(self.options.slot_context, self.options.kv_types, Some(self.options.batch)) {
                Ok(cache) => slots.push(Slot { cache, ids: Vec::new(), images: Vec::new(), task: None, last_used: 0 }),
                Err(e) => {
                    eprintln!("gemma serve: allocating a slot's KV cache: {e}");
                    std::process::exit(1);
                }
            }
        }
        let (mut step, mut open) = (0u64, true);
        while open || slots.iter().any(|s| s.task.is_some()) {
            step += 1;
            // Take waiting requests into free slots; with nothing to do, wait for one.
            while slots.iter().any(|s| s.task.is_none()) {
                let idle = slots.iter().all(|s| s.task.is_none());
                let job = if idle {
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => {
                            open = false;
                            break;
                        }
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(job) => job,
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                };
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                self.admit(&mut slots, job, tokenizer, step);
            }
            self.step(&mut slots, tokenizer);
        }
    }

    /// Puts `job` in the free slot with the longest common prefix and rewinds that slot's cache
    /// to it.
    fn admit<'t>(&self, slots: &mut [Slot<'t>], job: Job, tokenizer: &'t Tokenizer, step: u64) {
        if job.prompt.is_empty() || job.prompt.len() > self.options.slot_context {
            let _ = job.events.send(Event::Failed(format!(
                "the prompt is {} tokens; a slot holds 1 to {}",
                job.prompt.len(),
                self.options.slot_context
            )));
            return;
        }
        let slot = (slots.iter_mut().filter(|s| s.task.is_none()))
            .max_by_key(|s| (common_prefix(&s.ids, &job.prompt), std::cmp::Reverse(s.last_used)))
            .expect("a free slot");
        let keep = images_reusable(&slot.images, &job.images, reusable(&slot.ids, &job.prompt));
        let kept = slot.cache.truncate(keep);
        slot.ids.truncate(kept);
        slot.images.retain(|c| c.rows().end <= kept);
        slot.last_used = step;
        let sampler = match Sampler::new(job.sampling) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.events.send(Event::Failed(e.to_string()));
                return;
            }
        };
        let _ = job.events.send(Event::Started { cached_tokens: kept });
        self.metrics.busy_slots.fetch_add(1, Ordering::Relaxed);
        slot.task = Some(Task {
            stops: StopStrings::new(&job.stop),
            job,
            sampler,
            detok: tokenizer.detokenizer(false),
            cached_tokens: kept,
            generated: 0,
            next: None,
            admitted: Instant::now(),
            first_token: None,
        });
    }

    /// One forward pass over every busy slot's next work, and what follows from its logits.
    fn step<'t>(&mut self, slots: &mut [Slot<'t>], tokenizer: &'t Tokenizer) {
        // A client that went away frees its slot now.
        for slot in slots.iter_mut() {
            if slot.task.as_ref().is_some_and(|t| t.job.events.is_closed()) {
                slot.task = None;
                self.metrics.busy_slots.fetch_sub(1, Ordering::Relaxed);
            }
        }
        // Generating slots' tokens first, then prompt chunks while the batch has room.
        let mut room = self.options.batch;
        let mut work: Vec<Option<Work>> = Vec::with_capacity(slots.len());
        for slot in slots.iter() {
            work.push(match &slot.task {
                Some(Task { next: Some(token), .. }) => {
                    room = room.saturating_sub(1);
                    Some(Work::Token(*token))
                }
                _ => None,
            });
        }
        for (slot, w) in slots.iter().zip(work.iter_mut()) {
            let Some(task) = slot.task.as_ref().filter(|t| t.next.is_none()) else { continue };
            let (from, left) = (slot.ids.len(), task.job.prompt.len() - slot.ids.len());
            let n = prompt_chunk(left, room);
            if n == 0 {
                continue;
            }
            // An image runs whole in one pass; one that does not fit beside this pass's other
            // work waits for the next.
            let end = image_chunk_end(&task.job.images, from, from + n);
            if end - from > room {
                continue;
            }
            room -= end - from;
            *w = Some(Work::Prompt(from..end));
        }
        if work.iter().all(Option::is_none) {
            return;
        }

        let started = Instant::now();
        let mut tokens_run = 0;
        let logits = {
            let mut seqs: Vec<Seq> = Vec::new();
            for (slot, w) in slots.iter_mut().zip(&work) {
                let (Some(w), Some(task)) = (w, &slot.task) else { continue };
                let (tokens, images): (&[u32], Vec<ImageRows>) = match w {
                    Work::Prompt(range) => (
                        &task.job.prompt[range.clone()],
                        (task.job.images.iter())
                            .filter(|c| range.contains(&c.start))
                            .map(|c| ImageRows {
                                rows: c.start - range.start..c.rows().end - range.start,
                                embd: &c.image.embd,
                            })
                            .collect(),
                    ),
                    Work::Token(_) => (std::slice::from_ref(task.next.as_ref().expect("a next token")), Vec::new()),
                };
                tokens_run += tokens.len();
                seqs.push(Seq { tokens, pos: slot.ids.len(), cache: &mut slot.cache, which: Logits::Last, images });
            }
            self.model.forward_seqs(&mut seqs)
        };
        let m = &self.metrics;
        m.busy_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        m.passes.fetch_add(1, Ordering::Relaxed);
        m.pass_tokens.fetch_add(tokens_run as u64, Ordering::Relaxed);
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                // The GPU failed: the caches of the slots in this pass are not usable.
                for (slot, w) in slots.iter_mut().zip(&work) {
                    if w.is_some() {
                        if let Some(task) = slot.task.take() {
                            let _ = task.job.events.send(Event::Failed(e.to_string()));
                            m.busy_slots.fetch_sub(1, Ordering::Relaxed);
                        }
                        slot.cache.clear();
                        slot.ids.clear();
                        slot.images.clear();
                    }
                }
                return;
            }
        };

        let mut logits = logits.into_iter();
        for (slot, w) in slots.iter_mut().zip(work) {
            let Some(w) = w else { continue };
            let mut row = logits.next().expect("one row per sequence");
            let task = slot.task.as_mut().expect("work only for busy slots");
            match w {
                Work::Prompt(range) => {
                    m.prompt_tokens_run.fetch_add(range.len() as u64, Ordering::Relaxed);
                    slot.images.extend(task.job.images.iter().filter(|c| range.contains(&c.start)).cloned());
                    slot.ids.extend_from_slice(&task.job.prompt[range]);
                    if slot.ids.len() < task.job.prompt.len() {
                        continue;
                    }
                    // The prompt is in: its history feeds the penalties.
                    let history = slot.ids.len().saturating_sub(task.sampler.config().repeat_last_n);
                    task.sampler.reset();
                    for &t in &slot.ids[history..] {
                        task.sampler.accept(t);
                    }
                }
                Work::Token(token) => slot.ids.push(token),
            }
            if let Some(reason) = self.sample(task, &mut row, slot.ids.len(), tokenizer) {
                let mut task = slot.task.take().expect("busy");
                m.busy_slots.fetch_sub(1, Ordering::Relaxed);
                finish(&mut task, reason, m);
            }
        }
    }

    /// Samples the next token from `logits` and streams its text; `Some` when the request
    /// ends here.
    fn sample(&self, task: &mut Task, logits: &mut [f32], cached: usize, tokenizer: &Tokenizer) -> Option<StopReason> {
        task.next = None;
        task.first_token.get_or_insert_with(Instant::now);
        if task.job.ignore_eos {
            for &id in tokenizer.eog() {
                logits[id as usize] = f32::NEG_INFINITY;
            }
        }
        let token = task.sampler.sample(logits);
        if tokenizer.is_eog(token) {
            return Some(StopReason::Eog);
        }
        task.sampler.accept(token);
        task.generated += 1;
        self.metrics.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let text = task.stops.push(&task.detok.push(token));
        if !text.is_empty() {
            let _ = task.job.events.send(Event::Text(text));
        }
        if task.stops.stopped() {
            return Some(StopReason::StopString);
        }
        if task.job.max_tokens.is_some_and(|n| task.generated >= n) {
            return Some(StopReason::Length);
        }
        if cached >= self.options.slot_context {
            return Some(StopReason::ContextFull);
        }
        task.next = Some(token);
        None
    }
}

/// Sends what the request's text still held back, and the summary.
fn finish(task: &mut Task, reason: StopReason, metrics: &Metrics) {
    let tail = task.stops.push(&task.detok.finish()) + &task.stops.finish();
    if !tail.is_empty() {
        let _ = task.job.events.send(Event::Text(tail));
    }
    let now = Instant::now();
    let first = task.first_token.unwrap_or(now);
    metrics.prompt_tokens.fetch_add(task.job.prompt.len() as u64, Ordering::Relaxed);
    let _ = task.job.events.send(Event::Done(Done {
        stop_reason: reason,
        prompt_tokens: task.job.prompt.len(),
        cached_tokens: task.cached_tokens,
        completion_tokens: task.generated,
        prompt_ms: (first - task.admitted).as_secs_f64() * 1e3,
        generation_ms: (now - first).as_secs_f64() * 1e3,
    }));
}
