//! The `gemma` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gemma::bench::{self, Bench, BenchOptions};
use gemma::chat::{ChatTemplate, Message, RenderOptions};
use gemma::info::ModelInfo;
use gemma::kv_cache::KvType;
use gemma::run::{self, RunError, RunOptions, StopReason};
use gemma::sample::SamplerConfig;
use gemma::tokenizer::Tokenizer;
use ggml::gguf::GgufFile;

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
    },
    /// Generate text from a prompt (-p, -f, or stdin); the completion alone goes to stdout
    Run {
        /// The GGUF model
        #[arg(short = 'm', long = "model")]
        model: PathBuf,
        /// The prompt text
        #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
        prompt: Option<String>,
        /// Read the prompt from a file
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Tokens to generate at most
        #[arg(short = 'n', long = "n-predict", default_value_t = 128)]
        n_predict: usize,
        /// Context length (prompt + completion)
        #[arg(short = 'c', long = "ctx-size", default_value_t = 4096)]
        ctx_size: usize,
        /// Prompt tokens per forward batch
        #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
        batch_size: usize,
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
        /// Treat special-token text in the prompt as plain text
        #[arg(long)]
        no_special: bool,
        /// Wrap the prompt in the model's chat template as one user turn
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user turn
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// With --chat: let a Gemma 4 model think before it answers
        #[arg(long, requires = "chat")]
        think: bool,
        /// Stop generating where this text appears (not printed); may be repeated
        #[arg(long = "stop", value_name = "TEXT")]
        stop: Vec<String>,
        /// Threads for the matrix products (default: the physical cores)
        #[arg(short = 't', long = "threads")]
        threads: Option<usize>,
        /// Element type of the KV cache
        #[arg(long = "kv-type", value_enum, default_value_t = KvType::F16)]
        kv_type: KvType,
        /// Print one JSON object (text, prompt_ids, completion_ids, stop_reason, timings)
        /// instead of streaming the text
        #[arg(long)]
        json: bool,
        /// No speed line on stderr
        #[arg(short = 'q', long)]
        quiet: bool,
    },
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
    },
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchFormat {
    /// A markdown table, as llama-bench prints
    Md,
    /// One JSON object with every sample
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { file, ctx_size, tensors, json } => {
            let gguf = GgufFile::open(&file)?;
            let info = ModelInfo::new(&gguf, ctx_size, tensors);
            let text = if json { serde_json::to_string_pretty(&info)? + "\n" } else { info.to_text() };
            print(&text)
        }
        Command::Run {
            model,
            prompt,
            file,
            n_predict,
            ctx_size,
            batch_size,
            temp,
            top_k,
            top_p,
            min_p,
            repeat_penalty,
            repeat_last_n,
            presence_penalty,
            frequency_penalty,
            seed,
            no_special,
            chat,
            system,
            think,
            stop,
            threads,
            kv_type,
            json,
            quiet,
        } => {
            set_threads(threads)?;
            let prompt = match (prompt, file) {
                (Some(p), _) => p,
                (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?,
            };
            let gguf = GgufFile::open(&model)?;
            let prompt = if chat { chat_prompt(&gguf, system, prompt, think)? } else { prompt };
            let sampling = SamplerConfig {
                temperature: temp,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
                repeat_last_n,
                presence_penalty,
                frequency_penalty,
                seed,
            };
            let options = RunOptions {
                prompt,
                n_predict,
                context: ctx_size,
                batch: batch_size,
                parse_special: !no_special,
                sampling,
                stop,
                kv_type,
            };
            let mut stdout = std::io::stdout().lock();
            let mut sink = std::io::sink();
            let out: &mut dyn Write = if json { &mut sink } else { &mut stdout };
            let done = match run::run(gguf, &options, out) {
                // A closed pipe (`gemma run ... | head -c 100`) ends the run quietly.
                Err(RunError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.with_context(|| model.display().to_string())?,
            };
            if json {
                print(&(serde_json::to_string(&done)? + "\n"))?;
            }
            if !quiet {
                let t = &done.timings;
                eprintln!(
                    "\nprompt {} tokens, {:.1} t/s; generated {} tokens, {:.1} t/s ({})",
                    done.prompt_ids.len(),
                    t.prompt_tokens_per_s,
                    done.completion_ids.len(),
                    t.generation_tokens_per_s,
                    match done.stop_reason {
                        StopReason::Eog => "end of generation",
                        StopReason::Length => "length limit",
                        StopReason::StopString => "stop string",
                    }
                );
            }
            Ok(())
        }
        Command::Bench { model, prompt, gen, depth, threads, batch_size, repetitions, output } => {
            let threads = if threads.is_empty() { vec![num_cpus::get_physical()] } else { threads };
            let options = BenchOptions { prompt, gen, depth, threads, batch: batch_size, repetitions };
            let md = matches!(output, BenchFormat::Md);
            let mut bench = Bench::load(&model).with_context(|| model.display().to_string())?;
            if md {
                println!("{}", bench::table_header());
            }
            let label = bench.label.clone();
            let report = bench.run(&options, &mut |r| {
                if md {
                    println!("{}", bench::table_row(&label, r));
                }
            })?;
            if md {
                let rss = report.peak_rss.map_or("unknown".to_string(), gemma::info::human_bytes);
                println!("\nload {:.0} ms, peak RSS {rss}", report.load_ms);
                Ok(())
            } else {
                print(&(serde_json::to_string_pretty(&report)? + "\n"))
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

/// `text` as one user turn (after an optional system message) in the model's chat template,
/// ending with the model's turn opened.
fn chat_prompt(gguf: &GgufFile, system: Option<String>, text: String, think: bool) -> Result<String> {
    let template = ChatTemplate::from_gguf(&gguf.header)?;
    let (bos_token, eos_token) = ChatTemplate::bos_eos(&gguf.header)?;
    let messages: Vec<Message> = system.map(Message::system).into_iter().chain([Message::user(text)]).collect();
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
