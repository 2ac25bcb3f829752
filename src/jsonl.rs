//! `gemma run --jsonl`: many requests served by one loaded model, one JSON object per line in
//! and one per line out, in order.
//!
//! A request is `{"prompt": "..."}` (text as `gemma run -p` takes it; with `--chat`, wrapped as
//! one user turn) or `{"messages": [...]}` (rendered with the model's chat template, optional
//! `tools`), with optional `id` (echoed back, any JSON value), `n_predict`, `temperature`,
//! `top_k`, `top_p`, `min_p`, `repeat_penalty`, `seed`, `stop` (a string or a list; replaces
//! `--stop`) and `think` (Gemma 4 thinking). Unknown fields are errors, so that a misspelt
//! option is not silently ignored.
//!
//! The answer is `{"id", "text", "prompt_tokens", "prompt_ids", "cached_tokens",
//! "completion_tokens", "stop_reason", "timings"}` (`prompt_ids`: the token ids the model ran,
//! as `gemma run --json` gives them, to check a rendered chat); a request that cannot be served — bad JSON, a missing prompt,
//! a prompt longer than the context, bad sampling values — is answered by `{"id", "error"}` and
//! the next line is read. Only reading stdin or writing stdout failing ends the stream early.
//!
//! Requests share one [`Session`]: a request that starts like the previous one (the same
//! system message, a conversation grown by one turn) runs only its new tokens.

use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::chat::{ChatTemplate, Message, RenderOptions};
use crate::run::{StopReason, Timings};
use crate::sample::{Sampler, SamplerConfig};
use crate::session::Session;
use crate::vision::prompt::{expand, ImageTokens};
use crate::vision::Images;

#[derive(Debug, Error)]
pub enum JsonlError {
    #[error("reading the requests: {0}")]
    Input(io::Error),
    #[error("writing a response: {0}")]
    Output(io::Error),
}

/// Defaults for every request (the `gemma run` flags).
#[derive(Clone, Debug)]
pub struct JsonlOptions {
    pub n_predict: usize,
    pub sampling: SamplerConfig,
    pub stop: Vec<String>,
    /// For `prompt` requests: whether special-token text becomes special tokens.
    pub parse_special: bool,
    /// For `prompt` requests: wrap the text as one user turn in the chat template.
    pub chat: bool,
    /// With `chat`: a system message before the user turn.
    pub system: Option<String>,
    /// Gemma 4 thinking for requests rendered with the template.
    pub think: bool,
}

/// The model's chat template and its BOS/EOS texts, or why there is none.
pub type Template = Result<(ChatTemplate, String, String), String>;

/// How many lines were answered, and how many of those with an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub requests: usize,
    pub errors: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default, rename = "id")]
    _id: Value,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    tools: Option<Value>,
    n_predict: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Stop>,
    think: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Serialize)]
struct Response {
    id: Value,
    text: String,
    prompt_tokens: usize,
    /// The prompt as the model ran it: BOS, the rendered template's special tokens.
    prompt_ids: Vec<u32>,
    /// Prompt tokens that were already in the cache from the previous request.
    cached_tokens: usize,
    completion_tokens: usize,
    stop_reason: StopReason,
    timings: Timings,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    id: &'a Value,
    error: String,
}

/// Answers every line of `input` on `output`, flushing after each.
pub fn serve(
    session: &mut Session,
    template: &Template,
    options: &JsonlOptions,
    mut images: Option<&mut Images>,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
) -> Result<Summary, JsonlError> {
    let mut summary = Summary::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(JsonlError::Input)? == 0 {
            return Ok(summary);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.requests += 1;
        let mut id = Value::Null;
        let json = match answer(session, template, options, images.as_deref_mut(), &line, &mut id) {
            Ok(response) => serde_json::to_string(&response),
            Err(error) => {
                summary.errors += 1;
                serde_json::to_string(&ErrorResponse { id: &id, error })
            }
        }
        .expect("responses serialize");
        writeln!(output, "{json}").and_then(|_| output.flush()).map_err(JsonlError::Output)?;
    }
}

