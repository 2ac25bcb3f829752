//! Text generation: a loaded model and tokenizer ([`Generator`]) turn a prompt into a completion
//! streamed to a writer. `gemma run` is one [`Generator::generate`]; the JSON-lines mode and the
//! chat reuse the same loaded model for many.

use std::io::Write;
use std::time::{Duration, Instant};

use ggml::gguf::GgufFile;
use serde::Serialize;
use thiserror::Error;

use crate::kv_cache::{KvCacheError, KvType};
use crate::model::{Logits, Model, ModelError};
use crate::sample::{Sampler, SamplerConfig, SamplerError};
use crate::stop::StopStrings;
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    Gguf(#[from] ggml::gguf::GgufError),
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Tokenizer(#[from] TokenizerError),
    #[error("{0}")]
    Sampler(#[from] SamplerError),
    #[error("{0}")]
    KvCache(#[from] KvCacheError),
    #[error("the prompt is {prompt} tokens and {n_predict} more were asked for, but the context is {context}")]
    ContextTooSmall { prompt: usize, n_predict: usize, context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("writing the completion: {0}")]
    Output(std::io::Error),
}

/// What to generate from one prompt.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The prompt text (already wrapped in the chat template if wanted).
    pub prompt: String,
    pub n_predict: usize,
    pub context: usize,
    /// Prompt tokens per forward pass.
    pub batch: usize,
    /// Whether special-token text in the prompt (`<|turn>`) becomes special tokens.
    pub parse_special: bool,
    pub sampling: SamplerConfig,
    /// Generation ends where one of these appears; it is not printed.
    pub stop: Vec<String>,
    /// Element type of the KV cache.
    pub kv_type: KvType,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model produced an end-of-generation token (`<eos>`, `<turn|>`, ...).
    Eog,
    /// `n_predict` tokens were generated.
    Length,
    /// A user stop string appeared.
    StopString,
}

/// What one generation produced.
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    /// The completion as printed (without a stop string or what followed it).
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub completion_ids: Vec<u32>,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generation_ms: f64,
    pub generation_tokens_per_s: f64,
}

impl Timings {
    fn new(prompt_tokens: usize, prompt: Duration, generated: usize, generation: Duration) -> Timings {
        let per_s = |n: usize, t: Duration| n as f64 / t.as_secs_f64().max(1e-9);
        Timings {
            prompt_ms: prompt.as_secs_f64() * 1e3,
            prompt_tokens_per_s: per_s(prompt_tokens, prompt),
            generation_ms: generation.as_secs_f64() * 1e3,
            generation_tokens_per_s: per_s(generated, generation),
        }
    }
}

/// A model and its tokenizer, loaded once.
pub struct Generator {
    pub model: Model,
    pub tokenizer: Tokenizer,
}

impl Generator {
    pub fn load(gguf: GgufFile) -> Result<Generator, RunError> {
        let tokenizer = Tokenizer::from_gguf(&gguf.header)?;
        let model = Model::load(gguf)?;
        Ok(Generator { model, tokenizer })
    }

    /// Generates from `options.prompt` and streams the completion's text to `out` as it is
    /// produced (UTF-8 safe: a character split across tokens is written whole).
    pub fn generate(&mut self, options: &RunOptions, out: &mut dyn Write) -> Result<Completion, RunError> {
        let mut prompt = self.tokenizer.encode(&options.prompt, true, options.parse_special);
        // A chat template writes `<bos>` itself: keep one (GEMMA4.md pitfall 11).
        if prompt.len() >= 2 && self.tokenizer.bos() == Some(prompt[0]) && prompt[1] == prompt[0] {
            prompt.remove(0);
        }
        if prompt.is_empty() {
            return Err(RunError::EmptyPrompt);
        }
        if prompt.len() + options.n_predict > options.context {
            return Err(RunError::ContextTooSmall {
                prompt: prompt.len(),
                n_predict: options.n_predict,
                context: options.context,
            });
        }
        let mut sampler = Sampler::new(options.sampling)?;
        let mut cache = self.model.new_cache_of(options.context, options.kv_type)?;

        let start = Instant::now();
        let batch = options.batch.max(1);
        let mut logits = Vec::new();
        for (i, chunk) in prompt.chunks(batch).enumerate() {
            logits = self.model.forward(chunk, i * batch, &mut cache, Logits::Last);
        }
        for &t in &prompt {
            sampler.accept(t);
        }
        let prompt_time = start.elapsed();

        let start = Instant::now();
        let mut detok = self.tokenizer.detokenizer(false);
        let mut stops = StopStrings::new(&options.stop);
        let (mut text, mut completion_ids) = (String::new(), Vec::new());
        let mut write = |piece: &str, text: &mut String| -> Result<(), RunError> {
            text.push_str(piece);
            out.write_all(piece.as_bytes()).and_then(|_| out.flush()).map_err(RunError::Output)
        };
        let mut stop_reason = StopReason::Length;
        while completion_ids.len() < options.n_predict {
            let token = sampler.sample(&logits);
            if self.tokenizer.is_eog(token) {
                stop_reason = StopReason::Eog;
                break;
            }
            sampler.accept(token);
            completion_ids.push(token);
            write(&stops.push(&detok.push(token)), &mut text)?;
            if stops.stopped() {
                stop_reason = StopReason::StopString;
                break;
            }
            if completion_ids.len() == options.n_predict {
                break;
            }
            let pos = prompt.len() + completion_ids.len() - 1;
            logits = self.model.forward(&[token], pos, &mut cache, Logits::Last);
        }
        let tail = stops.push(&detok.finish()) + &stops.finish();
        write(&tail, &mut text)?;
        let timings = Timings::new(prompt.len(), prompt_time, completion_ids.len(), start.elapsed());
        Ok(Completion { text, prompt_ids: prompt, completion_ids, stop_reason, timings })
    }
}

/// Loads `gguf` and generates once: `gemma run`.
pub fn run(gguf: GgufFile, options: &RunOptions, out: &mut dyn Write) -> Result<Completion, RunError> {
    Generator::load(gguf)?.generate(options, out)
}
