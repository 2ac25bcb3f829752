//! The `gemma` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gemma::bench::{self, Bench, BenchOptions};
use gemma::chat::{ChatTemplate, Content, Message, Part, RenderOptions};
use gemma::info::ModelInfo;
use gemma::jsonl::{self, JsonlError, JsonlOptions};
use gemma::kv_cache::{KvType, KvTypes};
use gemma::model::offload::MoeUpload;
use gemma::model::Offload;
use gemma::repl::{self, ChatOptions};
use gemma::run::{Generator, Prompt, RunError, RunOptions};
use gemma::sample::SamplerConfig;
use gemma::session::Session;
use gemma::tokenizer::Tokenizer;
use gemma::vision::prompt::ImageTokens;
use gemma::vision::{Images, PromptImage, VisionError, VisionTower};
use ggml::gguf::GgufFile;
use ggml::output::PendingFile;
use indicatif::ProgressBar;

#[derive(Parser)]
#[command(name = "gemma", version, about = "Run Google's Gemma models from GGUF files")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a GGUF file: model, hyperparameters, tensor types, tokenizer, memory needs
    Info {
        /// The GGUF file
        file: PathBuf,
        /// Context length for the KV-cache estimate
        #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
        ctx_size: u64,
        /// List every tensor
        #[arg(long)]
        tensors: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Also show the memory on the GPU and on the CPU with this many layers offloaded
        /// (`-ngl`, as `gemma run` takes it)
        #[arg(long = "gpu-layers", visible_aliases = ["ngl", "n-gpu-layers"])]
        gpu_layers: Option<u64>,
        /// Show where the fit would place the model (as `gemma run` does by default): for
        /// --vram-budget, else for the GPU's free memory. Loads nothing
        #[arg(long)]
        plan: bool,
        #[command(flatten)]
        kv: KvArgs,
        /// With --plan: plan for this many GiB of VRAM
        #[arg(long = "vram-budget", value_name = "GIB", requires = "plan")]
        vram_budget: Option<f64>,
        /// With --plan: the Vulkan device to plan for
        #[arg(long = "device", value_name = "N", requires = "plan")]
        device: Option<usize>,
        /// With --plan: prompt tokens per forward batch (sizes the activations)
        #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
        batch_size: usize,
    },
    /// Generate text from a prompt (-p, -f, --ids, or stdin); the completion alone goes to stdout
    Run(RunArgs),
    /// Chat with the model in the terminal (line editing, history, /help for commands)
    Chat(ChatArgs),
    /// Serve the model over HTTP with OpenAI's API (chat and text completions, streaming,
    /// tools), several requests batched together
    Serve(ServeArgs),
    /// Measure prompt-processing and generation speed (tokens/s), as llama-bench does
    Bench {
        /// The GGUF model
        #[arg(short = 'm', long = "model")]
        model: PathBuf,
        /// Prompt lengths to time (pp tests); 0 skips
        #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
        prompt: Vec<usize>,
        /// Generation lengths to time (tg tests); 0 skips
        #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
        gen: Vec<usize>,
        /// Tokens already in the context when each test starts
        #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0")]
        depth: Vec<usize>,
        /// Thread counts (default: the physical cores)
        #[arg(short = 't', long = "threads", value_delimiter = ',')]
        threads: Vec<usize>,
        /// Prompt tokens per forward pass
        #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
        batch_size: usize,
        /// Timed repetitions of each test (after one warm-up)
        #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
        repetitions: usize,
        /// Output format
        #[arg(short = 'o', long = "output", value_enum, default_value_t = BenchFormat::Md)]
        output: BenchFormat,
        /// Key cache types to time (-ctk): f32, f16, bf16, q8_0, q4_0
        #[arg(long = "cache-type-k", value_name = "TYPES", value_delimiter = ',', default_value = "f16")]
        cache_type_k: Vec<KvType>,
        /// Value cache types to time (-ctv)
        #[arg(long = "cache-type-v", value_name = "TYPES", value_delimiter = ',', default_value = "f16")]
        cache_type_v: Vec<KvType>,
        /// Also time encoding an image with this mmproj (ms per image, after one warm-up)
        #[arg(long, value_name = "FILE")]
        mmproj: Option<PathBuf>,
        /// The image to encode with --mmproj (default: a generated 640x640 gradient)
        #[arg(long, value_name = "FILE", requires = "mmproj")]
        image: Option<PathBuf>,
        /// Soft tokens per image for --mmproj: 70, 140, 280, 560 or 1120
        #[arg(long = "image-tokens", value_name = "N", default_value_t = 280)]
        image_tokens: usize,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// List the GPUs (Vulkan devices): memory, features, and which one is used by default
    Devices {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Perplexity of a text (llama-perplexity's method), or the KL divergence of the model's
    /// predictions from a base model's
    Perplexity(PerplexityArgs),
    /// Print the token ids of a text, as the model's tokenizer splits it
    Tokenize {
        /// The GGUF file whose tokenizer to use
        #[arg(short = 'm', long = "model")]
        model: PathBuf,
        /// The text (read from stdin when absent)
        text: Option<String>,
        /// Do not add the BOS token
        #[arg(long)]
        no_bos: bool,
        /// Treat special-token text such as `<|turn>` as plain text
        #[arg(long)]
        no_special: bool,
        /// Print `{"ids": [...], "pieces": [...]}`
        #[arg(long)]
        json: bool,
    },
}

/// The sampling flags `run` and `chat` share.
#[derive(Args)]
struct SamplingArgs {
    /// Temperature; 0 picks the most likely token
    #[arg(long = "temp", default_value_t = 0.8)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: usize,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: usize,
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    presence_penalty: f32,
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed (the same seed gives the same output)
    #[arg(short = 's', long = "seed")]
    seed: Option<u64>,
}

impl SamplingArgs {
    fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
        }
    }
}

