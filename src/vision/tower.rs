//! Gemma 4's vision encoder and projector (GEMMA4.md section 8), read from an mmproj GGUF
//! (`clip.vision.projector_type = "gemma4v"`, as llama.cpp's converter writes it).
//!
//! One image of `n = pw · ph` patches, `x: [n][n_embd]`:
//!
//! ```text
//! x = v.patch_embd · (2 · pixels - 1) + pos_x[px] + pos_y[py]      (pixels: [n][3·p·p], c-y-x)
//! for each block:
//!     h = rmsnorm(x) * ln1
//!     q, k, v = clamp(attn_q h), clamp(attn_k h), clamp(attn_v h)    (ClippableLinear)
//!     q = rope2d(rmsnorm(q) * attn_q_norm);  k = rope2d(rmsnorm(k) * attn_k_norm);  v = rmsnorm(v)
//!     a = softmax(q kᵀ) v                                           (scale 1.0, every patch)
//!     x = x + rmsnorm(clamp(attn_out a)) * attn_post_norm
//!     h = rmsnorm(x) * ln2
//!     x = x + rmsnorm(clamp(ffn_down(gelu(clamp(ffn_gate h)) * clamp(ffn_up h)))) * ffn_post_norm
//!     [x = x * out_scale]
//! s = avgpool_k×k(x) · sqrt(n_embd)                                  ([pw/k · ph/k][n_embd])
//! s = (s - v.std_bias) * v.std_scale
//! out = mm.input_projection · rmsnorm(s)                             ([n_soft][n_embd_text])
//! ```
//!
//! `rope2d` is NeoX RoPE (theta 100) on each head's first half by the patch's x and on its
//! second half by its y. `clamp` is `Gemma4ClippableLinear`: the input and the output clamped
//! to the scalars `NAME.input_min`, `.input_max`, `.output_min`, `.output_max` where the file
//! has them. The MLP's activation is GELU with the tanh approximation, as transformers runs it
//! (`gelu_pytorch_tanh`; llama.cpp's mtmd falls back to `gelu_quick` here, GEMMA4.md 8).
//!
//! The projections run F16 weights (a Q8_0 or BF16 mmproj's dequantized) against f16
//! activations, not the activations quantized to the weights' type as the text model's kernels
//! (and llama.cpp's) do ([`project`]).

use ggml::gguf::{GgufFile, GgufHeader, Value};
use ggml::kernels::Isa;
use ggml::ops::elementwise::{add, scale};
use ggml::ops::gelu::gelu_mul;
use ggml::ops::norm::rms_norm_heads;
use ggml::ops::rope::{rope_neox_cached, RopeCache};
use ggml::quants::dequantize_row;
use ggml::GgmlType;

use super::image::Pixels;
use super::VisionError;
use crate::model::{find_vector, norm_rows, norm_rows_inplace, Matrix, ModelError};

/// llama.cpp's value for Gemma 4 (the converter writes no key for it).
const ROPE_THETA: f32 = 100.0;

/// A projection with optional clamps on its input and output.
struct Linear {
    w: Matrix,
    /// `(min, max)` of the input, then of the output; `(-inf, inf)` where the file has none.
    input: (f32, f32),
    output: (f32, f32),
}

impl Linear {
    fn find(header: &GgufHeader, file: &[u8], name: &str, n_in: usize, n_out: usize) -> Result<Linear, ModelError> {
        let w = Matrix::find(header, &format!("{name}.weight"), n_in, n_out)?;
        let bound = |suffix: &str, default: f32| -> Result<f32, ModelError> {
            let full = format!("{name}.{suffix}");
            match header.tensor(&full) {
                None => Ok(default),
                Some(t) if t.n_elements() == 1 => {
                    let mut v = [0.0];
                    dequantize_row(t.ty, header.tensor_data(file, t), &mut v)
                        .map_err(|source| ModelError::Quant { name: full, source })?;
                    Ok(v[0])
                }
                Some(t) => Err(ModelError::Shape { name: full, expected: vec![1], found: t.dims.clone() }),
            }
        };
        Ok(Linear {
            w,
            input: (bound("input_min", UNBOUNDED.0)?, bound("input_max", UNBOUNDED.1)?),
            output: (bound("output_min", UNBOUNDED.0)?, bound("output_max", UNBOUNDED.1)?),
        })
    }

    fn clamps(&self) -> bool {
        self.input != UNBOUNDED || self.output != UNBOUNDED
    }

