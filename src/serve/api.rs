//! The endpoints, in OpenAI's request and response shapes (and llama-server's for
//! `/tokenize`, `/detokenize`, `/health`, `/metrics`).
//!
//! Chat messages become the model's chat template input: content parts are joined text, except
//! in a user message with images (`image_url` parts holding `data:` URLs; the server fetches
//! nothing and reads no files), which keeps its parts in order for the template, and whose
//! images the vision encoder (`--mmproj`) turns into soft tokens where the template puts them;
//! an assistant's `tool_calls` keep their arguments as objects; on Gemma 4, whose template reads
//! tool results from the assistant message that made the calls (`tool_responses`), each
//! `tool` message is folded into that message, named by its `tool_call_id`. Thinking is on
//! with `chat_template_kwargs.enable_thinking: true` or a `reasoning_effort` other than
//! `none`/`minimal` (or `gemma serve --think`), and comes back as `reasoning_content`; tool
//! calls as `tool_calls` with `finish_reason: "tool_calls"` ([`ReplyParser`]).
//!
//! Fields that would change the answer in a way this server cannot honour (`n` > 1,
//! `logprobs`, a `response_format` other than text, images without an mmproj) are a 400 naming
//! the field;
//! other unknown fields are ignored, as OpenAI's clients send many.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_stream::wrappers::ReceiverStream;

use super::engine::Done;
use super::{log_line, ApiError, AppState, Event, Job, LoggedTokens, LogsItself};
use crate::chat::reply::{Delta, ReplyParser, ToolCall};
use crate::chat::{Content as ChatContent, ImageUrl, Message, Part, RenderOptions};
use crate::run::{prompt_ids, StopReason};
use crate::sample::SamplerConfig;
use crate::vision::prompt::expand;
use crate::vision::ImageChunk;

type Shared = State<Arc<AppState>>;

/// A request body as JSON of type `T`, or the 400/413 that says what is wrong with it.
fn parse_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    parse(&read_body(body)?)
}

/// The body's bytes, or the 413 (too large) or 400 that says why not.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| ApiError::new(r.status(), format!("reading the request body: {}", r.body_text())))
}

/// JSON of type `T`; an error names the field where it went wrong (`messages[0].content: ...`).
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let json = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => ApiError::bad_request(format!("invalid request body: {}", e.inner())),
            _ => ApiError::bad_request(format!("invalid request body: {path}: {}", e.inner())),
        }
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn health(State(state): Shared) -> Response {
    if state.ready.load(std::sync::atomic::Ordering::Acquire) {
        Json(json!({"status": "ok"})).into_response()
    } else {
        ApiError::loading().into_response()
    }
}

pub async fn models(State(state): Shared) -> Response {
    let e = &state.options.engine;
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.options.model_name,
            "object": "model",
            "created": unix_now(),
            "owned_by": "gemma.rs",
            "meta": {"n_vocab": state.n_vocab, "n_ctx_slot": e.slot_context, "slots": e.slots},
        }]
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    content: String,
    #[serde(default)]
    add_special: bool,
    #[serde(default = "yes")]
    parse_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

fn yes() -> bool {
    true
}

