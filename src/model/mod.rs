//! Model forward passes over the weights of a memory-mapped GGUF file: [`gemma3`] for now.
//!
//! What every architecture shares lives here: reading hyperparameters (an error names the
//! missing key), finding tensors and checking their shapes (an error names the tensor), and
//! the quantized matrix product that projections go through (weights stay quantized in the
//! map; activations are quantized once per weight dot type and reused by every projection of
//! the same input that shares it).

pub mod gemma3;

pub use gemma3::Gemma3;

use ggml::gguf::{GgufHeader, MetadataError};
use ggml::kernels::matmul::{matmul, QuantizedActs};
use ggml::kernels::{dot_type, Isa};
use ggml::quants::{dequantize_row, QuantError};
use ggml::GgmlType;

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
        let t = find_tensor(header, name, &[n_in as u64, n_out as u64])?;
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

    /// Row `r` dequantized into `out: [n_in]` (the embedding lookup: one row, never the matrix).
    pub fn dequantize_row(&self, file: &[u8], r: usize, out: &mut [f32]) {
        let row_bytes = self.bytes.len() / self.n_out;
        let start = self.bytes.start + r * row_bytes;
        dequantize_row(self.ty, &file[start..start + row_bytes], out).expect("row length checked at load");
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
    quantized: Vec<QuantizedActs>,
}

impl<'a> Input<'a> {
    pub fn new(x: &'a [f32], n: usize) -> Input<'a> {
        Input { x, n, quantized: Vec::new() }
    }

    /// `W · x` for every token: `[n_tokens][w.n_out]`.
    pub fn project(&mut self, isa: Isa, file: &[u8], w: &Matrix) -> Vec<f32> {
        assert_eq!(w.n_in, self.n, "projection width");
        let ty = dot_type(w.ty).expect("checked at load");
        let i = match self.quantized.iter().position(|q| q.ty == ty) {
            Some(i) => i,
            None => {
                self.quantized.push(QuantizedActs::new(w.ty, self.x, self.n).expect("widths checked at load"));
                self.quantized.len() - 1
            }
        };
        let acts = &self.quantized[i];
        let mut out = vec![0.0; acts.n_rows * w.n_out];
        matmul(w.ty, isa, &file[w.bytes.clone()], w.n_out, acts, &mut out).expect("shapes checked at load");
        out
    }
}