/// The model and cache flags `run` and `chat` share.
#[derive(Args)]
struct ModelArgs {
    /// The GGUF model
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// Context length (prompt + completion; for chat, the whole conversation; for serve, split
    /// across the slots). Default: 4096; for serve, 4096 per slot
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Prompt tokens per forward batch
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Threads for the matrix products (default: the physical cores)
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    kv: KvArgs,
    #[command(flatten)]
    gpu: GpuArgs,
}

/// The KV cache's element types: the flags `run`, `chat`, `perplexity` and `info` share.
#[derive(Args, Clone)]
struct KvArgs {
    /// Element type of the cached keys: f32, f16, bf16, q8_0 or q4_0 (-ctk, as llama.cpp).
    /// Default: --kv-type
    #[arg(long = "cache-type-k", value_name = "TYPE")]
    cache_type_k: Option<KvType>,
    /// Element type of the cached values (-ctv), as --cache-type-k. Default: --kv-type
    #[arg(long = "cache-type-v", value_name = "TYPE")]
    cache_type_v: Option<KvType>,
    /// Element type of both keys and values: f32, f16, bf16, q8_0 or q4_0
    #[arg(long = "kv-type", value_name = "TYPE", default_value_t = KvType::F16)]
    kv_type: KvType,
}

impl KvArgs {
    fn types(&self) -> KvTypes {
        KvTypes { k: self.cache_type_k.unwrap_or(self.kv_type), v: self.cache_type_v.unwrap_or(self.kv_type) }
    }
}

