//! Gemma 4 over a GGUF file: 26B-A4B (a mixture of experts beside the dense MLP on every layer)
//! and the dense 31B, as GEMMA4.md section 3 gives it and llama.cpp runs it
//! (`src/models/gemma4.cpp`): the hyperparameters and tensors read into the [`Decoder`] that
//! runs the pass below (`decoder.rs`, shared with Gemma 3).
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

use ggml::gguf::{GgufFile, GgufHeader};

use super::decoder::{Decoder, ExpertGateUp, Layer, Moe, Parts, Rope};
use super::{find_vector, ExpertStack, Matrix, Metadata, ModelError, Offload};

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

/// Layer `il`'s shape and weights (its tensors `blk.{il}.*`).
fn load_layer(header: &GgufHeader, file: &[u8], hp: &Hparams, il: usize) -> Result<Layer, ModelError> {
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
            n_expert_used: hp.n_expert_used,
        })
    } else {
        None
    };
    Ok(Layer {
        n_head: hp.n_head[il],
        n_head_kv: hp.n_head_kv[il],
        head_dim: hd,
        window: hp.sliding[il].then_some(hp.sliding_window),
        full_rope: !hp.sliding[il],
        q_scale: None,
        v_norm: true,
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

/// A Gemma 4 model: its hyperparameters and the shared [`Decoder`] (which it derefs to for
/// `forward`, `new_cache`, ...).
pub struct Gemma4 {
    pub hparams: Hparams,
    decoder: Decoder,
}

impl std::ops::Deref for Gemma4 {
    type Target = Decoder;
    fn deref(&self) -> &Decoder {
        &self.decoder
    }
}

impl std::ops::DerefMut for Gemma4 {
    fn deref_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }
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
        let layers = (0..hp.n_layer).map(|il| load_layer(header, file, hp, il)).collect::<Result<_, _>>()?;
        let output_norm = find_vector(header, file, OUTPUT_NORM, hp.n_embd)?;
        // Kept f32 whatever the file says: 1e30 does not survive f16 (pitfall 3).
        let rope_freqs = match hp.sliding.iter().all(|&s| s) {
            true => None,
            false => Some(find_vector(header, file, ROPE_FREQS, hp.head_dim / 2)?),
        };
        let parts = Parts {
            token_embd,
            layers,
            output_norm,
            output,
            rope_full: Rope { base: hp.rope_base, n_rot: hp.n_rot, freqs: rope_freqs },
            rope_swa: Rope { base: hp.rope_base_swa, n_rot: hp.n_rot_swa, freqs: None },
            n_embd: hp.n_embd,
            n_vocab: hp.n_vocab,
            eps: hp.rms_eps,
            softcap: hp.final_logit_softcap,
            gguf,
        };
        Ok(Gemma4 { decoder: Decoder::new(parts, offload)?, hparams })
    }
}