    /// `clamp(w · clamp(x))` for every row of `x: [n_rows][w.n_in]`.
    fn apply(&self, isa: Isa, file: &[u8], x: &[f32]) -> Vec<f32> {
        let [out] = apply_all(isa, file, x, [self]);
        out
    }
}

/// No bound.
const UNBOUNDED: (f32, f32) = (f32::NEG_INFINITY, f32::INFINITY);

thread_local! {
    /// A projection's weights as F16 ([`project`]): the largest matrix's worth.
    static AS_F16: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `w · x` for `x: [n][w.n_in]`: F32 weights against f32 activations, any other type as F16
/// weights against f16 activations (F16 ones as stored; the others dequantized and rounded to
/// f16 first, into a buffer kept between calls). The text model's kernels quantize the
/// activations to the weights' dot type, Q8_0 for a Q8_0 mmproj: on the tiny test model that
/// put the logits 1.33x as far from transformers' (mean KL) as llama.cpp's, and f16 ones 1.10x.
/// f16 activations run as fast as Q8_0 ones here on AVX-512 (the F16 row-group kernel); f32
/// ones (closer still) were 20% slower on the 26B-A4B tower, behind llama.cpp.
fn project(isa: Isa, file: &[u8], w: &Matrix, x: &[f32]) -> Vec<f32> {
    use ggml::kernels::matmul::{matmul, QuantizedActs};
    use ggml::quants::quantize_row;
    use rayon::prelude::*;
    let run = |ty: GgmlType, weights: &[u8]| {
        let acts = QuantizedActs::new(ty, x, w.n_in).expect("rows of the projection's width");
        let mut out = vec![0.0; acts.n_rows * w.n_out];
        matmul(ty, isa, weights, w.n_out, &acts, &mut out).expect("shapes checked at load");
        out
    };
    match w.ty {
        GgmlType::F32 | GgmlType::F16 => run(w.ty, w.data(file)),
        _ => AS_F16.with_borrow_mut(|as_f16| {
            let row_bytes = 2 * w.n_in;
            as_f16.resize(row_bytes * w.n_out, 0);
            as_f16.par_chunks_exact_mut(row_bytes).enumerate().for_each_init(
                || vec![0f32; w.n_in],
                |row, (r, out)| {
                    w.dequantize_row(file, r, row);
                    quantize_row(GgmlType::F16, row, out).expect("a row of f16");
                },
            );
            run(GgmlType::F16, as_f16)
        }),
    }
}

/// [`Linear::apply`] of every projection in `ws` to the same `x`: the input is clamped once
/// for all the projections that share its bounds (q, k and v; gate and up).
fn apply_all<const N: usize>(isa: Isa, file: &[u8], x: &[f32], ws: [&Linear; N]) -> [Vec<f32>; N] {
    use rayon::prelude::*;
    let clamp = |v: &mut [f32], (lo, hi): (f32, f32)| {
        if (lo, hi) != UNBOUNDED {
            v.par_chunks_mut(1 << 14).for_each(|c| c.iter_mut().for_each(|e| *e = e.clamp(lo, hi)));
        }
    };
    let mut out: [Vec<f32>; N] = std::array::from_fn(|_| Vec::new());
    let mut done = [false; N];
    for i in 0..N {
        if done[i] {
            continue;
        }
        let (bounds, n_in) = (ws[i].input, ws[i].w.n_in);
        let mut clamped = Vec::new();
        if bounds != UNBOUNDED {
            clamped = x.to_vec();
            clamp(&mut clamped, bounds);
        }
        let input = if clamped.is_empty() { x } else { &clamped };
        debug_assert!(input.len().is_multiple_of(n_in));
        for j in i..N {
            if !done[j] && ws[j].input == bounds {
                out[j] = project(isa, file, &ws[j].w, input);
                clamp(&mut out[j], ws[j].output);
                done[j] = true;
            }
        }
    }
    out
}

/// One encoder block's weights.
struct Block {
    ln1: Vec<f32>,
    attn_q: Linear,
    attn_k: Linear,
    attn_v: Linear,
    attn_q_norm: Vec<f32>,
    attn_k_norm: Vec<f32>,
    attn_out: Linear,
    attn_post_norm: Vec<f32>,
    ln2: Vec<f32>,
    ffn_gate: Linear,
    ffn_up: Linear,
    ffn_down: Linear,
    ffn_post_norm: Vec<f32>,
    out_scale: Option<Vec<f32>>,
}

/// The encoder's shape, from the mmproj's `clip.vision.*` keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VisionShape {
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_block: usize,
    pub n_head: usize,
    pub head_dim: usize,
    /// Pixels per patch side.
    pub patch_size: usize,
    /// Patches per pooled soft token side (3).
    pub pool: usize,
    /// Entries of each position table: the most patches along a side.
    pub n_pos: usize,
    /// The text model's hidden size, what the projector writes.
    pub n_embd_text: usize,
}