/// The response to one line; `id` is set as soon as it is known, for the error response.
fn answer(
    session: &mut Session,
    template: &Template,
    options: &JsonlOptions,
    images: Option<&mut Images>,
    line: &[u8],
    id: &mut Value,
) -> Result<Response, String> {
    let line = std::str::from_utf8(line).map_err(|e| format!("the line is not UTF-8: {e}"))?;
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(fields) = &value else { return Err("a request must be a JSON object".into()) };
    *id = fields.get("id").cloned().unwrap_or(Value::Null);
    let request: Request = serde_json::from_value(value).map_err(|e| format!("bad request: {e}"))?;

    let think = request.think.unwrap_or(options.think);
    let render = |messages: &[Message], tools: Option<Value>| -> Result<String, String> {
        let (template, bos_token, eos_token) = template.as_ref().map_err(Clone::clone)?;
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking: think,
            tools,
            bos_token: bos_token.clone(),
            eos_token: eos_token.clone(),
        };
        template.render(messages, &opts).map_err(|e| e.to_string())
    };
    // The image parts of the messages, in order: where the template writes <|image|>.
    let mut parts = Vec::new();
    let (text, parse_special) = match (request.prompt, request.messages) {
        (Some(_), Some(_)) => return Err("give either \"prompt\" or \"messages\", not both".into()),
        (None, None) => return Err("missing \"prompt\" or \"messages\"".into()),
        (None, Some(messages)) => {
            parts = messages.iter().flat_map(|m| m.content.images().into_iter().cloned()).collect();
            (render(&messages, request.tools)?, true)
        }
        (Some(prompt), None) if options.chat => {
            let messages: Vec<Message> =
                options.system.clone().map(Message::system).into_iter().chain([Message::user(prompt)]).collect();
            (render(&messages, request.tools)?, true)
        }
        (Some(prompt), None) => (prompt, options.parse_special),
    };

    let prompt = session.generator().tokenize_prompt(&text, parse_special);
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    let (prompt, chunks) = match (parts.is_empty(), images) {
        (true, _) => (prompt, Vec::new()),
        (false, None) => {
            return Err("the messages hold images: start with --mmproj (or an mmproj*.gguf beside the model)".into())
        }
        (false, Some(images)) => {
            let encoded = (parts.iter())
                .enumerate()
                .map(|(i, p)| images.encode_part(p, Path::new(".")).map_err(|e| format!("image {}: {e}", i + 1)))
                .collect::<Result<Vec<_>, String>>()?;
            let generator = session.generator();
            let ids = ImageTokens::find(&generator.tokenizer).map_err(|e| e.to_string())?;
            expand(&prompt, &encoded, ids, generator.tokenizer.bos())?
        }
    };
    let n_predict = request.n_predict.unwrap_or(options.n_predict);
    if prompt.len() + n_predict > session.context() {
        return Err(format!(
            "the prompt is {} tokens and {n_predict} more were asked for, but the context is {}",
            prompt.len(),
            session.context()
        ));
    }
    let mut config = options.sampling;
    config.temperature = request.temperature.unwrap_or(config.temperature);
    config.top_k = request.top_k.unwrap_or(config.top_k);
    config.top_p = request.top_p.unwrap_or(config.top_p);
    config.min_p = request.min_p.unwrap_or(config.min_p);
    config.repeat_penalty = request.repeat_penalty.unwrap_or(config.repeat_penalty);
    config.seed = request.seed.or(config.seed);
    let mut sampler = Sampler::new(config).map_err(|e| e.to_string())?;
    let stop = match request.stop {
        None => options.stop.clone(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };

    let never = AtomicBool::new(false);
    let prefill = session.prefill_images(&prompt, &chunks, &never).map_err(|e| e.to_string())?;
    let done =
        (session.generate(&mut sampler, Some(n_predict), &stop, &never, &mut |_| Ok(()))).map_err(|e| e.to_string())?;
    Ok(Response {
        id: id.clone(),
        prompt_tokens: prompt.len(),
        prompt_ids: prompt,
        cached_tokens: prefill.reused,
        completion_tokens: done.ids.len(),
        stop_reason: done.stop_reason,
        timings: Timings::new(prefill.prefilled, prefill.time, done.ids.len(), done.time),
        text: done.text,
    })
}