/// Where the model runs: the flags `run`, `chat` and `bench` share.
#[derive(Args, Clone)]
struct GpuArgs {
    /// Layers to run on the GPU, the last ones first; the output head counts as one more layer
    /// (llama.cpp's meaning: -ngl 99 puts everything on the GPU, -ngl 0 nothing). Default: the
    /// fit decides (see --fit). Without a GPU: a warning, and the CPU runs everything
    #[arg(long = "gpu-layers", visible_aliases = ["ngl", "n-gpu-layers"])]
    gpu_layers: Option<usize>,
    /// Keep every layer's experts in RAM (the CPU runs them); the rest of each layer runs on
    /// the GPU. Alone, it puts every layer on the GPU (as -ngl 99 --cpu-moe)
    #[arg(long = "cpu-moe", conflicts_with = "n_cpu_moe")]
    cpu_moe: bool,
    /// Keep the experts of the first N layers in RAM
    #[arg(long = "n-cpu-moe", value_name = "N")]
    n_cpu_moe: Option<usize>,
    /// Without -ngl/--cpu-moe/--n-cpu-moe, fit the model to the GPU's free memory: the layers
    /// without their experts, the output head and the KV cache first, then the experts of as
    /// many layers as fit (the rest stay in RAM)
    #[arg(long = "fit", value_enum, default_value_t = OnOff::On)]
    fit: OnOff,
    /// Plan for at most this many GiB of VRAM (also simulates a smaller card)
    #[arg(long = "vram-budget", value_name = "GIB")]
    vram_budget: Option<f64>,
    /// For the layers whose experts stay in RAM: copy a batch's experts to VRAM and run them
    /// there (on), run them on the CPU (off), or whichever the measured speeds say is faster
    /// for the batch (auto: prompts upload, generation stays on the CPU)
    #[arg(long = "moe-upload", value_enum, default_value_t = MoeUpload::Auto)]
    moe_upload: MoeUpload,
    /// VRAM in GiB for the hot-expert cache: each layer's most often routed experts among
    /// those kept in RAM, run on the GPU (default: what the placement leaves; 0: none)
    #[arg(long = "expert-cache", value_name = "GIB")]
    expert_cache: Option<f64>,
    /// The Vulkan device to use (`gemma devices` lists them; default: the first discrete GPU,
    /// else an integrated one; a CPU device such as lavapipe only when named)
    #[arg(long = "device", value_name = "N")]
    device: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// GiB as bytes, or a usage error.
fn gib(what: &str, value: f64) -> Result<u64> {
    if !(value.is_finite() && value > 0.0) {
        return Err(UsageError(format!("{what} must be a positive number of GiB, not {value}")).into());
    }
    Ok((value * (1u64 << 30) as f64) as u64)
}

impl GpuArgs {
    /// The request for a context of `context` positions of K and V of `kv_types` and batches
    /// of `max_batch` tokens.
    fn offload(&self, max_batch: usize, context: usize, kv_types: KvTypes) -> Result<Offload> {
        Ok(Offload {
            gpu_layers: self.gpu_layers,
            n_cpu_moe: if self.cpu_moe { Some(usize::MAX) } else { self.n_cpu_moe },
            fit: self.fit == OnOff::On,
            vram_budget: self.vram_budget.map(|v| gib("--vram-budget", v)).transpose()?,
            device: self.device,
            max_batch,
            context,
            kv_types,
            moe_upload: self.moe_upload,
            expert_cache: match self.expert_cache {
                Some(0.0) => Some(0),
                Some(v) => Some(gib("--expert-cache", v)?),
                None => None,
            },
        })
    }
}

impl ModelArgs {
    /// Our own checks beyond clap's: usage errors (exit code 2).
    fn check(&self) -> Result<()> {
        if self.ctx_size == Some(0) {
            return Err(UsageError("--ctx-size must be at least 1".into()).into());
        }
        if self.batch_size == 0 {
            return Err(UsageError("--batch-size must be at least 1".into()).into());
        }
        if self.threads == Some(0) {
            return Err(UsageError("--threads must be at least 1".into()).into());
        }
        Ok(())
    }
}

#[derive(Args)]
struct PerplexityArgs {
    /// The GGUF model
    #[arg(short = 'm', long = "model")]
    model: PathBuf,
    /// The text to score (not with --kl-divergence: the base file holds its tokens)
    #[arg(short = 'f', long = "file", required_unless_present = "kl_divergence")]
    file: Option<PathBuf>,
    /// Tokens per chunk; each chunk is scored on its second half
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512)]
    ctx_size: usize,
    /// Tokens per forward pass (at most the chunk)
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch_size: usize,
    /// Score at most this many chunks
    #[arg(long)]
    chunks: Option<usize>,
    /// Threads for the matrix products (default: the physical cores)
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    #[command(flatten)]
    kv: KvArgs,
    /// The base file: written (with -f) with the model's log-probabilities, or read (with
    /// --kl-divergence) to compare against them; llama-perplexity's format, so files from
    /// either tool serve both
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the base file: mean KL divergence with its percentiles, the same-top-token
    /// rate and the change in the correct token's probability
    #[arg(long = "kl-divergence", requires = "kl_divergence_base", conflicts_with = "file")]
    kl_divergence: bool,
    /// Output format of the result (on stdout; progress goes to stderr)
    #[arg(short = 'o', long = "output", value_enum, default_value_t = TextFormat::Text)]
    output: TextFormat,
    #[command(flatten)]
    gpu: GpuArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TextFormat {
    Text,
    Json,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The prompt as token ids instead of text ("2 105 ..." or "2,105,..."), run exactly as
    /// given: no BOS is added
    #[arg(long, value_name = "IDS", value_parser = parse_ids,
          conflicts_with_all = ["prompt", "file", "chat", "no_special"])]
    ids: Option<TokenIds>,
    /// Write the logits of every prompt position to FILE: float32 little-endian,
    /// [prompt tokens][vocabulary], row-major (with -n 0: score the prompt only)
    #[arg(long, value_name = "FILE")]
    logits_out: Option<PathBuf>,
    /// Tokens to generate at most
    #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
    n_predict: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// An image for the prompt (repeatable): where the prompt says <|image|>, in order, or
    /// before the text. Needs --mmproj, or an mmproj*.gguf beside the model
    #[arg(long = "image", value_name = "FILE", conflicts_with = "jsonl")]
    images: Vec<PathBuf>,
    /// The vision encoder (an mmproj GGUF, as llama.cpp's converter writes it)
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Soft tokens per image: 70, 140, 280, 560 or 1120
    #[arg(long = "image-tokens", value_name = "N", default_value_t = 280)]
    image_tokens: usize,
    /// Treat special-token text in the prompt as plain text
    #[arg(long)]
    no_special: bool,
    /// Wrap the prompt in the model's chat template as one user turn
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user turn
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// With --chat or --jsonl: let a Gemma 4 model think before it answers
    #[arg(long)]
    think: bool,
    /// Stop generating where this text appears (not printed); may be repeated
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
    /// Print one JSON object (text, prompt_ids, completion_ids, stop_reason, timings)
    /// instead of streaming the text
    #[arg(long)]
    json: bool,
    /// Serve one JSON request per stdin line ({"prompt": ...} or {"messages": [...]}, plus
    /// id, n_predict, temperature, top_k, top_p, min_p, seed, stop) with one JSON response
    /// per stdout line
    #[arg(long, conflicts_with_all = ["prompt", "file", "json", "ids", "logits_out"])]
    jsonl: bool,
    /// No speed line or summary on stderr
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message at the start of the conversation
    #[arg(long)]
    system: Option<String>,
    /// Let a Gemma 4 model think before it answers (/set think on|off changes it)
    #[arg(long)]
    think: bool,
    /// Tokens per reply at most (default: until the model ends its turn or the context is full)
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Keep no input history (by default it is kept in the user's data directory)
    #[arg(long)]
    no_history: bool,
    /// The vision encoder for /image (an mmproj GGUF; default: the mmproj*.gguf beside the model)
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Soft tokens per image: 70, 140, 280, 560 or 1120
    #[arg(long = "image-tokens", value_name = "N", default_value_t = 280)]
    image_tokens: usize,
    /// No banner and no stats line after each reply
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The address to listen on (a non-loopback one without --api-key prints a warning)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: any free one; the address is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health
    #[arg(long = "api-key", value_name = "KEY")]
    api_key: Option<String>,
    /// Requests served at once (-np), each in its own slot of -c / N positions. Default: 4
    /// when each slot gets at least 2048 positions
    #[arg(long = "parallel", value_name = "N")]
    parallel: Option<usize>,
    /// Requests that may wait for a free slot; beyond them, 503 with Retry-After
    #[arg(long = "queue", value_name = "N", default_value_t = 64)]
    queue: usize,
    /// Largest request body in MiB (larger: 413)
    #[arg(long = "max-body", value_name = "MIB", default_value_t = 8)]
    max_body_mib: usize,
    /// Tokens per reply at most when a request does not say (default: until the slot is full)
    #[arg(short = 'n', long = "n-predict")]
    n_predict: Option<usize>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Let a Gemma 4 model think unless a request says otherwise
    #[arg(long)]
    think: bool,
    /// The model's name in /v1/models and responses (default: the file name without .gguf)
    #[arg(long = "alias", value_name = "NAME")]
    alias: Option<String>,
    /// The vision encoder for images in messages (an mmproj GGUF; default: the mmproj*.gguf
    /// beside the model, if any)
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// Soft tokens per image: 70, 140, 280, 560 or 1120
    #[arg(long = "image-tokens", value_name = "N", default_value_t = 280)]
    image_tokens: usize,
    /// No log line per request
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// `--ids`: token ids as given on the command line.
#[derive(Clone)]
struct TokenIds(Vec<u32>);

/// Decimal token ids separated by whitespace and/or commas.
fn parse_ids(s: &str) -> Result<TokenIds, String> {
    let ids = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse().map_err(|_| format!("{t:?} is not a token id (decimal, separated by spaces or commas)")))
        .collect::<Result<Vec<u32>, String>>()?;
    if ids.is_empty() {
        return Err("no token ids".into());
    }
    Ok(TokenIds(ids))
}

