//! Gemma 4 text decoder over a GGUF file: 26B-A4B (a mixture of experts beside the dense MLP
//! on every layer) and the dense 31B, as GEMMA4.md section 3 gives it and llama.cpp runs it
//! (`src/models/gemma4.cpp`).
//!
//! Per token, `x: [n_embd]`:
//!
//! ```text
//! x = token_embd[token] * sqrt(n_embd)
//! for each layer (head dim hd and KV heads per layer type: sliding or full):
//!     h = rmsnorm(x) * attn_norm
//!     q = rope(rmsnorm(attn_q h) * attn_q_norm)                       (per head)
//!     k_raw = attn_k h;  v_raw = attn_v h, or k_raw when there is no attn_v (k_eq_v)
//!     k = rope(rmsnorm(k_raw) * attn_k_norm);  v = rmsnorm(v_raw)      (v: no weight, no rope)
//!     a = softmax(q kᵀ, causal [+ window]) v                           (scale 1.0)
//!     x = x + rmsnorm(attn_output a) * post_attention_norm             (x_mid)
//!     m = ffn_down(gelu(ffn_gate h2) * ffn_up h2),  h2 = rmsnorm(x) * ffn_norm
//!     if MoE layer:
//!         m = rmsnorm(m) * post_ffw_norm_1
//!         r = rmsnorm(x) * ffn_gate_inp.scale / sqrt(n_embd)           (router input: x_mid)
//!         experts, weights = top_k(softmax(ffn_gate_inp r)), renormalized, * ffn_down_exps.scale
//!         e = Σ weight · down_e(gelu(gate_e h3) * up_e h3),  h3 = rmsnorm(x) * pre_ffw_norm_2
//!         m = m + rmsnorm(e) * post_ffw_norm_2
//!     x = (x + rmsnorm(m) * post_ffw_norm) * layer_output_scale
//! logits = softcap(token_embd · (rmsnorm(x) * output_norm))            (tied output head)
//! ```
//!
//! Norm weights are used as stored: Gemma 4 multiplies by `w`, not `1 + w` (pitfall 1). Full
//! layers rotate with their own base and the `rope_freqs` divisors (proportional RoPE: only
//! the first pairs turn, pitfall 3). E2B/E4B (per-layer embeddings, KV sharing) are refused.

use ggml::attention::{attention, AttnShape};
use ggml::gguf::{GgufFile, GgufHeader};
use ggml::kernels::moe::{moe_ffn, GateUp};
use ggml::kernels::Isa;
use ggml::ops::elementwise::{add, mul, scale, softcap};
use ggml::ops::gelu::gelu_mul;
use ggml::ops::norm::rms_norm_heads;
use ggml::ops::rope::{rope_neox_cached, RopeCache};
use ggml::ops::softmax::softmax_top_k;

#[cfg(feature = "vulkan")]
use super::gpu::{GpuDecoder, LayerDesc, MoeDesc, OutputDesc, Placement};
use super::{
    find_vector, norm_rows, norm_rows_inplace, Cancel, Cancelled, ExpertStack, Input, Logits, Matrix, Metadata,
    ModelError, Never, Offload,
};
use crate::kv_cache::{KvCache, KvCacheError, KvType, LayerSpec};

const ARCH: &str = "gemma4";

#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    /// `[n_layer]`: query heads.
    pub n_head: Vec<usize>,
    /// `[n_layer]`: key/value heads (8 sliding, 2 full on 26B-A4B).
    pub n_head_kv: Vec<usize>,
    /// Elements per head on full layers (512) and on sliding ones (256).
    pub head_dim: usize,
    pub head_dim_swa: usize,
    /// RoPE base and rotated dimensions of full layers (1e6, 512 with `rope_freqs`) and of
    /// sliding ones (1e4, 256).
    pub rope_base: f32,
    pub n_rot: usize,
    pub rope_base_swa: f32,
    pub n_rot_swa: usize,
    /// Positions a sliding layer sees, the current one included.
    pub sliding_window: usize,
    /// `[n_layer]`: whether each layer slides.
    pub sliding: Vec<bool>,
    /// `[n_layer]`: width of the dense MLP.
    pub n_ff: Vec<usize>,
    /// Experts, experts used per token and their FFN width; 0 on dense models.
    pub n_expert: usize,
    pub n_expert_used: usize,
    pub n_ff_exp: usize,
    /// `c` of the final `c tanh(logits / c)`.
    pub final_logit_softcap: Option<f32>,
}

