//! Streams the planned tensors into the GGUF writer: one tensor at a time, each in chunks of
//! rows that the threads of the current rayon pool convert to f32 and quantize side by side.
//! Memory stays bounded whatever the model's size: one output chunk, one f32 scratch row block
//! per thread, and the source pages of the current chunk (released from the process once
//! written).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ggml::GgmlType;
use half::f16;
use rayon::prelude::*;

use crate::gguf_out::StreamWriter;
use crate::plan::{Plan, PlannedTensor, Source};
use crate::safetensors::Dtype;
use crate::ConvertError;
use crate::Input;

/// Elements per chunk handed to the threads (64 MiB of f32).
const CHUNK_ELEMENTS: u64 = 16 << 20;
/// Elements one thread converts at a time (1 MiB of f32 scratch).
const TASK_ELEMENTS: u64 = 256 << 10;

/// What the writer reports as it goes.
pub enum Event<'a> {
    /// Tensor `index` (of the plan) begins.
    Tensor { index: usize, tensor: &'a PlannedTensor },
    /// `bytes` more of the input were converted.
    Progress { bytes: u64 },
}

/// Converts every tensor of `plan` into a GGUF at `out`, through a temporary file in its
/// directory that is renamed over `out` only when everything was written. `cancel`, checked
/// between chunks, stops the run with [`ConvertError::Interrupted`] (the temporary file is
/// removed).
pub fn write(
    plan: &Plan,
    input: &Input,
    out: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(Event),
) -> Result<(), ConvertError> {
    let infos = plan.tensor_infos();
    let mut writer = StreamWriter::create(out, &plan.metadata, &infos)?;
    for (index, t) in plan.tensors.iter().enumerate() {
        report(Event::Tensor { index, tensor: t });
        let row_len = t.row_len();
        let row_out = t.ty.row_bytes(row_len).expect("planned types divide the rows") as usize;
        let rows = t.n_rows();
        let chunk_rows = (CHUNK_ELEMENTS / row_len).clamp(1, rows.max(1));
        let mut r0 = 0;
        while r0 < rows {
            if cancel.load(Ordering::Relaxed) {
                return Err(ConvertError::Interrupted);
            }
            let r1 = (r0 + chunk_rows).min(rows);
            let n_out = (r1 - r0) as usize * row_out;
            // u64 words keep every block type's alignment.
            let mut buf = vec![0u64; n_out.div_ceil(8)];
            let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n_out];
            let in_bytes = convert_rows(t, input, r0, r1, bytes)?;
            writer.write(bytes)?;
            match (&t.source, input) {
                (Source::Checkpoint { tensor, dtype, .. }, Input::Checkpoint(weights)) => {
                    let size = dtype.size().unwrap_or(4) as u64;
                    let entry = weights.entry(*tensor);
                    let f = &weights.files[tensor.file];
                    f.release(entry.start + (r0 * row_len * size) as usize, ((r1 - r0) * row_len * size) as usize);
                }
                (Source::Gguf { index, ty }, Input::Gguf(g)) => {
                    let row_in = ty.row_bytes(row_len).unwrap_or(0) as usize;
                    let (_, start) = g.data(*index);
                    g.release(start + r0 as usize * row_in, (r1 - r0) as usize * row_in);
                }
                _ => {}
            }
            report(Event::Progress { bytes: in_bytes });
            r0 = r1;
        }
    }
    writer.finish()?;
    Ok(())
}

/// Converts rows `[r0, r1)` of `t` into `out` (their bytes in the output type), in parallel.
/// Returns the input bytes consumed.
fn convert_rows(t: &PlannedTensor, input: &Input, r0: u64, r1: u64, out: &mut [u8]) -> Result<u64, ConvertError> {
    let row_len = t.row_len() as usize;
    let row_out = out.len() / (r1 - r0) as usize;
    let task_rows = ((TASK_ELEMENTS as usize) / row_len).max(1);
    let ty = t.ty;
    if let (Source::Gguf { index, ty: src_ty }, Input::Gguf(g)) = (&t.source, input) {
        let row_in = src_ty.row_bytes(row_len as u64).expect("GGUF rows are whole blocks") as usize;
        let src = &g.data(*index).0[r0 as usize * row_in..r1 as usize * row_in];
        if *src_ty == ty {
            // Kept as it is: copied, as llama-quantize does.
            out.copy_from_slice(src);
        } else {
            out.par_chunks_mut(task_rows * row_out).enumerate().try_for_each(|(i, dst)| {
                let n_rows = dst.len() / row_out;
                let src = &src[i * task_rows * row_in..(i * task_rows + n_rows) * row_in];
                let mut x = vec![0f32; n_rows * row_len];
                ggml::quants::dequantize_row(*src_ty, src, &mut x)
                    .map_err(|e| ConvertError::Plan(format!("reading {}: {e}", t.name)))?;
                quantize(ty, &x, dst)
            })?;
        }
        return Ok(src.len() as u64);
    }
    let (src, dtype, shift): (&[u8], Dtype, f32) = match (&t.source, input) {
        (Source::Values(v), _) => (bytemuck::cast_slice(v), Dtype::F32, 0.0),
        (Source::Checkpoint { tensor, dtype, shift, .. }, Input::Checkpoint(weights)) => {
            (weights.data(*tensor), dtype.clone(), *shift)
        }
        _ => unreachable!("a plan's sources come from its own input"),
    };
    let size = dtype.size().unwrap_or(4);
    let begin = r0 as usize * row_len * size;
    let end = r1 as usize * row_len * size;
    let src = &src[begin..end];
    out.par_chunks_mut(task_rows * row_out).enumerate().try_for_each(|(i, dst)| {
        let n_rows = dst.len() / row_out;
        let start = i * task_rows * row_len * size;
        let src = &src[start..start + n_rows * row_len * size];
        let mut x = vec![0f32; n_rows * row_len];
        to_f32(&dtype, src, &mut x);
        if shift != 0.0 {
            // The converter adds in the tensor's own dtype: f32 for BF16/F32 sources (it widens
            // BF16 first), f16 for F16 sources (rounded back to f16).
            if dtype == Dtype::F16 {
                x.iter_mut().for_each(|v| *v = f16::from_f32(*v + shift).to_f32());
            } else {
                x.iter_mut().for_each(|v| *v += shift);
            }
        }
        quantize(ty, &x, dst)
    })?;
    Ok((end - begin) as u64)
}

/// Little-endian elements of `dtype` to f32 (exact for all three).
fn to_f32(dtype: &Dtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Dtype::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        Dtype::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        Dtype::Other(_) => unreachable!("the plan refuses other element types"),
    }
}

fn quantize(ty: GgmlType, x: &[f32], dst: &mut [u8]) -> Result<(), ConvertError> {
    ggml::quants::quantize_row(ty, x, dst).map_err(|e| ConvertError::Plan(format!("quantizing to {ty}: {e}")))
}