/// A loaded mmproj: the vision encoder and the projector into the text model.
pub struct VisionTower {
    gguf: GgufFile,
    isa: Isa,
    pub shape: VisionShape,
    eps: f32,
    /// `{3·p·p, n_embd}`: the patch embedding, its input in channel, row, column order.
    patch_embd: Matrix,
    /// `{n_embd, n_pos, 2}`: the x table, then the y table.
    position_embd: Matrix,
    blocks: Vec<Block>,
    std_bias: Option<Vec<f32>>,
    std_scale: Option<Vec<f32>>,
    /// `{n_embd, n_embd_text}`
    input_projection: Linear,
}

impl VisionTower {
    /// Reads an mmproj GGUF: checks its projector type and every tensor's shape.
    pub fn load(gguf: GgufFile) -> Result<VisionTower, VisionError> {
        let header = &gguf.header;
        let file = gguf.bytes();
        let projector = match (header.get("clip.vision.projector_type"), header.get("clip.projector_type")) {
            (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
            _ => return Err(VisionError::NotMmproj),
        };
        if projector != "gemma4v" {
            return Err(VisionError::Projector(projector));
        }
        let count = |key: &str| -> Result<usize, ModelError> { Ok(header.get_u64(key)? as usize) };
        let n_embd = count("clip.vision.embedding_length")?;
        let n_head = count("clip.vision.attention.head_count")?;
        let n_block = count("clip.vision.block_count")?;
        let n_ff = count("clip.vision.feed_forward_length")?;
        let patch_size = count("clip.vision.patch_size")?;
        let n_embd_text = count("clip.vision.projection_dim")?;
        let pool = match header.get("clip.vision.projector.scale_factor") {
            Some(_) => count("clip.vision.projector.scale_factor")?,
            None => 3,
        };
        let eps = header.get_f64("clip.vision.attention.layer_norm_epsilon").map_err(ModelError::from)? as f32;
        let bad = |key: &str, problem: &str| ModelError::BadMetadata { key: key.into(), problem: problem.into() };
        if n_head == 0 || !n_embd.is_multiple_of(n_head) || !(n_embd / n_head).is_multiple_of(4) {
            Err(bad("clip.vision.attention.head_count", "the head size (embedding / heads) must be a multiple of 4"))?;
        }
        if pool == 0 {
            Err(bad("clip.vision.projector.scale_factor", "a pooling kernel of 0"))?;
        }
        let head_dim = n_embd / n_head;
        let pos = header
            .tensor("v.position_embd.weight")
            .ok_or(ModelError::MissingTensor { name: "v.position_embd.weight".into() })?;
        let n_pos = pos.dims.get(1).copied().unwrap_or(0) as usize;
        let position_embd = Matrix::find_dims(header, "v.position_embd.weight", &[n_embd as u64, n_pos as u64, 2])?
            .with_rows_of(n_embd);
        let c = 3 * patch_size * patch_size;
        let patch_embd = Matrix::find_dims(
            header,
            "v.patch_embd.weight",
            &[patch_size as u64, patch_size as u64, 3, n_embd as u64],
        )?;
        debug_assert_eq!(patch_embd.n_in, c);
        let v = |name: &str, n| find_vector(header, file, name, n);
        let lin = |name: &str, n_in, n_out| Linear::find(header, file, name, n_in, n_out);
        let mut blocks = Vec::with_capacity(n_block);
        for il in 0..n_block {
            let p = format!("v.blk.{il}");
            // A layer scalar, one value or one per channel, where the file has one.
            let out_scale = match header.tensor(&format!("{p}.out_scale.weight")) {
                Some(t) if t.n_elements() == 1 => Some(vec![v(&format!("{p}.out_scale.weight"), 1)?[0]; n_embd]),
                Some(_) => Some(v(&format!("{p}.out_scale.weight"), n_embd)?),
                None => None,
            };
            blocks.push(Block {
                ln1: v(&format!("{p}.ln1.weight"), n_embd)?,
                attn_q: lin(&format!("{p}.attn_q"), n_embd, n_embd)?,
                attn_k: lin(&format!("{p}.attn_k"), n_embd, n_embd)?,
                attn_v: lin(&format!("{p}.attn_v"), n_embd, n_embd)?,
                attn_q_norm: v(&format!("{p}.attn_q_norm.weight"), head_dim)?,
                attn_k_norm: v(&format!("{p}.attn_k_norm.weight"), head_dim)?,
                attn_out: lin(&format!("{p}.attn_out"), n_embd, n_embd)?,
                attn_post_norm: v(&format!("{p}.attn_post_norm.weight"), n_embd)?,
                ln2: v(&format!("{p}.ln2.weight"), n_embd)?,
                ffn_gate: lin(&format!("{p}.ffn_gate"), n_embd, n_ff)?,
                ffn_up: lin(&format!("{p}.ffn_up"), n_embd, n_ff)?,
                ffn_down: lin(&format!("{p}.ffn_down"), n_ff, n_embd)?,
                ffn_post_norm: v(&format!("{p}.ffn_post_norm.weight"), n_embd)?,
                out_scale,
            });
        }
        let optional = |name: &str| match header.tensor(name) {
            Some(_) => v(name, n_embd).map(Some),
            None => Ok(None),
        };
        let std_bias = optional("v.std_bias")?;
        let std_scale = optional("v.std_scale")?;
        let input_projection = lin("mm.input_projection", n_embd, n_embd_text)?;
        let shape = VisionShape { n_embd, n_ff, n_block, n_head, head_dim, patch_size, pool, n_pos, n_embd_text };
        Ok(VisionTower {
            gguf,
            isa: Isa::best(),
            shape,
            eps,
            patch_embd,
            position_embd,
            blocks,
            std_bias,
            std_scale,
            input_projection,
        })
    }

    /// Whether any projection clamps its input or output (`gemma info` says so).
    pub fn clamps(&self) -> bool {
        self.blocks.iter().any(|b| {
            [&b.attn_q, &b.attn_k, &b.attn_v, &b.attn_out, &b.ffn_gate, &b.ffn_up, &b.ffn_down]
                .iter()
                .any(|l| l.clamps())
        })
    }

    /// The image's soft tokens in the text model's space: `[n_soft][n_embd_text]`.
    pub fn encode(&self, pixels: &Pixels) -> Result<Vec<f32>, VisionError> {
        let x = self.encoder(pixels)?;
        Ok(self.project(&x))
    }

    /// The pooled, standardized encoder output: `[n_soft][n_embd]` (the tower's output before
    /// the projector; transformers' `vision_tower(...).last_hidden_state`).
    pub fn encoder(&self, pixels: &Pixels) -> Result<Vec<f32>, VisionError> {
        let s = &self.shape;
        let (pw, ph) = (pixels.width / s.patch_size, pixels.height / s.patch_size);
        if pixels.patch_size != s.patch_size || pw == 0 || ph == 0 || pw % s.pool != 0 || ph % s.pool != 0 {
            return Err(VisionError::Grid {
                width: pixels.width,
                height: pixels.height,
                patch: s.patch_size,
                pool: s.pool,
            });
        }
        if pw > s.n_pos || ph > s.n_pos {
            return Err(VisionError::TooLarge { patches: pw.max(ph), table: s.n_pos });
        }
        let (isa, file, n_embd) = (self.isa, self.gguf.bytes(), s.n_embd);
        let n = pw * ph;

        // Patch embedding. x: [n][n_embd]
        let mut patches = pixels.patches_cyx();
        patches.iter_mut().for_each(|p| *p = 2.0 * *p - 1.0);
        let mut x = project(isa, file, &self.patch_embd, &patches);
        let mut row = vec![0.0; n_embd];
        for (i, xr) in x.chunks_exact_mut(n_embd).enumerate() {
            let (px, py) = (i % pw, i / pw);
            self.position_embd.dequantize_row(file, px, &mut row);
            add(xr, &row);
            self.position_embd.dequantize_row(file, s.n_pos + py, &mut row);
            add(xr, &row);
        }

        // The 2-D RoPE angles of every patch: (by x, by y), each over half a head.
        let half = s.head_dim / 2;
        let angles: Vec<(RopeCache, RopeCache)> = (0..n)
            .map(|i| (RopeCache::new(i % pw, ROPE_THETA, half, None), RopeCache::new(i / pw, ROPE_THETA, half, None)))
            .collect();
        for b in &self.blocks {
            self.block(b, &mut x, &angles);
        }

        // Pooling: the mean of each k×k square of patches, soft tokens in row-major order.
        let k = s.pool;
        let (ow, oh) = (pw / k, ph / k);
        let mut pooled = vec![0.0f32; ow * oh * n_embd];
        for (i, xr) in x.chunks_exact(n_embd).enumerate() {
            let (px, py) = (i % pw, i / pw);
            let o = (py / k) * ow + px / k;
            add(&mut pooled[o * n_embd..(o + 1) * n_embd], xr);
        }
        scale(&mut pooled, (n_embd as f32).sqrt() / (k * k) as f32);
        if let (Some(bias), Some(std)) = (&self.std_bias, &self.std_scale) {
            for r in pooled.chunks_exact_mut(n_embd) {
                for ((v, b), s) in r.iter_mut().zip(bias).zip(std) {
                    *v = (*v - b) * s;
                }
            }
        }
        Ok(pooled)
    }

    /// The projector: `mm.input_projection · rmsnorm(x)` for `x: [n_soft][n_embd]`.
    pub fn project(&self, x: &[f32]) -> Vec<f32> {
        let h = norm_rows(x, self.shape.n_embd, None, self.eps);
        self.input_projection.apply(self.isa, self.gguf.bytes(), &h)
    }

    /// One encoder block on `x: [n][n_embd]` in place.
    fn block(&self, b: &Block, x: &mut [f32], angles: &[(RopeCache, RopeCache)]) {
        let s = &self.shape;
        let (isa, file, eps, n_embd, hd) = (self.isa, self.gguf.bytes(), self.eps, s.n_embd, s.head_dim);
        let h = norm_rows(x, n_embd, Some(&b.ln1), eps);
        // q, k, v: [n][n_head][hd]
        let [mut q, mut k, mut v] = apply_all(isa, file, &h, [&b.attn_q, &b.attn_k, &b.attn_v]);
        rms_norm_heads(&mut q, hd, Some(&b.attn_q_norm), eps);
        rms_norm_heads(&mut k, hd, Some(&b.attn_k_norm), eps);
        rms_norm_heads(&mut v, hd, None, eps);
        for ((qr, kr), (ax, ay)) in q.chunks_exact_mut(n_embd).zip(k.chunks_exact_mut(n_embd)).zip(angles) {
            for head in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
                let (first, second) = head.split_at_mut(hd / 2);
                rope_neox_cached(first, hd / 2, ax);
                rope_neox_cached(second, hd / 2, ay);
            }
        }
        let a = attention(isa, &q, &k, &v, s.n_head, hd);
        let mut o = b.attn_out.apply(isa, file, &a);
        norm_rows_inplace(&mut o, n_embd, Some(&b.attn_post_norm), eps);
        add(x, &o);

        let h = norm_rows(x, n_embd, Some(&b.ln2), eps);
        let [mut gate, up] = apply_all(isa, file, &h, [&b.ffn_gate, &b.ffn_up]);
        gelu_mul(&mut gate, &up);
        let mut m = b.ffn_down.apply(isa, file, &gate);
        norm_rows_inplace(&mut m, n_embd, Some(&b.ffn_post_norm), eps);
        add(x, &m);
        if let Some(w) = &b.out_scale {
            for r in x.chunks_exact_mut(n_embd) {
                r.iter_mut().zip(w).for_each(|(v, s)| *v *= s);
            }
        }
    }
}