impl Hparams {
    /// From the `gemma4.*` metadata; `n_vocab` comes from the embedding's shape.
    pub fn from_header(header: &GgufHeader) -> Result<Hparams, ModelError> {
        let found = header.get_str("general.architecture")?;
        if found != ARCH {
            return Err(ModelError::Architecture { expected: ARCH, found: found.to_string() });
        }
        let m = Metadata { header, arch: ARCH };
        let optional = |key: &str| -> Result<usize, ModelError> {
            Ok(match header.get(&m.key(key)) {
                None => 0,
                Some(_) => m.usize(key)?,
            })
        };
        if optional("embedding_length_per_layer_input")? > 0 || optional("attention.shared_kv_layers")? > 0 {
            return Err(ModelError::Unsupported(
                "Gemma 4 E2B/E4B (per-layer embeddings and KV sharing) are not supported yet; \
                 26B-A4B and 31B are"
                    .to_string(),
            ));
        }
        let n_layer = m.usize("block_count")?;
        let n_embd = m.usize("embedding_length")?;
        let pattern_key = m.key("attention.sliding_window_pattern");
        let pattern = header.get_array(&pattern_key)?;
        if pattern.len() != n_layer {
            let problem = format!("{} entries for {n_layer} layers", pattern.len());
            return Err(ModelError::BadMetadata { key: pattern_key, problem });
        }
        let sliding = (0..n_layer).map(|il| pattern.get_i64(il).unwrap_or(0) != 0).collect();
        let (head_dim, head_dim_swa) = (m.usize("attention.key_length")?, m.usize("attention.key_length_swa")?);
        for (k, v, d) in
            [("key_length", "value_length", head_dim), ("key_length_swa", "value_length_swa", head_dim_swa)]
        {
            if m.usize(&format!("attention.{v}"))? != d {
                let problem = format!("differs from attention.{k} ({d}); Gemma 4 needs them equal");
                return Err(ModelError::BadMetadata { key: m.key(&format!("attention.{v}")), problem });
            }
        }
        let (n_rot, n_rot_swa) = (m.usize("rope.dimension_count")?, m.usize("rope.dimension_count_swa")?);
        for (key, n_rot, d) in
            [("rope.dimension_count", n_rot, head_dim), ("rope.dimension_count_swa", n_rot_swa, head_dim_swa)]
        {
            if n_rot > d || n_rot % 2 != 0 {
                let problem = format!("{n_rot} rotated dimensions for heads of {d}");
                return Err(ModelError::BadMetadata { key: m.key(key), problem });
            }
        }
        let n_expert = optional("expert_count")?;
        let (n_expert_used, n_ff_exp) = match n_expert {
            0 => (0, 0),
            _ => (m.usize("expert_used_count")?, m.usize("expert_feed_forward_length")?),
        };
        if n_expert_used > n_expert {
            let problem = format!("{n_expert_used} experts used of {n_expert}");
            return Err(ModelError::BadMetadata { key: m.key("expert_used_count"), problem });
        }
        let softcap = m.f32_or("final_logit_softcapping", 0.0)?;
        let token_embd =
            header.tensor(TOKEN_EMBD).ok_or_else(|| ModelError::MissingTensor { name: TOKEN_EMBD.to_string() })?;
        Ok(Hparams {
            n_layer,
            n_embd,
            n_vocab: token_embd.dims.get(1).copied().unwrap_or(0) as usize,
            context_length: m.usize("context_length")?,
            rms_eps: m.f32("attention.layer_norm_rms_epsilon")?,
            n_head: m.per_layer("attention.head_count", n_layer)?,
            n_head_kv: m.per_layer("attention.head_count_kv", n_layer)?,
            head_dim,
            head_dim_swa,
            rope_base: m.f32("rope.freq_base")?,
            n_rot,
            rope_base_swa: m.f32_or("rope.freq_base_swa", 10_000.0)?,
            n_rot_swa,
            sliding_window: m.usize("attention.sliding_window")?,
            sliding,
            n_ff: m.per_layer("feed_forward_length", n_layer)?,
            n_expert,
            n_expert_used,
            n_ff_exp,
            final_logit_softcap: (softcap != 0.0).then_some(softcap),
        })
    }

