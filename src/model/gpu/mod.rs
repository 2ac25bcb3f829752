//! The decoder layers that run on the GPU (`-ngl N`): the last N layers of the model, and the
//! output head when N counts past the last layer (llama.cpp's rule: the head is one layer).
//!
//! At load, each offloaded layer's weights are uploaded from the memory map into VRAM
//! ([`GpuDecoder::upload`]) from its [`Layer`], the decoder description Gemma 4 and Gemma 3
//! share (`decoder.rs`); their pages of the mapped file are then released, so that the process
//! does not hold them twice. A forward pass takes the residual stream `x` from the CPU layers
//! (or the embedding), records every GPU layer into one command buffer with its inputs,
//! submits it once, and hands back the logits (or `x`, when the head stays on the CPU). The KV
//! cache of a GPU layer lives in VRAM; its ring and positions stay in the host's [`KvCache`],
//! which says which slot each new position takes.
//!
//! Per layer, the same math as the CPU pass (`Decoder::layer`), op for op:
//!
//! ```text
//! h = rmsnorm(x) attn_norm;  q, k, v = attn_q h, attn_k h, attn_v h (or k)
//! q, k = rope(rmsnorm_heads(q) q_norm), rope(rmsnorm_heads(k) k_norm);  v = rmsnorm_heads(v) (Gemma 4)
//! store k, v in their slots;  a = attention(q · q_scale);  x += rmsnorm(attn_output a) post_attention_norm
//! m = ffn_down(gelu(ffn_gate h2) up h2),  h2 = rmsnorm(x) ffn_norm
//! MoE: m = rmsnorm(m) post_ffw_norm_1 + rmsnorm(Σ w_j down_e(gelu(gate_e h3) up_e h3)) post_ffw_norm_2
//! x = (x + rmsnorm(m) post_ffw_norm) output_scale
//! ```

mod ram;

use std::cell::Cell;
use std::time::Instant;

use ggml::gguf::GgufFile;
use ggml::ops::rope::RopeCache;
use ggml::vulkan::{Buffer, Commands, Gpu, GpuMatrix, VkError};
use ram::RamExperts;

use super::decoder::{Layer, MoeStats};
use super::fit::{Placement, Widths, LOGITS_PIECE, ROPE_TABLE};
use super::offload::MoeUpload;
use super::{Cancel, Cancelled, ExpertStack, Logits, Matrix, Stopped};
use crate::kv_cache::KvCache;

/// What the GPU layers hand back: the logits when the head ran there, else the stream.
pub(crate) enum Out {
    Logits(Vec<f32>),
    Stream(Vec<f32>),
}

struct GpuLayer {
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
    window: Option<usize>,
    full_rope: bool,
    q_scale: Option<f32>,
    v_norm: bool,
    attn_norm: Buffer,
    attn_q: GpuMatrix,
    attn_k: GpuMatrix,
    attn_v: Option<GpuMatrix>,
    attn_q_norm: Buffer,
    attn_k_norm: Buffer,
    attn_output: GpuMatrix,
    post_attention_norm: Buffer,
    ffn_norm: Buffer,
    ffn_gate: GpuMatrix,
    ffn_up: GpuMatrix,
    ffn_down: GpuMatrix,
    post_ffw_norm: Buffer,
    moe: Option<GpuMoe>,
    output_scale: Option<f32>,
    /// `[capacity]` i32: the positions of the layer's cache slots, uploaded every pass.
    kpos: Option<Buffer>,
}

struct GpuMoe {
    gate_inp: GpuMatrix,
    gate_inp_scale: Buffer,
    pre_ffw_norm_2: Buffer,
    post_ffw_norm_1: Buffer,
    post_ffw_norm_2: Buffer,
    down_scale: Buffer,
    n_expert: usize,
    k: usize,
    n_ff_exp: usize,
    /// `None`: the experts stay in RAM and the CPU runs them (`--cpu-moe`, `--n-cpu-moe`).
    experts: Option<GpuExperts>,
}

struct GpuExperts {
    gate: GpuMatrix,
    /// `None`: `gate` is the fused stack, up in its second half of rows.
    up: Option<GpuMatrix>,
    down: GpuMatrix,
}

