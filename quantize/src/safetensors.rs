//! One `.safetensors` file, memory-mapped: an 8-byte little-endian header length, a JSON
//! header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, then the
//! data, each tensor's bytes at `8 + header length + begin`, row-major (C order), little-endian.
//!
//! Every offset is checked against the file's length when the header is read, so a truncated
//! file is an error that names it, never an out-of-bounds read.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use thiserror::Error;

/// A header larger than this is not a safetensors file (real ones are a few MB at most).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, Error)]
pub enum SafetensorsError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: truncated: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: not a safetensors file: {what}")]
    Header { path: PathBuf, what: String },
    #[error("{path}: tensor {name:?}: {what}")]
    Tensor { path: PathBuf, name: String, what: String },
}

/// The element types quantize reads. Others are listed (a checkpoint may hold tensors that are
/// skipped anyway) and refused only when a tensor of that type is converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    BF16,
    /// Any other safetensors dtype (`I64`, `F8_E4M3`, ...), by its name.
    Other(String),
}

impl Dtype {
    fn parse(s: &str) -> Dtype {
        match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            other => Dtype::Other(other.to_string()),
        }
    }

    /// Bytes per element, where known.
    pub fn size(&self) -> Option<usize> {
        Some(match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::Other(s) => match s.as_str() {
                "F64" | "I64" | "U64" => 8,
                "I32" | "U32" => 4,
                "I16" | "U16" => 2,
                "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
                _ => return None,
            },
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::Other(s) => s,
        }
    }
}

/// One tensor of a file: where its bytes are.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    /// PyTorch order: `shape[0]` is the outermost (slowest) dimension.
    pub shape: Vec<u64>,
    /// Absolute byte range in the file.
    pub start: usize,
    pub len: usize,
}

impl TensorEntry {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// An open, validated safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    /// Tensors sorted by name (as llama.cpp's converter and the `safetensors` library list them).
    pub tensors: Vec<TensorEntry>,
    mmap: Mmap,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile, SafetensorsError> {
        let io = |err| SafetensorsError::Io { path: path.to_path_buf(), err };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and every access stays within the length it has now
        // (checked below); a file truncated by another process while mapped is outside what any
        // mmap-based reader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let tensors = parse_header(path, &mmap)?;
        Ok(SafetensorsFile { path: path.to_path_buf(), tensors, mmap })
    }

    /// The bytes of `t` (an entry of this file).
    pub fn data(&self, t: &TensorEntry) -> &[u8] {
        &self.mmap[t.start..t.start + t.len]
    }

    /// Tells the kernel that `[start, start + len)` is no longer needed: its pages leave this
    /// process's resident set (they stay in the page cache), so converting a model much larger
    /// than memory keeps a bounded RSS.
    pub fn release(&self, start: usize, len: usize) {
        #[cfg(unix)]
        // SAFETY: MADV_DONTNEED on a read-only file mapping only drops the pages from this
        // process; a later read faults them in again from the file, unchanged. No reference
        // into the range outlives this call's callers' use of it (they are done with it).
        unsafe {
            let _ = self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
        #[cfg(not(unix))]
        let _ = (start, len);
    }
}

fn parse_header(path: &Path, bytes: &[u8]) -> Result<Vec<TensorEntry>, SafetensorsError> {
    let header_err = |what: String| SafetensorsError::Header { path: path.to_path_buf(), what };
    let file_len = bytes.len() as u64;
    if file_len < 8 {
        return Err(SafetensorsError::Truncated {
            path: path.to_path_buf(),
            what: format!("{file_len} bytes, shorter than the 8-byte header length"),
        });
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    if n > MAX_HEADER {
        return Err(header_err(format!("header length {n} is implausibly large")));
    }
    if 8 + n > file_len {
        return Err(SafetensorsError::Truncated {
            path: path.to_path_buf(),
            what: format!("the header needs {} bytes, the file has {file_len}", 8 + n),
        });
    }
    let text =
        std::str::from_utf8(&bytes[8..8 + n as usize]).map_err(|e| header_err(format!("header is not UTF-8 ({e})")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| header_err(format!("header is not valid JSON ({e})")))?;
    let obj = json.as_object().ok_or_else(|| header_err("header is not a JSON object".into()))?;

    let data_start = 8 + n;
    let data_len = file_len - data_start;
    let mut tensors = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: String| SafetensorsError::Tensor { path: path.to_path_buf(), name: name.clone(), what };
        let dtype = entry
            .get("dtype")
            .and_then(|d| d.as_str())
            .map(Dtype::parse)
            .ok_or_else(|| bad("no dtype in the header".into()))?;
        let shape = entry
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("no valid shape in the header".into()))?;
        let offsets = entry
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .and_then(|o| o.iter().map(|d| d.as_u64()).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad("no valid data_offsets in the header".into()))?;
        let (begin, end) = (offsets[0], offsets[1]);
        if end > data_len {
            return Err(SafetensorsError::Truncated {
                path: path.to_path_buf(),
                what: format!("tensor {name:?} ends at data byte {end}, the file holds {data_len} bytes of data"),
            });
        }
        if let Some(size) = dtype.size() {
            let want = shape.iter().try_fold(size as u64, |acc, &d| acc.checked_mul(d));
            if want != Some(end - begin) {
                return Err(bad(format!(
                    "shape {shape:?} of {} needs {} bytes, data_offsets give {}",
                    dtype.name(),
                    want.map_or("too many".to_string(), |w| w.to_string()),
                    end - begin
                )));
            }
        }
        tensors.push(TensorEntry {
            name: name.clone(),
            dtype,
            shape,
            start: (data_start + begin) as usize,
            len: (end - begin) as usize,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

/// Writes a safetensors file: for tests and fixtures. `tensors`: name, dtype name, shape, bytes.
pub fn write(path: &Path, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape, data) in tensors {
        let end = offset + data.len() as u64;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(header))?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + offset as usize);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write(&path, &[("b", "F32", vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])), ("a", "I64", vec![1], vec![0; 8])])
            .unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(f.tensors[0].dtype, Dtype::Other("I64".into()));
        assert_eq!(f.data(&f.tensors[1]), &f32_bytes(&[1.0, 2.0, 3.0, 4.0])[..]);
    }

    #[test]
    fn truncated_and_malformed_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write(&path, &[("w", "F32", vec![4], f32_bytes(&[1.0; 4]))]).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("truncated") && err.contains("\"w\""), "{err}");

        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("truncated: the header needs"), "{err}");

        std::fs::write(&path, &bytes[..5]).unwrap();
        assert!(SafetensorsFile::open(&path).err().unwrap().to_string().contains("truncated"));

        let mut bad = bytes.clone();
        bad[8] = b'[';
        std::fs::write(&path, &bad).unwrap();
        assert!(SafetensorsFile::open(&path).err().unwrap().to_string().contains("not valid JSON"));

        write(&path, &[("w", "F32", vec![3], f32_bytes(&[1.0; 4]))]).unwrap();
        let err = SafetensorsFile::open(&path).err().unwrap().to_string();
        assert!(err.contains("needs 12 bytes, data_offsets give 16"), "{err}");
    }
}