    /// Elements per head on layer `il`.
    pub fn head_dim(&self, il: usize) -> usize {
        if self.sliding[il] {
            self.head_dim_swa
        } else {
            self.head_dim
        }
    }
}

// The GGUF tensor names, each spelled once.
const TOKEN_EMBD: &str = "token_embd.weight";
const OUTPUT_NORM: &str = "output_norm.weight";
const OUTPUT: &str = "output.weight";
const ROPE_FREQS: &str = "rope_freqs.weight";

/// One decoder layer's weights, named by tensor role (`hd`: this layer's head dim).
struct Layer {
    /// `[n_embd]`
    attn_norm: Vec<f32>,
    /// `{n_embd, n_head · hd}`
    attn_q: Matrix,
    /// `{n_embd, n_head_kv · hd}`
    attn_k: Matrix,
    /// `{n_embd, n_head_kv · hd}`; `None` on k_eq_v layers, where V is the raw K projection.
    attn_v: Option<Matrix>,
    /// `[hd]`, shared by every head
    attn_q_norm: Vec<f32>,
    /// `[hd]`
    attn_k_norm: Vec<f32>,
    /// `{n_head · hd, n_embd}`
    attn_output: Matrix,
    /// `[n_embd]`
    post_attention_norm: Vec<f32>,
    /// `[n_embd]`
    ffn_norm: Vec<f32>,
    /// `{n_embd, n_ff}`
    ffn_gate: Matrix,
    /// `{n_embd, n_ff}`
    ffn_up: Matrix,
    /// `{n_ff, n_embd}`
    ffn_down: Matrix,
    /// `[n_embd]`
    post_ffw_norm: Vec<f32>,
    moe: Option<Moe>,
    /// Multiplies the whole residual stream at the end of the layer (`layer_output_scale`).
    output_scale: Option<f32>,
}

/// The expert half of an MoE layer's feed-forward block.
struct Moe {
    /// `{n_embd, n_expert}`: the router.
    gate_inp: Matrix,
    /// `[n_embd]`: multiplies the router's normed input.
    gate_inp_scale: Vec<f32>,
    /// `[n_embd]`
    pre_ffw_norm_2: Vec<f32>,
    /// `[n_embd]`: norms the dense MLP's output.
    post_ffw_norm_1: Vec<f32>,
    /// `[n_embd]`: norms the experts' output.
    post_ffw_norm_2: Vec<f32>,
    gate_up: ExpertGateUp,
    /// `{n_ff_exp, n_embd, n_expert}`
    down_exps: ExpertStack,
    /// `[n_expert]`: multiplies each chosen expert's routing weight (1 when absent).
    down_exps_scale: Vec<f32>,
}

/// `ffn_gate_up_exps` `{n_embd, 2 n_ff_exp, n_expert}` (gate rows first), or the two halves.
enum ExpertGateUp {
    Fused(ExpertStack),
    Split { gate: ExpertStack, up: ExpertStack },
}

