//! A weight matrix in VRAM: the rows of a GGUF tensor, uploaded as their raw block bytes (the
//! shaders read any block at any byte offset, so nothing is repacked), split by rows across
//! buffers when the tensor is larger than one storage-buffer binding may be (lavapipe: 128
//! MiB, which Gemma 3 270M's 262144-row embedding already exceeds).

use super::device::{Buffer, Gpu};
use super::VkError;
use crate::GgmlType;

/// Rows `row0 .. row0 + n_rows` of a matrix, in one buffer.
pub struct Part {
    pub buffer: Buffer,
    pub row0: usize,
    pub n_rows: usize,
}

/// `n_out` rows of `n_in` elements of type `ty` (ggml dims `{n_in, n_out}`).
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub n_in: usize,
    pub n_out: usize,
    pub row_bytes: usize,
    /// Rows that stay in one part: 1 for a matrix, an expert's rows for a stack of experts.
    pub group: usize,
    pub parts: Vec<Part>,
}

/// The weight types the matrix shaders read: those of published Q4_K_M, Q8_0 and BF16 files.
pub const TYPES: &[GgmlType] =
    &[GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K];

impl GpuMatrix {
    /// Uploads `bytes` (the tensor's data: `n_out` rows of `ty`) as a matrix; `name` (the
    /// tensor's) appears in errors. Parts hold at most `max_part_bytes` (when given; the
    /// device's binding range otherwise).
    pub fn upload(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        n_in: usize,
        n_out: usize,
        bytes: &[u8],
        max_part_bytes: Option<u64>,
    ) -> Result<GpuMatrix, VkError> {
        GpuMatrix::upload_grouped(gpu, name, ty, n_in, n_out, 1, bytes, max_part_bytes)
    }

    /// Uploads a stack of `n_expert` matrices of `rows` rows each (ggml dims `{n_in, rows,
    /// n_expert}`), never splitting an expert across parts.
    #[allow(clippy::too_many_arguments)]
    pub fn upload_stack(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        n_in: usize,
        rows: usize,
        n_expert: usize,
        bytes: &[u8],
        max_part_bytes: Option<u64>,
    ) -> Result<GpuMatrix, VkError> {
        GpuMatrix::upload_grouped(gpu, name, ty, n_in, rows * n_expert, rows, bytes, max_part_bytes)
    }

    #[allow(clippy::too_many_arguments)]
    fn upload_grouped(
        gpu: &Gpu,
        name: &str,
        ty: GgmlType,
        n_in: usize,
        n_out: usize,
        group: usize,
        bytes: &[u8],
        max_part_bytes: Option<u64>,
    ) -> Result<GpuMatrix, VkError> {
        if !TYPES.contains(&ty) {
            return Err(VkError::Shape(format!("{name}: {} weights have no GPU kernel yet", ty.name())));
        }
        let row_bytes = ty.row_bytes(n_in as u64).filter(|_| n_in.is_multiple_of(4));
        let Some(row_bytes) = row_bytes else {
            return Err(VkError::Shape(format!("{name}: rows of {n_in} {} elements do not suit the GPU", ty.name())));
        };
        let row_bytes = row_bytes as usize;
        if bytes.len() != row_bytes * n_out {
            return Err(VkError::Shape(format!("{name}: {} bytes for {n_out} rows of {row_bytes}", bytes.len())));
        }
        let info = gpu.info();
        // Less 16 bytes: buffers are rounded up to whole 16-byte words.
        let limit = max_part_bytes.unwrap_or(u64::MAX).min(info.max_buffer_range - 16).min(info.max_allocation);
        let rows_per_part = limit as usize / row_bytes / group * group;
        if rows_per_part == 0 {
            return Err(VkError::Shape(format!(
                "{name}: {group} rows of {row_bytes} bytes do not fit one buffer of at most {limit} bytes"
            )));
        }
        let mut parts = Vec::new();
        for row0 in (0..n_out).step_by(rows_per_part) {
            let n_rows = rows_per_part.min(n_out - row0);
            let data = &bytes[row0 * row_bytes..(row0 + n_rows) * row_bytes];
            let buffer = gpu.buffer(data.len() as u64, name)?;
            gpu.upload(&buffer, 0, data)?;
            parts.push(Part { buffer, row0, n_rows });
        }
        Ok(GpuMatrix { ty, n_in, n_out, row_bytes, group, parts })
    }

    /// The shader variant suffix of this matrix's type.
    pub(crate) fn suffix(&self) -> usize {
        TYPES.iter().position(|&t| t == self.ty).expect("checked at upload")
    }
}
