//! The Mixture-of-Experts feed-forward (ggml's `mul_mat_id` + GELU + down + weighted sum) for
//! a batch of tokens, each routed to a few of many experts:
//!
//! ```text
//! for each token t, for each chosen (expert e, weight w):
//!     gu    = gate_up[e] · x[t]                 // [2 I]: rows 0..I gate, I..2I up
//!     a     = gelu_tanh(gu[0..I]) * gu[I..2I]   // [I]
//!     out[t] += w * (down[e] · a)               // [H]
//! ```
//!
//! Pairs are grouped by expert so each chosen expert's weights stream from memory once per
//! batch, against all of its tokens at once; the inputs are quantized once per token, for all
//! of its experts.

use super::matmul::{matmul, QuantizedActs};
use super::Isa;
use crate::ops::gelu::gelu_mul_with;
use crate::parallel::for_each_chunk_mut;
use crate::quants::QuantError;
use crate::types::GgmlType;

/// A stack of expert matrices: GGUF `{n, rows, n_expert}`, expert `e` is `rows` rows of `n`
/// elements of type `ty`.
#[derive(Clone, Copy)]
pub struct Experts<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_expert: usize,
    pub rows: usize,
    pub n: usize,
}

impl<'a> Experts<'a> {
    fn expert_bytes(&self) -> usize {
        self.rows * self.ty.row_bytes(self.n as u64).unwrap_or(0) as usize
    }

    fn check(&self) -> Result<(), QuantError> {
        let ty = self.ty;
        let row =
            ty.row_bytes(self.n as u64).ok_or(QuantError::PartialBlock { ty, n: self.n, block: ty.block_size() })?;
        let expected = self.n_expert * self.rows * row as usize;
        if self.data.len() != expected {
            let n = self.n_expert * self.rows * self.n;
            return Err(QuantError::ByteLength { ty, n, expected, got: self.data.len() });
        }
        Ok(())
    }

    /// Expert `e`'s matrix.
    pub fn expert(&self, e: usize) -> &'a [u8] {
        let size = self.expert_bytes();
        &self.data[e * size..(e + 1) * size]
    }
}

/// Gate and up projections: one fused tensor (`ffn_gate_up_exps`, gate rows first) or two.
#[derive(Clone, Copy)]
pub enum GateUp<'a> {
    Fused(Experts<'a>),
    Split { gate: Experts<'a>, up: Experts<'a> },
}

impl GateUp<'_> {
    /// The expert FFN width I.
    fn width(&self) -> usize {
        match self {
            GateUp::Fused(gu) => gu.rows / 2,
            GateUp::Split { gate, .. } => gate.rows,
        }
    }

    fn input_type(&self) -> GgmlType {
        match self {
            GateUp::Fused(gu) => gu.ty,
            GateUp::Split { gate, .. } => gate.ty,
        }
    }
}

/// `out[t] += Σ_k weight * expert_ffn(x[t])` over each token's `(expert, weight)` choices.
/// `x` is `n_tokens × H` (the experts' input, already normed), `choices` is `n_tokens × k`,
/// `out` is `n_tokens × H`. A choice of weight 0 is skipped (its expert is not run for that
/// token): how a caller hands the CPU only the choices another device does not run. The first
/// `prompt_tokens` rows of `x` are prompt tokens, the rest generated ones (which kernels run
/// them: [`QuantizedActs`]).
#[allow(clippy::too_many_arguments)]
pub fn moe_ffn(
    isa: Isa,
    gate_up: GateUp,
    down: Experts,
    x: &[f32],
    choices: &[(usize, f32)],
    k: usize,
    prompt_tokens: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let h = down.rows;
    let n_tokens = x.len() / h.max(1);
    match gate_up {
        GateUp::Fused(gu) => gu.check()?,
        GateUp::Split { gate, up } => {
            gate.check()?;
            up.check()?;
        }
    }
    down.check()?;
    assert_eq!(choices.len(), n_tokens * k, "k choices per token");
    assert_eq!(out.len(), n_tokens * h, "one output row per token");
    let n_expert = down.n_expert;
    if let Some(&(e, _)) = choices.iter().find(|(e, _)| *e >= n_expert) {
        panic!("expert {e} chosen, but there are only {n_expert}");
    }

    // Group the (token, weight) pairs of each expert.
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_expert];
    for (t, row) in choices.chunks_exact(k.max(1)).enumerate() {
        for &(e, w) in row.iter().filter(|&&(_, w)| w != 0.0) {
            by_expert[e].push((t, w));
        }
    }

    // Each token's input quantized once, for all of its experts.
    let x_acts = QuantizedActs::new(gate_up.input_type(), x, h)?.with_tiled(prompt_tokens);
    let x_up_acts = match gate_up {
        GateUp::Split { gate, up } if up.ty != gate.ty => {
            Some(QuantizedActs::new(up.ty, x, h)?.with_tiled(prompt_tokens))
        }
        _ => None,
    };
    // With at least as many chosen experts as threads, the experts run side by side, each
    // streaming its own weights on one thread (for one token: eight experts over the threads
    // instead of sixteen small parallel matmuls in a row). With fewer, one after another,
    // each matmul split over all threads.
    let active: Vec<(usize, &[(usize, f32)])> =
        by_expert.iter().enumerate().filter(|(_, p)| !p.is_empty()).map(|(e, p)| (e, &p[..])).collect();
    let run =
        |&(e, pairs): &(usize, &[(usize, f32)])| expert_ffn(isa, gate_up, down, e, pairs, &x_acts, x_up_acts.as_ref());
    let outputs: Vec<Result<Vec<f32>, QuantError>> = if active.len() >= crate::parallel::threads() {
        // Longest first (tasks are claimed in order), so no thread is left with a big expert
        // at the end while the others wait.
        let mut order: Vec<usize> = (0..active.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(active[i].1.len()));
        let mut by_size: Vec<_> = order.iter().map(|_| Ok(Vec::new())).collect();
        for_each_chunk_mut(&mut by_size, 1, |j, slot| slot[0] = run(&active[order[j]]));
        let mut outputs: Vec<_> = active.iter().map(|_| Ok(Vec::new())).collect();
        for (&i, y) in order.iter().zip(by_size) {
            outputs[i] = y;
        }
        outputs
    } else {
        active.iter().map(run).collect()
    };
    let outputs: Vec<Vec<f32>> = outputs.into_iter().collect::<Result<_, _>>()?;
    // Summed in expert order, as a sequential loop would.
    for (&(_, pairs), y) in active.iter().zip(&outputs) {
        for (i, &(t, w)) in pairs.iter().enumerate() {
            for (o, &v) in out[t * h..(t + 1) * h].iter_mut().zip(&y[i * h..(i + 1) * h]) {
                *o += w * v;
            }
        }
    }
    Ok(())
}

