//! Model forward passes over the weights of a memory-mapped GGUF file: [`gemma4`] (26B-A4B
//! and the dense 31B) and [`gemma3`], behind one [`Model`] chosen by `general.architecture`.
//!
//! What every architecture shares lives here: reading hyperparameters (an error names the
//! missing key), finding tensors and checking their shapes (an error names the tensor), and
//! the quantized matrix product that projections go through (weights stay quantized in the
//! map; activations are quantized once per weight dot type and reused by every projection of
//! the same input that shares it), and stopping a pass between layers ([`Cancel`]).

pub mod decoder;
pub mod fit;
pub mod gemma3;
pub mod gemma4;
#[cfg(feature = "vulkan")]
pub mod gpu;
pub mod offload;

pub use decoder::{Decoder, ImageRows, Seq};
pub use gemma3::Gemma3;
pub use gemma4::Gemma4;

use std::sync::atomic::{AtomicBool, Ordering};

use ggml::gguf::{GgufFile, GgufHeader, MetadataError, Value};
use ggml::kernels::matmul::{matmul, QuantizedActs};
use ggml::kernels::moe::Experts;
use ggml::kernels::{dot_type, Isa};
use ggml::quants::{dequantize_row, QuantError};
use ggml::GgmlType;

use crate::kv_cache::KvCache;
pub use offload::Offload;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("general.architecture is {found:?}, expected {expected:?}")]
    Architecture { expected: &'static str, found: String },
    #[error("cannot find tensor {name} in the GGUF file")]
    MissingTensor { name: String },
    #[error("tensor {name} has dims {found:?}, expected {expected:?}")]
    Shape { name: String, expected: Vec<u64>, found: Vec<u64> },
    #[error("tensor {name}: {source}")]
    Quant { name: String, source: QuantError },
    #[error("metadata {key}: {problem}")]
    BadMetadata { key: String, problem: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Which positions of a batch need logits: every one (scoring, tests) or only the last (the
/// one generation samples from; skips the output head for the rest of a prompt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    Last,
}

/// A request to stop a forward pass (Ctrl-C in the chat), checked before every layer: on the
/// full 26B-A4B one prompt batch takes most of a minute on a small CPU, one layer a few seconds.
pub trait Cancel {
    fn is_cancelled(&self) -> bool;
}

/// The flag a signal handler sets: one relaxed load per check.
impl Cancel for AtomicBool {
    fn is_cancelled(&self) -> bool {
        self.load(Ordering::Relaxed)
    }
}

/// Never cancels: the uncancellable `forward`s.
pub(crate) struct Never;

impl Cancel for Never {
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A forward pass stopped by its [`Cancel`] before its last layer. The layers that had run
/// appended the batch's keys and values; they are dropped again, so the cache holds what it
/// held before the pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the forward pass was cancelled")]
pub struct Cancelled {
    /// Positions the cache holds now: the batch's first position, as before the pass. (A
    /// sliding ring is sized to hold every key the batch's first token sees beside the whole
    /// batch, so it can always rewind one batch; were it not, [`KvCache::truncate`] would clear
    /// the cache and this would be 0.)
    pub kept: usize,
}

/// Why a forward pass returned no logits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    /// Its [`Cancel`] fired; the cache is as it was before the pass.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// The GPU failed mid-pass (lost, hung): what it said. Its layers' caches are not usable
    /// any more, so a session ends here.
    #[error("the GPU failed during a forward pass: {0}")]
    Device(String),
}

impl Cancelled {
    /// Rewinds `cache`, which some layers have extended past `pos` by a partial pass, to `pos`.
    pub(crate) fn rewind(cache: &mut KvCache, pos: usize) -> Cancelled {
        Cancelled { kept: cache.truncate(pos) }
    }
}

/// Fires at check number `n + 1`: stops a pass at a chosen layer in tests.
#[cfg(test)]
pub(crate) struct CancelAfter {
    checks_left: std::cell::Cell<usize>,
}

#[cfg(test)]
impl CancelAfter {
    pub fn new(n: usize) -> CancelAfter {
        CancelAfter { checks_left: std::cell::Cell::new(n) }
    }
}

#[cfg(test)]
impl Cancel for CancelAfter {
    fn is_cancelled(&self) -> bool {
        let left = self.checks_left.get();
        self.checks_left.set(left.saturating_sub(1));
        left == 0
    }
}

/// A loaded model of any supported architecture.
pub enum Model {
    Gemma3(Gemma3),
    Gemma4(Gemma4),
}

impl Model {
    /// The model `general.architecture` names, on the CPU; other architectures are an error that
    /// names them.
    pub fn load(gguf: GgufFile) -> Result<Model, ModelError> {
        Model::load_with(gguf, &Offload::default())
    }

    /// [`load`](Self::load), with the layers `offload` asks for on a GPU (see [`Offload`]: no
    /// GPU means the CPU and a note, never an error).
    pub fn load_with(gguf: GgufFile, offload: &Offload) -> Result<Model, ModelError> {
        match gguf.header.get_str("general.architecture")? {
            "gemma3" => Ok(Model::Gemma3(Gemma3::load_with(gguf, offload)?)),
            "gemma4" => Ok(Model::Gemma4(Gemma4::load_with(gguf, offload)?)),
            other => {
                Err(ModelError::Unsupported(format!("architecture {other:?} is not supported (gemma4 and gemma3 are)")))
            }
        }
    }

    /// The context length the model was trained for.
    pub fn context_length(&self) -> usize {
        match self {
            Model::Gemma3(m) => m.hparams.context_length,
            Model::Gemma4(m) => m.hparams.context_length,
        }
    }
}

/// Everything else (`forward`, `new_cache*`, `placement`, ...) is the shared [`Decoder`]'s.
impl std::ops::Deref for Model {
    type Target = Decoder;
    fn deref(&self) -> &Decoder {
        match self {
            Model::Gemma3(m) => m,
            Model::Gemma4(m) => m,
        }
    }
}

impl std::ops::DerefMut for Model {
    fn deref_mut(&mut self) -> &mut Decoder {
        match self {
            Model::Gemma3(m) => m,
            Model::Gemma4(m) => m,
        }
    }
}

/// The `{arch}.*` keys of a GGUF header.
pub(crate) struct Metadata<'a> {
    pub header: &'a GgufHeader,
    pub arch: &'static str,
}

impl Metadata<'_> {
    pub fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.arch)
    }

    pub fn usize(&self, key: &str) -> Result<usize, MetadataError> {
        Ok(self.header.get_u64(&self.key(key))? as usize)
    }

    /// A number given once for every layer, or an array of one per layer (`[n_layer]`).
    pub fn per_layer(&self, key: &str, n_layer: usize) -> Result<Vec<usize>, ModelError> {
        let full = self.key(key);
        match self.header.require(&full)? {
            Value::Array(a) => {
                if a.len() != n_layer {
                    let problem = format!("{} entries for {n_layer} layers", a.len());
                    return Err(ModelError::BadMetadata { key: full, problem });
                }
                (0..n_layer)
                    .map(|il| match a.get_i64(il) {
                        Some(v) if v >= 0 => Ok(v as usize),
                        _ => Err(ModelError::BadMetadata {
                            key: full.clone(),
                            problem: format!("entry {il} is not a count"),
                        }),
                    })
                    .collect()
            }
            _ => Ok(vec![self.usize(key)?; n_layer]),
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32, MetadataError> {
        Ok(self.header.get_f64(&self.key(key))? as f32)
    }

    /// An optional number: `None` when absent, an error when present with another type.
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32, MetadataError> {
        match self.header.get(&self.key(key)) {
            None => Ok(default),
            Some(_) => self.f32(key),
        }
    }
}

/// A weight matrix in the mapped file: `n_out` rows of `n_in` elements of type `ty`
/// (ggml dims `{n_in, n_out}`), `bytes` its range in the file.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    bytes: std::ops::Range<usize>,
}

