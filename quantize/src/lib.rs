//! `quantize`: a Hugging Face Gemma checkpoint (safetensors) to a GGUF file, in one step and with
//! bounded memory, producing what llama.cpp's `convert_hf_to_gguf.py` followed by
//! `llama-quantize` would.
//!
//! - [`checkpoint`]: the folder (`config.json`, shards, index); [`safetensors`]: one file.
//! - [`gemma4`], [`gemma3`]: metadata, tensor names and transforms per architecture.
//! - [`vocab`]: the tokenizer as llama.cpp's converter writes it.
//! - [`gguf_in`]: a GGUF input, requantized as llama-quantize does it.
//! - [`ftype`]: output types and llama.cpp's per-tensor choices; [`plan`]: the tensor plan.
//! - [`convert`]: streams the tensors through the quantizers into [`gguf_out`]'s writer.

pub mod checkpoint;
pub mod convert;
pub mod ftype;
pub mod gemma3;
pub mod gemma4;
pub mod gguf_in;
pub mod gguf_out;
pub mod meta;
pub mod mmproj;
pub mod plan;
pub mod safetensors;
pub mod spm;
pub mod vocab;

use std::path::{Path, PathBuf};

use thiserror::Error;

use checkpoint::{CheckpointError, Config, TensorRef, Weights};
use ftype::FileType;
use plan::{Plan, Source};
use safetensors::Dtype;

#[derive(Debug, Error)]
pub enum ConvertError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Gguf(#[from] ggml::gguf::GgufError),
    #[error("{config}: unknown architecture {arch:?} (quantize converts {})", SUPPORTED.join(", "))]
    UnknownArchitecture { config: PathBuf, arch: String },
    #[error("{file}: tensor {name:?} has no GGUF name in this architecture")]
    UnknownTensor { name: String, file: PathBuf },
    #[error("missing tensor: the checkpoint has nothing for {0}")]
    MissingTensor(String),
    #[error("{file}: tensor {name:?} is {dtype}; quantize reads F32, F16 and BF16 tensors")]
    Dtype { file: PathBuf, name: String, dtype: String },
    #[error("{0}")]
    Plan(String),
    #[error("interrupted")]
    Interrupted,
}

/// The Hugging Face architectures quantize converts.
pub const SUPPORTED: [&str; 4] =
    ["Gemma4ForConditionalGeneration", "Gemma4ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"];

/// Where the tensors come from.
pub enum Input {
    Checkpoint(Weights),
    Gguf(gguf_in::GgufInput),
}

/// An opened input and the plan for converting it to `ftype`.
pub struct Job {
    pub input: Input,
    pub plan: Plan,
    /// The Hugging Face architecture, or the GGUF's `general.architecture`.
    pub architecture: String,
}

/// Reads `dir`'s config, tokenizer and safetensors headers (or a GGUF's header) and plans the
/// conversion.
pub fn prepare(dir: &Path, ftype: FileType) -> Result<Job, ConvertError> {
    if dir.is_file() {
        if !gguf_in::is_gguf(dir) {
            let what = "is neither a GGUF file nor a Hugging Face checkpoint folder";
            return Err(CheckpointError::Config { path: dir.to_path_buf(), what: what.into() }.into());
        }
        let input = gguf_in::GgufInput::open(dir)?;
        let conversion = gguf_in::convert(&input.file)?;
        let architecture = input.file.header.architecture().unwrap_or("?").to_string();
        let plan = Plan::new(conversion, ftype).map_err(ConvertError::Plan)?;
        return Ok(Job { input: Input::Gguf(input), plan, architecture });
    }
    if !dir.is_dir() {
        return Err(CheckpointError::Io {
            path: dir.to_path_buf(),
            err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        }
        .into());
    }
    let config = Config::read(dir)?;
    let architecture = config.architecture()?;
    let weights = Weights::open(dir)?;
    let conversion = match architecture.as_str() {
        "Gemma4ForConditionalGeneration" | "Gemma4ForCausalLM" => gemma4::convert(dir, &config, &weights)?,
        "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => gemma3::convert(dir, &config, &weights)?,
        _ => return Err(ConvertError::UnknownArchitecture { config: config.path.clone(), arch: architecture }),
    };
    let plan = Plan::new(conversion, ftype).map_err(ConvertError::Plan)?;
    Ok(Job { input: Input::Checkpoint(weights), plan, architecture })
}

/// Reads the checkpoint in `dir` and plans its vision tower's mmproj of `ftype` (one of
/// [`mmproj::TYPES`]), as llama.cpp's converter writes it with `--mmproj`.
pub fn prepare_mmproj(dir: &Path, ftype: FileType) -> Result<Job, ConvertError> {
    let config = Config::read(dir)?;
    let architecture = config.architecture()?;
    if architecture != "Gemma4ForConditionalGeneration" {
        return Err(ConvertError::Plan(format!(
            "{}: {architecture} has no vision tower quantize can write (Gemma4ForConditionalGeneration has)",
            config.path.display()
        )));
    }
    let weights = Weights::open(dir)?;
    let conversion = mmproj::convert(gemma4::model_name(dir), &config, &weights, ftype)?;
    let plan = Plan::as_converted(conversion, ftype).map_err(ConvertError::Plan)?;
    Ok(Job { input: Input::Checkpoint(weights), plan, architecture })
}

/// The converter's generic renames (`ModelBase.filter_tensors`): a multimodal checkpoint's text
/// model sits under `language_model.`.
pub(crate) fn hf_tensor_name(name: &str) -> String {
    let name = name.replace("e_score_correction_bias", "e_score_correction.bias");
    name.replace("language_model.", "")
}

/// The converter's `TextModel.filter_tensors`: tensors of vision and audio towers and
/// projectors, which a text model's GGUF leaves out.
pub(crate) fn skip_multimodal(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    const PARTS: [&str; 17] = [
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "patch_merge_mlp.",
        "model.connector.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || PARTS.iter().any(|p| name.contains(p))
}

/// A checkpoint tensor as a [`Source`], refusing element types quantize cannot read.
pub(crate) fn checkpoint_source(
    weights: &Weights,
    r: TensorRef,
    rows: u64,
    shift: f32,
) -> Result<Source, ConvertError> {
    let entry = weights.entry(r);
    match &entry.dtype {
        Dtype::F32 | Dtype::F16 | Dtype::BF16 => {}
        Dtype::Other(d) => {
            return Err(ConvertError::Dtype {
                file: weights.path(r).to_path_buf(),
                name: entry.name.clone(),
                dtype: d.clone(),
            })
        }
    }
    Ok(Source::Checkpoint { tensor: r, dtype: entry.dtype.clone(), rows, shift })
}

/// Human-readable bytes: `1.23 GB`, `456 MB`, `12 KB`.
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} KB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
