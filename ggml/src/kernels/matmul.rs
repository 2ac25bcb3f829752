//! Matrix products over quantized weights: `out[t][r] = Σ_k W[r][k] · x[t][k]` for a weight
//! matrix W of `rows` rows of `n` elements (any type with kernels) and `n_tokens` activation
//! rows, quantized once to the weight type's dot type.
//!
//! Work is split across threads by blocks of output rows. Inside a block, each weight row is
//! dotted with every token before moving on, so with several tokens (prompt processing) a
//! weight row is read from memory once and reused from L1.

use super::tile::{Tiles, ROWS};
use super::{dot_type, DotFn, Isa};
use crate::parallel::{for_each_chunk_mut, for_each_column_block_mut};
use crate::quants::{quantize_row, QuantError};
use crate::types::GgmlType;

/// Activation rows quantized to a dot type, in a buffer aligned for every block struct.
///
/// Rows `0..tiled` are prompt tokens, the rest generated tokens. A prompt token goes through the
/// row-group tiles and a generated one through the plain dot kernels, whatever else is in the
/// matmul, so a token's results depend on its role and never on its batch: `gemma run` decodes
/// one token at a time and reads a prompt in chunks, `gemma serve` runs several users' decode
/// tokens and prompt chunks in one pass, and both give a token the same bits. (The tiles pay
/// off from a few tokens on; for one token they are about twice slower than the dot kernels.)
pub struct QuantizedActs {
    pub ty: GgmlType,
    /// Elements per row.
    pub n: usize,
    pub n_rows: usize,
    /// Leading rows that take the tiles (see above). [`QuantizedActs::new`]: every row when
    /// there are several (a prompt chunk), none for one row alone (a generated token).
    pub tiled: usize,
    row_bytes: usize,
    buf: Vec<u64>,
}

impl QuantizedActs {
    /// Quantize `x` (`n_rows` rows of `n` f32) for dot products with weights of type `w_ty`.
    pub fn new(w_ty: GgmlType, x: &[f32], n: usize) -> Result<QuantizedActs, QuantError> {
        let ty = dot_type(w_ty).ok_or(QuantError::Unsupported(w_ty))?;
        let row_bytes =
            ty.row_bytes(n as u64).ok_or(QuantError::PartialBlock { ty, n, block: ty.block_size() })? as usize;
        assert!(n > 0 && x.len().is_multiple_of(n), "{} activations are not whole rows of {n}", x.len());
        let n_rows = x.len() / n;
        let tiled = if n_rows >= 2 { n_rows } else { 0 };
        let mut acts =
            QuantizedActs { ty, n, n_rows, tiled, row_bytes, buf: vec![0u64; (row_bytes * n_rows).div_ceil(8)] };
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut acts.buf)[..row_bytes * n_rows];
        // Rows in parallel, a few per task (a prompt batch is thousands of rows of experts).
        const ROWS_PER_TASK: usize = 8;
        let failed = std::sync::Mutex::new(None);
        for_each_chunk_mut(bytes, ROWS_PER_TASK * row_bytes, |task, out| {
            let x = &x[task * ROWS_PER_TASK * n..];
            for (x, out) in x.chunks_exact(n).zip(out.chunks_exact_mut(row_bytes)) {
                if let Err(e) = quantize_row(ty, x, out) {
                    *failed.lock().unwrap() = Some(e);
                }
            }
        });
        match failed.into_inner().unwrap() {
            Some(e) => Err(e),
            None => Ok(acts),
        }
    }

    /// `self` with its first `tiled` rows taken as prompt tokens and the rest as generated ones.
    pub fn with_tiled(mut self, tiled: usize) -> QuantizedActs {
        assert!(tiled <= self.n_rows, "{tiled} prompt rows of {}", self.n_rows);
        self.tiled = tiled;
        self
    }

    /// The rows `which` of `self`, in that order: activations quantized once and shared by
    /// several products (the experts of a token). Each keeps its role; the prompt rows among
    /// them must come first.
    pub fn gather(&self, which: impl ExactSizeIterator<Item = usize>) -> QuantizedActs {
        let n_rows = which.len();
        let mut acts = QuantizedActs {
            ty: self.ty,
            n: self.n,
            n_rows,
            tiled: 0,
            row_bytes: self.row_bytes,
            buf: vec![0u64; (self.row_bytes * n_rows).div_ceil(8)],
        };
        let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut acts.buf)[..self.row_bytes * n_rows];
        for (i, (out, t)) in bytes.chunks_exact_mut(self.row_bytes).zip(which).enumerate() {
            out.copy_from_slice(self.row(t));
            if t < self.tiled {
                assert_eq!(acts.tiled, i, "the prompt rows come first");
                acts.tiled += 1;
            }
        }
        acts
    }

    /// The quantized bytes of all rows.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.buf)[..self.n_rows * self.row_bytes]
    }

    /// The quantized bytes of row `t`.
    pub fn row(&self, t: usize) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.buf)[t * self.row_bytes..(t + 1) * self.row_bytes]
    }
}