/// A mistake in how the command was called: exit code 2, as clap's own.
#[derive(Debug)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchFormat {
    /// A markdown table, as llama-bench prints
    Md,
    /// One JSON object with every sample
    Json,
}

fn main() -> ExitCode {
    // llama.cpp spells the GPU layer count `-ngl N` and the cache types `-ctk T`, `-ctv T` (one
    // dash, three letters), which clap's short flags cannot: read them as the long flags.
    let args = std::env::args_os().map(|a| match a.to_str() {
        Some("-ngl") => "--gpu-layers".into(),
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        Some("-np") => "--parallel".into(),
        _ => a,
    });
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else if matches!(e.downcast_ref(), Some(gemma::perplexity::PerplexityError::Interrupted { .. })) {
                // As a shell reports a program that SIGINT ended.
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { file, ctx_size, tensors, json, gpu_layers, plan, kv, vram_budget, device, batch_size } => {
            let gguf = GgufFile::open(&file)?;
            let mut info = ModelInfo::new(&gguf, ctx_size, tensors).with_kv_types(kv.types());
            if let Some(n) = gpu_layers {
                info = info.with_gpu_layers(&gguf, n);
            }
            if plan {
                let context = usize::try_from(ctx_size).context("--ctx-size")?;
                let costs = gemma::model::fit::Costs::from_header(&gguf.header, context, kv.types(), batch_size)
                    .with_context(|| format!("{}: the file lacks the layer shapes to plan for", file.display()))?;
                let offload = Offload {
                    vram_budget: vram_budget.map(|v| gib("--vram-budget", v)).transpose()?,
                    device,
                    ..Offload::default()
                };
                let (plan, made_for) = offload.plan(&costs)?;
                info.plan = Some(gemma::info::PlanReport { made_for, plan, costs });
            }
            let text = if json { serde_json::to_string_pretty(&info)? + "\n" } else { info.to_text() };
            print(&text)
        }
        Command::Devices { json } => {
            let devices = gemma::devices::Devices::list();
            let text = if json { serde_json::to_string_pretty(&devices)? + "\n" } else { devices.to_text() };
            print(&text)
        }
        Command::Run(args) => run_command(args),
        Command::Perplexity(args) => perplexity_command(args),
        Command::Chat(args) => chat_command(args),
        Command::Serve(args) => serve_command(args),
        Command::Bench {
            model,
            prompt,
            gen,
            depth,
            threads,
            batch_size,
            repetitions,
            output,
            cache_type_k,
            cache_type_v,
            mmproj,
            image,
            image_tokens,
            gpu,
        } => {
            let threads = if threads.is_empty() { vec![num_cpus::get_physical()] } else { threads };
            // The KV cache of the longest test: its depth and its tokens.
            let context = depth.iter().max().unwrap_or(&0) + prompt.iter().chain(&gen).max().unwrap_or(&0);
            let kv_types: Vec<KvTypes> =
                cache_type_k.iter().flat_map(|&k| cache_type_v.iter().map(move |&v| KvTypes { k, v })).collect();
            // Placed for the largest of the caches.
            let largest = *kv_types.iter().max_by_key(|t| t.row_bytes(512)).expect("clap gives a default");
            let show_types = kv_types.iter().any(|&t| t != KvTypes::default());
            let options = BenchOptions { prompt, gen, depth, threads, batch: batch_size, repetitions, kv_types };
            let md = matches!(output, BenchFormat::Md);
            let offload = gpu.offload(batch_size, context.max(1), largest)?;
            let mut bench = Bench::load(&model, &offload).with_context(|| model.display().to_string())?;
            if offload.asks_for_gpu() || bench.vram_bytes().is_some() {
                eprintln!("gemma: {}", bench.placement());
            }
            if md {
                println!("{}", bench::table_header(show_types));
            }
            let label = bench.label.clone();
            let report = bench.run(&options, &mut |r| {
                if md {
                    println!("{}", bench::table_row(&label, r, show_types));
                }
            })?;
            if md {
                let lines: Vec<String> = report.results.iter().filter_map(bench::experts_line).collect();
                if !lines.is_empty() {
                    println!("\n{}", lines.join("\n"));
                }
                if let Some(path) = &mmproj {
                    let timing = bench_image(path, image.as_deref(), image_tokens, options.threads[0], repetitions)?;
                    println!("\n{timing}");
                }
                let rss = report.peak_rss.map_or("unknown".to_string(), gemma::info::human_bytes);
                let vram =
                    report.peak_vram.map(|v| format!(", VRAM {}", gemma::info::human_bytes(v))).unwrap_or_default();
                println!("\nload {:.0} ms, peak RSS {rss}{vram}", report.load_ms);
                Ok(())
            } else {
                let mut json = report.to_llama_bench_json();
                if let Some(path) = &mmproj {
                    let timing = bench_image(path, image.as_deref(), image_tokens, options.threads[0], repetitions)?;
                    // One more entry of llama-bench's array of results.
                    let mut entry = serde_json::to_value(&timing)?;
                    entry["test"] = format!("image{}", timing.n_soft).into();
                    match json.as_array_mut() {
                        Some(results) => results.push(entry),
                        None => json = serde_json::json!([json, entry]),
                    }
                }
                print(&(serde_json::to_string_pretty(&json)? + "\n"))
            }
        }
        Command::Tokenize { model, text, no_bos, no_special, json } => {
            let gguf = GgufFile::open(&model)?;
            let tokenizer = Tokenizer::from_gguf(&gguf.header).with_context(|| model.display().to_string())?;
            let text = match text {
                Some(t) => t,
                None => std::io::read_to_string(std::io::stdin()).context("reading the text from stdin")?,
            };
            let ids = tokenizer.encode(&text, !no_bos, !no_special);
            let out = if json {
                let pieces: Vec<String> =
                    ids.iter().map(|&id| String::from_utf8_lossy(tokenizer.decode(id, true)).into_owned()).collect();
                serde_json::to_string(&serde_json::json!({ "ids": ids, "pieces": pieces }))? + "\n"
            } else {
                ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ") + "\n"
            };
            print(&out)
        }
    }
}

