//! `quantize IN OUT TYPE`: a Hugging Face Gemma checkpoint folder to a GGUF file.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use quantize::convert::{self, Event};
use quantize::ftype::FileType;
use quantize::plan::Plan;
use quantize::{human_bytes, ConvertError};

#[derive(Parser)]
#[command(name = "quantize", version, about = "Convert a Gemma checkpoint (Hugging Face safetensors) to a GGUF file")]
struct Cli {
    /// A Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json), or a GGUF
    /// file to requantize
    input: PathBuf,
    /// The GGUF file to write
    output: PathBuf,
    /// Output type: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L,
    /// Q4_K_S, Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, MXFP4_MOE
    #[arg(value_name = "TYPE")]
    ty: String,
    /// Threads converting tensors (default: all cores)
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Print the tensor plan and the output size; write nothing
    #[arg(long)]
    dry_run: bool,
    /// Overwrite OUT (and the --mmproj file) if it exists
    #[arg(short = 'f', long)]
    force: bool,
    /// Also write the checkpoint's vision tower to this mmproj GGUF, as llama.cpp's converter
    /// does with --mmproj (Gemma 4 checkpoints with a vision tower)
    #[arg(long, value_name = "FILE")]
    mmproj: Option<PathBuf>,
    /// The mmproj's type: F32, F16, BF16 or Q8_0 (default: TYPE when it is one of them, else F16)
    #[arg(long = "mmproj-type", value_name = "TYPE", requires = "mmproj")]
    mmproj_type: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if matches!(e.downcast_ref::<ConvertError>(), Some(ConvertError::Interrupted)) => {
            eprintln!("quantize: interrupted; {} was not written", cli.output.display());
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let Some(ftype) = FileType::parse(&cli.ty) else {
        let names: Vec<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
        bail!("unknown type {:?} (one of {})", cli.ty, names.join(", "));
    };
    for out in std::iter::once(&cli.output).chain(&cli.mmproj) {
        if !cli.dry_run && !cli.force && out.exists() {
            bail!("{} exists (use --force to overwrite it)", out.display());
        }
    }
    // The mmproj is planned first, so that a checkpoint without a vision tower fails before
    // anything is written.
    let mmproj = match &cli.mmproj {
        None => None,
        Some(path) => {
            let ty = match &cli.mmproj_type {
                Some(name) => FileType::parse(name).with_context(|| format!("--mmproj-type: unknown type {name:?}"))?,
                None if quantize::mmproj::TYPES.contains(&ftype) => ftype,
                None => FileType::F16,
            };
            Some((path, quantize::prepare_mmproj(&cli.input, ty)?))
        }
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n.max(1));
    }
    let pool = pool.build().context("starting the threads")?;
    let job = quantize::prepare(&cli.input, ftype)?;
    write(cli, &job, &cli.output, &pool, &cancel)?;
    if let Some((path, job)) = mmproj {
        write(cli, &job, path, &pool, &cancel)?;
    }
    Ok(())
}

/// Plans are printed (`--dry-run`) or written to `output`.
fn write(
    cli: &Cli,
    job: &quantize::Job,
    output: &std::path::Path,
    pool: &rayon::ThreadPool,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    let ftype = job.plan.ftype;
    let plan = &job.plan;
    let (n_in, n_out) = (plan.input_bytes(), plan.output_size());
    eprintln!(
        "quantize: {} ({}) -> {}: {} tensors, {} in, {} out",
        cli.input.display(),
        job.architecture,
        ftype.name(),
        plan.tensors.len(),
        human_bytes(n_in),
        human_bytes(n_out)
    );
    if !plan.skipped.is_empty() {
        eprintln!(
            "quantize: left out {} vision/audio tensors (the text model only; llama.cpp puts them in a separate mmproj file)",
            plan.skipped.len()
        );
    }
    if plan.n_fallback > 0 {
        eprintln!(
            "quantize: {} tensor(s) whose rows are not whole blocks of their mix's type got a fallback type",
            plan.n_fallback
        );
    }
    if cli.dry_run {
        match print_plan(plan) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
            _ => return Ok(()),
        }
    }

    let n_tensors = plan.tensors.len();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(n_in);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}")
                .expect("valid template"),
        );
        bar
    });
    let mut report = |e: Event| match e {
        Event::Tensor { index, tensor } => {
            let line = format!(
                "[{:>4}/{n_tensors}] {:<36} {:<20} {:>5} -> {}",
                index + 1,
                tensor.name,
                dims(&tensor.dims),
                tensor.source_type(),
                tensor.ty
            );
            match &bar {
                Some(bar) => bar.set_message(tensor.name.clone()),
                None => eprintln!("{line}"),
            }
        }
        Event::Progress { bytes } => {
            if let Some(bar) = &bar {
                bar.inc(bytes)
            }
        }
    };
    let result = pool.install(|| convert::write(plan, &job.input, output, cancel, &mut report));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    result?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "quantize: wrote {} ({}) in {secs:.1} s, {}/s of input",
        output.display(),
        human_bytes(n_out),
        human_bytes((n_in as f64 / secs) as u64)
    );
    Ok(())
}

fn dims(d: &[u64]) -> String {
    format!("{{{}}}", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

/// The plan on stdout: one line per tensor, then the total.
fn print_plan(plan: &Plan) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for t in &plan.tensors {
        writeln!(
            out,
            "{:<40} {:<22} {:>5} -> {:<6} {:>12}  {}",
            t.name,
            dims(&t.dims),
            t.source_type(),
            t.ty.name(),
            t.out_bytes(),
            t.source_name
        )?;
    }
    let size = plan.output_size();
    writeln!(out, "output: {} tensors, {size} bytes ({})", plan.tensors.len(), human_bytes(size))
}