/// Output rows per unit of parallel work: large enough to amortize scheduling, small enough to
/// balance a few threads over the smallest Gemma 4 matrices (704 rows).
const ROWS_PER_TASK: usize = 16;

/// The activations a task's row groups take at a time (see [`dot_rows_with`]), about a core's
/// L2: measured on the vision tower's 4304-wide F16 rows (2304 tokens), 180 -> 147 ms against
/// no spans and 163 ms with 256 KiB; the same as no spans on the text model's 512-token prompts.
const SPAN_BYTES: usize = 1 << 20;

/// Where [`dot_rows_with`] writes `dot(W[r], a[t])`.
pub(crate) enum Products<'a> {
    /// `[r * n_tokens + t]`: row by row.
    ByRow(&'a mut [f32]),
    /// `[t * rows + r]`: token by token, as a matmul returns them. Each task transposes its
    /// rows' results from a scratch while they are in cache, so no whole-size buffer is
    /// written twice.
    ByToken(&'a mut [f32]),
}

thread_local! {
    /// A task's rows, row by row, on their way to a [`Products::ByToken`] output.
    static TASK_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `dot(W[r], a[t])` for every weight row `r` and token `t`, over threads by blocks of rows.
/// With `tiles`, the first `tiled` tokens (prompt tokens, see [`QuantizedActs`]) go through the
/// type's row-group kernel for whole groups of [`ROWS`] rows (each weight block decoded once
/// for several tokens), on a copy of their activations in its layout. The rest (generated
/// tokens, the rows left over after the groups, and everything of a type without tile kernels)
/// goes pair by pair, each weight row dotted with every such token while it is in L1. Which
/// path a (row, token) pair takes depends only on the row count and the token's role.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_rows_with<W: Sync, A: Sync + Copy>(
    dot: DotFn<W, A>,
    tiles: Option<Tiles<W, A>>,
    w: &[W],
    rows: usize,
    a: &[A],
    n_tokens: usize,
    tiled: usize,
    out: Products<'_>,
) {
    let stride = n_tokens.max(1);
    let (w_blocks, a_blocks) = (w.len() / rows.max(1), a.len() / stride);
    let w_row = |r: usize| &w[r * w_blocks..(r + 1) * w_blocks];
    let a_row = |t: usize| &a[t * a_blocks..(t + 1) * a_blocks];
    let tiles = tiles.filter(|_| tiled > 0);
    let tiled = if tiles.is_some() { tiled.min(n_tokens) } else { 0 };
    let prepared: Option<Vec<A>> = tiles.as_ref().and_then(|tiles| tiles.prepare).map(|prepare| {
        let mut copy = a[..tiled * a_blocks].to_vec();
        prepare(&mut copy, a_blocks);
        copy
    });
    let tile_acts = prepared.as_deref().unwrap_or(&a[..tiled * a_blocks]);
    // The prompt tokens go through a task's row groups a span at a time, each span's
    // activations (about SPAN_BYTES) staying in cache for all the groups; a token's results
    // do not depend on the tokens beside it.
    let a_row_bytes = std::mem::size_of_val(a) / stride;
    let span = (SPAN_BYTES / a_row_bytes.max(1)).max(16).next_multiple_of(super::tile::TOKENS);
    // Rows `first..` (as many as `chunk` holds), row by row.
    let task = |first: usize, chunk: &mut [f32]| {
        let mut tiled_rows = 0;
        if let Some(tiles) = tiles.as_ref() {
            tiled_rows = chunk.len() / stride / ROWS * ROWS;
            // The group kernel writes `[ROWS][tiled]`; beside generated tokens that is a
            // scratch copied into the rows' first `tiled` places.
            let mut scratch = vec![0f32; ROWS * span.min(tiled)];
            for t0 in (0..tiled).step_by(span) {
                let t1 = (t0 + span).min(tiled);
                let acts = &tile_acts[t0 * a_blocks..t1 * a_blocks];
                let scratch = &mut scratch[..ROWS * (t1 - t0)];
                for r0 in (0..tiled_rows).step_by(ROWS) {
                    let w_group: [&[W]; ROWS] = std::array::from_fn(|i| w_row(first + r0 + i));
                    // SAFETY: `group` came from `pick_tile!`, which checked the CPU's features.
                    unsafe { (tiles.group)(&w_group, acts, t1 - t0, scratch) };
                    let out = &mut chunk[r0 * n_tokens..(r0 + ROWS) * n_tokens];
                    for (row, got) in out.chunks_exact_mut(n_tokens).zip(scratch.chunks_exact(t1 - t0)) {
                        row[t0..t1].copy_from_slice(got);
                    }
                }
            }
        }
        for (r, per_token) in chunk.chunks_mut(stride).enumerate() {
            let from = if r < tiled_rows { tiled } else { 0 };
            for (t, y) in per_token.iter_mut().enumerate().take(n_tokens).skip(from) {
                // SAFETY: `dot` came from `pick!`, which checked the CPU's features.
                *y = unsafe { dot(w_row(first + r), a_row(t)) };
            }
        }
    };
    match out {
        Products::ByRow(by_row) => {
            for_each_chunk_mut(by_row, ROWS_PER_TASK * stride, |i, chunk| task(i * ROWS_PER_TASK, chunk))
        }
        Products::ByToken(by_token) => for_each_column_block_mut(by_token, rows, ROWS_PER_TASK, |_, block| {
            TASK_ROWS.with_borrow_mut(|chunk| {
                let first = block.first();
                let n_rows = ROWS_PER_TASK.min(rows - first);
                chunk.resize(n_rows * stride, 0.0);
                task(first, chunk);
                for t in 0..n_tokens {
                    for (r, y) in block.row_mut(t).iter_mut().enumerate() {
                        *y = chunk[r * stride + t];
                    }
                }
            })
        }),
    }
}

/// `out[t * rows + r] = W[r] · acts[t]` for weights `w` (`rows` rows of type `ty`).
pub fn matmul(
    ty: GgmlType,
    isa: Isa,
    w: &[u8],
    rows: usize,
    acts: &QuantizedActs,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let n = acts.n;
    let w_row_bytes =
        ty.row_bytes(n as u64).ok_or(QuantError::PartialBlock { ty, n, block: ty.block_size() })? as usize;
    if w.len() != rows * w_row_bytes {
        return Err(QuantError::ByteLength { ty, n: rows * n, expected: rows * w_row_bytes, got: w.len() });
    }
    assert_eq!(out.len(), rows * acts.n_rows, "output holds rows x tokens floats");
    if rows == 0 || acts.n_rows == 0 {
        return Ok(());
    }
    // One token: row-major and token-major are the same layout.
    let out = if acts.n_rows == 1 { Products::ByRow(out) } else { Products::ByToken(out) };
    super::dot_rows(ty, isa, w, rows, acts, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::dequantize_row;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn matmul_is_every_row_dotted_with_every_token() {
        // 37 rows: two whole tasks of rows and a narrow one, each written token by token.
        let (rows, n, tokens) = (37, 256, 21);
        let w_f32 = values(rows * n, 1);
        let mut w = vec![0u8; rows * GgmlType::Q8_0.row_bytes(n as u64).unwrap() as usize];
        quantize_row(GgmlType::Q8_0, &w_f32, &mut w).unwrap();
        let x = values(tokens * n, 2);
        let acts = QuantizedActs::new(GgmlType::Q8_0, &x, n).unwrap();
        let mut out = vec![0f32; rows * tokens];
        matmul(GgmlType::Q8_0, Isa::best(), &w, rows, &acts, &mut out).unwrap();

        // Against a plain f32 product of the dequantized operands.
        let mut w_deq = vec![0f32; rows * n];
        dequantize_row(GgmlType::Q8_0, &w, &mut w_deq).unwrap();
        let mut x_deq = vec![0f32; tokens * n];
        for t in 0..tokens {
            dequantize_row(GgmlType::Q8_0, acts.row(t), &mut x_deq[t * n..(t + 1) * n]).unwrap();
        }
        for t in 0..tokens {
            for r in 0..rows {
                let want: f32 = (0..n).map(|k| w_deq[r * n + k] * x_deq[t * n + k]).sum();
                let got = out[t * rows + r];
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "token {t} row {r}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn tiled_matmul_matches_the_scalar_path() {
        // 37 rows and 11 tokens: whole tiles plus leftover rows and tokens in every task.
        let (rows, tokens) = (37, 11);
        for (ty, n) in [
            (GgmlType::Q8_0, 96),
            (GgmlType::Q5_0, 96),
            (GgmlType::Q4_K, 512),
            (GgmlType::Q6_K, 512),
            (GgmlType::F32, 72),
            (GgmlType::F16, 72),
            (GgmlType::BF16, 72),
        ] {
            let mut w = vec![0u8; rows * ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &values(rows * n, 3), &mut w).unwrap();
            let acts = QuantizedActs::new(ty, &values(tokens * n, 4), n).unwrap();
            let (mut got, mut want) = (vec![0f32; rows * tokens], vec![0f32; rows * tokens]);
            matmul(ty, Isa::best(), &w, rows, &acts, &mut got).unwrap();
            matmul(ty, Isa::Scalar, &w, rows, &acts, &mut want).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{ty:?} [{i}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_tokens_results_depend_on_its_role_not_its_batch() {
        // Continuous batching runs one slot's token beside others': its results must be the bits
        // it gets alone. A generated token alone (one row, the dot kernels) equals it among two
        // prompt rows and two other generated ones; a prompt token in a chunk of two equals it
        // in a chunk of five.
        let rows = 37;
        let types = [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::Q4_0];
        for (ty, n) in types.into_iter().zip([96, 96, 512, 512, 96, 96]) {
            let mut w = vec![0u8; rows * ty.row_bytes(n as u64).unwrap() as usize];
            quantize_row(ty, &values(rows * n, 3), &mut w).unwrap();
            let x = values(5 * n, 4);
            let run = |acts: &QuantizedActs| {
                let mut out = vec![0f32; rows * acts.n_rows];
                matmul(ty, Isa::best(), &w, rows, acts, &mut out).unwrap();
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            };
            let mixed = run(&QuantizedActs::new(ty, &x, n).unwrap().with_tiled(2));
            let prompt = run(&QuantizedActs::new(ty, &x, n).unwrap());
            for t in 0..5 {
                let alone = QuantizedActs::new(ty, &x[t * n..(t + 1) * n], n).unwrap();
                let got = &mixed[t * rows..(t + 1) * rows];
                if t < 2 {
                    let pair = run(&QuantizedActs::new(ty, &x[..2 * n], n).unwrap());
                    assert_eq!(pair[t * rows..(t + 1) * rows], *got, "{ty:?} prompt token {t}");
                    assert_eq!(prompt[t * rows..(t + 1) * rows], *got, "{ty:?} prompt token {t}");
                } else {
                    assert_eq!(run(&alone), got, "{ty:?} generated token {t}");
                }
            }
        }
    }

    #[test]
    fn wrong_weight_size_is_an_error() {
        let acts = QuantizedActs::new(GgmlType::Q8_0, &[0.5; 64], 32).unwrap();
        let err = matmul(GgmlType::Q8_0, Isa::Scalar, &[0u8; 33], 1, &acts, &mut [0.0; 2]).unwrap_err();
        assert_eq!(err, QuantError::ByteLength { ty: GgmlType::Q8_0, n: 32, expected: 34, got: 33 });
    }
}