pub async fn tokenize(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse_body(body)?;
    let ids = state.tokenizer.encode(&req.content, req.add_special, req.parse_special);
    let tokens: Vec<Value> = if req.with_pieces {
        let piece = |id: u32| String::from_utf8_lossy(state.tokenizer.decode(id, true)).into_owned();
        ids.iter().map(|&id| json!({"id": id, "piece": piece(id)})).collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

pub async fn detokenize(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = parse_body(body)?;
    check_ids(&req.tokens, state.n_vocab)?;
    Ok(Json(json!({ "content": state.tokenizer.decode_all(&req.tokens, true) })).into_response())
}

fn check_ids(ids: &[u32], n_vocab: usize) -> Result<(), ApiError> {
    match ids.iter().find(|&&id| id as usize >= n_vocab) {
        Some(id) => {
            Err(ApiError::bad_request(format!("token id {id} is out of range: the vocabulary has {n_vocab} tokens")))
        }
        None => Ok(()),
    }
}

/// The Prometheus text format.
pub async fn metrics(State(state): Shared) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &state.metrics;
    let busy_s = m.busy_ns.load(Relaxed) as f64 / 1e9;
    let generated = m.generated_tokens.load(Relaxed);
    let rows: [(&str, &str, &str, f64); 11] = [
        ("requests_total", "counter", "Requests queued for the model.", m.requests.load(Relaxed) as f64),
        (
            "requests_rejected_total",
            "counter",
            "Requests turned away (busy, loading).",
            m.rejected.load(Relaxed) as f64,
        ),
        ("prompt_tokens_total", "counter", "Prompt tokens of finished requests.", m.prompt_tokens.load(Relaxed) as f64),
        (
            "prompt_tokens_processed_total",
            "counter",
            "Prompt tokens run through the model (not from a cache).",
            m.prompt_tokens_run.load(Relaxed) as f64,
        ),
        ("tokens_predicted_total", "counter", "Generated tokens.", generated as f64),
        ("requests_queued", "gauge", "Requests waiting for a slot.", m.queued.load(Relaxed) as f64),
        ("slots_busy", "gauge", "Slots serving a request.", m.busy_slots.load(Relaxed) as f64),
        ("slots", "gauge", "Slots.", state.options.engine.slots as f64),
        (
            "forward_passes_total",
            "counter",
            "Forward passes (one per step over all busy slots).",
            m.passes.load(Relaxed) as f64,
        ),
        ("forward_seconds_total", "counter", "Seconds spent in forward passes.", busy_s),
        (
            "tokens_per_second",
            "gauge",
            "Generated tokens per second of forward passes, over the server's life.",
            if busy_s > 0.0 { generated as f64 / busy_s } else { 0.0 },
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in rows {
        text.push_str(&format!("# HELP gemma_{name} {help}\n# TYPE gemma_{name} {kind}\ngemma_{name} {value}\n"));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `stop`: one string or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn list(stop: Option<Stop>) -> Result<Vec<String>, ApiError> {
        let list = match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if list.len() > 16 {
            return Err(ApiError::bad_request(format!("stop: at most 16 strings, not {}", list.len())));
        }
        Ok(list)
    }
}

/// The sampling fields both completion endpoints take.
#[derive(Deserialize, Default)]
struct Sampling {
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repeat_penalty: Option<f32>,
    /// llama-server's extension: generate exactly `max_tokens`.
    ignore_eos: Option<bool>,
    n: Option<u64>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    stop: Option<Stop>,
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    include_usage: Option<bool>,
}

impl Sampling {
    /// The engine's settings from the request over the server's defaults.
    fn config(&self, state: &AppState) -> Result<(SamplerConfig, Option<usize>), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request("n: only one choice per request (n = 1) is served"));
        }
        if matches!(self.logprobs, Some(Value::Bool(true)) | Some(Value::Number(_))) || self.top_logprobs.is_some() {
            return Err(ApiError::bad_request("logprobs: log-probabilities are not returned by this server"));
        }
        let mut c = state.options.sampling;
        c.temperature = self.temperature.unwrap_or(c.temperature);
        c.top_p = self.top_p.unwrap_or(c.top_p);
        c.top_k = self.top_k.unwrap_or(c.top_k);
        c.min_p = self.min_p.unwrap_or(c.min_p);
        c.seed = self.seed.or(c.seed);
        c.presence_penalty = self.presence_penalty.unwrap_or(c.presence_penalty);
        c.frequency_penalty = self.frequency_penalty.unwrap_or(c.frequency_penalty);
        c.repeat_penalty = self.repeat_penalty.unwrap_or(c.repeat_penalty);
        c.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let max = self.max_completion_tokens.or(self.max_tokens).map(|n| n as usize).or(state.options.n_predict);
        if max == Some(0) {
            return Err(ApiError::bad_request("max_tokens must be at least 1"));
        }
        Ok((c, max))
    }
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default, rename = "model")]
    _model: Option<String>,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    reasoning_effort: Option<String>,
    chat_template_kwargs: Option<Map<String, Value>>,
    response_format: Option<Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    name: Option<String>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