impl Layer {
    fn load(header: &GgufHeader, file: &[u8], hp: &Hparams, il: usize) -> Result<Layer, ModelError> {
        let name = |role: &str| format!("blk.{il}.{role}");
        let vector = |role: &str, n| find_vector(header, file, &name(role), n);
        let matrix = |role: &str, n_in, n_out| Matrix::find(header, &name(role), n_in, n_out);
        let has = |role: &str| header.tensor(&name(role)).is_some();
        let hd = hp.head_dim(il);
        let (q_width, kv_width, n_embd) = (hp.n_head[il] * hd, hp.n_head_kv[il] * hd, hp.n_embd);
        let moe = if has("ffn_gate_inp.weight") {
            if hp.n_expert == 0 {
                return Err(ModelError::BadMetadata {
                    key: format!("{ARCH}.expert_count"),
                    problem: format!("missing or 0, but blk.{il}.ffn_gate_inp.weight routes to experts"),
                });
            }
            let (e, ff) = (hp.n_expert, hp.n_ff_exp);
            let stack = |role: &str, n_in, rows| ExpertStack::find(header, &name(role), n_in, rows, e);
            let gate_up = if has("ffn_gate_up_exps.weight") {
                ExpertGateUp::Fused(stack("ffn_gate_up_exps.weight", n_embd, 2 * ff)?)
            } else {
                ExpertGateUp::Split {
                    gate: stack("ffn_gate_exps.weight", n_embd, ff)?,
                    up: stack("ffn_up_exps.weight", n_embd, ff)?,
                }
            };
            Some(Moe {
                gate_inp: matrix("ffn_gate_inp.weight", n_embd, e)?,
                gate_inp_scale: vector("ffn_gate_inp.scale", n_embd)?,
                pre_ffw_norm_2: vector("pre_ffw_norm_2.weight", n_embd)?,
                post_ffw_norm_1: vector("post_ffw_norm_1.weight", n_embd)?,
                post_ffw_norm_2: vector("post_ffw_norm_2.weight", n_embd)?,
                gate_up,
                down_exps: stack("ffn_down_exps.weight", ff, n_embd)?,
                down_exps_scale: match has("ffn_down_exps.scale") {
                    true => vector("ffn_down_exps.scale", e)?,
                    false => vec![1.0; e],
                },
            })
        } else {
            None
        };
        Ok(Layer {
            attn_norm: vector("attn_norm.weight", n_embd)?,
            attn_q: matrix("attn_q.weight", n_embd, q_width)?,
            attn_k: matrix("attn_k.weight", n_embd, kv_width)?,
            attn_v: if has("attn_v.weight") { Some(matrix("attn_v.weight", n_embd, kv_width)?) } else { None },
            attn_q_norm: vector("attn_q_norm.weight", hd)?,
            attn_k_norm: vector("attn_k_norm.weight", hd)?,
            attn_output: matrix("attn_output.weight", q_width, n_embd)?,
            post_attention_norm: vector("post_attention_norm.weight", n_embd)?,
            ffn_norm: vector("ffn_norm.weight", n_embd)?,
            ffn_gate: matrix("ffn_gate.weight", n_embd, hp.n_ff[il])?,
            ffn_up: matrix("ffn_up.weight", n_embd, hp.n_ff[il])?,
            ffn_down: matrix("ffn_down.weight", hp.n_ff[il], n_embd)?,
            post_ffw_norm: vector("post_ffw_norm.weight", n_embd)?,
            moe,
            output_scale: match has("layer_output_scale.weight") {
                true => Some(vector("layer_output_scale.weight", 1)?[0]),
                false => None,
            },
        })
    }
}

pub struct Gemma4 {
    pub hparams: Hparams,
    pub(crate) gguf: GgufFile,
    /// `{n_embd, n_vocab}`: the input embedding, one row per token.
    token_embd: Matrix,
    layers: Vec<Layer>,
    /// `[n_embd]`
    output_norm: Vec<f32>,
    /// `{n_embd, n_vocab}`: `output.weight`, or `token_embd` when tied (as on every Gemma 4).
    output: Matrix,
    /// `[head_dim / 2]`: the full layers' RoPE divisors (`1` rotates, `1e30` stands still).
    rope_freqs: Option<Vec<f32>>,
    isa: Isa,
    /// The last layers (and maybe the head) on a GPU (`-ngl`).
    #[cfg(feature = "vulkan")]
    pub(crate) gpu: Option<GpuDecoder>,
    /// Where the model runs, in a line ([`super::Model::placement`]).
    pub(crate) placement_note: String,
}

