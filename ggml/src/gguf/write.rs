//! The streaming GGUF writer: the header first, then tensor data one tensor at a time, so a
//! model is never held in memory whole. Output goes to a temporary file in the target's
//! directory and is renamed over the target only by [`GgufWriter::finish`]; an error or a drop
//! before that leaves any existing file untouched.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::output::PendingFile;

use super::value::{with_vec, Array, Value};
use super::{alignment_of, GgufError, TensorInfo, MAGIC, MAX_DIMS};

pub struct GgufWriter {
    out: PendingFile,
    path: PathBuf,
    /// Tensors in the order their data is written (by offset), with sizes.
    pending: Vec<(String, u64, u64)>,
    next: usize,
    alignment: u64,
    /// Bytes written into the data section so far.
    data_written: u64,
}

/// Offsets for `tensors` laid out back to back in the given order, each aligned.
pub fn assign_offsets(tensors: &mut [TensorInfo], alignment: u64) {
    let mut offset = 0u64;
    for t in tensors {
        t.offset = offset;
        offset = (offset + t.n_bytes()).next_multiple_of(alignment);
    }
}

impl GgufWriter {
    /// Start writing `path`: writes the whole header now. `tensors` carry their final offsets
    /// (see [`assign_offsets`]); their data must then be given in offset order.
    pub fn create(
        path: impl AsRef<Path>,
        version: u32,
        metadata: &[(String, Value)],
        tensors: &[TensorInfo],
    ) -> Result<GgufWriter, GgufError> {
        let path = path.as_ref().to_path_buf();
        if version != 2 && version != 3 {
            return Err(GgufError::Version(version));
        }
        let alignment = alignment_of(metadata)?;
        let mut pending: Vec<(String, u64, u64)> =
            tensors.iter().map(|t| (t.name.clone(), t.offset, t.n_bytes())).collect();
        pending.sort_by_key(|&(_, offset, _)| offset);
        for t in tensors {
            if t.dims.len() > MAX_DIMS {
                return Err(GgufError::Write(format!("tensor {:?} has more than {MAX_DIMS} dimensions", t.name)));
            }
            if t.offset % alignment != 0 {
                return Err(GgufError::Write(format!("tensor {:?} offset {} is not aligned", t.name, t.offset)));
            }
        }
        for pair in pending.windows(2) {
            if pair[0].1 + pair[0].2 > pair[1].1 {
                return Err(GgufError::Overlap { first: pair[0].0.clone(), second: pair[1].0.clone() });
            }
        }

        let out = PendingFile::create(&path).map_err(|err| GgufError::Io { path: path.clone(), err })?;
        let mut w = GgufWriter { out, path, pending, next: 0, alignment, data_written: 0 };

        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&version.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_str(&mut header, key);
            header.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut header, value);
        }
        for t in tensors {
            put_str(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&t.offset.to_le_bytes());
        }
        // The data section starts aligned. A file without tensors has no data section, and
        // gguf-py (which writes vocab-only files such as llama.cpp's test vocabularies) then
        // ends the file right after the header.
        if !tensors.is_empty() {
            header.resize((header.len() as u64).next_multiple_of(alignment) as usize, 0);
        }
        w.write(&header)?;
        Ok(w)
    }

    /// Append the data of the next tensor (in offset order). `data` must be exactly its size.
    pub fn write_tensor_data(&mut self, data: &[u8]) -> Result<(), GgufError> {
        let Some((name, offset, size)) = self.pending.get(self.next).cloned() else {
            return Err(GgufError::Write("more tensor data than tensors".into()));
        };
        if data.len() as u64 != size {
            return Err(GgufError::Write(format!("tensor {name:?} needs {size} bytes, got {}", data.len())));
        }
        self.pad_to(offset)?;
        self.write(data)?;
        self.data_written += size;
        self.next += 1;
        Ok(())
    }

    /// The name of the tensor whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&str> {
        self.pending.get(self.next).map(|(name, _, _)| name.as_str())
    }

    /// Pad the last tensor, flush, sync and move the file into place.
    pub fn finish(mut self) -> Result<(), GgufError> {
        if let Some((name, _, _)) = self.pending.get(self.next) {
            return Err(GgufError::Write(format!("no data was written for tensor {name:?}")));
        }
        self.pad_to(self.data_written.next_multiple_of(self.alignment))?;
        let path = self.path;
        self.out.finish().map_err(|err| GgufError::Io { path, err })?;
        Ok(())
    }

    /// Ends the file without writing the remaining tensors' data: the file is extended to its
    /// full length, so that data reads as zeros (and takes no disk space where the file system
    /// has sparse files). For skeleton models whose data is filled in later or never read.
    pub fn finish_zeroed(mut self) -> Result<(), GgufError> {
        let end = match self.pending.last() {
            Some(&(_, offset, size)) => (offset + size).next_multiple_of(self.alignment),
            None => 0,
        };
        let io = |path: &PathBuf, err| GgufError::Io { path: path.clone(), err };
        let file = self.out.file().map_err(|e| io(&self.path, e))?;
        let header_len = file.metadata().map_err(|e| io(&self.path, e))?.len() - self.data_written;
        file.set_len(header_len + end).map_err(|e| io(&self.path, e))?;
        self.out.finish().map_err(|e| io(&self.path, e))?;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<(), GgufError> {
        const ZEROS: [u8; 64] = [0; 64];
        while self.data_written < offset {
            let n = (offset - self.data_written).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
            self.data_written += n as u64;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes).map_err(|err| GgufError::Io { path: self.path.clone(), err })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => v.put(out),
        Value::I8(v) => v.put(out),
        Value::U16(v) => v.put(out),
        Value::I16(v) => v.put(out),
        Value::U32(v) => v.put(out),
        Value::I32(v) => v.put(out),
        Value::F32(v) => v.put(out),
        Value::U64(v) => v.put(out),
        Value::I64(v) => v.put(out),
        Value::F64(v) => v.put(out),
        Value::Bool(v) => v.put(out),
        Value::String(s) => s.put(out),
        Value::Array(a) => a.put(out),
    }
}

fn put_array(out: &mut Vec<u8>, array: &Array) {
    out.extend_from_slice(&(array.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    with_vec!(array, v => v.iter().for_each(|x| x.put(out)))
}

/// Little-endian bytes of the fixed-size array element types.
trait LeBytes {
    fn put(&self, out: &mut Vec<u8>);
}

macro_rules! le_bytes {
    ($($t:ty),*) => { $( impl LeBytes for $t {
        fn put(&self, out: &mut Vec<u8>) { out.extend_from_slice(&self.to_le_bytes()) }
    } )* };
}
le_bytes!(u8, i8, u16, i16, u32, i32, f32, u64, i64, f64);

impl LeBytes for bool {
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self as u8)
    }
}
impl LeBytes for String {
    fn put(&self, out: &mut Vec<u8>) {
        put_str(out, self)
    }
}
impl LeBytes for Array {
    fn put(&self, out: &mut Vec<u8>) {
        put_array(out, self)
    }
}