fn run_command(args: RunArgs) -> Result<()> {
    args.model.check()?;
    if args.think && !(args.chat || args.jsonl) {
        return Err(UsageError("--think needs --chat or --jsonl".into()).into());
    }
    set_threads(args.model.threads)?;
    let ModelArgs { model, ctx_size, batch_size, kv, gpu, .. } = args.model;
    let ctx_size = ctx_size.unwrap_or(DEFAULT_CONTEXT);
    let kv_types = kv.types();
    // An image runs whole in one pass: batches (and the GPU's rings) hold one.
    let wants_images = !args.images.is_empty() || args.mmproj.is_some() || (args.jsonl && beside(&model)?.is_some());
    let batch_size = image_batch(batch_size, wants_images, args.image_tokens);
    let offload = gpu.offload(batch_size, ctx_size, kv_types)?;
    if args.jsonl {
        let gguf = GgufFile::open(&model)?;
        let template = chat_template(&gguf);
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        // Messages may hold images: the mmproj given, or the one beside the model, if any.
        let tower = match (&args.mmproj, beside(&model)?) {
            (None, None) => None,
            (mmproj, _) => Some(load_vision(mmproj.as_deref(), &model, args.image_tokens, args.quiet)?),
        };
        let mut generator = load(gguf, !args.quiet && interactive, &offload, args.quiet)
            .with_context(|| model.display().to_string())?;
        let mut images = tower.map(|t| Images::new(t, generator.model.n_embd(), args.image_tokens)).transpose()?;
        let mut session = Session::new(
            &mut generator,
            ctx_size,
            kv_types,
            image_batch(batch_size, images.is_some(), args.image_tokens),
        )?;
        let options = JsonlOptions {
            n_predict: args.n_predict,
            sampling: args.sampling.config(),
            stop: args.stop,
            parse_special: !args.no_special,
            chat: args.chat,
            system: args.system,
            think: args.think,
        };
        let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
        let summary = match jsonl::serve(&mut session, &template, &options, images.as_mut(), &mut input, &mut output) {
            Err(JsonlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        };
        if !args.quiet {
            eprintln!("{} requests answered, {} with an error", summary.requests, summary.errors);
        }
        return Ok(());
    }

    let prompt = match (args.ids, args.prompt, args.file) {
        (Some(TokenIds(ids)), ..) => Prompt::Ids(ids),
        (None, Some(p), _) => Prompt::Text(p),
        (None, None, Some(f)) => {
            Prompt::Text(std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?)
        }
        (None, None, None) => {
            Prompt::Text(std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?)
        }
    };
    let gguf = GgufFile::open(&model)?;
    let prompt = match prompt {
        Prompt::Text(text) if args.chat => {
            Prompt::Text(chat_prompt(&gguf, args.system, text, args.think, &args.images)?)
        }
        prompt => prompt,
    };
    let vision = match args.images.is_empty() {
        true => None,
        false => Some(load_vision(args.mmproj.as_deref(), &model, args.image_tokens, args.quiet)?),
    };
    // Created before the model loads, so that a bad path fails at once.
    let mut logits = (args.logits_out.as_ref())
        .map(|path| {
            PendingFile::create(path)
                .with_context(|| format!("{}: creating a temporary file beside it", path.display()))
        })
        .transpose()?;
    let options = RunOptions {
        prompt,
        n_predict: args.n_predict,
        context: ctx_size,
        batch: image_batch(batch_size, vision.is_some(), args.image_tokens),
        parse_special: !args.no_special,
        sampling: args.sampling.config(),
        stop: args.stop,
        kv_types,
        images: Vec::new(),
    };
    let mut options = options;
    let mut stdout = std::io::stdout().lock();
    let mut sink = std::io::sink();
    let out: &mut dyn Write = if args.json { &mut sink } else { &mut stdout };
    let loaded = load(gguf, !args.quiet && std::io::stdout().is_terminal(), &offload, args.quiet);
    let logits_out = logits.as_mut().map(|f| f as &mut dyn Write);
    let loaded = loaded.and_then(|g| {
        if let Some(tower) = vision {
            let mut images = Images::new(tower, g.model.n_embd(), args.image_tokens)?;
            options.images = encode_images(&mut images, &args.images, args.quiet)?;
        }
        Ok(g)
    });
    let done = match loaded.and_then(|mut g| g.generate(&options, out, logits_out)) {
        // A closed pipe (`gemma run ... | head -c 100`) ends the run quietly; the logits,
        // written before the first token, are complete.
        Err(RunError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => None,
        Err(e @ RunError::Logits(_)) => {
            let path = logits.as_ref().map_or_else(String::new, |f| f.path().display().to_string());
            return Err(anyhow::Error::new(e).context(path));
        }
        r => Some(r.with_context(|| model.display().to_string())?),
    };
    let logits_path = (logits.map(|f| {
        let path = f.path().display().to_string();
        f.finish().with_context(|| path)
    }))
    .transpose()?;
    let Some(done) = done else { return Ok(()) };
    if args.json {
        print(&(serde_json::to_string(&done)? + "\n"))?;
    }
    if !args.quiet {
        let t = &done.timings;
        eprintln!(
            "\nprompt {} tokens, {:.1} t/s; generated {} tokens, {:.1} t/s ({})",
            done.prompt_ids.len(),
            t.prompt_tokens_per_s,
            done.completion_ids.len(),
            t.generation_tokens_per_s,
            done.stop_reason.describe()
        );
        if let Some(path) = logits_path {
            eprintln!("logits of {} prompt positions written to {}", done.prompt_ids.len(), path.display());
        }
    }
    Ok(())
}

fn perplexity_command(args: PerplexityArgs) -> Result<()> {
    use gemma::perplexity::{evaluate, BaseReader, Chunks, Divergence, Nll, Options, PendingBase};
    if args.ctx_size < 4 {
        return Err(UsageError("--ctx-size must be at least 4 for perplexity".into()).into());
    }
    if args.batch_size == 0 || args.chunks == Some(0) {
        return Err(UsageError("--batch-size and --chunks must be at least 1".into()).into());
    }
    set_threads(args.threads)?;
    let gguf = GgufFile::open(&args.model)?;
    // The chunks: from the base file when comparing (its context), else the text's.
    let mut reader = match args.kl_divergence {
        true => Some(BaseReader::open(args.kl_divergence_base.as_ref().expect("clap requires it"))?),
        false => None,
    };
    let n_ctx = reader.as_ref().map_or(args.ctx_size, |r| r.chunks.n_ctx);
    let batch = args.batch_size.min(n_ctx);
    let offload = args.gpu.offload(batch, n_ctx, args.kv.types())?;
    let mut generator = load(gguf, false, &offload, false).with_context(|| args.model.display().to_string())?;
    let n_vocab = generator.model.n_vocab();
    let chunks = match &mut reader {
        Some(r) => r.chunks_for(n_vocab, args.chunks)?,
        None => {
            let path = args.file.as_ref().expect("clap requires -f");
            let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
            let tokens = generator.tokenizer.encode(&text, true, false);
            Chunks::new(tokens, n_ctx, args.chunks).with_context(|| path.display().to_string())?
        }
    };
    let bos = generator.tokenizer.bos().filter(|_| generator.tokenizer.adds_bos());
    let (first, n_scored) = chunks.scored();
    eprintln!(
        "perplexity: {} chunks of {n_ctx} tokens, each scored on its last {n_scored} predictions (from position {first})",
        chunks.n_chunk
    );
    let mut writer = match (&args.kl_divergence_base, args.kl_divergence) {
        (Some(path), false) => Some(PendingBase::create(path, &chunks, n_vocab)?),
        _ => None,
    };
    let options = Options { n_ctx, batch, kv_types: args.kv.types() };
    let (mut nll, mut divergence) = (Nll::default(), Divergence::default());
    let bar = std::io::stderr().is_terminal().then(|| ProgressBar::new(chunks.n_chunk as u64));
    // Ctrl-C stops the pass under way before its next layer; the base file being written (a
    // temporary file) is removed as the error unwinds, so nothing is left half-way.
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupt);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
    let started = std::time::Instant::now();
    let evaluated =
        evaluate(&mut generator.model, &chunks, bos, &options, interrupt.as_ref(), &mut |c, logits, targets| {
            nll.add(logits, targets);
            if let Some(w) = &mut writer {
                w.write(logits)?;
            }
            if let Some(r) = &mut reader {
                let base = r.next_chunk(c)?;
                divergence.add(logits, &base, targets);
            }
            let line = format!("[{}]{:.4}", c + 1, nll.ppl().0);
            match &bar {
                Some(bar) => {
                    bar.set_message(line);
                    bar.inc(1);
                }
                None => eprint!("{line},"),
            }
            Ok(())
        });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    } else {
        eprintln!();
    }
    evaluated?;
    if let Some(w) = writer {
        eprintln!("perplexity: the base log-probabilities are in {}", w.persist()?.display());
    }
    let seconds = started.elapsed().as_secs_f64();
    let (ppl, err) = nll.ppl();
    let report = reader.is_some().then(|| divergence.report());
    let text = match args.output {
        TextFormat::Json => {
            let json = serde_json::json!({
                "ppl": ppl,
                "ppl_error": err,
                "n_ctx": n_ctx,
                "chunks": chunks.n_chunk,
                "scored": nll.count,
                "seconds": seconds,
                "kl_divergence": report,
            });
            serde_json::to_string_pretty(&json)? + "\n"
        }
        TextFormat::Text => match &report {
            Some(r) => r.to_text(),
            None => format!("Final estimate: PPL = {ppl:.4} +/- {err:.5}\n"),
        },
    };
    eprintln!(
        "perplexity: {} tokens scored in {:.1} s ({:.1} tokens/s through the model)",
        nll.count,
        seconds,
        (chunks.n_chunk * n_ctx) as f64 / seconds.max(1e-9)
    );
    print(&text)
}

