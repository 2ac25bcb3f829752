//! `quantize`: convert a Gemma safetensors checkpoint or a GGUF file to a quantized GGUF.
//!
//! The conversion itself is the subject of its own issue; this binary already takes the
//! command line it will have and checks it, so scripts can be written against it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ggml::GgmlType;

#[derive(Parser)]
#[command(name = "quantize", version, about = "Convert a Gemma checkpoint or GGUF file to a quantized GGUF")]
struct Cli {
    /// A Hugging Face checkpoint directory (config.json + *.safetensors) or a GGUF file
    input: PathBuf,
    /// The GGUF file to write
    output: PathBuf,
    /// Target type: a ggml tensor type such as Q8_0, Q4_K, or a mix such as Q4_K_M
    #[arg(value_name = "TYPE")]
    ty: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let known = GgmlType::ALL.iter().any(|t| t.name().eq_ignore_ascii_case(&cli.ty));
    let mix = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q3_K_M", "Q3_K_S", "Q3_K_L", "Q2_K_S"];
    if !known && !mix.iter().any(|m| m.eq_ignore_ascii_case(&cli.ty)) {
        eprintln!("error: unknown quantization type {:?}", cli.ty);
        return ExitCode::from(2);
    }
    eprintln!(
        "error: converting {} to {} is not implemented yet in this version of quantize",
        cli.input.display(),
        cli.output.display()
    );
    ExitCode::FAILURE
}
