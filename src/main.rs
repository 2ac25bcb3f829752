//! The `gemma` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gemma::info::ModelInfo;
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
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                // A closed pipe (`gemma info f.gguf | head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("writing to stdout"),
            }
        }
    }
}