fn chat_command(args: ChatArgs) -> Result<()> {
    args.model.check()?;
    set_threads(args.model.threads)?;
    let ModelArgs { model, ctx_size, batch_size, kv, gpu, .. } = args.model;
    let ctx_size = ctx_size.unwrap_or(DEFAULT_CONTEXT);
    let kv_types = kv.types();
    // An image runs whole in one pass: batches (and the GPU's rings) hold one.
    let wants_images = args.mmproj.is_some() || beside(&model)?.is_some();
    let batch_size = image_batch(batch_size, wants_images, args.image_tokens);
    let offload = gpu.offload(batch_size, ctx_size, kv_types)?;
    let gguf = GgufFile::open(&model)?;
    let template = ChatTemplate::from_gguf(&gguf.header).with_context(|| model.display().to_string())?;
    let bos_eos = ChatTemplate::bos_eos(&gguf.header).with_context(|| model.display().to_string())?;
    let tower = match (&args.mmproj, beside(&model)?) {
        (None, None) => None,
        (mmproj, _) => Some(load_vision(mmproj.as_deref(), &model, args.image_tokens, args.quiet)?),
    };
    let mut generator = load(gguf, !args.quiet, &offload, args.quiet).with_context(|| model.display().to_string())?;
    let images = tower.map(|t| Images::new(t, generator.model.n_embd(), args.image_tokens)).transpose()?;
    let options = ChatOptions {
        model_name: model.file_name().map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into()),
        system: args.system,
        think: args.think,
        context: ctx_size,
        batch: image_batch(batch_size, images.is_some(), args.image_tokens),
        kv_types,
        n_predict: args.n_predict,
        sampling: args.sampling.config(),
        quiet: args.quiet,
        history: if args.no_history { None } else { repl::default_history_path() },
    };
    Ok(repl::run(&mut generator, template, bos_eos, options, images)?)
}