impl Gemma4 {
    pub fn load(gguf: GgufFile) -> Result<Gemma4, ModelError> {
        Gemma4::load_with(gguf, &Offload::default())
    }

    /// [`load`](Self::load), with the last layers on a GPU as `offload` asks.
    pub fn load_with(gguf: GgufFile, offload: &Offload) -> Result<Gemma4, ModelError> {
        let header = &gguf.header;
        let file = gguf.bytes();
        let hparams = Hparams::from_header(header)?;
        let hp = &hparams;
        let token_embd = Matrix::find(header, TOKEN_EMBD, hp.n_embd, hp.n_vocab)?;
        let output = match header.tensor(OUTPUT) {
            Some(_) => Matrix::find(header, OUTPUT, hp.n_embd, hp.n_vocab)?,
            None => token_embd.clone(),
        };
        let layers = (0..hp.n_layer).map(|il| Layer::load(header, file, hp, il)).collect::<Result<_, _>>()?;
        let output_norm = find_vector(header, file, OUTPUT_NORM, hp.n_embd)?;
        // Kept f32 whatever the file says: 1e30 does not survive f16 (pitfall 3).
        let rope_freqs = match hp.sliding.iter().all(|&s| s) {
            true => None,
            false => Some(find_vector(header, file, ROPE_FREQS, hp.head_dim / 2)?),
        };
        let resolved = offload.resolve()?;
        let mut model = Gemma4 {
            token_embd,
            layers,
            output_norm,
            output,
            rope_freqs,
            isa: Isa::best(),
            hparams,
            gguf,
            #[cfg(feature = "vulkan")]
            gpu: None,
            placement_note: resolved.note,
        };
        #[cfg(feature = "vulkan")]
        if let Some(gpu) = resolved.gpu {
            let placement = Placement::from_gpu_layers(model.hparams.n_layer, offload.gpu_layers);
            let decoder = model.upload(&gpu, placement, offload.max_batch)?;
            model.placement_note = placement.describe(&model.placement_note, model.hparams.n_layer, &gpu);
            model.gpu = Some(decoder);
        }
        Ok(model)
    }

    /// Uploads the layers and head `placement` puts on `gpu`.
    #[cfg(feature = "vulkan")]
    fn upload(
        &self,
        gpu: &ggml::vulkan::Gpu,
        placement: Placement,
        max_batch: usize,
    ) -> Result<GpuDecoder, ModelError> {
        let hp = &self.hparams;
        let first = placement.first_gpu_layer;
        let descs = (first..hp.n_layer)
            .map(|il| {
                let l = &self.layers[il];
                LayerDesc {
                    n_head: hp.n_head[il],
                    n_head_kv: hp.n_head_kv[il],
                    head_dim: hp.head_dim(il),
                    window: hp.sliding[il].then_some(hp.sliding_window),
                    full_rope: !hp.sliding[il],
                    q_scale: None,
                    v_norm: true,
                    attn_norm: &l.attn_norm,
                    attn_q: &l.attn_q,
                    attn_k: &l.attn_k,
                    attn_v: l.attn_v.as_ref(),
                    attn_q_norm: &l.attn_q_norm,
                    attn_k_norm: &l.attn_k_norm,
                    attn_output: &l.attn_output,
                    post_attention_norm: &l.post_attention_norm,
                    ffn_norm: &l.ffn_norm,
                    ffn_gate: &l.ffn_gate,
                    ffn_up: &l.ffn_up,
                    ffn_down: &l.ffn_down,
                    post_ffw_norm: &l.post_ffw_norm,
                    moe: l.moe.as_ref().map(|m| MoeDesc {
                        gate_inp: &m.gate_inp,
                        gate_inp_scale: &m.gate_inp_scale,
                        pre_ffw_norm_2: &m.pre_ffw_norm_2,
                        post_ffw_norm_1: &m.post_ffw_norm_1,
                        post_ffw_norm_2: &m.post_ffw_norm_2,
                        gate_up: match &m.gate_up {
                            ExpertGateUp::Fused(gu) => (gu, None),
                            ExpertGateUp::Split { gate, up } => (gate, Some(up)),
                        },
                        down_exps: &m.down_exps,
                        down_exps_scale: &m.down_exps_scale,
                        n_expert_used: hp.n_expert_used,
                    }),
                    output_scale: l.output_scale,
                }
            })
            .collect();
        let output = placement.output_on_gpu.then(|| OutputDesc {
            output_norm: &self.output_norm,
            output: &self.output,
            softcap: hp.final_logit_softcap,
        });
        GpuDecoder::upload(gpu, &self.gguf, first, descs, output, hp.n_embd, hp.n_vocab, hp.rms_eps, max_batch)
            .map_err(|e| ModelError::Unsupported(format!("uploading to the GPU: {e}")))
    }

