//! Text generation for `gemma run`: prompt in, completion streamed out.

use std::io::Write;
use std::time::{Duration, Instant};

use ggml::gguf::GgufFile;
use thiserror::Error;

use crate::kv_cache::KvCacheError;
use crate::model::{Logits, Model, ModelError};
use crate::sample::{Sampler, SamplerConfig, SamplerError};
use crate::tokenizer::{Tokenizer, TokenizerError};

#[derive(Debug, Error)]
pub enum RunError {
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

pub struct RunOptions {
    pub prompt: String,
    pub n_predict: usize,
    pub context: usize,
    pub batch: usize,
    pub parse_special: bool,
    pub sampling: SamplerConfig,
}

/// What a run produced, for the stats line and scripts.
pub struct RunStats {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub prompt_time: Duration,
    pub generation_time: Duration,
    pub stopped_by_eog: bool,
}

/// Generate from `gguf` and stream the completion's text to `out` as it is produced.
pub fn run(gguf: GgufFile, options: &RunOptions, out: &mut dyn Write) -> Result<RunStats, RunError> {
    let tokenizer = Tokenizer::from_gguf(&gguf.header)?;
    let prompt = tokenizer.encode(&options.prompt, true, options.parse_special);
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
    let mut model = Model::load(gguf)?;
    let mut cache = model.new_cache(options.context)?;
    let mut sampler = Sampler::new(options.sampling)?;

    let start = Instant::now();
    let mut logits = Vec::new();
    for (i, chunk) in prompt.chunks(options.batch.max(1)).enumerate() {
        logits = model.forward(chunk, i * options.batch.max(1), &mut cache, Logits::Last);
    }
    for &t in &prompt {
        sampler.accept(t);
    }
    let prompt_time = start.elapsed();

    let start = Instant::now();
    let mut detok = tokenizer.detokenizer(false);
    let (mut produced, mut stopped_by_eog) = (0, false);
    let mut pos = prompt.len();
    while produced < options.n_predict {
        let token = sampler.sample(&logits);
        if tokenizer.is_eog(token) {
            stopped_by_eog = true;
            break;
        }
        sampler.accept(token);
        produced += 1;
        let text = detok.push(token);
        out.write_all(text.as_bytes()).and_then(|_| out.flush()).map_err(RunError::Output)?;
        if produced == options.n_predict {
            break;
        }
        logits = model.forward(&[token], pos, &mut cache, Logits::Last);
        pos += 1;
    }
    out.write_all(detok.finish().as_bytes()).and_then(|_| out.flush()).map_err(RunError::Output)?;
    Ok(RunStats {
        prompt_tokens: prompt.len(),
        completion_tokens: produced,
        prompt_time,
        generation_time: start.elapsed(),
        stopped_by_eog,
    })
}