impl Content {
    /// The text of a message's content: a string, or the `text` parts joined.
    fn text(content: Option<Content>, at: usize) -> Result<String, ApiError> {
        match content {
            None => Ok(String::new()),
            Some(Content::Text(t)) => Ok(t),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        (Some("image_url"), _) => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{at}].content[{j}]: images go in user messages"
                            )))
                        }
                        (Some(kind @ ("image" | "input_audio" | "file")), _) => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{at}].content[{j}]: {kind} parts are not supported (text, and images as image_url data: URLs)"
                            )))
                        }
                        _ => {
                            return Err(ApiError::bad_request(format!(
                            "messages[{at}].content[{j}]: a content part is {{\"type\": \"text\", \"text\": \"...\"}}"
                        )))
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

impl Content {
    /// A user message's content as the chat template takes it: its text, or, when it holds
    /// images, its text and image parts in order (each image a `data:` URL).
    fn user(content: Option<Content>, at: usize) -> Result<ChatContent, ApiError> {
        let Some(Content::Parts(parts)) = content else { return Ok(ChatContent::Text(Content::text(content, at)?)) };
        if !parts.iter().any(|p| p.get("type").and_then(Value::as_str) == Some("image_url")) {
            return Ok(ChatContent::Text(Content::text(Some(Content::Parts(parts)), at)?));
        }
        let mut out = Vec::with_capacity(parts.len());
        for (j, part) in parts.iter().enumerate() {
            if part.get("type").and_then(Value::as_str) != Some("image_url") {
                let text = Content::text(Some(Content::Parts(vec![part.clone()])), at)
                    .map_err(|e| ApiError::bad_request(e.message.replace("content[0]", &format!("content[{j}]"))))?;
                out.push(Part::Text { text });
                continue;
            }
            let url = part.get("image_url").and_then(|u| u.get("url").and_then(Value::as_str).or(u.as_str()));
            let Some(url) = url else {
                return Err(ApiError::bad_request(format!(
                    "messages[{at}].content[{j}].image_url: {{\"url\": \"data:image/png;base64,...\"}}"
                )));
            };
            if !url.starts_with("data:") {
                return Err(ApiError::bad_request(format!(
                    "messages[{at}].content[{j}].image_url: only data: URLs are read (the server fetches no URL and reads no file)"
                )));
            }
            out.push(Part::ImageUrl { image_url: ImageUrl { url: url.to_string() } });
        }
        Ok(ChatContent::Parts(out))
    }
}

/// The conversation as the chat template takes it (see the module docs for tools).
fn template_messages(messages: Vec<ChatMessage>, fold_tool_results: bool) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("messages: at least one message"));
    }
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        if m.role == "user" {
            out.push(Message::new(m.role, Content::user(m.content, i)?));
            continue;
        }
        let content = Content::text(m.content, i)?;
        match m.role.as_str() {
            "system" | "developer" => out.push(Message::new(m.role, content)),
            "assistant" => {
                let calls = match m.tool_calls {
                    None => None,
                    Some(calls) => Some(Value::Array(
                        calls
                            .into_iter()
                            .enumerate()
                            .map(|(j, c)| call_for_template(c, i, j))
                            .collect::<Result<_, _>>()?,
                    )),
                };
                out.push(Message { tool_calls: calls, ..Message::assistant(content) });
            }
            "tool" if fold_tool_results => {
                let Some(caller) = out.iter_mut().rev().find(|m| m.role == "assistant" && m.tool_calls.is_some())
                else {
                    return Err(ApiError::bad_request(format!(
                        "messages[{i}]: a tool message must follow an assistant message with tool_calls"
                    )));
                };
                let calls = caller.tool_calls.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
                let by_id = m
                    .tool_call_id
                    .as_ref()
                    .and_then(|id| calls.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(id.as_str())));
                let name = (m.name.clone())
                    .or_else(|| {
                        by_id.and_then(|c| c.pointer("/function/name")).and_then(Value::as_str).map(String::from)
                    })
                    .or_else(|| {
                        (calls.len() == 1)
                            .then(|| calls[0].pointer("/function/name")?.as_str().map(String::from))
                            .flatten()
                    })
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "messages[{i}]: tool_call_id matches none of the calls before it"
                        ))
                    })?;
                // A JSON object's fields go in as they are; anything else as the value.
                let response = match serde_json::from_str::<Value>(&content) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => Value::String(content),
                };
                let results = caller.tool_responses.get_or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(list) = results {
                    list.push(json!({"name": name, "response": response}));
                }
            }
            "tool" => out.push(Message { name: m.name, tool_call_id: m.tool_call_id, ..Message::new("tool", content) }),
            other => {
                return Err(ApiError::bad_request(format!(
                    "messages[{i}].role: {other:?} is none of system, developer, user, assistant, tool"
                )))
            }
        }
    }
    Ok(out)
}

