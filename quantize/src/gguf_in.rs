//! A GGUF as input: requantizing, as `llama-quantize` does it. The metadata is kept (with
//! `general.file_type` and `general.quantization_version` set last), the tensors are taken in
//! its order and each gets the type its rules give from its current type; a tensor whose type
//! does not change is copied byte for byte.

use std::fs::File;
use std::path::Path;

use ggml::gguf::{GgufError, GgufFile, Value};
use memmap2::Mmap;

use crate::ftype::ModelFacts;
use crate::meta::Metadata;
use crate::plan::{Conversion, PlannedTensor, Source};
use crate::ConvertError;

/// An input GGUF: the parsed file, and a second read-only map of it through which tensor data
/// is read and then released from the process (as for safetensors), so that RSS stays bounded.
pub struct GgufInput {
    pub file: GgufFile,
    map: Mmap,
}

impl GgufInput {
    pub fn open(path: &Path) -> Result<GgufInput, GgufError> {
        let file = GgufFile::open(path)?;
        let io = |err| GgufError::Io { path: path.to_path_buf(), err };
        // SAFETY: read-only map of the file just parsed; every access is within a tensor's
        // range, which the parser checked against the file's length.
        let map = unsafe { Mmap::map(&File::open(path).map_err(io)?) }.map_err(io)?;
        if map.len() as u64 != file.len() {
            return Err(io(std::io::Error::other("the file changed while being opened")));
        }
        Ok(GgufInput { file, map })
    }

    /// Bytes of tensor `index` and their offset in the file.
    pub fn data(&self, index: usize) -> (&[u8], usize) {
        let h = &self.file.header;
        let t = &h.tensors[index];
        let start = (h.data_offset + t.offset) as usize;
        (&self.map[start..start + t.n_bytes() as usize], start)
    }

    /// See [`crate::safetensors::SafetensorsFile::release`].
    pub fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: MADV_DONTNEED on a read-only file mapping only drops pages from this process;
        // they are read again from the file if touched. The caller is done with the range.
        unsafe {
            let _ = self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }
}

pub fn convert(file: &GgufFile) -> Result<Conversion, ConvertError> {
    let h = &file.header;
    let bad = |what: String| ConvertError::Plan(format!("{}: {what}", file.path.display()));
    let arch = h.architecture().ok_or_else(|| bad("no general.architecture".into()))?.to_string();
    if h.get("general.alignment").is_some() {
        return Err(bad("a custom general.alignment is not supported".into()));
    }
    let first = |key: &str| -> Option<u64> {
        match h.get(key)? {
            Value::Array(a) => a.get_i64(0).and_then(|v| u64::try_from(v).ok()),
            v => v.as_u64(),
        }
    };
    let n_layer = h.get_u64(&format!("{arch}.block_count")).map_err(|e| bad(e.to_string()))?;
    let n_head = first(&format!("{arch}.attention.head_count")).unwrap_or(1);
    let n_head_kv = first(&format!("{arch}.attention.head_count_kv")).unwrap_or(n_head);
    let facts = ModelFacts {
        n_layer: n_layer as usize,
        n_expert: first(&format!("{arch}.expert_count")).unwrap_or(0) as usize,
        n_gqa: (n_head / n_head_kv.max(1)) as usize,
    };
    let mut metadata = Metadata::new();
    for (k, v) in &h.metadata {
        metadata.set(k.clone(), v.clone());
    }
    let tensors = h
        .tensors
        .iter()
        .enumerate()
        .map(|(index, t)| PlannedTensor {
            name: t.name.clone(),
            source_name: t.name.clone(),
            dims: t.dims.clone(),
            source: Source::Gguf { index, ty: t.ty },
            converted: t.ty,
            ty: t.ty,
        })
        .collect();
    Ok(Conversion { tensors, metadata, facts, skipped: Vec::new(), requantize: true })
}

/// Whether `path` is a GGUF file (by its magic).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}