/// `-c` when not given (per slot, for serve).
const DEFAULT_CONTEXT: usize = 4096;

fn serve_command(args: ServeArgs) -> Result<()> {
    args.model.check()?;
    if args.parallel == Some(0) || args.queue == 0 {
        return Err(UsageError("--parallel and --queue must be at least 1".into()).into());
    }
    set_threads(args.model.threads)?;
    let ModelArgs { model, ctx_size, batch_size, kv, gpu, .. } = args.model;
    let (slots, ctx) = match (args.parallel, ctx_size) {
        (Some(p), Some(c)) => (p, c),
        (Some(p), None) => (p, p * DEFAULT_CONTEXT),
        (None, Some(c)) => (gemma::serve::default_slots(c), c),
        (None, None) => (4, 4 * DEFAULT_CONTEXT),
    };
    if ctx / slots < 2 {
        return Err(UsageError(format!("-c {ctx} split across {slots} slots leaves less than 2 positions each")).into());
    }
    let kv_types = kv.types();
    // Images in messages: the mmproj given, or the one beside the model, if any.
    let tower = match (&args.mmproj, beside(&model)?) {
        (None, None) => None,
        (mmproj, _) => Some(load_vision(mmproj.as_deref(), &model, args.image_tokens, args.quiet)?),
    };
    // An image runs whole in one pass, beside the other slots' decode tokens.
    let batch_size = match tower {
        Some(_) => batch_size.max(args.image_tokens + slots),
        None => batch_size,
    };
    let engine = gemma::serve::engine_options(ctx, slots, batch_size, kv_types);
    let offload = gpu.offload(batch_size, engine.slot_context, kv_types)?;
    let gguf = GgufFile::open(&model)?;
    let tokenizer = Tokenizer::from_gguf(&gguf.header).with_context(|| model.display().to_string())?;
    let vision = match tower {
        None => None,
        Some(tower) => {
            let arch = gguf.header.architecture().unwrap_or("gemma4").to_string();
            let n_embd = gguf.header.get_u64(&format!("{arch}.embedding_length"))? as usize;
            let images = Images::new(tower, n_embd, args.image_tokens)?;
            let tokens = ImageTokens::find(&tokenizer)?;
            Some(gemma::serve::Vision { images: std::sync::Mutex::new(images), tokens })
        }
    };
    let n_vocab = tokenizer.n_tokens();
    let template = chat_template(&gguf);
    let model_name = args.alias.unwrap_or_else(|| {
        model.file_stem().map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into())
    });
    let options = gemma::serve::ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        engine,
        sampling: args.sampling.config(),
        n_predict: args.n_predict,
        think: args.think,
        queue: args.queue,
        max_body: args.max_body_mib << 20,
        model_name,
        quiet: args.quiet,
    };
    let quiet = args.quiet;
    let path = model.display().to_string();
    let load_model = move || load(gguf, false, &offload, quiet).map_err(|e| format!("{path}: {e}"));
    Ok(gemma::serve::serve(options, tokenizer, n_vocab, template, vision, load_model)?)
}

/// Loads the model, with a spinner on stderr while it loads when `progress` and stderr is a
/// terminal; where it runs is said on stderr when a GPU was asked for (unless `quiet`).
fn load(gguf: GgufFile, progress: bool, offload: &Offload, quiet: bool) -> Result<Generator, RunError> {
    let spinner = (progress && std::io::stderr().is_terminal()).then(|| {
        let spinner = ProgressBar::new_spinner().with_message("loading the model");
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        spinner
    });
    let generator = Generator::load_with(gguf, offload);
    if let Some(spinner) = spinner {
        spinner.finish_and_clear();
    }
    if let Ok(g) = &generator {
        if (offload.asks_for_gpu() || g.model.vram_bytes().is_some()) && !quiet {
            eprintln!("gemma: {}", g.model.placement());
        }
    }
    generator
}

/// The vision encoder for `--image`: `mmproj`, or the one mmproj*.gguf beside `model` (said on
/// stderr).
fn load_vision(
    mmproj: Option<&std::path::Path>,
    model: &std::path::Path,
    budget: usize,
    quiet: bool,
) -> Result<VisionTower> {
    if !gemma::vision::BUDGETS.contains(&budget) {
        return Err(VisionError::Budget(budget).into());
    }
    let path = match mmproj {
        Some(p) => p.to_path_buf(),
        None => match beside(model)? {
            Some(p) => {
                if !quiet {
                    eprintln!("gemma: using the vision encoder {} (beside the model)", p.display());
                }
                p
            }
            None => {
                let dir = model.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                return Err(UsageError(format!("images need --mmproj (no mmproj*.gguf in {})", dir.display())).into());
            }
        },
    };
    let gguf = GgufFile::open(&path).with_context(|| path.display().to_string())?;
    VisionTower::load(gguf).with_context(|| path.display().to_string())
}