/// Expert `e` on its tokens `pairs` (token, weight): `[pairs.len()][H]`, unweighted.
/// `x_acts` holds every token's quantized input (`x_up_acts` for a split up projection of
/// another type).
fn expert_ffn(
    isa: Isa,
    gate_up: GateUp,
    down: Experts,
    e: usize,
    pairs: &[(usize, f32)],
    x_acts: &QuantizedActs,
    x_up_acts: Option<&QuantizedActs>,
) -> Result<Vec<f32>, QuantError> {
    let (width, h) = (gate_up.width(), down.rows);
    let acts = x_acts.gather(pairs.iter().map(|&(t, _)| t));
    let m = pairs.len();
    // gate and up outputs, token-major: [m][width] each.
    let (mut gate, mut up) = (vec![0f32; m * width], vec![0f32; m * width]);
    match gate_up {
        GateUp::Fused(gu) => {
            let mut both = vec![0f32; m * 2 * width];
            matmul(gu.ty, isa, gu.expert(e), 2 * width, &acts, &mut both)?;
            for t in 0..m {
                let row = &both[t * 2 * width..(t + 1) * 2 * width];
                gate[t * width..(t + 1) * width].copy_from_slice(&row[..width]);
                up[t * width..(t + 1) * width].copy_from_slice(&row[width..]);
            }
        }
        GateUp::Split { gate: g, up: u } => {
            matmul(g.ty, isa, g.expert(e), width, &acts, &mut gate)?;
            let up_acts = x_up_acts.map(|all| all.gather(pairs.iter().map(|&(t, _)| t)));
            matmul(u.ty, isa, u.expert(e), width, up_acts.as_ref().unwrap_or(&acts), &mut up)?;
        }
    }
    gelu_mul_with(isa, &mut gate, &up);
    let hidden_acts = QuantizedActs::new(down.ty, &gate, width)?.with_tiled(acts.tiled);
    let mut y = vec![0f32; m * h];
    matmul(down.ty, isa, down.expert(e), h, &hidden_acts, &mut y)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::gelu::gelu_f32;
    use crate::quants::{dequantize_row, quantize_row};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed.wrapping_mul(97)) % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn quantized(ty: GgmlType, x: &[f32]) -> Vec<u8> {
        let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
        quantize_row(ty, x, &mut q).unwrap();
        q
    }

    /// The same computation token by token, expert by expert, on dequantized f32 weights.
    fn reference(
        gu: &[f32],
        down: &[f32],
        h: usize,
        width: usize,
        x: &[f32],
        choices: &[(usize, f32)],
        k: usize,
    ) -> Vec<f32> {
        let n_tokens = x.len() / h;
        let mut out = vec![0f32; n_tokens * h];
        for t in 0..n_tokens {
            let xt = &x[t * h..(t + 1) * h];
            for &(e, w) in &choices[t * k..(t + 1) * k] {
                let gu_e = &gu[e * 2 * width * h..(e + 1) * 2 * width * h];
                let proj = |r: usize| -> f32 { (0..h).map(|i| gu_e[r * h + i] * xt[i]).sum() };
                let a: Vec<f32> = (0..width).map(|r| gelu_f32(proj(r)) * proj(width + r)).collect();
                let down_e = &down[e * h * width..(e + 1) * h * width];
                for r in 0..h {
                    let y: f32 = (0..width).map(|i| down_e[r * width + i] * a[i]).sum();
                    out[t * h + r] += w * y;
                }
            }
        }
        out
    }

    #[test]
    fn moe_matches_a_token_by_token_reference() {
        let (n_expert, h, width, k, n_tokens) = (6, 64, 32, 2, 5);
        let ty = GgmlType::Q8_0;
        let gu_f = values(n_expert * 2 * width * h, 1);
        let down_f = values(n_expert * h * width, 2);
        let (gu_q, down_q) = (quantized(ty, &gu_f), quantized(ty, &down_f));
        // Dequantized weights: the reference sees exactly what the kernel sees.
        let mut gu_d = vec![0f32; gu_f.len()];
        dequantize_row(ty, &gu_q, &mut gu_d).unwrap();
        let mut down_d = vec![0f32; down_f.len()];
        dequantize_row(ty, &down_q, &mut down_d).unwrap();

        let x: Vec<f32> = values(n_tokens * h, 3).iter().map(|v| v * 0.3).collect();
        // Token 0 and 3 share expert 4; expert 1 and 2 are never chosen.
        let choices =
            [(4, 0.7), (0, 0.3), (3, 0.5), (5, 0.5), (0, 0.9), (3, 0.1), (4, 0.2), (5, 0.8), (0, 0.6), (4, 0.4)];
        let experts = |data, rows, n| Experts { ty, data, n_expert, rows, n };
        let mut out = vec![0f32; n_tokens * h];
        moe_ffn(
            Isa::best(),
            GateUp::Fused(experts(&gu_q, 2 * width, h)),
            experts(&down_q, h, width),
            &x,
            &choices,
            k,
            n_tokens,
            &mut out,
        )
        .unwrap();
        let want = reference(&gu_d, &down_d, h, width, &x, &choices, k);
        // The kernel also quantizes its activations to Q8_0 (twice): allow for that.
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in out.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 0.02 * scale, "element {i}: {g} vs {w} (scale {scale})");
        }

        // Split gate/up tensors give exactly the fused result.
        let (gate_q, up_q): (Vec<u8>, Vec<u8>) = {
            let row = ty.row_bytes(h as u64).unwrap() as usize;
            let (mut g, mut u) = (Vec::new(), Vec::new());
            for e in 0..n_expert {
                let ex = &gu_q[e * 2 * width * row..(e + 1) * 2 * width * row];
                g.extend_from_slice(&ex[..width * row]);
                u.extend_from_slice(&ex[width * row..]);
            }
            (g, u)
        };
        let mut split = vec![0f32; n_tokens * h];
        let split_gu = GateUp::Split { gate: experts(&gate_q, width, h), up: experts(&up_q, width, h) };
        moe_ffn(Isa::best(), split_gu, experts(&down_q, h, width), &x, &choices, k, n_tokens, &mut split).unwrap();
        assert_eq!(split, out);
    }

    /// Choices of weight 0 run nothing: the sum is that of the other choices alone, bit for
    /// bit, even when the skipped expert's weights would give NaN.
    #[test]
    fn zero_weight_choices_are_skipped() {
        let (n_expert, h, width, k, n_tokens) = (3, 32, 32, 2, 2);
        let ty = GgmlType::F32;
        let mut gu: Vec<f32> = values(n_expert * 2 * width * h, 5);
        // Expert 2 is poisoned: any token it ran for would come out NaN.
        gu[2 * 2 * width * h..].iter_mut().for_each(|v| *v = f32::NAN);
        let down = values(n_expert * h * width, 6);
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (gu, down) = (bytes(&gu), bytes(&down));
        let experts = |data, rows, n| Experts { ty, data, n_expert, rows, n };
        let x = values(n_tokens * h, 7);
        let run = |choices: &[(usize, f32)], k: usize| {
            let mut out = vec![0f32; n_tokens * h];
            let gate_up = GateUp::Fused(experts(&gu, 2 * width, h));
            moe_ffn(Isa::best(), gate_up, experts(&down, h, width), &x, choices, k, n_tokens, &mut out).unwrap();
            out
        };
        let with_zeros = run(&[(0, 0.6), (2, 0.0), (2, 0.0), (1, 0.3)], k);
        let without = run(&[(0, 0.6), (1, 0.3)], 1);
        assert!(with_zeros.iter().all(|v| v.is_finite()));
        assert_eq!(with_zeros, without);
    }
}