/// An OpenAI tool call as the template reads it: arguments as an object.
fn call_for_template(mut call: Value, i: usize, j: usize) -> Result<Value, ApiError> {
    let bad = |what: &str| ApiError::bad_request(format!("messages[{i}].tool_calls[{j}]: {what}"));
    let function = call.get_mut("function").ok_or_else(|| bad("no function"))?;
    if function.get("name").and_then(Value::as_str).is_none() {
        return Err(bad("function.name must be a string"));
    }
    if let Some(Value::String(args)) = function.get("arguments") {
        let parsed: Value =
            serde_json::from_str(args).map_err(|e| bad(&format!("function.arguments is not JSON: {e}")))?;
        function["arguments"] = parsed;
    }
    Ok(call)
}

/// Whether a request turns thinking on.
fn thinking(req: &ChatRequest, default: bool) -> bool {
    if let Some(on) = req.chat_template_kwargs.as_ref().and_then(|k| k.get("enable_thinking")).and_then(Value::as_bool)
    {
        return on;
    }
    match req.reasoning_effort.as_deref() {
        Some("none" | "minimal") => false,
        Some(_) => true,
        None => default,
    }
}

pub async fn chat_completions(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = read_body(body)?;
    // The sampling fields, read on their own so that an error names its field.
    let mut knobs: Sampling = parse(&body)?;
    let req: ChatRequest = parse(&body)?;
    let (sampling, max_tokens) = knobs.config(&state)?;
    let stop = Stop::list(knobs.stop.take())?;
    match req.response_format.as_ref().and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "response_format: {other:?} needs constrained decoding, which this server does not do yet"
            )))
        }
    }
    let (template, bos, eos) = state.template.as_ref().map_err(|e| ApiError::bad_request(e.clone()))?;
    let think = thinking(&req, state.options.think);
    let tools = match (&req.tools, req.tool_choice.as_ref().and_then(Value::as_str)) {
        (Some(_), Some("none")) | (None, _) => None,
        (Some(tools), _) => Some(Value::Array(tools.clone())),
    };
    if req.tool_choice.as_ref().is_some_and(|c| !c.is_string() || c.as_str() == Some("required")) {
        return Err(ApiError::bad_request(
            "tool_choice: \"auto\" and \"none\" are served; forcing a call needs constrained decoding",
        ));
    }
    let fold = template.source().contains("tool_responses");
    let messages = template_messages(req.messages, fold)?;
    let opts = RenderOptions {
        add_generation_prompt: true,
        enable_thinking: think,
        tools,
        bos_token: bos.clone(),
        eos_token: eos.clone(),
    };
    let text = template.render(&messages, &opts).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let prompt = prompt_ids(&state.tokenizer, &text, true);
    let (prompt, images) = with_images(&state, prompt, &messages).await?;
    let events = start(&state, prompt, images, &knobs, sampling, max_tokens, stop)?;
    let id = state.response_id("chatcmpl");
    if knobs.stream == Some(true) {
        let usage = knobs.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let chunks = ChatChunks::new(id, state.options.model_name.clone(), usage);
        Ok(stream(state, events, started, "/v1/chat/completions", chunks))
    } else {
        let (text, done) = collect(events).await?;
        let mut parser = ReplyParser::default();
        let mut deltas = parser.push(&text);
        deltas.extend(parser.finish());
        let (mut content, mut reasoning, mut calls) = (String::new(), String::new(), Vec::new());
        for d in deltas {
            match d {
                Delta::Content(t) => content.push_str(&t),
                Delta::Reasoning(t) => reasoning.push_str(&t),
                Delta::ToolCall(c) => calls.push(c),
            }
        }
        let mut message = json!({"role": "assistant", "content": content});
        if !reasoning.is_empty() {
            message["reasoning_content"] = json!(reasoning);
        }
        if !calls.is_empty() {
            message["tool_calls"] =
                json!(calls.iter().enumerate().map(|(i, c)| call_json(&id, i, c)).collect::<Vec<_>>());
        }
        let finish = finish_reason(done.stop_reason, !calls.is_empty());
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": state.options.model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
            "usage": usage(&done),
            "timings": timings(&done),
        });
        Ok(with_tokens(Json(body).into_response(), &done))
    }
}