/// The prompt batch: `-b`, raised where images are taken to hold one image and the token before
/// it (an image's soft tokens run in one pass, and the sliding layers' rings hold one batch).
fn image_batch(batch: usize, images: bool, budget: usize) -> usize {
    if images {
        batch.max(budget + 1)
    } else {
        batch
    }
}

/// The one `mmproj*.gguf` in the model's folder; an error when there are several.
fn beside(model: &std::path::Path) -> Result<Option<PathBuf>> {
    let dir = model.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("mmproj") && name.ends_with(".gguf")
        })
        .collect();
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(UsageError(format!("several mmproj*.gguf in {}; name one with --mmproj", dir.display())).into()),
    }
}

/// Each image file decoded, resized to its budget and encoded, with a line on stderr each.
fn encode_images(
    images: &mut Images,
    paths: &[PathBuf],
    quiet: bool,
) -> Result<Vec<std::sync::Arc<PromptImage>>, RunError> {
    paths
        .iter()
        .map(|path| {
            let start = std::time::Instant::now();
            let bytes = std::fs::read(path)
                .map_err(|e| VisionError::Image { file: path.display().to_string(), problem: e.to_string() })?;
            let image = images.encode(&path.display().to_string(), &bytes)?;
            if !quiet {
                eprintln!(
                    "gemma: {}: {}x{} -> {}x{}, {} soft tokens, encoded in {:.0} ms",
                    path.display(),
                    image.size.0,
                    image.size.1,
                    image.resized.0,
                    image.resized.1,
                    image.n_soft,
                    start.elapsed().as_secs_f64() * 1e3
                );
            }
            Ok(image)
        })
        .collect()
}

/// How long the vision encoder takes on one image (`gemma bench --mmproj`).
#[derive(serde::Serialize)]
struct ImageTiming {
    mmproj: String,
    image: String,
    width: usize,
    height: usize,
    n_patches: usize,
    n_soft: usize,
    n_threads: usize,
    samples_ms: Vec<f64>,
    avg_ms: f64,
    stddev_ms: f64,
}

impl std::fmt::Display for ImageTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "image encode: {:.1} ± {:.1} ms/image ({}: {}x{} px, {} patches -> {} soft tokens, {} threads)",
            self.avg_ms,
            self.stddev_ms,
            self.image,
            self.width,
            self.height,
            self.n_patches,
            self.n_soft,
            self.n_threads
        )
    }
}

/// Times `repetitions` encodes of `image` (or a generated gradient) with the mmproj at `path`,
/// after one warm-up, on `threads` threads.
fn bench_image(
    path: &std::path::Path,
    image: Option<&std::path::Path>,
    budget: usize,
    threads: usize,
    repetitions: usize,
) -> Result<ImageTiming> {
    if !gemma::vision::BUDGETS.contains(&budget) {
        return Err(VisionError::Budget(budget).into());
    }
    let vision = VisionTower::load(GgufFile::open(path)?).with_context(|| path.display().to_string())?;
    let (name, img) = match image {
        Some(p) => (p.display().to_string(), gemma::vision::image::load(p)?),
        None => {
            let img = image::RgbImage::from_fn(640, 640, |x, y| {
                image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
            });
            ("a 640x640 gradient".to_string(), img)
        }
    };
    let s = vision.shape;
    let pixels = gemma::vision::image::preprocess(&img, s.patch_size, s.pool, budget);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build()?;
    let mut samples = Vec::new();
    for i in 0..=repetitions.max(1) {
        let start = std::time::Instant::now();
        pool.install(|| vision.encode(&pixels))?;
        if i > 0 {
            samples.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (avg_ms, stddev_ms) = bench::mean_stddev(&samples);
    Ok(ImageTiming {
        mmproj: path.display().to_string(),
        image: name,
        width: pixels.width,
        height: pixels.height,
        n_patches: (pixels.width / s.patch_size) * (pixels.height / s.patch_size),
        n_soft: pixels.n_soft(s.pool),
        n_threads: threads,
        samples_ms: samples,
        avg_ms,
        stddev_ms,
    })
}

/// The model's chat template for `--jsonl` requests, or why it has none.
fn chat_template(gguf: &GgufFile) -> jsonl::Template {
    let template = ChatTemplate::from_gguf(&gguf.header).map_err(|e| e.to_string())?;
    let (bos, eos) = ChatTemplate::bos_eos(&gguf.header).map_err(|e| e.to_string())?;
    Ok((template, bos, eos))
}

/// `text` as one user turn (after an optional system message) in the model's chat template,
/// ending with the model's turn opened.
fn chat_prompt(
    gguf: &GgufFile,
    system: Option<String>,
    text: String,
    think: bool,
    images: &[PathBuf],
) -> Result<String> {
    let template = ChatTemplate::from_gguf(&gguf.header)?;
    let (bos_token, eos_token) = ChatTemplate::bos_eos(&gguf.header)?;
    // The images go before the text of the user turn, as ollama and llama.cpp put them.
    let user = match images.is_empty() {
        true => Message::user(text),
        false => Message::user(Content::Parts(
            (images.iter().map(|p| Part::Image { path: p.display().to_string() }))
                .chain([Part::Text { text }])
                .collect(),
        )),
    };
    let messages: Vec<Message> = system.map(Message::system).into_iter().chain([user]).collect();
    let options =
        RenderOptions { add_generation_prompt: true, enable_thinking: think, tools: None, bos_token, eos_token };
    Ok(template.render(&messages, &options)?)
}

/// Sizes rayon's global pool, which runs every kernel: `threads`, or the physical cores.
fn set_threads(threads: Option<usize>) -> Result<()> {
    let n = threads.unwrap_or_else(num_cpus::get_physical).max(1);
    rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")
}

/// Write to stdout; a closed pipe (`gemma info f.gguf | head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