impl Matrix {
    /// The tensor `name` with ggml dims `{n_in, n_out}`.
    pub(crate) fn find(header: &GgufHeader, name: &str, n_in: usize, n_out: usize) -> Result<Matrix, ModelError> {
        Matrix::find_dims(header, name, &[n_in as u64, n_out as u64])
    }

    /// The tensor `name` with ggml dims `dims`, read as a matrix of `dims[..last]` columns
    /// (flattened) and `dims[last]` rows: a conv kernel `{kw, kh, c, n_out}` is one.
    pub(crate) fn find_dims(header: &GgufHeader, name: &str, dims: &[u64]) -> Result<Matrix, ModelError> {
        let (&n_out, inner) = dims.split_last().expect("a matrix has dims");
        let (n_in, n_out) = (inner.iter().product::<u64>() as usize, n_out as usize);
        let t = find_tensor(header, name, dims)?;
        let start = (header.data_offset + t.offset) as usize;
        let quant = |source| ModelError::Quant { name: name.to_string(), source };
        let dot = dot_type(t.ty).ok_or_else(|| quant(QuantError::Unsupported(t.ty)))?;
        for ty in [t.ty, dot] {
            if ty.row_bytes(n_in as u64).is_none() {
                return Err(quant(QuantError::PartialBlock { ty, n: n_in, block: ty.block_size() }));
            }
        }
        Ok(Matrix { ty: t.ty, n_in, n_out, bytes: start..start + t.n_bytes() as usize })
    }