struct GpuOutput {
    norm: Buffer,
    head: GpuMatrix,
    softcap: Option<f32>,
}

/// Activations of one pass, sized for `n_tokens` tokens of the widest layer.
struct Scratch {
    n_tokens: usize,
    /// `[n_tokens][n_embd]`: the residual stream, and the norms, projections and sums beside it.
    x: Buffer,
    h: Buffer,
    o: Buffer,
    m: Buffer,
    e: Buffer,
    /// `[n_tokens][q_width]`
    q: Buffer,
    a: Buffer,
    /// `[n_tokens][kv_width]`
    k: Buffer,
    v: Buffer,
    /// `[n_tokens][n_ff]`
    gate: Buffer,
    up: Buffer,
    /// Router: logits `[n_tokens][n_expert]`, ids and weights `[n_tokens][k]`.
    logits: Buffer,
    ids: Buffer,
    weights: Buffer,
    /// Experts: gate (and fused up) `[n_tokens · k][2 n_ff_exp]`, a split up `[n_tokens · k]
    /// [n_ff_exp]`, down `[n_tokens · k][n_embd]`.
    gu: Buffer,
    eu: Buffer,
    yd: Buffer,
    /// `[n_tokens][2][n_rot / 2]` cos and sin of the full and the sliding layers.
    cs_full: Buffer,
    cs_swa: Buffer,
    /// `[n_tokens]` i32 positions, the last position each token sees on sliding layers (its
    /// own, or its image's last), and the cache slots of every GPU layer `[layer][n_tokens]`.
    qpos: Buffer,
    qlast: Buffer,
    slots: Vec<Buffer>,
}

/// The layers (and maybe the head) on the GPU.
pub struct GpuDecoder {
    gpu: Gpu,
    first: usize,
    layers: Vec<GpuLayer>,
    output: Option<GpuOutput>,
    n_embd: usize,
    n_vocab: usize,
    eps: f32,
    /// The batch the sliding rings of a new cache are sized for, unless told otherwise.
    pub max_batch: usize,
    scratch: Option<Scratch>,
    /// What the layers whose experts are in RAM use.
    ram: RamExperts,
}

/// The CPU's experts for a layer whose experts stay in RAM: `(il, h, choices)` → the
/// weighted sum `[n_tokens][n_embd]` for the experts' input `h: [n_tokens][n_embd]` and each
/// token's `k` (expert, weight) choices (`Decoder::expert_ffn`).
pub(crate) type CpuExperts<'a> = dyn Fn(usize, &[f32], &[(usize, f32)]) -> Vec<f32> + 'a;

/// Uploads a matrix, then releases its pages of the mapped file; counts its bytes in
/// `uploaded`.
fn matrix(gpu: &Gpu, file: &GgufFile, name: &str, m: &Matrix, uploaded: &Cell<u64>) -> Result<GpuMatrix, VkError> {
    let w = GpuMatrix::upload(gpu, name, m.ty, m.n_in, m.n_out, &file.bytes()[m.bytes.clone()], None)?;
    file.release(m.bytes.clone());
    uploaded.set(uploaded.get() + m.bytes.len() as u64);
    Ok(w)
}

/// Uploads a stack of experts, then releases its pages of the mapped file; counts its bytes in
/// `uploaded`.
fn stack(gpu: &Gpu, file: &GgufFile, name: &str, s: &ExpertStack, uploaded: &Cell<u64>) -> Result<GpuMatrix, VkError> {
    let bytes = &file.bytes()[s.bytes.clone()];
    let w = GpuMatrix::upload_stack(gpu, name, s.shape(), bytes, None)?;
    file.release(s.bytes.clone());
    uploaded.set(uploaded.get() + bytes.len() as u64);
    Ok(w)
}

fn vector(gpu: &Gpu, v: &[f32], name: &str) -> Result<Buffer, VkError> {
    gpu.buffer_from(v, name)
}

