//! `gemma serve`: an OpenAI-compatible HTTP server over one loaded model.
//!
//! The HTTP side (tokio + axum, [`api`]) parses requests, renders chat templates, tokenizes
//! and checks everything it can, then hands a [`Job`] to the [`engine`] thread through a
//! bounded queue (full: 503 with `Retry-After`) and streams the engine's events back, as
//! server-sent events or one JSON body. The listener is up before the model is loaded:
//! `/health` answers 503 until it is, and so does every model endpoint.
//!
//! Errors are OpenAI's shape, `{"error": {"message", "type", "code"}}`, for every status this
//! server sends, unknown paths and oversized bodies included. Every request gets one log line
//! on stderr (method, path, status, tokens, ms; a streamed one when its stream ends), unless
//! `-q`.

pub mod api;
pub mod engine;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use thiserror::Error;

use crate::chat::ChatTemplate;
use crate::kv_cache::KvTypes;
use crate::run::Generator;
use crate::sample::SamplerConfig;
use crate::tokenizer::Tokenizer;
use crate::vision::prompt::ImageTokens;
use crate::vision::Images;
pub use engine::{EngineOptions, Event, Job, Metrics};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Load(String),
}

/// How the server is set up (the `gemma serve` flags).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub engine: EngineOptions,
    /// Defaults for what a request does not say.
    pub sampling: SamplerConfig,
    pub n_predict: Option<usize>,
    pub think: bool,
    /// Requests that may wait for a slot.
    pub queue: usize,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// The name `/v1/models` gives and responses carry.
    pub model_name: String,
    pub quiet: bool,
}

/// What the handlers share.
pub struct AppState {
    pub options: ServeOptions,
    pub tokenizer: Tokenizer,
    pub n_vocab: usize,
    /// The model's chat template and its BOS/EOS texts, or why there is none.
    pub template: Result<(ChatTemplate, String, String), String>,
    pub ready: AtomicBool,
    pub jobs: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// For response ids.
    pub next_id: AtomicU64,
    /// The vision encoder for images in messages (`--mmproj`), if any.
    pub vision: Option<Arc<Vision>>,
}

/// The vision encoder and its cache of encoded images (by content), shared by the handlers: one
/// image is encoded at a time, on a blocking thread beside the engine.
pub struct Vision {
    pub images: std::sync::Mutex<Images>,
    /// The model's image tokens, that a prompt's `<|image|>` expands into.
    pub tokens: ImageTokens,
}

impl AppState {
    /// Queues `job` for a slot, or says why not (503: loading, or the queue is full).
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(ApiError::loading());
        }
        self.metrics.queued.fetch_add(1, Ordering::Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.metrics.queued.fetch_sub(1, Ordering::Relaxed);
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                Err(match e {
                    TrySendError::Full(_) => ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "all {} slots are busy and {} requests wait already",
                            self.options.engine.slots, self.options.queue
                        ),
                    ),
                    TrySendError::Disconnected(_) => {
                        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is not running".to_string())
                    }
                })
            }
        }
    }

    /// A fresh response id with `prefix` (`chatcmpl`, `cmpl`).
    pub fn response_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:x}{n:04x}", self.started.elapsed().as_nanos() as u32)
    }
}

/// An error response in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: String) -> ApiError {
        ApiError { status, message }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn loading() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading".into())
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "code": self.status.as_u16()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Tokens a response carried (prompt + completion), for its log line.
#[derive(Clone, Copy, Debug)]
pub struct LoggedTokens(pub usize);

/// Marks a streamed response: its stream logs the line when it ends.
#[derive(Clone, Copy, Debug)]
pub struct LogsItself;

