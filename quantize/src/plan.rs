//! The conversion plan: every output tensor with its source, shape and types, in file order,
//! and the output file's metadata. Built without reading any tensor data, so `--dry-run` can
//! print it and the GGUF header can be written before the first tensor is converted.

use ggml::gguf::{write::assign_offsets, TensorInfo, Value, DEFAULT_ALIGNMENT};
use ggml::GgmlType;

use crate::checkpoint::TensorRef;
use crate::ftype::{self, Chooser, FileType, ModelFacts};
use crate::meta::Metadata;
use crate::safetensors::Dtype;

/// Where a tensor's values come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Values the converter makes up (`rope_freqs`).
    Values(Vec<f32>),
    /// A checkpoint tensor: its first `rows` rows, each element plus `shift` (Gemma 3's
    /// RMSNorm weights are stored as `w - 1`).
    Checkpoint { tensor: TensorRef, dtype: Dtype, rows: u64, shift: f32 },
    /// Tensor `index` of an input GGUF, of type `ty`.
    Gguf { index: usize, ty: GgmlType },
}

/// One tensor of the output.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// The checkpoint's name for it (`-` for generated ones).
    pub source_name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub source: Source,
    /// What llama.cpp's converter would write (the input of llama-quantize).
    pub converted: GgmlType,
    /// What we write.
    pub ty: GgmlType,
}

impl PlannedTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn row_len(&self) -> u64 {
        self.dims[0]
    }

    pub fn n_rows(&self) -> u64 {
        self.n_elements() / self.dims[0].max(1)
    }

    /// The source's element type, as the plan prints it.
    pub fn source_type(&self) -> &str {
        match &self.source {
            Source::Values(_) => "F32",
            Source::Checkpoint { dtype, .. } => dtype.name(),
            Source::Gguf { ty, .. } => ty.name(),
        }
    }

    pub fn out_bytes(&self) -> u64 {
        self.ty.row_bytes(self.n_elements()).expect("types are chosen so that rows are whole blocks")
    }

    /// Bytes read from the checkpoint.
    pub fn in_bytes(&self) -> u64 {
        match &self.source {
            Source::Values(v) => v.len() as u64 * 4,
            Source::Checkpoint { dtype, .. } => self.n_elements() * dtype.size().unwrap_or(4) as u64,
            Source::Gguf { ty, .. } => ty.row_bytes(self.n_elements()).unwrap_or(0),
        }
    }
}

/// What an architecture module hands over: tensors in converter order (types not yet chosen)
/// and the converter's metadata.
pub struct Conversion {
    pub tensors: Vec<PlannedTensor>,
    pub metadata: Metadata,
    pub facts: ModelFacts,
    /// Checkpoint tensors left out (vision and audio towers).
    pub skipped: Vec<String>,
    /// The input is a GGUF: every type follows llama-quantize, from the tensors' own types
    /// (`converted`), and the metadata is the input's.
    pub requantize: bool,
}

/// The final plan.
pub struct Plan {
    pub ftype: FileType,
    pub tensors: Vec<PlannedTensor>,
    pub metadata: Vec<(String, Value)>,
    pub skipped: Vec<String>,
    pub n_fallback: usize,
}

impl Plan {
    /// Chooses every tensor's type for `ftype` and puts tensors and metadata in the order
    /// llama.cpp's tools would write them.
    pub fn new(conv: Conversion, ftype: FileType) -> Result<Plan, String> {
        let Conversion { mut tensors, mut metadata, facts, skipped, requantize } = conv;
        if requantize {
            return Plan::requantize(tensors, metadata, facts, skipped, ftype);
        }
        // The converter's float type: the output type for F32/F16/BF16; for a quantized output,
        // the source's own precision (the lossless conversion llama-quantize would start from;
        // it only shows in tensors llama-quantize leaves alone).
        for t in &mut tensors {
            let float = match ftype {
                FileType::F32 => GgmlType::F32,
                FileType::F16 => GgmlType::F16,
                FileType::BF16 => GgmlType::BF16,
                _ => match &t.source {
                    Source::Checkpoint { dtype: Dtype::F16, .. } => GgmlType::F16,
                    Source::Checkpoint { dtype: Dtype::BF16, .. } => GgmlType::BF16,
                    _ => GgmlType::F32,
                },
            };
            t.converted = ftype::converter_type(&t.name, t.dims.len(), float);
            t.ty = t.converted;
        }
        let mut n_fallback = 0;
        if ftype.is_float() {
            metadata.u32("general.file_type", ftype.id() as u64);
        } else {
            tensors.sort_by(|a, b| ftype::quantize_order(&a.name, &b.name));
            let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            let mut chooser = Chooser::new(ftype, facts, &names);
            for t in &mut tensors {
                t.ty = chooser.choose(&t.name, &t.dims, t.converted)?;
            }
            n_fallback = chooser.n_fallback;
            metadata.set_last("general.quantization_version", Value::U32(2));
            metadata.set_last("general.file_type", Value::U32(ftype.id()));
        }
        for t in &tensors {
            if !ggml::quants::supports(t.ty) {
                return Err(format!("tensor {}: type {} cannot be written by this build", t.name, t.ty));
            }
        }
        Ok(Plan { ftype, tensors, metadata: metadata.into_vec(), skipped, n_fallback })
    }