#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default, rename = "model")]
    _model: Option<String>,
    prompt: PromptIn,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u64>,
}

/// A completion prompt: text, token ids, or a list of one of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum PromptIn {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

pub async fn completions(State(state): Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let body = read_body(body)?;
    let mut knobs: Sampling = parse(&body)?;
    let req: CompletionRequest = parse(&body)?;
    let (sampling, max_tokens) = knobs.config(&state)?;
    let stop = Stop::list(knobs.stop.take())?;
    if req.echo == Some(true) || req.suffix.is_some() || req.best_of.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request("echo, suffix and best_of are not supported"));
    }
    let prompt = match req.prompt {
        PromptIn::Text(t) => prompt_ids(&state.tokenizer, &t, true),
        PromptIn::Ids(ids) => ids,
        PromptIn::Texts(mut t) if t.len() == 1 => prompt_ids(&state.tokenizer, &t.remove(0), true),
        PromptIn::IdLists(mut l) if l.len() == 1 => l.remove(0),
        _ => return Err(ApiError::bad_request("prompt: one prompt per request (a list must hold exactly one)")),
    };
    check_ids(&prompt, state.n_vocab)?;
    let events = start(&state, prompt, Vec::new(), &knobs, sampling, max_tokens, stop)?;
    let id = state.response_id("cmpl");
    if knobs.stream == Some(true) {
        let usage = knobs.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        let chunks = TextChunks { id, model: state.options.model_name.clone(), usage };
        Ok(stream(state, events, started, "/v1/completions", chunks))
    } else {
        let (text, done) = collect(events).await?;
        let body = json!({
            "id": id,
            "object": "text_completion",
            "created": unix_now(),
            "model": state.options.model_name,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(done.stop_reason, false)}],
            "usage": usage(&done),
            "timings": timings(&done),
        });
        Ok(with_tokens(Json(body).into_response(), &done))
    }
}

/// The prompt with the messages' images in it: each image part encoded (the same image's
/// encoding is kept and reused) and each `<|image|>` the template wrote expanded into the
/// image's soft tokens; the prompt as it is when there are none.
async fn with_images(
    state: &Arc<AppState>,
    prompt: Vec<u32>,
    messages: &[Message],
) -> Result<(Vec<u32>, Vec<ImageChunk>), ApiError> {
    let parts: Vec<Part> = (messages.iter())
        .filter_map(|m| match &m.content {
            ChatContent::Parts(parts) => Some(parts.iter().filter(|p| matches!(p, Part::ImageUrl { .. })).cloned()),
            ChatContent::Text(_) => None,
        })
        .flatten()
        .collect();
    if parts.is_empty() {
        return Ok((prompt, Vec::new()));
    }
    let Some(vision) = state.vision.as_ref() else {
        return Err(ApiError::bad_request(
            "this server has no vision encoder for images: start it with --mmproj (or an mmproj*.gguf beside the model)",
        ));
    };
    let (shared, n) = (Arc::clone(vision), parts.len());
    let encoded = tokio::task::spawn_blocking(move || {
        let mut images = shared.images.lock().unwrap_or_else(|e| e.into_inner());
        parts.iter().map(|p| images.encode_part(p, std::path::Path::new("."))).collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the images: {e}")))?
    .map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    let (ids, chunks) = expand(&prompt, &encoded, vision.tokens, state.tokenizer.bos()).map_err(|e| {
        ApiError::bad_request(format!("{e} (the template wrote one per image part; is there one in the text?)"))
    })?;
    debug_assert_eq!(chunks.len(), n);
    let room = state.options.engine.batch.saturating_sub(state.options.engine.slots - 1);
    if let Some(big) = chunks.iter().find(|c| c.image.n_soft + 1 > room) {
        return Err(ApiError::bad_request(format!(
            "an image of {} soft tokens needs batches of {} tokens (-b) beside the other slots' tokens",
            big.image.n_soft,
            big.image.n_soft + state.options.engine.slots
        )));
    }
    Ok((ids, chunks))
}

/// Checks the prompt against a slot and queues it; the engine's events come back on the
/// receiver.
#[allow(clippy::too_many_arguments)]
fn start(
    state: &AppState,
    prompt: Vec<u32>,
    images: Vec<ImageChunk>,
    knobs: &Sampling,
    sampling: SamplerConfig,
    max_tokens: Option<usize>,
    stop: Vec<String>,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let context = state.options.engine.slot_context;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty"));
    }
    if prompt.len() >= context {
        return Err(ApiError::bad_request(format!(
            "the prompt is {} tokens, and a slot's context is {context} (-c split across --parallel slots)",
            prompt.len()
        )));
    }
    let (tx, rx) = unbounded_channel();
    let ignore_eos = knobs.ignore_eos.unwrap_or(false);
    state.submit(Job { prompt, images, sampling, max_tokens, stop, ignore_eos, events: tx })?;
    state.metrics.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(rx)
}

/// The whole completion text and its summary.
async fn collect(mut events: UnboundedReceiver<Event>) -> Result<(String, Done), ApiError> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Started { .. } => {}
            Event::Text(t) => text.push_str(&t),
            Event::Done(done) => return Ok((text, done)),
            Event::Failed(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model stopped serving".into()))
}

fn finish_reason(reason: StopReason, tool_calls: bool) -> &'static str {
    match reason {
        _ if tool_calls => "tool_calls",
        StopReason::Length | StopReason::ContextFull => "length",
        _ => "stop",
    }
}