/// The reference for [`attention`]: for each head, the scores `q_h k_hᵀ` (`[n][n]`), their
/// softmax and the weighted sum through the f32 matrix kernels, with the keys (and the
/// transposed values) as the "weights".
#[cfg(test)]
fn attention_reference(isa: Isa, q: &[f32], k: &[f32], v: &[f32], n_head: usize, hd: usize) -> Vec<f32> {
    use ggml::kernels::matmul::{matmul, QuantizedActs};
    use ggml::ops::softmax::softmax;
    use ggml::GgmlType;
    use rayon::prelude::*;

    let n = q.len() / (n_head * hd);
    let head = |x: &[f32], h: usize| -> Vec<f32> {
        x.chunks_exact(n_head * hd).flat_map(|r| r[h * hd..(h + 1) * hd].iter().copied()).collect()
    };
    let mut out = vec![0.0f32; q.len()];
    for h in 0..n_head {
        let (qh, kh, vh) = (head(q, h), head(k, h), head(v, h));
        // scores: [n queries][n keys]
        let mut scores = vec![0.0f32; n * n];
        let acts = QuantizedActs::new(GgmlType::F32, &qh, hd).expect("f32 rows");
        matmul(GgmlType::F32, isa, bytemuck::cast_slice(&kh), n, &acts, &mut scores).expect("shapes");
        scores.par_chunks_exact_mut(n).for_each(softmax);
        // vt: [hd][n]
        let mut vt = vec![0.0f32; hd * n];
        for (j, r) in vh.chunks_exact(hd).enumerate() {
            for (d, &e) in r.iter().enumerate() {
                vt[d * n + j] = e;
            }
        }
        let mut oh = vec![0.0f32; n * hd];
        let acts = QuantizedActs::new(GgmlType::F32, &scores, n).expect("f32 rows");
        matmul(GgmlType::F32, isa, bytemuck::cast_slice(&vt), hd, &acts, &mut oh).expect("shapes");
        for (i, r) in oh.chunks_exact(hd).enumerate() {
            out[i * n_head * hd + h * hd..i * n_head * hd + (h + 1) * hd].copy_from_slice(r);
        }
    }
    out
}