    /// The cache shape of every layer.
    pub fn kv_specs(&self) -> Vec<LayerSpec> {
        let hp = &self.hparams;
        (0..hp.n_layer)
            .map(|il| LayerSpec {
                n_kv_head: hp.n_head_kv[il],
                head_dim: hp.head_dim(il),
                window: hp.sliding[il].then_some(hp.sliding_window),
                shares_cache_of: None,
            })
            .collect()
    }

    /// An empty f16 cache for up to `context` positions.
    pub fn new_cache(&self, context: usize) -> Result<KvCache, KvCacheError> {
        KvCache::new(&self.kv_specs(), context)
    }

    /// An empty cache of `kv_type` elements for up to `context` positions.
    pub fn new_cache_of(&self, context: usize, kv_type: KvType) -> Result<KvCache, KvCacheError> {
        self.new_cache_for(context, kv_type, None)
    }

    /// [`new_cache_of`](Self::new_cache_of), in VRAM for the layers on a GPU, their rings sized
    /// for batches of `max_batch` (`None`: the `-b` given at load).
    pub fn new_cache_for(
        &self,
        context: usize,
        kv_type: KvType,
        #[allow(unused_variables)] max_batch: Option<usize>,
    ) -> Result<KvCache, KvCacheError> {
        #[cfg(feature = "vulkan")]
        if let Some(g) = &self.gpu {
            return g.new_cache(&self.kv_specs(), context, kv_type, max_batch);
        }
        KvCache::with_type(&self.kv_specs(), context, kv_type)
    }

    /// Runs `tokens` at positions `pos ..`, appending their keys and values to `cache` (which
    /// must hold exactly `pos` positions), and returns the logits `[n_rows][n_vocab]` of every
    /// token or of the last one.
    pub fn forward(&mut self, tokens: &[u32], pos: usize, cache: &mut KvCache, which: Logits) -> Vec<f32> {
        let Ok(logits) = self.forward_cancellable(tokens, pos, cache, which, &Never) else {
            unreachable!("Never does not cancel")
        };
        logits
    }

