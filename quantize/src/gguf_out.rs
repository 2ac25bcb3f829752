//! A GGUF writer that takes each tensor's data in as many parts as the caller likes, so that a
//! tensor larger than memory (a 262K-row token embedding in F32 is 3 GB) streams through.
//!
//! `ggml::gguf::GgufWriter` takes a tensor's data in one slice; until it can take parts, this
//! writer serializes the same header (a test checks the bytes are identical to GgufWriter's)
//! and appends data as it comes. Output goes to a temporary file in the target's directory,
//! removed if the writer is dropped before [`StreamWriter::finish`] renames it into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use ggml::gguf::{Array, GgufError, TensorInfo, Value, DEFAULT_ALIGNMENT};
use ggml::output::PendingFile;

pub struct StreamWriter {
    out: PendingFile,
    path: PathBuf,
    /// (name, offset, size) in offset order.
    tensors: Vec<(String, u64, u64)>,
    next: usize,
    /// Bytes of the current tensor written so far.
    in_tensor: u64,
    /// Bytes written into the data section so far.
    data_written: u64,
}

fn io_err(path: &Path, err: std::io::Error) -> GgufError {
    GgufError::Io { path: path.to_path_buf(), err }
}

impl StreamWriter {
    /// Writes the header (GGUF v3, default alignment) for `tensors`, whose offsets were assigned
    /// with `ggml::gguf::write::assign_offsets`.
    pub fn create(
        path: &Path,
        metadata: &[(String, Value)],
        tensors: &[TensorInfo],
    ) -> Result<StreamWriter, GgufError> {
        if metadata.iter().any(|(k, _)| k == "general.alignment") {
            return Err(GgufError::Write("a custom general.alignment is not supported".into()));
        }
        let out = PendingFile::create(path).map_err(|e| io_err(path, e))?;
        let mut header = Vec::new();
        header.extend_from_slice(b"GGUF");
        header.extend_from_slice(&3u32.to_le_bytes());
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
        if !tensors.is_empty() {
            header.resize((header.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT) as usize, 0);
        }
        let mut sorted: Vec<(String, u64, u64)> =
            tensors.iter().map(|t| (t.name.clone(), t.offset, t.n_bytes())).collect();
        sorted.sort_by_key(|t| t.1);
        let mut w =
            StreamWriter { out, path: path.to_path_buf(), tensors: sorted, next: 0, in_tensor: 0, data_written: 0 };
        w.raw(&header)?;
        Ok(w)
    }