    /// A plan whose tensors' types were chosen by the conversion itself (an mmproj, where the
    /// converter's own rules decide and llama-quantize has no part), in its order.
    pub fn as_converted(conv: Conversion, ftype: FileType) -> Result<Plan, String> {
        for t in &conv.tensors {
            if !ggml::quants::supports(t.ty) {
                return Err(format!("tensor {}: type {} cannot be written by this build", t.name, t.ty));
            }
        }
        Ok(Plan {
            ftype,
            tensors: conv.tensors,
            metadata: conv.metadata.into_vec(),
            skipped: conv.skipped,
            n_fallback: 0,
        })
    }

    /// llama-quantize on a GGUF: its order, its choices from each tensor's current type.
    fn requantize(
        mut tensors: Vec<PlannedTensor>,
        mut metadata: Metadata,
        facts: ModelFacts,
        skipped: Vec<String>,
        ftype: FileType,
    ) -> Result<Plan, String> {
        tensors.sort_by(|a, b| ftype::quantize_order(&a.name, &b.name));
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let mut chooser = Chooser::new(ftype, facts, &names);
        for t in &mut tensors {
            t.ty = chooser.choose(&t.name, &t.dims, t.converted)?;
            if t.ty != t.converted && !ggml::quants::supports(t.converted) {
                return Err(format!("tensor {}: cannot read type {}", t.name, t.converted));
            }
        }
        for key in ["split.no", "split.count", "split.tensors.count"] {
            metadata.remove(key);
        }
        metadata.set_last("general.quantization_version", Value::U32(2));
        metadata.set_last("general.file_type", Value::U32(ftype.id()));
        let n_fallback = chooser.n_fallback;
        Ok(Plan { ftype, tensors, metadata: metadata.into_vec(), skipped, n_fallback })
    }

    /// The tensor table with offsets, in file order.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut infos: Vec<TensorInfo> = self
            .tensors
            .iter()
            .map(|t| TensorInfo { name: t.name.clone(), ty: t.ty, dims: t.dims.clone(), offset: 0 })
            .collect();
        assign_offsets(&mut infos, DEFAULT_ALIGNMENT);
        infos
    }

    /// Size of the output file in bytes: header, padding and tensor data.
    pub fn output_size(&self) -> u64 {
        let infos = self.tensor_infos();
        let data = infos.last().map_or(0, |t| (t.offset + t.n_bytes()).next_multiple_of(DEFAULT_ALIGNMENT));
        header_size(&self.metadata, &infos).next_multiple_of(DEFAULT_ALIGNMENT) + data
    }

    pub fn input_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.in_bytes()).sum()
    }
}

/// gguf-py's `size_label` for the tensors (parameter count, `NxM` for mixtures of experts).
pub fn size_label(tensors: &[PlannedTensor]) -> Option<String> {
    let (mut total, mut shared, mut expert, mut expert_sum, mut n_expert_tensors) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for t in tensors {
        let size = t.n_elements();
        if t.name.contains("_exps.") && t.dims.len() >= 3 {
            let count = t.dims[2];
            expert += size / count;
            expert_sum += count;
            n_expert_tensors += 1;
        } else {
            shared += size;
        }
        total += size;
    }
    if total == 0 {
        return None;
    }
    let count = expert_sum.checked_div(n_expert_tensors).unwrap_or(0);
    Some(if count > 0 { format!("{count}x{}", rounded(shared + expert)) } else { rounded(total) })
}

/// gguf-py's `model_weight_count_rounded_notation` with two significant digits minimum.
fn rounded(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round_ties_even() as u64);
    let digits = digits.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// Bytes of a GGUF v3 header (before alignment padding).
fn header_size(metadata: &[(String, Value)], tensors: &[TensorInfo]) -> u64 {
    fn value(v: &Value) -> u64 {
        match v {
            Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
            Value::U16(_) | Value::I16(_) => 2,
            Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
            Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
            Value::String(s) => 8 + s.len() as u64,
            Value::Array(a) => 12 + array(a),
        }
    }
    fn array(a: &ggml::gguf::Array) -> u64 {
        use ggml::gguf::Array as A;
        match a {
            A::U8(v) => v.len() as u64,
            A::I8(v) => v.len() as u64,
            A::Bool(v) => v.len() as u64,
            A::U16(v) => 2 * v.len() as u64,
            A::I16(v) => 2 * v.len() as u64,
            A::U32(v) => 4 * v.len() as u64,
            A::I32(v) => 4 * v.len() as u64,
            A::F32(v) => 4 * v.len() as u64,
            A::U64(v) => 8 * v.len() as u64,
            A::I64(v) => 8 * v.len() as u64,
            A::F64(v) => 8 * v.len() as u64,
            A::String(v) => v.iter().map(|s| 8 + s.len() as u64).sum(),
            A::Array(v) => v.iter().map(|a| 12 + array(a)).sum(),
        }
    }
    let mut n = 4 + 4 + 8 + 8;
    for (k, v) in metadata {
        n += 8 + k.len() as u64 + 4 + value(v);
    }
    for t in tensors {
        n += 8 + t.name.len() as u64 + 4 + 8 * t.dims.len() as u64 + 4 + 8;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_as_gguf_py_writes_them() {
        assert_eq!(rounded(2_800_000), "2.8M");
        assert_eq!(rounded(25_200_000_000), "25B");
        assert_eq!(rounded(2_500_000), "2.5M");
        assert_eq!(rounded(950), "1.0K");
        assert_eq!(rounded(3_849_000_000), "3.8B");
        assert_eq!(rounded(1450), "1.4K");
    }
}