    /// [`forward`](Self::forward), or stops before a layer once `cancel` fires, with the cache
    /// rewound to `pos` ([`Cancelled`]).
    pub fn forward_cancellable(
        &mut self,
        tokens: &[u32],
        pos: usize,
        cache: &mut KvCache,
        which: Logits,
        cancel: &dyn Cancel,
    ) -> Result<Vec<f32>, Cancelled> {
        #[cfg(feature = "vulkan")]
        if let Some(max) = cache.max_batch().filter(|&m| tokens.len() > m) {
            return super::gpu::in_pieces(tokens, pos, cache, which, max, |t, p, c, w| {
                self.forward_cancellable(t, p, c, w, cancel)
            });
        }
        let hp = &self.hparams;
        let (n_tokens, n_embd) = (tokens.len(), hp.n_embd);
        let file = self.gguf.bytes();
        let q_pos: Vec<usize> = (pos..pos + n_tokens).collect();
        // cos/sin per position and layer type: [n_tokens] of [n_rot / 2]
        let rope_full: Vec<RopeCache> =
            q_pos.iter().map(|&p| RopeCache::new(p, hp.rope_base, hp.n_rot, self.rope_freqs.as_deref())).collect();
        let rope_swa: Vec<RopeCache> =
            q_pos.iter().map(|&p| RopeCache::new(p, hp.rope_base_swa, hp.n_rot_swa, None)).collect();

        // x: [n_tokens][n_embd]
        let mut x = vec![0.0f32; n_tokens * n_embd];
        for (&token, row) in tokens.iter().zip(x.chunks_exact_mut(n_embd)) {
            assert!((token as usize) < hp.n_vocab, "token {token} is past the vocabulary of {}", hp.n_vocab);
            self.token_embd.dequantize_row(file, token as usize, row);
            scale(row, (n_embd as f32).sqrt());
        }

        #[cfg(feature = "vulkan")]
        let n_cpu = self.gpu.as_ref().map_or(hp.n_layer, |g| g.first_layer());
        #[cfg(not(feature = "vulkan"))]
        let n_cpu = hp.n_layer;
        for (il, layer) in self.layers.iter().enumerate().take(n_cpu) {
            if cancel.is_cancelled() {
                return Err(Cancelled::rewind(cache, pos));
            }
            let (hd, n_head, n_head_kv) = (hp.head_dim(il), hp.n_head[il], hp.n_head_kv[il]);
            let rope = if hp.sliding[il] { &rope_swa } else { &rope_full };

            // Attention. h: [n_tokens][n_embd]
            let h = norm_rows(&x, n_embd, Some(&layer.attn_norm), hp.rms_eps);
            let mut input = Input::new(&h, n_embd);
            // q: [n_tokens][n_head][hd]; k, v: [n_tokens][n_head_kv][hd]
            let mut q = input.project(self.isa, file, &layer.attn_q);
            let mut k = input.project(self.isa, file, &layer.attn_k);
            let mut v = match &layer.attn_v {
                Some(attn_v) => input.project(self.isa, file, attn_v),
                None => k.clone(),
            };
            rms_norm_heads(&mut q, hd, Some(&layer.attn_q_norm), hp.rms_eps);
            rms_norm_heads(&mut k, hd, Some(&layer.attn_k_norm), hp.rms_eps);
            rms_norm_heads(&mut v, hd, None, hp.rms_eps);
            let (q_row, kv_row) = (n_head * hd, n_head_kv * hd);
            for (t, rope) in rope.iter().enumerate() {
                rope_neox_cached(&mut q[t * q_row..(t + 1) * q_row], hd, rope);
                rope_neox_cached(&mut k[t * kv_row..(t + 1) * kv_row], hd, rope);
            }
            cache.layer_mut(il).expect("Gemma 4 26B/31B layers own their caches").update(pos, &k, &v);
            let shape = AttnShape {
                n_head,
                n_kv_head: n_head_kv,
                head_dim: hd,
                scale: 1.0,
                window: hp.sliding[il].then_some(hp.sliding_window),
            };
            // a: [n_tokens][n_head][hd]
            let mut a = vec![0.0f32; q.len()];
            attention(self.isa, &shape, &q, &q_pos, cache.layer(il).slots(), &mut a);
            let mut out = Input::new(&a, q_row).project(self.isa, file, &layer.attn_output);
            norm_rows_inplace(&mut out, n_embd, Some(&layer.post_attention_norm), hp.rms_eps);
            add(&mut x, &out);

            // Feed-forward: the dense MLP, then the experts beside it. gate, up: [n_tokens][n_ff]
            let h = norm_rows(&x, n_embd, Some(&layer.ffn_norm), hp.rms_eps);
            let mut input = Input::new(&h, n_embd);
            let mut gate = input.project(self.isa, file, &layer.ffn_gate);
            let up = input.project(self.isa, file, &layer.ffn_up);
            gelu_mul(&mut gate, &up);
            // m: [n_tokens][n_embd]
            let mut m = Input::new(&gate, hp.n_ff[il]).project(self.isa, file, &layer.ffn_down);
            if let Some(moe) = &layer.moe {
                norm_rows_inplace(&mut m, n_embd, Some(&moe.post_ffw_norm_1), hp.rms_eps);
                let mut e = self.experts(moe, &x);
                norm_rows_inplace(&mut e, n_embd, Some(&moe.post_ffw_norm_2), hp.rms_eps);
                add(&mut m, &e);
            }
            norm_rows_inplace(&mut m, n_embd, Some(&layer.post_ffw_norm), hp.rms_eps);
            add(&mut x, &m);
            if let Some(s) = layer.output_scale {
                scale(&mut x, s);
            }
        }

        #[cfg(feature = "vulkan")]
        if let Some(g) = &mut self.gpu {
            match g.forward(&x, pos, cache, &rope_full, &rope_swa, which, cancel)? {
                super::gpu::Out::Logits(logits) => return Ok(logits),
                super::gpu::Out::Stream(out) => x = out,
            }
        }
        Ok(self.output_head(x, n_tokens, which))
    }

