//! A weight matrix in VRAM: the rows of a GGUF tensor, uploaded as their raw block bytes (the
//! shaders read any block at any byte offset, so nothing is repacked), split by rows across
//! buffers when the tensor is larger than one storage-buffer binding may be (lavapipe: 128
//! MiB, which Gemma 3 270M's 262144-row embedding already exceeds).

use std::sync::Arc;

use super::device::{Buffer, Gpu};
use super::ops::Commands;
use super::VkError;
use crate::GgmlType;

/// Rows `row0 .. row0 + n_rows` of a matrix, from the start of one buffer (shared when the
/// matrix is a view over buffers that hold different layers' experts in turn).
pub struct Part {
    pub buffer: Arc<Buffer>,
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

/// The shape of a stack of `n_expert` matrices of `rows` rows of `n_in` elements of `ty` (ggml
/// dims `{n_in, rows, n_expert}`): the experts of one MoE layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stack {
    pub ty: GgmlType,
    pub n_in: usize,
    pub rows: usize,
    pub n_expert: usize,
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

    /// Uploads a stack of experts, never splitting an expert across parts.
    pub fn upload_stack(
        gpu: &Gpu,
        name: &str,
        s: Stack,
        bytes: &[u8],
        max_part_bytes: Option<u64>,
    ) -> Result<GpuMatrix, VkError> {
        GpuMatrix::upload_grouped(gpu, name, s.ty, s.n_in, s.rows * s.n_expert, s.rows, bytes, max_part_bytes)
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
        let (row_bytes, rows_per_part) = layout(gpu, name, ty, n_in, n_out, group, max_part_bytes)?;
        if bytes.len() != row_bytes * n_out {
            return Err(VkError::Shape(format!("{name}: {} bytes for {n_out} rows of {row_bytes}", bytes.len())));
        }
        let mut parts = Vec::new();
        for row0 in (0..n_out).step_by(rows_per_part) {
            let n_rows = rows_per_part.min(n_out - row0);
            let data = &bytes[row0 * row_bytes..(row0 + n_rows) * row_bytes];
            let buffer = gpu.buffer(data.len() as u64, name)?;
            gpu.upload(&buffer, 0, data)?;
            parts.push(Part { buffer: Arc::new(buffer), row0, n_rows });
        }
        Ok(GpuMatrix { ty, n_in, n_out, row_bytes, group, parts })
    }

    /// Bytes of each part of a stack (as [`upload_stack`](Self::upload_stack) would split
    /// it), in order.
    pub fn stack_parts(gpu: &Gpu, name: &str, s: Stack) -> Result<Vec<u64>, VkError> {
        let n_out = s.rows * s.n_expert;
        let (row_bytes, rows_per_part) = layout(gpu, name, s.ty, s.n_in, n_out, s.rows, None)?;
        Ok((0..n_out).step_by(rows_per_part).map(|row0| (rows_per_part.min(n_out - row0) * row_bytes) as u64).collect())
    }

    /// A stack laid out over `buffers` as [`stack_parts`](Self::stack_parts) sizes it (each
    /// buffer at least as large as its part), with nothing uploaded: its bytes arrive with
    /// [`copy_from`](Self::copy_from) before each use.
    pub fn stack_over(gpu: &Gpu, name: &str, s: Stack, buffers: &[Arc<Buffer>]) -> Result<GpuMatrix, VkError> {
        let (ty, n_in, rows) = (s.ty, s.n_in, s.rows);
        let n_out = rows * s.n_expert;
        let (row_bytes, rows_per_part) = layout(gpu, name, ty, n_in, n_out, rows, None)?;
        let starts: Vec<usize> = (0..n_out).step_by(rows_per_part).collect();
        if buffers.len() < starts.len() {
            return Err(VkError::Shape(format!("{name}: {} buffers for {} parts", buffers.len(), starts.len())));
        }
        let mut parts = Vec::new();
        for (&row0, buffer) in starts.iter().zip(buffers) {
            let n_rows = rows_per_part.min(n_out - row0);
            if buffer.size < (n_rows * row_bytes) as u64 {
                return Err(VkError::Shape(format!(
                    "{name}: a part of {} bytes in {}",
                    n_rows * row_bytes,
                    buffer.size
                )));
            }
            parts.push(Part { buffer: buffer.clone(), row0, n_rows });
        }
        Ok(GpuMatrix { ty, n_in, n_out, row_bytes, group: rows, parts })
    }

    /// Records the copy of the matrix's bytes (its rows in order, as in the GGUF tensor) from
    /// `src` at byte `offset` into its parts.
    pub fn copy_from(&self, c: &mut Commands, src: &Buffer, offset: u64) -> Result<(), VkError> {
        for part in &self.parts {
            let bytes = (part.n_rows * self.row_bytes) as u64;
            c.copy(src, offset + (part.row0 * self.row_bytes) as u64, &part.buffer, 0, bytes)?;
        }
        Ok(())
    }

    /// Records the copy of `n_rows` rows from `src` at byte `offset` into rows `row0 ..` of the
    /// matrix (one expert of a stack into its slot: rows that lie in one part).
    pub fn copy_rows_from(
        &self,
        c: &mut Commands,
        src: &Buffer,
        offset: u64,
        row0: usize,
        n_rows: usize,
    ) -> Result<(), VkError> {
        let part = self.parts.iter().find(|p| p.row0 <= row0 && row0 + n_rows <= p.row0 + p.n_rows);
        let Some(part) = part else {
            return Err(VkError::Shape(format!("rows {row0}..{} are not within one part", row0 + n_rows)));
        };
        let at = ((row0 - part.row0) * self.row_bytes) as u64;
        c.copy(src, offset, &part.buffer, at, (n_rows * self.row_bytes) as u64)
    }

    /// Bytes of the matrix's data.
    pub fn bytes(&self) -> u64 {
        (self.n_out * self.row_bytes) as u64
    }

    /// The shader variant suffix of this matrix's type.
    pub(crate) fn suffix(&self) -> usize {
        TYPES.iter().position(|&t| t == self.ty).expect("checked at upload")
    }
}

/// The row size of `n_out` rows of `n_in` elements of `ty`, and how many rows (whole groups
/// of `group`) one part holds: at most `max_part_bytes` (when given) and what one buffer
/// binding and allocation may be.
fn layout(
    gpu: &Gpu,
    name: &str,
    ty: GgmlType,
    n_in: usize,
    n_out: usize,
    group: usize,
    max_part_bytes: Option<u64>,
) -> Result<(usize, usize), VkError> {
    if !TYPES.contains(&ty) {
        return Err(VkError::Shape(format!("{name}: {} weights have no GPU kernel yet", ty.name())));
    }
    let row_bytes = ty.row_bytes(n_in as u64).filter(|_| n_in.is_multiple_of(4));
    let Some(row_bytes) = row_bytes else {
        return Err(VkError::Shape(format!("{name}: rows of {n_in} {} elements do not suit the GPU", ty.name())));
    };
    let row_bytes = row_bytes as usize;
    let info = gpu.info();
    // Less 16 bytes: buffers are rounded up to whole 16-byte words.
    let limit = max_part_bytes.unwrap_or(u64::MAX).min(info.max_buffer_range - 16).min(info.max_allocation);
    let rows_per_part = limit as usize / row_bytes / group * group;
    if rows_per_part == 0 {
        return Err(VkError::Shape(format!(
            "{name}: {group} rows of {row_bytes} bytes do not fit one buffer of at most {limit} bytes"
        )));
    }
    Ok((row_bytes, rows_per_part.min(n_out.max(1))))
}