    /// Appends the next bytes of tensor data (tensors in offset order, each in one or more
    /// parts; a part may not run past the end of its tensor).
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), GgufError> {
        while !bytes.is_empty() {
            let Some((name, offset, size)) = self.tensors.get(self.next).cloned() else {
                return Err(GgufError::Write("more tensor data than tensors".into()));
            };
            if self.in_tensor == 0 {
                self.pad_to(offset)?;
            }
            let n = (size - self.in_tensor).min(bytes.len() as u64) as usize;
            if n == 0 {
                return Err(GgufError::Write(format!("tensor {name:?} is already complete")));
            }
            self.raw(&bytes[..n])?;
            self.data_written += n as u64;
            self.in_tensor += n as u64;
            bytes = &bytes[n..];
            if self.in_tensor == size {
                self.next += 1;
                self.in_tensor = 0;
            }
        }
        Ok(())
    }

    /// Pads the last tensor, syncs and renames the file into place.
    pub fn finish(mut self) -> Result<(), GgufError> {
        // Zero-sized tensors complete without any write.
        while let Some(&(_, offset, 0)) = self.tensors.get(self.next) {
            self.pad_to(offset)?;
            self.next += 1;
        }
        if let Some((name, _, size)) = self.tensors.get(self.next) {
            return Err(GgufError::Write(format!("tensor {name:?} has {} of its {size} bytes", self.in_tensor)));
        }
        self.pad_to(self.data_written.next_multiple_of(DEFAULT_ALIGNMENT))?;
        self.out.finish().map_err(|e| io_err(&self.path, e))?;
        Ok(())
    }

    fn pad_to(&mut self, offset: u64) -> Result<(), GgufError> {
        const ZEROS: [u8; 64] = [0; 64];
        while self.data_written < offset {
            let n = (offset - self.data_written).min(64) as usize;
            self.raw(&ZEROS[..n])?;
            self.data_written += n as u64;
        }
        Ok(())
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes).map_err(|e| io_err(&self.path, e))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.elem_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => le!(v),
        Array::U16(v) => le!(v),
        Array::I16(v) => le!(v),
        Array::U32(v) => le!(v),
        Array::I32(v) => le!(v),
        Array::F32(v) => le!(v),
        Array::U64(v) => le!(v),
        Array::I64(v) => le!(v),
        Array::F64(v) => le!(v),
        Array::Bool(v) => v.iter().for_each(|&b| out.push(b as u8)),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ggml::gguf::write::assign_offsets;
    use ggml::gguf::GgufWriter;
    use ggml::GgmlType;

    /// Same metadata and tensors through ggml's writer (whole tensors) and this one (data in
    /// uneven parts): the files must be byte for byte the same.
    #[test]
    fn same_bytes_as_ggml_writer() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = vec![
            ("general.architecture".to_string(), Value::String("gemma4".into())),
            ("a.u8".to_string(), Value::U8(7)),
            ("a.i8".to_string(), Value::I8(-7)),
            ("a.u16".to_string(), Value::U16(700)),
            ("a.i16".to_string(), Value::I16(-700)),
            ("a.f64".to_string(), Value::F64(0.1)),
            ("a.i64".to_string(), Value::I64(-1)),
            ("a.u64".to_string(), Value::U64(1 << 40)),
            ("a.bool".to_string(), Value::Bool(true)),
            ("a.f32".to_string(), Value::F32(1e-6)),
            ("a.strs".to_string(), Value::Array(Array::String(vec!["▁a".into(), "b c".into()]))),
            ("a.bools".to_string(), Value::Array(Array::Bool(vec![true, false]))),
            ("a.i32s".to_string(), Value::Array(Array::I32(vec![-1, 2]))),
            ("a.nested".to_string(), Value::Array(Array::Array(vec![Array::U8(vec![1, 2]), Array::F32(vec![0.5])]))),
        ];
        let mut tensors = vec![
            TensorInfo { name: "a".into(), ty: GgmlType::F32, dims: vec![3], offset: 0 },
            TensorInfo { name: "b".into(), ty: GgmlType::Q8_0, dims: vec![64, 3], offset: 0 },
            TensorInfo { name: "c".into(), ty: GgmlType::F16, dims: vec![5, 1, 1], offset: 0 },
        ];
        assign_offsets(&mut tensors, DEFAULT_ALIGNMENT);
        let data: Vec<Vec<u8>> =
            tensors.iter().map(|t| (0..t.n_bytes()).map(|i| (i * 7 % 251) as u8).collect()).collect();

        let theirs = dir.path().join("theirs.gguf");
        let mut w = GgufWriter::create(&theirs, 3, &metadata, &tensors).unwrap();
        for d in &data {
            w.write_tensor_data(d).unwrap();
        }
        w.finish().unwrap();

        let ours = dir.path().join("ours.gguf");
        let mut w = StreamWriter::create(&ours, &metadata, &tensors).unwrap();
        for d in &data {
            for part in d.chunks(5) {
                w.write(part).unwrap();
            }
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap());
    }

    #[test]
    fn incomplete_or_dropped_writes_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = vec![TensorInfo { name: "a".into(), ty: GgmlType::F32, dims: vec![4], offset: 0 }];
        assign_offsets(&mut tensors, DEFAULT_ALIGNMENT);
        let path = dir.path().join("out.gguf");
        let mut w = StreamWriter::create(&path, &[], &tensors).unwrap();
        w.write(&[0; 8]).unwrap();
        let err = w.finish().err().unwrap().to_string();
        assert!(err.contains("has 8 of its 16 bytes"), "{err}");
        let mut w = StreamWriter::create(&path, &[], &tensors).unwrap();
        assert!(w.write(&[0; 17]).is_err());
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