    /// The same bytes read as rows of `n_in` elements (a `{n_embd, n_pos, 2}` table as
    /// `2 · n_pos` rows of `n_embd`). `n_in` must divide the rows' elements.
    pub(crate) fn with_rows_of(self, n_in: usize) -> Matrix {
        let total = self.n_in * self.n_out;
        assert!(total.is_multiple_of(n_in), "{total} elements are not rows of {n_in}");
        Matrix { n_in, n_out: total / n_in, ..self }
    }

    /// The matrix's bytes in the mapped file.
    pub fn data<'a>(&self, file: &'a [u8]) -> &'a [u8] {
        &file[self.bytes.clone()]
    }

    /// Row `r` dequantized into `out: [n_in]` (the embedding lookup: one row, never the matrix).
    pub fn dequantize_row(&self, file: &[u8], r: usize, out: &mut [f32]) {
        let row_bytes = self.bytes.len() / self.n_out;
        let start = self.bytes.start + r * row_bytes;
        dequantize_row(self.ty, &file[start..start + row_bytes], out).expect("row length checked at load");
    }
}

/// A stack of expert matrices in the mapped file: ggml dims `{n_in, rows, n_expert}`.
#[derive(Clone, Debug)]
pub struct ExpertStack {
    pub ty: GgmlType,
    pub n_in: usize,
    pub rows: usize,
    pub n_expert: usize,
    bytes: std::ops::Range<usize>,
}

impl ExpertStack {
    /// Its shape, as the GPU's stacks take it.
    #[cfg(feature = "vulkan")]
    pub(crate) fn shape(&self) -> ggml::vulkan::weights::Stack {
        ggml::vulkan::weights::Stack { ty: self.ty, n_in: self.n_in, rows: self.rows, n_expert: self.n_expert }
    }

    pub(crate) fn find(
        header: &GgufHeader,
        name: &str,
        n_in: usize,
        rows: usize,
        n_expert: usize,
    ) -> Result<ExpertStack, ModelError> {
        let t = find_tensor(header, name, &[n_in as u64, rows as u64, n_expert as u64])?;
        let quant = |source| ModelError::Quant { name: name.to_string(), source };
        let dot = dot_type(t.ty).ok_or_else(|| quant(QuantError::Unsupported(t.ty)))?;
        for ty in [t.ty, dot] {
            if ty.row_bytes(n_in as u64).is_none() {
                return Err(quant(QuantError::PartialBlock { ty, n: n_in, block: ty.block_size() }));
            }
        }
        let start = (header.data_offset + t.offset) as usize;
        Ok(ExpertStack { ty: t.ty, n_in, rows, n_expert, bytes: start..start + t.n_bytes() as usize })
    }

