//! The `gemma` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gemma::info::ModelInfo;
use gemma::run::{self, RunError, RunOptions};
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
        } => {
            let prompt = match (prompt, file) {
                (Some(p), _) => p,
                (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?,
            };
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
            };
            let gguf = GgufFile::open(&model)?;
            let mut stdout = std::io::stdout().lock();
            let stats = match run::run(gguf, &options, &mut stdout) {
                // A closed pipe (`gemma run ... | head -c 100`) ends the run quietly.
                Err(RunError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r.with_context(|| model.display().to_string())?,
            };
            let per_s = |n: usize, t: std::time::Duration| n as f64 / t.as_secs_f64().max(1e-9);
            eprintln!(
                "\nprompt {} tokens, {:.1} t/s; generated {} tokens, {:.1} t/s{}",
                stats.prompt_tokens,
                per_s(stats.prompt_tokens, stats.prompt_time),
                stats.completion_tokens,
                per_s(stats.completion_tokens, stats.generation_time),
                if stats.stopped_by_eog { " (end of generation)" } else { "" }
            );
            Ok(())
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

/// Write to stdout; a closed pipe (`gemma info f.gguf | head`) is not an error.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}