fn usage(done: &Done) -> Value {
    json!({
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    })
}

/// llama-server's `timings` object.
fn timings(done: &Done) -> Value {
    let run = done.prompt_tokens - done.cached_tokens;
    let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
    json!({
        "cache_n": done.cached_tokens,
        "prompt_n": run,
        "prompt_ms": done.prompt_ms,
        "prompt_per_second": per_s(run, done.prompt_ms),
        "predicted_n": done.completion_tokens,
        "predicted_ms": done.generation_ms,
        "predicted_per_second": per_s(done.completion_tokens, done.generation_ms),
    })
}

fn with_tokens(mut response: Response, done: &Done) -> Response {
    response.extensions_mut().insert(LoggedTokens(done.prompt_tokens + done.completion_tokens));
    response
}

fn call_json(id: &str, i: usize, call: &ToolCall) -> Value {
    json!({
        "id": format!("call_{}_{i}", id.rsplit('-').next().unwrap_or(id)),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

/// Turns engine events into the data of server-sent events.
trait Chunks: Send + 'static {
    fn text(&mut self, text: &str) -> Vec<Value>;
    /// The last chunks: what was held back, the finish reason, the usage if asked for.
    fn done(&mut self, done: &Done) -> Vec<Value>;
}

struct ChatChunks {
    id: String,
    model: String,
    usage: bool,
    created: u64,
    parser: ReplyParser,
    calls: usize,
    sent_role: bool,
}

impl ChatChunks {
    fn new(id: String, model: String, usage: bool) -> ChatChunks {
        ChatChunks { id, model, usage, created: unix_now(), parser: ReplyParser::default(), calls: 0, sent_role: false }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    }

    fn deltas(&mut self, deltas: Vec<Delta>) -> Vec<Value> {
        let mut out = Vec::new();
        if !self.sent_role {
            self.sent_role = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
        }
        for d in deltas {
            let delta = match d {
                Delta::Content(t) => json!({"content": t}),
                Delta::Reasoning(t) => json!({"reasoning_content": t}),
                Delta::ToolCall(c) => {
                    let mut call = call_json(&self.id, self.calls, &c);
                    call["index"] = json!(self.calls);
                    self.calls += 1;
                    json!({"tool_calls": [call]})
                }
            };
            out.push(self.chunk(delta, None));
        }
        out
    }
}

impl Chunks for ChatChunks {
    fn text(&mut self, text: &str) -> Vec<Value> {
        let deltas = self.parser.push(text);
        self.deltas(deltas)
    }

    fn done(&mut self, done: &Done) -> Vec<Value> {
        let deltas = self.parser.finish();
        let mut out = self.deltas(deltas);
        out.push(self.chunk(json!({}), Some(finish_reason(done.stop_reason, self.calls > 0))));
        if self.usage {
            let mut last = self.chunk(json!({}), None);
            last["choices"] = json!([]);
            last["usage"] = usage(done);
            out.push(last);
        }
        out
    }
}

struct TextChunks {
    id: String,
    model: String,
    usage: bool,
}

impl TextChunks {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": unix_now(),
            "model": self.model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
        })
    }
}