    /// The kernel's view of the stack in `file`.
    pub fn view<'a>(&self, file: &'a [u8]) -> Experts<'a> {
        Experts { ty: self.ty, data: &file[self.bytes.clone()], n_expert: self.n_expert, rows: self.rows, n: self.n_in }
    }
}

/// A small f32 vector (norm weights), copied out of the file at load: `[n]`.
pub(crate) fn find_vector(header: &GgufHeader, file: &[u8], name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let t = find_tensor(header, name, &[n as u64])?;
    let mut out = vec![0.0; n];
    dequantize_row(t.ty, header.tensor_data(file, t), &mut out)
        .map_err(|source| ModelError::Quant { name: name.to_string(), source })?;
    Ok(out)
}

fn find_tensor<'h>(header: &'h GgufHeader, name: &str, dims: &[u64]) -> Result<&'h ggml::gguf::TensorInfo, ModelError> {
    let t = header.tensor(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
    if t.dims != dims {
        return Err(ModelError::Shape { name: name.to_string(), expected: dims.to_vec(), found: t.dims.clone() });
    }
    Ok(t)
}

/// Activations `[n_tokens][n]` on their way into one or more projections: quantized lazily,
/// once per dot type (Q/K/V or gate/up of the same input usually share one).
pub(crate) struct Input<'a> {
    x: &'a [f32],
    n: usize,
    /// Leading rows that are prompt tokens (which kernels run them: [`QuantizedActs`]).
    prompt_rows: usize,
    quantized: Vec<QuantizedActs>,
}

impl<'a> Input<'a> {
    /// Rows of which the first `prompt_rows` are prompt tokens and the rest generated ones.
    pub fn with_prompt_rows(x: &'a [f32], n: usize, prompt_rows: usize) -> Input<'a> {
        Input { x, n, prompt_rows, quantized: Vec::new() }
    }

    /// `W · x` for every token: `[n_tokens][w.n_out]`.
    pub fn project(&mut self, isa: Isa, file: &[u8], w: &Matrix) -> Vec<f32> {
        assert_eq!(w.n_in, self.n, "projection width");
        let ty = dot_type(w.ty).expect("checked at load");
        let i = match self.quantized.iter().position(|q| q.ty == ty) {
            Some(i) => i,
            None => {
                let acts = QuantizedActs::new(w.ty, self.x, self.n).expect("widths checked at load");
                self.quantized.push(acts.with_tiled(self.prompt_rows));
                self.quantized.len() - 1
            }
        };
        let acts = &self.quantized[i];
        let mut out = vec![0.0; acts.n_rows * w.n_out];
        matmul(w.ty, isa, &file[w.bytes.clone()], w.n_out, acts, &mut out).expect("shapes checked at load");
        out
    }
}

/// The prompt tokens among a single sequence's pass of `n_tokens`: a pass of one token is a
/// generated token (`gemma run` decodes one at a time, and never runs a prompt chunk of one
/// token beside more: `session::prompt_chunk`), any other pass is prompt.
pub(crate) fn prompt_rows(n_tokens: usize) -> usize {
    if n_tokens >= 2 {
        n_tokens
    } else {
        0
    }
}

/// `rmsnorm(row) [* w]` for every row of `x: [n_rows][n]`.
pub(crate) fn norm_rows(x: &[f32], n: usize, w: Option<&[f32]>, eps: f32) -> Vec<f32> {
    let mut y = x.to_vec();
    norm_rows_inplace(&mut y, n, w, eps);
    y
}

pub(crate) fn norm_rows_inplace(x: &mut [f32], n: usize, w: Option<&[f32]>, eps: f32) {
    for row in x.chunks_exact_mut(n) {
        ggml::ops::norm::rms_norm_inplace(row, w, eps);
    }
}
