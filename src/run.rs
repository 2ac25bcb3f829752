//! Text generation: a loaded model and tokenizer ([`Generator`]) turn a prompt into a completion
//! streamed to a writer. `gemma run` is one [`Generator::generate`]; the JSON-lines mode and the
//! chat keep a [`Session`] over the same loaded model for many.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use ggml::gguf::GgufFile;
use serde::Serialize;
use thiserror::Error;

use crate::kv_cache::{KvCacheError, KvTypes};
use crate::model::{Model, ModelError, Offload, Stopped};
use crate::sample::{Sampler, SamplerConfig, SamplerError};
use crate::session::Session;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::vision::prompt::{expand, ImageTokens};
use crate::vision::PromptImage;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Gguf(#[from] ggml::gguf::GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    KvCache(#[from] KvCacheError),
    #[error("the prompt is {prompt} tokens and {n_predict} more were asked for, but the context is {context}")]
    ContextTooSmall { prompt: usize, n_predict: usize, context: usize },
    #[error("the prompt is {prompt} tokens, more than the context of {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is out of range: the vocabulary has {n_vocab} tokens")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error("writing the completion: {0}")]
    Output(std::io::Error),
    #[error("writing the logits: {0}")]
    Logits(std::io::Error),
    #[error("the GPU failed during a forward pass: {0}")]
    Device(String),
    #[error(transparent)]
    Vision(#[from] crate::vision::VisionError),
    #[error("{0}")]
    Images(String),
}

/// The logits of a pass that nothing cancels (its [`crate::model::Cancel`] is `Never`): it
/// stops early only when a GPU fails, which is this error.
pub(crate) fn uncancelled(pass: Result<Vec<f32>, Stopped>) -> Result<Vec<f32>, RunError> {
    match pass {
        Ok(logits) => Ok(logits),
        Err(Stopped::Device(e)) => Err(RunError::Device(e)),
        Err(Stopped::Cancelled(_)) => unreachable!("Never does not cancel"),
    }
}

/// A prompt as text or as token ids.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text (already wrapped in the chat template if wanted), tokenized with BOS first.
    Text(String),
    /// Token ids, run exactly as given: no BOS is added.
    Ids(Vec<u32>),
}

/// What to generate from one prompt.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub prompt: Prompt,
    pub n_predict: usize,
    pub context: usize,
    /// Prompt tokens per forward pass.
    pub batch: usize,
    /// Whether special-token text in a text prompt (`<|turn>`) becomes special tokens.
    pub parse_special: bool,
    pub sampling: SamplerConfig,
    /// Generation ends where one of these appears; it is not printed.
    pub stop: Vec<String>,
    /// Element type of the KV cache.
    pub kv_types: KvTypes,
    /// Encoded images: where the prompt says `<|image|>`, in order, or before the text.
    pub images: Vec<Arc<PromptImage>>,
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
    /// The cancellation flag was set (Ctrl-C in the chat).
    Cancelled,
    /// The context had no room for another token.
    ContextFull,
}

impl StopReason {
    /// In words, for stats lines.
    pub fn describe(self) -> &'static str {
        match self {
            StopReason::Eog => "end of generation",
            StopReason::Length => "length limit",
            StopReason::StopString => "stop string",
            StopReason::Cancelled => "stopped",
            StopReason::ContextFull => "context full",
        }
    }
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Timings {
    pub prompt_ms: f64,
    pub prompt_tokens_per_s: f64,
    pub generation_ms: f64,
    pub generation_tokens_per_s: f64,
}

impl Timings {
    /// Speeds over `prompt_tokens` run in `prompt` and `generated` tokens in `generation`.
    pub fn new(prompt_tokens: usize, prompt: Duration, generated: usize, generation: Duration) -> Timings {
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
        Generator::load_with(gguf, &Offload::default())
    }

    /// [`load`](Self::load) with layers on a GPU as `offload` asks.
    pub fn load_with(gguf: GgufFile, offload: &Offload) -> Result<Generator, RunError> {
        let tokenizer = Tokenizer::from_gguf(&gguf.header)?;
        let model = Model::load_with(gguf, offload)?;
        Ok(Generator { model, tokenizer })
    }

