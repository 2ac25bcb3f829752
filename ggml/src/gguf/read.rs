//! The GGUF parser. Every read is bounds-checked against the bytes that are there, every count
//! is checked against the bytes left before anything is allocated for it, and every problem is
//! a [`GgufError`] that says where.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use memmap2::Mmap;

use super::value::{Array, Value, ValueType};
use super::{alignment_of, GgufError, GgufHeader, TensorInfo, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use crate::types::GgmlType;

/// An open GGUF file: the parsed header and the memory-mapped bytes behind it.
pub struct GgufFile {
    pub path: PathBuf,
    pub header: GgufHeader,
    /// Shared with the background thread of [`GgufFile::prefetch`].
    mmap: Arc<Mmap>,
    prefetching: AtomicBool,
}

impl GgufFile {
    /// Map and parse `path`. Errors name the file and what is wrong in it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |err| GgufError::Io { path: path.to_path_buf(), err };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only. Another process truncating or rewriting the file while
        // it is mapped is outside what any mmap-based reader (ggml's included) can defend
        // against; every access below stays within the length the map had when created.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let header = parse(&mmap).map_err(|e| e.in_file(path))?;
        Ok(GgufFile { path: path.to_path_buf(), header, mmap: Arc::new(mmap), prefetching: AtomicBool::new(false) })
    }

    /// Maps every page of the file in a background thread (`MADV_POPULATE_READ`), once, when
    /// the file fits in the memory available, so that generation does not stop on page faults
    /// the first time each expert is used (measured: tg32 on the 30-layer synthetic 26B-A4B
    /// 3.3 -> 3.7 t/s). The caller carries on at once: pages it touches first fault in as
    /// usual. A hint with no effect on results; where it is unsupported it does nothing.
    pub fn prefetch(&self) {
        if self.prefetching.swap(true, Ordering::Relaxed) {
            return;
        }
        #[cfg(target_os = "linux")]
        if available_memory().is_some_and(|available| self.len() < available) {
            let mmap = Arc::clone(&self.mmap);
            // Failure only means the pages fault in on first use, as without the hint.
            let _ = std::thread::Builder::new()
                .name("gguf-prefetch".into())
                .spawn(move || mmap.advise(memmap2::Advice::PopulateRead));
        }
    }

    /// Drops the pages of `range` (bytes of the file) from this process's memory: after their
    /// tensors were copied to a GPU, so that the resident set does not hold the model twice.
    /// Reading them again is still correct (they fault back in from the file). Also turns off
    /// [`prefetch`](Self::prefetch), which would bring them back.
    pub fn release(&self, range: std::ops::Range<usize>) {
        self.prefetching.store(true, Ordering::Relaxed);
        #[cfg(unix)]
        {
            const PAGE: usize = 4096;
            let (start, end) = (range.start.next_multiple_of(PAGE), range.end / PAGE * PAGE);
            if start < end && end <= self.mmap.len() {
                // SAFETY: the mapping is private and read-only: dropped pages read back from the
                // file unchanged, so every slice of it stays valid. Failure leaves the pages
                // resident, as without the call.
                let _ =
                    unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
            }
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// The bytes of one tensor, zero-copy. Offsets and sizes were validated by [`parse`].
    pub fn tensor_data(&self, tensor: &TensorInfo) -> &[u8] {
        self.header.tensor_data(&self.mmap, tensor)
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.mmap.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }
}

/// `MemAvailable` of /proc/meminfo in bytes: what can be mapped without evicting other work.
#[cfg(target_os = "linux")]
fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parse and validate the header of a GGUF file held in `bytes` (the whole file: tensor
/// offsets are checked against its length).
pub fn parse(bytes: &[u8]) -> Result<GgufHeader, GgufError> {
    let mut r = Reader { bytes, pos: 0 };

    let magic = r.take(4, "magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic.to_vec() });
    }
    let version = r.u32("version")?;
    if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
        return Err(GgufError::BigEndian);
    }
    if version != 2 && version != 3 {
        return Err(GgufError::Version(version));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // A tensor info takes at least 8 (name) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a
    // key/value at least 8 (key) + 4 (type) + 1 (value).
    r.check_count(n_kv, 13, "metadata count")?;
    r.check_count(n_tensors, 24, "tensor count")?;

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for index in 0..n_kv {
        let key = r.string("key").map_err(|e| GgufError::InKeyName { index, err: Box::new(e) })?;
        let value = r.value_with_type(0).map_err(|e| GgufError::InKey { index, key: key.clone(), err: Box::new(e) })?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = alignment_of(&metadata)?;

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for index in 0..n_tensors {
        let name = r.string("tensor name").map_err(|e| GgufError::InTensorName { index, err: Box::new(e) })?;
        let tensor = r.tensor_info(index, name)?;
        if !names.insert(tensor.name.clone()) {
            return Err(GgufError::DuplicateTensor(tensor.name));
        }
        tensors.push(tensor);
    }

    let data_offset = (r.pos as u64).next_multiple_of(alignment);
    if !tensors.is_empty() && data_offset > bytes.len() as u64 {
        return Err(GgufError::Truncated {
            what: "padding before the data section",
            offset: r.pos as u64,
            need: data_offset - r.pos as u64,
            have: r.remaining(),
        });
    }
    let data_len = (bytes.len() as u64).saturating_sub(data_offset);
    check_tensor_placement(&tensors, alignment, data_len)?;
    Ok(GgufHeader::new(version, metadata, tensors, alignment, data_offset))
}

/// Every tensor's data is aligned, inside the data section, and disjoint from the others.
fn check_tensor_placement(tensors: &[TensorInfo], alignment: u64, data_len: u64) -> Result<(), GgufError> {
    for (index, t) in tensors.iter().enumerate() {
        let bad = |problem: String| GgufError::BadTensor { index: index as u64, name: t.name.clone(), problem };
        if t.offset % alignment != 0 {
            return Err(bad(format!("data offset {} is not a multiple of the alignment {alignment}", t.offset)));
        }
        let end = t.offset.checked_add(t.n_bytes());
        if end.is_none_or(|end| end > data_len) {
            return Err(bad(format!(
                "data [{}, +{}) runs past the end of the data section ({data_len} bytes)",
                t.offset,
                t.n_bytes()
            )));
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes() > 0).collect();
    by_offset.sort_by_key(|t| t.offset);
    for pair in by_offset.windows(2) {
        if pair[0].offset + pair[0].n_bytes() > pair[1].offset {
            return Err(GgufError::Overlap { first: pair[0].name.clone(), second: pair[1].name.clone() });
        }
    }
    Ok(())
}

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated { what, offset: self.pos as u64, need: n, have: self.remaining() });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(&self, count: u64, min_size: u64, what: &'static str) -> Result<(), GgufError> {
        if count.saturating_mul(min_size) > self.remaining() {
            return Err(GgufError::CountTooLarge { what, count, offset: self.pos as u64, have: self.remaining() });
        }
        Ok(())
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Utf8 { what, offset })
    }

    fn value_type(&mut self) -> Result<ValueType, GgufError> {
        let offset = self.pos as u64;
        let id = self.u32("value type")?;
        ValueType::from_id(id).ok_or(GgufError::UnknownValueType { id, offset })
    }

    fn value_with_type(&mut self, depth: usize) -> Result<Value, GgufError> {
        let ty = self.value_type()?;
        self.value(ty, depth)
    }

    fn bool(&mut self) -> Result<bool, GgufError> {
        let offset = self.pos as u64;
        match self.array::<1>("bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(GgufError::BadBool { byte, offset }),
        }
    }

    fn value(&mut self, ty: ValueType, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array("u8")?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array("i8")?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array("u16")?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array("i16")?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array("u32")?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array("i32")?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array("f32")?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array("u64")?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array("i64")?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array("f64")?)),
            ValueType::Bool => Value::Bool(self.bool()?),
            ValueType::String => Value::String(self.string("string")?),
            ValueType::Array => Value::Array(self.array_value(depth + 1)?),
        })
    }

    fn array_value(&mut self, depth: usize) -> Result<Array, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::TooDeep { offset: self.pos as u64 });
        }
        let ty = self.value_type()?;
        let len = self.u64("array length")?;
        self.check_count(len, ty.min_encoded_size(), "array length")?;
        let n = len as usize;
        // Fixed-size elements: read them straight out of the slice.
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let size = std::mem::size_of::<$t>();
                let raw = self.take(len * size as u64, "array")?;
                Array::$variant(raw.chunks_exact(size).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect())
            }};
        }
        Ok(match ty {
            ValueType::U8 => fixed!(U8, u8),
            ValueType::I8 => fixed!(I8, i8),
            ValueType::U16 => fixed!(U16, u16),
            ValueType::I16 => fixed!(I16, i16),
            ValueType::U32 => fixed!(U32, u32),
            ValueType::I32 => fixed!(I32, i32),
            ValueType::F32 => fixed!(F32, f32),
            ValueType::U64 => fixed!(U64, u64),
            ValueType::I64 => fixed!(I64, i64),
            ValueType::F64 => fixed!(F64, f64),
            ValueType::Bool => Array::Bool((0..n).map(|_| self.bool()).collect::<Result<_, _>>()?),
            ValueType::String => Array::String((0..n).map(|_| self.string("string")).collect::<Result<_, _>>()?),
            ValueType::Array => Array::Array((0..n).map(|_| self.array_value(depth + 1)).collect::<Result<_, _>>()?),
        })
    }

    fn tensor_info(&mut self, index: u64, name: String) -> Result<TensorInfo, GgufError> {
        let in_tensor =
            |e: GgufError, name: &str| GgufError::InTensor { index, name: name.to_string(), err: Box::new(e) };
        let bad = |problem: String, name: &str| GgufError::BadTensor { index, name: name.to_string(), problem };

        let n_dims = self.u32("n_dims").map_err(|e| in_tensor(e, &name))?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions, at most {MAX_DIMS} are allowed"), &name));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64("dimension").map_err(|e| in_tensor(e, &name))?);
        }
        let type_offset = self.pos;
        let type_id = self.u32("tensor type").map_err(|e| in_tensor(e, &name))?;
        let ty = GgmlType::from_id(type_id)
            .ok_or_else(|| bad(format!("unknown tensor type id {type_id} at offset {type_offset}"), &name))?;
        let offset = self.u64("data offset").map_err(|e| in_tensor(e, &name))?;

        // ggml keeps dimensions in int64_t: each must fit, and so must their product and size.
        if let Some(d) = dims.iter().find(|&&d| d > i64::MAX as u64) {
            return Err(bad(format!("dimension {d} does not fit in int64"), &name));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&p| p <= i64::MAX as u64))
            .ok_or_else(|| bad(format!("element count of shape {dims:?} overflows"), &name))?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % ty.block_size() as u64 != 0 {
            return Err(bad(
                format!("row of {ne0} elements is not a multiple of the {ty} block size {}", ty.block_size()),
                &name,
            ));
        }
        if ty.row_bytes(n).is_none_or(|b| b > i64::MAX as u64) {
            return Err(bad(format!("byte size of shape {dims:?} as {ty} overflows"), &name));
        }
        Ok(TensorInfo { name, ty, dims, offset })
    }
}