impl Chunks for TextChunks {
    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![self.chunk(text, None)]
    }

    fn done(&mut self, done: &Done) -> Vec<Value> {
        let mut out = vec![self.chunk("", Some(finish_reason(done.stop_reason, false)))];
        if self.usage {
            let mut last = self.chunk("", None);
            last["choices"] = json!([]);
            last["usage"] = usage(done);
            out.push(last);
        }
        out
    }
}

/// The engine's events as server-sent events, ending with `data: [DONE]`. A task forwards
/// them; when the client goes, the send fails, the task drops the engine's receiver, and the
/// engine frees the slot at its next step. The log line is written when the stream ends.
fn stream(
    state: Arc<AppState>,
    mut events: UnboundedReceiver<Event>,
    started: Instant,
    path: &'static str,
    mut chunks: impl Chunks,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        let quiet = state.options.quiet;
        let (mut status, mut tokens) = (200, 0);
        let send = |v: Value| SseEvent::default().data(v.to_string());
        'events: while let Some(event) = events.recv().await {
            let out: Vec<SseEvent> = match event {
                Event::Started { .. } => continue,
                Event::Text(t) => chunks.text(&t).into_iter().map(send).collect(),
                Event::Done(done) => {
                    tokens = done.prompt_tokens + done.completion_tokens;
                    let mut out: Vec<SseEvent> = chunks.done(&done).into_iter().map(send).collect();
                    out.push(SseEvent::default().data("[DONE]"));
                    out
                }
                Event::Failed(e) => {
                    status = 500;
                    vec![send(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e).body())]
                }
            };
            for e in out {
                if tx.send(Ok(e)).await.is_err() {
                    // The client went away.
                    status = 499;
                    break 'events;
                }
            }
        }
        drop(events);
        if !quiet {
            log_line("POST", path, status, tokens, started);
        }
    });
    let mut response = Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()).into_response();
    response.extensions_mut().insert(LogsItself);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(v: Value) -> Vec<ChatMessage> {
        serde_json::from_value::<Vec<Value>>(v)
            .unwrap()
            .into_iter()
            .map(|m| serde_json::from_value(m).unwrap())
            .collect()
    }

    /// OpenAI's tool round trip (assistant `tool_calls` with JSON-string arguments, then a
    /// `tool` message per call) becomes the Gemma 4 template's input: the calls' arguments as
    /// objects, the results on the calling message, named through `tool_call_id`.
    #[test]
    fn tool_messages_fold_into_the_calling_message() {
        let m = messages(json!([
            {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
        ]));
        let out = template_messages(m, true).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], Message::user("Weather in Paris?"));
        assert_eq!(out[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"], json!({"city": "Paris"}));
        assert_eq!(
            out[1].tool_responses,
            Some(json!([{"name": "get_time", "response": "12:00"}, {"name": "get_weather", "response": {"temp": 21}}]))
        );

        let orphan = messages(json!([{"role": "tool", "tool_call_id": "x", "content": "1"}]));
        assert!(template_messages(orphan, true).unwrap_err().message.contains("must follow an assistant"));
        // Images: parts kept in order in a user message; only data: URLs; only in user messages.
        let part = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
        let text = json!({"type": "text", "text": "What is it?"});
        let image = messages(json!([{"role": "user", "content": [part("data:image/png;base64,AA=="), text]}]));
        let out = template_messages(image, true).unwrap();
        assert_eq!(
            out[0].content,
            ChatContent::Parts(vec![
                Part::ImageUrl { image_url: ImageUrl { url: "data:image/png;base64,AA==".into() } },
                Part::Text { text: "What is it?".into() }
            ])
        );
        let remote = messages(json!([{"role": "user", "content": [text, part("https://x.org/a.png")]}]));
        let err = template_messages(remote, true).unwrap_err().message;
        assert!(err.contains("messages[0].content[1].image_url: only data: URLs"), "{err}");
        let assistant = messages(json!([{"role": "assistant", "content": [part("data:,")]}]));
        let err = template_messages(assistant, true).unwrap_err().message;
        assert!(err.contains("messages[0].content[0]: images go in user messages"), "{err}");
        let role = messages(json!([{"role": "robot", "content": "hi"}]));
        assert_eq!(template_messages(role, true).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