    /// The ids of a prompt text: BOS first where the model wants one, and only one (a chat
    /// template writes `<bos>` itself; GEMMA4.md pitfall 11).
    pub fn tokenize_prompt(&self, text: &str, parse_special: bool) -> Vec<u32> {
        prompt_ids(&self.tokenizer, text, parse_special)
    }

    /// Generates from `options.prompt` and streams the completion's text to `out` as it is
    /// produced (UTF-8 safe: a character split across tokens is written whole). A fresh
    /// [`Session`] each time.
    ///
    /// With `logits`, the logits of every prompt position are written there first, as
    /// float32 little-endian `[n_prompt][n_vocab]` (teacher-forced scoring; the whole prompt
    /// then runs the output head, not only its last position).
    pub fn generate(
        &mut self,
        options: &RunOptions,
        out: &mut dyn Write,
        logits: Option<&mut dyn Write>,
    ) -> Result<Completion, RunError> {
        let prompt = match &options.prompt {
            Prompt::Text(text) => self.tokenize_prompt(text, options.parse_special),
            Prompt::Ids(ids) => ids.clone(),
        };
        let (prompt, images) = match options.images.is_empty() {
            true => (prompt, Vec::new()),
            false => {
                let ids = ImageTokens::find(&self.tokenizer)?;
                expand(&prompt, &options.images, ids, self.tokenizer.bos()).map_err(RunError::Images)?
            }
        };
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
        let mut session = Session::new(self, options.context, options.kv_types, options.batch)?;
        let never = AtomicBool::new(false);
        let prefill = match logits {
            None => session.prefill_images(&prompt, &images, &never)?,
            Some(w) => session.prefill_scored_images(&prompt, &images, &never, &mut |rows| write_f32_le(w, rows))?,
        };
        let done = session.generate(&mut sampler, Some(options.n_predict), &options.stop, &never, &mut |piece| {
            out.write_all(piece.as_bytes())?;
            out.flush()
        })?;
        let timings = Timings::new(prefill.prefilled, prefill.time, done.ids.len(), done.time);
        Ok(Completion {
            text: done.text,
            prompt_ids: prompt,
            completion_ids: done.ids,
            stop_reason: done.stop_reason,
            timings,
        })
    }
}

/// The ids of a prompt text: BOS first where the model wants one, and only one (a chat
/// template writes `<bos>` itself; GEMMA4.md pitfall 11).
pub fn prompt_ids(tokenizer: &Tokenizer, text: &str, parse_special: bool) -> Vec<u32> {
    let mut prompt = tokenizer.encode(text, true, parse_special);
    if prompt.len() >= 2 && tokenizer.bos() == Some(prompt[0]) && prompt[1] == prompt[0] {
        prompt.remove(0);
    }
    prompt
}

/// Loads `gguf` and generates once: `gemma run`.
pub fn run(gguf: GgufFile, options: &RunOptions, out: &mut dyn Write) -> Result<Completion, RunError> {
    Generator::load(gguf)?.generate(options, out, None)
}

/// `values` as float32 little-endian, in order.
fn write_f32_le(out: &mut dyn Write, values: &[f32]) -> std::io::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    out.write_all(&bytes)
}

#[cfg(test)]
mod device_error_tests {
    use super::*;

    /// A GPU that fails mid-pass ends a session with an error that says so (exit code 1 at the
    /// command line), not a panic.
    #[test]
    fn a_failed_gpu_pass_is_an_error_naming_the_gpu() {
        let lost = Stopped::Device("the GPU was lost (VK_ERROR_DEVICE_LOST) while the recorded ops".into());
        let e = uncancelled(Err(lost)).unwrap_err();
        assert!(matches!(e, RunError::Device(_)));
        assert_eq!(
            e.to_string(),
            "the GPU failed during a forward pass: the GPU was lost (VK_ERROR_DEVICE_LOST) while the recorded ops"
        );
        assert_eq!(uncancelled(Ok(vec![1.0])).unwrap(), [1.0]);
    }
}