/// Serves until Ctrl-C. The listener opens first; `load` then runs on the engine's thread and
/// the endpoints answer once it has returned the model.
pub fn serve(
    options: ServeOptions,
    tokenizer: Tokenizer,
    n_vocab: usize,
    template: Result<(ChatTemplate, String, String), String>,
    vision: Option<Vision>,
    load: impl FnOnce() -> Result<Generator, String> + Send + 'static,
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let (jobs, queue) = sync_channel(options.queue);
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState {
        options: options.clone(),
        tokenizer,
        n_vocab,
        template,
        ready: AtomicBool::new(false),
        jobs,
        metrics: Arc::clone(&metrics),
        started: Instant::now(),
        next_id: AtomicU64::new(0),
        vision: vision.map(Arc::new),
    });
    let addr = format!("{}:{}", options.host, options.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let local: SocketAddr = listener.local_addr().map_err(ServeError::Http)?;
    let loopback = local.ip().is_loopback();
    if !loopback && options.api_key.is_none() {
        eprintln!("gemma serve: warning: listening on {local}, beyond this machine, without --api-key: anyone who can reach it can use the model");
    }
    // The line scripts wait for: where to connect.
    eprintln!("gemma serve: listening on http://{local}");

    let (loaded_tx, loaded_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let engine_state = Arc::clone(&state);
    let engine_options = options.engine;
    let engine = std::thread::Builder::new()
        .name("gemma-engine".into())
        .spawn(move || {
            let generator = match load() {
                Ok(g) => g,
                Err(e) => {
                    let _ = loaded_tx.send(Err(e));
                    return;
                }
            };
            engine_state.ready.store(true, Ordering::Release);
            let _ = loaded_tx.send(Ok(()));
            engine::run(generator, queue, engine_options, metrics);
        })
        .map_err(ServeError::Runtime)?;

    let app = router(Arc::clone(&state));
    let quiet = options.quiet;
    let result: Result<(), ServeError> = runtime.block_on(async move {
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let mut server =
            tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
        let ended = |r: Result<std::io::Result<()>, tokio::task::JoinError>| match r {
            Ok(r) => r.map_err(ServeError::Http),
            Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
        };
        let loaded = tokio::task::spawn_blocking(move || loaded_rx.recv());
        tokio::select! {
            r = &mut server => return ended(r),
            loaded = loaded => match loaded {
                Ok(Ok(Ok(()))) => {
                    if !quiet {
                        let e = &engine_options;
                        eprintln!(
                            "gemma serve: model loaded; {} slots of {} positions each (-c split across --parallel), batches of {} tokens",
                            e.slots, e.slot_context, e.batch
                        );
                    }
                }
                Ok(Ok(Err(e))) => return Err(ServeError::Load(e)),
                _ => return Err(ServeError::Load("the model thread ended while loading".into())),
            },
        }
        ended(server.await)
    });
    // Shutting down: dropping the state's sender lets the engine finish what it runs.
    drop(state);
    runtime.shutdown_background();
    drop(engine);
    result
}

/// Every route, with the API key check and the log line around them.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(api::health))
        .route("/v1/health", get(api::health))
        .route("/v1/models", get(api::models))
        .route("/models", get(api::models))
        .route("/v1/chat/completions", post(api::chat_completions))
        .route("/chat/completions", post(api::chat_completions))
        .route("/v1/completions", post(api::completions))
        .route("/completions", post(api::completions))
        .route("/tokenize", post(api::tokenize))
        .route("/detokenize", post(api::detokenize))
        .route("/metrics", get(api::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.options.max_body))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), authorize))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), log_request))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no endpoint {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {}", request.uri().path(), request.method()),
    )
}

/// With `--api-key`, every endpoint but `/health` wants `Authorization: Bearer KEY`.
async fn authorize(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.options.api_key else { return next.run(request).await };
    if matches!(request.uri().path(), "/health" | "/v1/health") {
        return next.run(request).await;
    }
    let given = (request.headers().get(header::AUTHORIZATION))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key (Authorization: Bearer KEY)".into())
            .into_response()
    }
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn log_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (method, path, start) = (request.method().clone(), request.uri().path().to_string(), Instant::now());
    let response = next.run(request).await;
    if !state.options.quiet && response.extensions().get::<LogsItself>().is_none() {
        let tokens = response.extensions().get::<LoggedTokens>().map_or(0, |t| t.0);
        log_line(method.as_str(), &path, response.status().as_u16(), tokens, start);
    }
    response
}

/// `POST /v1/chat/completions 200 57 tokens 812 ms`
pub fn log_line(method: &str, path: &str, status: u16, tokens: usize, start: Instant) {
    eprintln!("{method} {path} {status} {tokens} tokens {:.0} ms", start.elapsed().as_secs_f64() * 1e3);
}

/// Default slot count for a context of `ctx` positions: 4 when each gets 2048, fewer for a
/// smaller context.
pub fn default_slots(ctx: usize) -> usize {
    (ctx / 2048).clamp(1, 4)
}

/// Every slot's cache types and sizes, as `serve` sets them up.
pub fn engine_options(ctx: usize, slots: usize, batch: usize, kv_types: KvTypes) -> EngineOptions {
    EngineOptions { slots, slot_context: (ctx / slots).max(1), batch, kv_types }
}
