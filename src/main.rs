//! The `gemma` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use gemma::info::ModelInfo;
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