    /// `softcap(output · (rmsnorm(x) * output_norm))` of the rows of `x: [n_tokens][n_embd]`
    /// that `which` asks for: `[n_rows][n_vocab]`.
    fn output_head(&self, mut x: Vec<f32>, n_tokens: usize, which: Logits) -> Vec<f32> {
        let hp = &self.hparams;
        let n_embd = hp.n_embd;
        if which == Logits::Last {
            x.drain(..(n_tokens - 1) * n_embd);
        }
        norm_rows_inplace(&mut x, n_embd, Some(&self.output_norm), hp.rms_eps);
        // logits: [n_rows][n_vocab]
        let mut logits = Input::new(&x, n_embd).project(self.isa, self.gguf.bytes(), &self.output);
        if let Some(c) = hp.final_logit_softcap {
            softcap(&mut logits, c);
        }
        logits
    }

    /// The experts' output for the post-attention stream `x_mid: [n_tokens][n_embd]`: each token
    /// routed to its top experts (GEMMA4.md 2.5-2.6). Returns `[n_tokens][n_embd]`.
    fn experts(&self, moe: &Moe, x_mid: &[f32]) -> Vec<f32> {
        let hp = &self.hparams;
        let (n_embd, k) = (hp.n_embd, hp.n_expert_used);
        let file = self.gguf.bytes();
        // The router sees x_mid through a weightless norm, times its scale and n_embd^-1/2.
        let mut r = norm_rows(x_mid, n_embd, None, hp.rms_eps);
        for row in r.chunks_exact_mut(n_embd) {
            mul(row, &moe.gate_inp_scale);
            scale(row, 1.0 / (n_embd as f32).sqrt());
        }
        // router_logits: [n_tokens][n_expert]
        let router_logits = Input::new(&r, n_embd).project(self.isa, file, &moe.gate_inp);
        // choices: [n_tokens][k] of (expert, weight)
        let mut choices = Vec::with_capacity(x_mid.len() / n_embd * k);
        for row in router_logits.chunks_exact(hp.n_expert) {
            let (experts, weights) = softmax_top_k(row, k);
            choices.extend(experts.into_iter().zip(weights).map(|(e, w)| (e, w * moe.down_exps_scale[e])));
        }
        let h = norm_rows(x_mid, n_embd, Some(&moe.pre_ffw_norm_2), hp.rms_eps);
        let gate_up = match &moe.gate_up {
            ExpertGateUp::Fused(gu) => GateUp::Fused(gu.view(file)),
            ExpertGateUp::Split { gate, up } => GateUp::Split { gate: gate.view(file), up: up.view(file) },
        };
        let mut out = vec![0.0f32; x_mid.len()];
        moe_ffn(self.isa, gate_up, moe.down_exps.view(file), &h, &choices, k, &mut out)
            .expect("shapes checked at load");
        out
    }
}