/// Bidirectional attention over every patch, scale 1.0: for each head `softmax(q_h k_hᵀ) v_h`.
/// `q`, `k`, `v`, the result: `[n][n_head][hd]`.
///
/// It is the text model's attention ([`ggml::attention::attention_to`], the tiled flash
/// attention on AVX-512) over the patches as an f32 cache at positions `0..n`, every query seeing
/// up to the last one; the head size is padded with zeros to a multiple of 16 (72 -> 80), which
/// changes no dot product. Twice as fast as the two matrix products per head of
/// [`attention_reference`] on the 26B-A4B tower (2,304 patches).
fn attention(isa: Isa, q: &[f32], k: &[f32], v: &[f32], n_head: usize, hd: usize) -> Vec<f32> {
    use ggml::attention::{attention_to, AttnShape, KvRows};
    use rayon::prelude::*;
    let d = hd.next_multiple_of(16);
    let n = q.len() / (n_head * hd);
    // The cache, [n_head][n][d], and the queries, [n][n_head][d].
    let cache = |x: &[f32]| {
        let mut c = vec![0f32; n_head * n * d];
        c.par_chunks_exact_mut(n * d).enumerate().for_each(|(h, c)| {
            for (i, c) in c.chunks_exact_mut(d).enumerate() {
                c[..hd].copy_from_slice(&x[(i * n_head + h) * hd..][..hd]);
            }
        });
        c
    };
    let (kc, vc) = (cache(k), cache(v));
    let mut qp = vec![0f32; n * n_head * d];
    qp.par_chunks_exact_mut(d).zip(q.par_chunks_exact(hd)).for_each(|(p, q)| p[..hd].copy_from_slice(q));
    let shape = AttnShape { n_head, n_kv_head: n_head, head_dim: d, scale: 1.0, window: None };
    let pos: Vec<usize> = (0..n).collect();
    let last = vec![n - 1; n];
    let mut out = vec![0f32; n * n_head * d];
    attention_to(isa, &shape, &qp, &pos, &last, KvRows { k: &kc[..], v: &vc[..], pos: &pos }.into(), &mut out);
    let mut a = vec![0f32; q.len()];
    a.par_chunks_exact_mut(hd).zip(out.par_chunks_exact(d)).for_each(|(a, o)| a.copy_from_slice(&o[..hd]));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The flash path against the matrix-product reference on random data: 4 heads of 72 (the
    /// real head size, padded), 37 and 200 patches; both are f32 with different summation
    /// orders, so within 1e-5 of the values' scale.
    #[test]
    fn attention_matches_the_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [37, 200] {
            let (n_head, hd) = (4, 72);
            let mut x = || (0..n * n_head * hd).map(|_| rng.gen_range(-1.0f32..1.0)).collect::<Vec<f32>>();
            let (q, k, v) = (x(), x(), x());
            let isa = Isa::best();
            let (got, want) =
                (attention(isa, &q, &k, &v, n_head, hd), attention_reference(isa, &q, &k, &v, n_head, hd));
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5, "{n} patches: {err}");
        }
    }
}
