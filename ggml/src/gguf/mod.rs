//! GGUF files: a validating parser, a memory-mapped reader with zero-copy tensor views, and a
//! streaming writer.
//!
//! Layout (v2/v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, the metadata key/values, the tensor infos (name, dims, type, offset), padding to
//! `general.alignment` (default 32), then the data section that tensor offsets are relative to.

pub mod corpus;
pub mod read;
mod value;
pub mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::types::GgmlType;

pub use read::{parse, GgufFile};
pub use value::{Array, Value, ValueType};
pub use write::GgufWriter;

pub const MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Arrays nested deeper than this are rejected (real files nest at most once).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Everything in a GGUF file before the tensor data: version, metadata, tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor table in file order; offsets are relative to the data section.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment`, or 32 when absent.
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// Index of each metadata key in `metadata`.
    key_index: HashMap<String, usize>,
    /// Index of each tensor name in `tensors`.
    tensor_index: HashMap<String, usize>,
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    /// Offset of the data, relative to the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of data (validated not to overflow when the file was read).
    pub fn n_bytes(&self) -> u64 {
        self.ty.row_bytes(self.n_elements()).unwrap_or(u64::MAX)
    }
}

impl GgufHeader {
    pub(crate) fn new(
        version: u32,
        metadata: Vec<(String, Value)>,
        tensors: Vec<TensorInfo>,
        alignment: u64,
        data_offset: u64,
    ) -> GgufHeader {
        let key_index = metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        GgufHeader { version, metadata, tensors, alignment, data_offset, key_index, tensor_index }
    }

    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// The value under `key`, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value, MetadataError> {
        self.get(key).ok_or_else(|| MetadataError::Missing { key: key.to_string() })
    }

    /// An unsigned integer under `key` (any integer type with a non-negative value).
    pub fn get_u64(&self, key: &str) -> Result<u64, MetadataError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| MetadataError::wrong_type(key, "an unsigned integer", v))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64, MetadataError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| MetadataError::wrong_type(key, "a number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, MetadataError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| MetadataError::wrong_type(key, "a string", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&Array, MetadataError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| MetadataError::wrong_type(key, "an array", v))
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `tensor` within `file`, the whole file this header was parsed from
    /// (offsets and sizes were validated against its length by the parser).
    pub fn tensor_data<'a>(&self, file: &'a [u8], tensor: &TensorInfo) -> &'a [u8] {
        let start = (self.data_offset + tensor.offset) as usize;
        &file[start..start + tensor.n_bytes() as usize]
    }

    /// `general.architecture`, the prefix of the model's own keys.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(Value::as_str)
    }
}

/// A metadata key that is missing or holds the wrong type.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("cannot find {key} in metadata")]
    Missing { key: String },
    #[error("metadata {key} is {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: String },
}

impl MetadataError {
    fn wrong_type(key: &str, expected: &'static str, found: &Value) -> MetadataError {
        let found = match found {
            Value::Array(a) => format!("an array of {}", a.elem_type()),
            other => format!("{} {}", other.value_type(), other),
        };
        MetadataError::WrongType { key: key.to_string(), expected, found }
    }
}

/// What can be wrong with a GGUF file. Every variant says where.
#[derive(Debug, Error)]
pub enum GgufError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: {err}")]
    InFile { path: PathBuf, err: Box<GgufError> },
    #[error("not a GGUF file: starts with {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: Vec<u8> },
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("unsupported GGUF version {0} (this reader supports 2 and 3)")]
    Version(u32),
    #[error("truncated: {what} at offset {offset} needs {need} bytes, {have} left")]
    Truncated { what: &'static str, offset: u64, need: u64, have: u64 },
    #[error("{what} {count} at offset {offset} cannot fit in the {have} bytes left in the file")]
    CountTooLarge { what: &'static str, count: u64, offset: u64, have: u64 },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    Utf8 { what: &'static str, offset: u64 },
    #[error("unknown value type {id} at offset {offset}")]
    UnknownValueType { id: u32, offset: u64 },
    #[error("bool at offset {offset} is {byte}, not 0 or 1")]
    BadBool { byte: u8, offset: u64 },
    #[error("arrays nested deeper than {MAX_ARRAY_DEPTH} levels at offset {offset}")]
    TooDeep { offset: u64 },
    #[error("metadata key #{index} {key:?}: {err}")]
    InKey { index: u64, key: String, err: Box<GgufError> },
    #[error("metadata key #{index}: {err}")]
    InKeyName { index: u64, err: Box<GgufError> },
    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),
    #[error("general.alignment must be a u32 power of two, found {0}")]
    BadAlignment(String),
    #[error("tensor #{index}: {err}")]
    InTensorName { index: u64, err: Box<GgufError> },
    #[error("tensor #{index} {name:?}: {problem}")]
    BadTensor { index: u64, name: String, problem: String },
    #[error("tensor #{index} {name:?}: {err}")]
    InTensor { index: u64, name: String, err: Box<GgufError> },
    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),
    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    Overlap { first: String, second: String },
    #[error("writer: {0}")]
    Write(String),
}

/// `general.alignment` of `metadata` (a u32 power of two), or the default 32 when absent.
pub(crate) fn alignment_of(metadata: &[(String, Value)]) -> Result<u64, GgufError> {
    match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, Value::U32(a))) if a.is_power_of_two() => Ok(*a as u64),
        Some((_, v)) => Err(GgufError::BadAlignment(format!("{} {}", v.value_type(), v))),
    }
}

impl GgufError {
    pub(crate) fn in_file(self, path: &Path) -> GgufError {
        GgufError::InFile { path: path.to_path_buf(), err: Box::new(self) }
    }
}

#[cfg(test)]
mod tests;