impl GpuDecoder {
    /// Uploads the layers `placement` puts on the GPU (`layers` holds every layer of the
    /// model) without the experts it keeps in RAM, and, when given, the output head. The
    /// caller checked that they fit ([`super::offload`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upload(
        gpu: &Gpu,
        file: &GgufFile,
        placement: &Placement,
        layers: &[Layer],
        output: Option<(&[f32], &Matrix, Option<f32>)>,
        n_embd: usize,
        n_vocab: usize,
        eps: f32,
        max_batch: usize,
        moe_upload: MoeUpload,
        expert_cache: u64,
    ) -> Result<GpuDecoder, VkError> {
        let first = placement.first_gpu_layer;
        let all_layers = layers;
        let layers = &layers[first.min(layers.len())..];
        // The weights' bytes and the time they take: the upload speed `--moe-upload auto` weighs.
        let (started, uploaded) = (Instant::now(), Cell::new(0u64));
        let mut gpu_layers = Vec::with_capacity(layers.len());
        for (i, d) in layers.iter().enumerate() {
            let il = first + i;
            let name = |role: &str| format!("blk.{il}.{role}");
            let m = |role: &str, w: &Matrix| matrix(gpu, file, &name(role), w, &uploaded);
            let v = |role: &str, x: &[f32]| vector(gpu, x, &name(role));
            let moe = match &d.moe {
                None => None,
                Some(e) => {
                    let experts = match placement.experts_on_gpu(il) {
                        false => None,
                        true => {
                            let stacks = ram::stacks(d)
                                .into_iter()
                                .map(|(role, st)| stack(gpu, file, &name(role), st, &uploaded));
                            Some(ram::experts_of(stacks.collect::<Result<_, _>>()?))
                        }
                    };
                    Some(GpuMoe {
                        gate_inp: m("ffn_gate_inp.weight", &e.gate_inp)?,
                        gate_inp_scale: v("ffn_gate_inp.scale", &e.gate_inp_scale)?,
                        pre_ffw_norm_2: v("pre_ffw_norm_2.weight", &e.pre_ffw_norm_2)?,
                        post_ffw_norm_1: v("post_ffw_norm_1.weight", &e.post_ffw_norm_1)?,
                        post_ffw_norm_2: v("post_ffw_norm_2.weight", &e.post_ffw_norm_2)?,
                        down_scale: v("ffn_down_exps.scale", &e.down_exps_scale)?,
                        n_expert: e.down_exps.n_expert,
                        k: e.n_expert_used,
                        n_ff_exp: e.down_exps.n_in,
                        experts,
                    })
                }
            };
            gpu_layers.push(GpuLayer {
                n_head: d.n_head,
                n_head_kv: d.n_head_kv,
                head_dim: d.head_dim,
                window: d.window,
                full_rope: d.full_rope,
                q_scale: d.q_scale,
                v_norm: d.v_norm,
                attn_norm: v("attn_norm.weight", &d.attn_norm)?,
                attn_q: m("attn_q.weight", &d.attn_q)?,
                attn_k: m("attn_k.weight", &d.attn_k)?,
                attn_v: match &d.attn_v {
                    Some(w) => Some(m("attn_v.weight", w)?),
                    None => None,
                },
                attn_q_norm: v("attn_q_norm.weight", &d.attn_q_norm)?,
                attn_k_norm: v("attn_k_norm.weight", &d.attn_k_norm)?,
                attn_output: m("attn_output.weight", &d.attn_output)?,
                post_attention_norm: v("post_attention_norm.weight", &d.post_attention_norm)?,
                ffn_norm: v("ffn_norm.weight", &d.ffn_norm)?,
                ffn_gate: m("ffn_gate.weight", &d.ffn_gate)?,
                ffn_up: m("ffn_up.weight", &d.ffn_up)?,
                ffn_down: m("ffn_down.weight", &d.ffn_down)?,
                post_ffw_norm: v("post_ffw_norm.weight", &d.post_ffw_norm)?,
                moe,
                output_scale: d.output_scale,
                kpos: None,
            });
        }
        let output = match output {
            None => None,
            Some((norm, head, softcap)) => Some(GpuOutput {
                norm: vector(gpu, norm, "output_norm.weight")?,
                head: matrix(gpu, file, "output.weight", head, &uploaded)?,
                softcap,
            }),
        };
        let upload_per_byte = started.elapsed().as_secs_f64() / uploaded.get().max(1) as f64;
        let ram = RamExperts::new(gpu, placement, all_layers, moe_upload, upload_per_byte, expert_cache)?;
        Ok(GpuDecoder {
            gpu: gpu.clone(),
            first,
            layers: gpu_layers,
            output,
            n_embd,
            n_vocab,
            eps,
            max_batch: max_batch.max(1),
            scratch: None,
            ram,
        })
    }

    /// How the layers with their experts in RAM ran so far; `None` when there are none.
    pub fn moe_stats(&self) -> Option<MoeStats> {
        let any = self.layers.iter().any(|l| l.moe.as_ref().is_some_and(|e| e.experts.is_none()));
        any.then_some(self.ram.stats)
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The first layer on the GPU.
    pub fn first_layer(&self) -> usize {
        self.first
    }

    /// An empty cache for the model's layers (`specs`), those on this GPU in VRAM, their rings
    /// sized for batches of `max_batch` (or of the `-b` given at load).
    pub fn new_cache(
        &self,
        specs: &[crate::kv_cache::LayerSpec],
        context: usize,
        types: crate::kv_cache::KvTypes,
        max_batch: Option<usize>,
    ) -> Result<KvCache, crate::kv_cache::KvCacheError> {
        let max_batch = max_batch.unwrap_or(self.max_batch);
        KvCache::with_device_layers(specs, context, types, &self.gpu, self.first, max_batch)
    }

    /// Runs the GPU layers on `x: [n_tokens][n_embd]` (the stream after the CPU layers) at
    /// positions `pos ..`, their keys and values going to `cache`. Returns the logits
    /// `[n_rows][n_vocab]` when the head is here, else the stream as `x` (all rows, for the
    /// CPU's head). `rope_full`/`rope_swa`: each token's angles for the two layer types.
    /// `q_last`: the last position each token sees on sliding layers (its own, or the last of
    /// its image). `cpu_experts` runs the experts of the layers that keep them in RAM.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &mut self,
        x: &[f32],
        pos: usize,
        q_last: &[usize],
        cache: &mut KvCache,
        rope_full: &[RopeCache],
        rope_swa: &[RopeCache],
        which: Logits,
        file: &[u8],
        cpu_experts: &CpuExperts,
        cancel: &dyn Cancel,
    ) -> Result<Out, Stopped> {
        let n_tokens = x.len() / self.n_embd;
        // Every GPU layer's cache slots for this batch, decided on the host (a cancel stops
        // here, before anything runs, and the caller's rewind undoes them).
        let mut slots = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            if cancel.is_cancelled() {
                return Err(Cancelled::rewind(cache, pos).into());
            }
            let layer = cache.layer_mut(self.first + i).expect("Gemma layers own their caches");
            slots.push(layer.append_slots(pos, n_tokens).into_iter().map(|s| s as u32).collect::<Vec<u32>>());
        }
        // A GPU that fails mid-pass (lost, hung) leaves nothing to continue with: an error that
        // says what it said, not a hang or a wrong answer.
        let out = self.run(x, pos, q_last, cache, rope_full, rope_swa, which, &slots, file, cpu_experts);
        let out = out.map_err(|e| Stopped::Device(e.to_string()))?;
        Ok(match self.output.is_some() {
            true => Out::Logits(out),
            false => Out::Stream(out),
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        x: &[f32],
        pos: usize,
        q_last: &[usize],
        cache: &KvCache,
        rope_full: &[RopeCache],
        rope_swa: &[RopeCache],
        which: Logits,
        slots: &[Vec<u32>],
        file: &[u8],
        cpu_experts: &CpuExperts,
    ) -> Result<Vec<f32>, VkError> {
        let (n_embd, eps) = (self.n_embd, self.eps);
        let n_tokens = x.len() / n_embd;
        self.make_scratch(n_tokens)?;
        let gpu = self.gpu.clone();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let capacity = cache.layer(self.first + i).device().expect("a GPU layer's cache is in VRAM").rows.capacity;
            if layer.kpos.as_ref().is_none_or(|b| b.size < 4 * capacity as u64) {
                layer.kpos = Some(gpu.buffer(4 * capacity as u64, "slot positions")?);
            }
        }
        let s = self.scratch.as_ref().expect("made above");
        let mut c = gpu.commands()?;
        // Host inputs of this pass, carried in the command buffer: the stream, positions,
        // angles, and every layer's new slots and slot positions.
        c.update(&s.x, 0, bytemuck::cast_slice(x))?;
        let qpos: Vec<i32> = (pos..pos + n_tokens).map(|p| p as i32).collect();
        c.update(&s.qpos, 0, bytemuck::cast_slice(&qpos))?;
        assert_eq!(q_last.len(), n_tokens, "one last position per token");
        let qlast: Vec<i32> = q_last.iter().map(|&p| p as i32).collect();
        c.update(&s.qlast, 0, bytemuck::cast_slice(&qlast))?;
        for (table, buf) in [(rope_full, &s.cs_full), (rope_swa, &s.cs_swa)] {
            let cs: Vec<f32> = table.iter().flat_map(|c| c.cos.iter().chain(&c.sin).copied()).collect();
            if !cs.is_empty() {
                c.update(buf, 0, bytemuck::cast_slice(&cs))?;
            }
        }
        for (i, (sl, layer)) in slots.iter().zip(&self.layers).enumerate() {
            c.update(&s.slots[i], 0, bytemuck::cast_slice(sl))?;
            let kpos: Vec<i32> = cache.layer(self.first + i).positions().iter().map(|&p| p as i32).collect();
            c.update(layer.kpos.as_ref().expect("made above"), 0, bytemuck::cast_slice(&kpos))?;
        }
        for (i, l) in self.layers.iter().enumerate() {
            let lc = cache.layer(self.first + i);
            let kv = &lc.device().expect("checked above").rows;
            let (hd, q_width, kv_width) = (l.head_dim, l.n_head * l.head_dim, l.n_head_kv * l.head_dim);
            // Attention.
            c.rms_norm(&s.x, &s.h, Some(&l.attn_norm), n_embd, n_tokens, eps)?;
            c.matvec(&l.attn_q, &s.h, n_embd, &s.q, q_width, n_tokens)?;
            c.matvec(&l.attn_k, &s.h, n_embd, &s.k, kv_width, n_tokens)?;
            match &l.attn_v {
                Some(w) => c.matvec(w, &s.h, n_embd, &s.v, kv_width, n_tokens)?,
                None => c.copy(&s.k, 0, &s.v, 0, (4 * n_tokens * kv_width) as u64)?,
            }
            c.rms_norm(&s.q, &s.q, Some(&l.attn_q_norm), hd, n_tokens * l.n_head, eps)?;
            c.rms_norm(&s.k, &s.k, Some(&l.attn_k_norm), hd, n_tokens * l.n_head_kv, eps)?;
            if l.v_norm {
                c.rms_norm(&s.v, &s.v, None, hd, n_tokens * l.n_head_kv, eps)?;
            }
            let (cs, n_rot) = match l.full_rope {
                true => (&s.cs_full, 2 * rope_full[0].cos.len()),
                false => (&s.cs_swa, 2 * rope_swa[0].cos.len()),
            };
            c.rope_neox(&s.q, cs, hd, l.n_head, n_rot, n_tokens)?;
            c.rope_neox(&s.k, cs, hd, l.n_head_kv, n_rot, n_tokens)?;
            if let Some(a) = l.q_scale {
                c.scale(&s.q, a, n_tokens * q_width)?;
            }
            c.kv_store(kv, &s.k, &s.v, &s.slots[i], n_tokens)?;
            let shape = ggml::attention::AttnShape {
                n_head: l.n_head,
                n_kv_head: l.n_head_kv,
                head_dim: hd,
                scale: 1.0,
                window: l.window,
            };
            let kpos = l.kpos.as_ref().expect("uploaded above");
            let sees = if l.window.is_some() { &s.qlast } else { &s.qpos };
            c.attention(&shape, &s.q, &s.qpos, sees, kv, kpos, lc.positions().len(), n_tokens, &s.a)?;
            c.matvec(&l.attn_output, &s.a, q_width, &s.o, n_embd, n_tokens)?;
            c.rms_norm(&s.o, &s.o, Some(&l.post_attention_norm), n_embd, n_tokens, eps)?;
            c.add(&s.x, &s.o, n_tokens * n_embd)?;

            // Feed-forward: the dense MLP, then the experts beside it.
            match &l.moe {
                Some(e) if e.experts.is_none() => {
                    let at = (i, self.first + i);
                    c = self.ram.layer(&gpu, c, s, l, e, at, (n_embd, n_tokens, eps), file, cpu_experts)?;
                    c.rms_norm(&s.e, &s.e, Some(&e.post_ffw_norm_2), n_embd, n_tokens, eps)?;
                    c.add(&s.m, &s.e, n_tokens * n_embd)?;
                }
                Some(e) => {
                    let experts = e.experts.as_ref().expect("matched above");
                    Self::dense_mlp(&mut c, s, l, n_embd, n_tokens, eps)?;
                    c.rms_norm(&s.m, &s.m, Some(&e.post_ffw_norm_1), n_embd, n_tokens, eps)?;
                    Self::route(&mut c, s, e, n_embd, n_tokens, eps)?;
                    Self::experts(&mut c, s, e, experts, n_embd, n_tokens)?;
                    c.rms_norm(&s.e, &s.e, Some(&e.post_ffw_norm_2), n_embd, n_tokens, eps)?;
                    c.add(&s.m, &s.e, n_tokens * n_embd)?;
                }
                None => Self::dense_mlp(&mut c, s, l, n_embd, n_tokens, eps)?,
            }
            c.rms_norm(&s.m, &s.m, Some(&l.post_ffw_norm), n_embd, n_tokens, eps)?;
            c.add(&s.x, &s.m, n_tokens * n_embd)?;
            if let Some(a) = l.output_scale {
                c.scale(&s.x, a, n_tokens * n_embd)?;
            }
        }
        let Some(out) = &self.output else {
            c.finish()?;
            let mut x = vec![0f32; n_tokens * n_embd];
            gpu.read_f32(&s.x, &mut x)?;
            return Ok(x);
        };
        // The head, on the rows that need logits, in pieces that fit one buffer binding.
        let rows = match which {
            Logits::All => 0..n_tokens,
            Logits::Last => n_tokens - 1..n_tokens,
        };
        let range = gpu.info().max_buffer_range.min(LOGITS_PIECE) as usize;
        let per_piece = (range / (4 * self.n_vocab)).clamp(1, n_tokens);
        let mut logits = Vec::with_capacity(rows.len() * self.n_vocab);
        let piece_buf = gpu.buffer((4 * per_piece.min(rows.len()) * self.n_vocab) as u64, "logits")?;
        for start in rows.clone().step_by(per_piece) {
            let n = per_piece.min(rows.end - start);
            // h: the piece's rows of x, normed.
            c.copy(&s.x, (4 * start * n_embd) as u64, &s.h, 0, (4 * n * n_embd) as u64)?;
            c.rms_norm(&s.h, &s.h, Some(&out.norm), n_embd, n, eps)?;
            c.matvec(&out.head, &s.h, n_embd, &piece_buf, self.n_vocab, n)?;
            if let Some(cap) = out.softcap {
                c.softcap(&piece_buf, cap, n * self.n_vocab)?;
            }
            c.finish()?;
            let at = logits.len();
            logits.resize(at + n * self.n_vocab, 0.0);
            gpu.read_f32(&piece_buf, &mut logits[at..])?;
            c = gpu.commands()?;
        }
        drop(c);
        Ok(logits)
    }

    /// The dense MLP of layer `l` on the stream `s.x` into `s.m`.
    fn dense_mlp(
        c: &mut Commands,
        s: &Scratch,
        l: &GpuLayer,
        n_embd: usize,
        n_tokens: usize,
        eps: f32,
    ) -> Result<(), VkError> {
        let n_ff = l.ffn_gate.n_out;
        c.rms_norm(&s.x, &s.h, Some(&l.ffn_norm), n_embd, n_tokens, eps)?;
        c.matvec(&l.ffn_gate, &s.h, n_embd, &s.gate, n_ff, n_tokens)?;
        c.matvec(&l.ffn_up, &s.h, n_embd, &s.up, n_ff, n_tokens)?;
        c.gelu_mul(&s.gate, &s.up, n_ff, n_tokens, n_ff, n_ff, 0)?;
        c.matvec(&l.ffn_down, &s.gate, n_ff, &s.m, n_embd, n_tokens)
    }

    /// The router's choices for the post-attention stream `s.x` into `s.ids` and `s.weights`,
    /// and the experts' input into `s.h` (GEMMA4.md 2.5).
    fn route(
        c: &mut Commands,
        s: &Scratch,
        e: &GpuMoe,
        n_embd: usize,
        n_tokens: usize,
        eps: f32,
    ) -> Result<(), VkError> {
        // The router sees x through a weightless norm, times its scale and n_embd^-1/2.
        c.rms_norm(&s.x, &s.h, None, n_embd, n_tokens, eps)?;
        c.mul(&s.h, &e.gate_inp_scale, n_tokens * n_embd, n_embd)?;
        c.scale(&s.h, 1.0 / (n_embd as f32).sqrt(), n_tokens * n_embd)?;
        c.matvec(&e.gate_inp, &s.h, n_embd, &s.logits, e.n_expert, n_tokens)?;
        c.moe_route(&s.logits, e.n_expert, e.k, n_tokens, &e.down_scale, &s.ids, &s.weights)?;
        // The experts' input: x through pre_ffw_norm_2.
        c.rms_norm(&s.x, &s.h, Some(&e.pre_ffw_norm_2), n_embd, n_tokens, eps)
    }

    /// The routed experts' weighted sum for the input `s.h` into `s.e` (GEMMA4.md 2.6).
    fn experts(
        c: &mut Commands,
        s: &Scratch,
        e: &GpuMoe,
        w: &GpuExperts,
        n_embd: usize,
        n_tokens: usize,
    ) -> Result<(), VkError> {
        let ff = e.n_ff_exp;
        // gu: [n_tokens · k][2 ff], the gate in the first half of each row (and, fused, up in
        // the second); a split up projection goes to eu: [n_tokens · k][ff].
        let slots = n_tokens * e.k;
        c.matvec_id(&w.gate, &s.ids, e.k, n_tokens, &s.h, n_embd, false, &s.gu, 2 * ff)?;
        match &w.up {
            None => c.gelu_mul(&s.gu, &s.gu, ff, slots, 2 * ff, 2 * ff, ff)?,
            Some(up) => {
                c.matvec_id(up, &s.ids, e.k, n_tokens, &s.h, n_embd, false, &s.eu, ff)?;
                c.gelu_mul(&s.gu, &s.eu, ff, slots, 2 * ff, ff, 0)?;
            }
        }
        c.matvec_id(&w.down, &s.ids, e.k, n_tokens, &s.gu, 2 * ff, true, &s.yd, n_embd)?;
        c.moe_sum(&s.yd, &s.ids, &s.weights, n_embd, e.k, n_tokens, &s.e)
    }

    /// The widths of the GPU's layers (the widest of each).
    fn widths(&self) -> Widths {
        let widest = |f: &dyn Fn(&GpuLayer) -> usize| self.layers.iter().map(f).max().unwrap_or(0).max(1);
        Widths {
            n_embd: self.n_embd,
            q: widest(&|l| l.n_head * l.head_dim),
            kv: widest(&|l| l.n_head_kv * l.head_dim),
            n_ff: widest(&|l| l.ffn_gate.n_out),
            n_expert: widest(&|l| l.moe.as_ref().map_or(1, |e| e.n_expert)),
            k: widest(&|l| l.moe.as_ref().map_or(1, |e| e.k)),
            n_ff_exp: widest(&|l| l.moe.as_ref().map_or(1, |e| e.n_ff_exp)),
            n_vocab: self.n_vocab,
        }
    }

    /// Allocates the activations for `n_tokens` tokens, unless those there are big enough
    /// (the sizes [`Widths::scratch_bytes`] counts for the fit).
    fn make_scratch(&mut self, n_tokens: usize) -> Result<(), VkError> {
        if self.scratch.as_ref().is_some_and(|s| s.n_tokens >= n_tokens) {
            return Ok(());
        }
        self.scratch = None;
        let gpu = &self.gpu;
        let t = n_tokens.max(1);
        let w = self.widths();
        let (e, k, ff_exp) = (w.n_embd, w.k, w.n_ff_exp);
        let f = |n: usize, what: &str| gpu.buffer(4 * n as u64, what);
        let slots = (0..self.layers.len()).map(|_| f(t, "cache slots")).collect::<Result<_, _>>()?;
        self.scratch = Some(Scratch {
            n_tokens: t,
            x: f(t * e, "x")?,
            h: f(t * e, "h")?,
            o: f(t * e, "attention output")?,
            m: f(t * e, "feed-forward output")?,
            e: f(t * e, "experts' output")?,
            q: f(t * w.q, "q")?,
            a: f(t * w.q, "attention")?,
            k: f(t * w.kv, "k")?,
            v: f(t * w.kv, "v")?,
            gate: f(t * w.n_ff, "gate")?,
            up: f(t * w.n_ff, "up")?,
            logits: f(t * w.n_expert, "router logits")?,
            ids: f(t * k, "expert ids")?,
            weights: f(t * k, "expert weights")?,
            gu: f(t * k * 2 * ff_exp, "expert gate/up")?,
            eu: f(t * k * ff_exp, "expert up")?,
            yd: f(t * k * e, "expert down")?,
            cs_full: f(t * ROPE_TABLE, "rope angles")?,
            cs_swa: f(t * ROPE_TABLE, "rope angles")?,
            qpos: f(t, "positions")?,
            qlast: f(t, "last positions seen")?,
            slots,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ggml::gguf::GgufFile;

    use super::super::fit::{Costs, Placement, UPLOAD_STAGING};
    use super::super::{Logits, Model, Offload};
    use crate::kv_cache::KvType;

    #[test]
    fn the_fit_counts_the_staging_buffer_the_device_allocates() {
        assert_eq!(UPLOAD_STAGING, ggml::vulkan::device::STAGING_BYTES);
    }

    /// What the fit plans for a placement covers what a pass of a full batch allocates, and
    /// not by much more: on lavapipe, the tiny MoE with every layer on the GPU, and with its
    /// experts in RAM (no expert cache). With the cache, which takes what the placement
    /// leaves, the whole stays within the budget: the device's memory less the margin.
    #[test]
    fn the_fit_does_not_underestimate_what_a_pass_allocates() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4-moe.gguf");
        let vk = ggml::vulkan::Vulkan::load().expect("the GPU tests need Vulkan: run scripts/setup.sh");
        let lavapipe = vk.devices().unwrap().into_iter().find(|d| d.kind == ggml::vulkan::DeviceKind::Cpu);
        let lavapipe = lavapipe.expect("lavapipe");
        let (context, batch) = (96, 48);
        for (n_cpu_moe, expert_cache) in [(None, Some(0)), (Some(usize::MAX), Some(0)), (Some(usize::MAX), None)] {
            let offload = Offload {
                gpu_layers: Some(99),
                n_cpu_moe,
                device: Some(lavapipe.index),
                max_batch: batch,
                context,
                kv_types: KvType::F32.into(),
                expert_cache,
                ..Offload::default()
            };
            let gguf = GgufFile::open(&path).unwrap();
            let costs = Costs::from_header(&gguf.header, context, KvType::F32, batch).unwrap();
            let mut model = Model::load_with(gguf, &offload).unwrap();
            let planned = Placement::from_gpu_layers(costs.n_layer(), 99, n_cpu_moe.unwrap_or(0)).gpu_bytes(&costs);
            let mut cache = model.new_cache_for(context, KvType::F32, Some(batch)).unwrap();
            let tokens: Vec<u32> = (0..batch as u32).map(|i| 100 + 7 * i).collect();
            model.forward(&tokens, 0, &mut cache, Logits::All);
            let allocated = model.vram_bytes().unwrap();
            let what = format!("{n_cpu_moe:?}, cache {expert_cache:?}: planned {planned}, allocated {allocated}");
            eprintln!("{what}");
            match expert_cache {
                Some(0) => assert!(allocated <= planned && planned <= allocated + allocated / 4, "{what}"),
                _ => {
                    let budget = lavapipe.memory - (lavapipe.memory / 20).max(256 << 20);
                    assert!(allocated > planned && allocated <= budget, "{what}, budget {budget}");
                }
            }
        }
    }
}
