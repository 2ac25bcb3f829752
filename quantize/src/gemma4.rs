//! Gemma 4 (`Gemma4ForConditionalGeneration`, `Gemma4ForCausalLM`) to GGUF arch `gemma4`, as
//! llama.cpp's converter (`conversion/gemma.py`, class `Gemma4Model`) does it: GEMMA4.md
//! section 4. The text model only; the vision and audio towers are left out (llama.cpp puts
//! them in a separate mmproj file).
//!
//! Config values missing from `config.json` take transformers' `Gemma4TextConfig` defaults,
//! since the converter reads the config through transformers.

use std::path::Path;

use ggml::gguf::{Array, Value};
use ggml::GgmlType;
use serde_json::Value as Json;

use crate::checkpoint::{CheckpointError, Config, Weights};
use crate::ftype::ModelFacts;
use crate::meta::Metadata;
use crate::plan::{size_label, Conversion, PlannedTensor, Source};
use crate::vocab::Vocab;
use crate::{checkpoint_source, hf_tensor_name, skip_multimodal, ConvertError};

const ARCH: &str = "gemma4";

/// The text config with transformers' defaults and derived per-layer values.
struct Hparams {
    n_layer: u64,
    n_ctx: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    head_dim_full: u64,
    n_head_kv_full: Option<u64>,
    swa: Vec<bool>,
    sliding_window: u64,
    rope_full: Json,
    rope_swa: Json,
    eps: f64,
    softcap: Option<f64>,
    n_expert: Option<u64>,
    n_expert_used: Option<u64>,
    n_ff_exp: Option<u64>,
    n_kv_shared: u64,
    n_embd_per_layer: u64,
    double_wide_mlp: bool,
    causal: bool,
}

impl Hparams {
    fn read(c: &Config) -> Result<Hparams, CheckpointError> {
        let n_layer = c.u64_or("num_hidden_layers", 30)?;
        let layer_types: Vec<String> = match c.get("layer_types") {
            Some(Json::Array(list)) => list
                .iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(|| c.error("layer_types must be a list of strings")))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(c.error("layer_types must be a list of strings")),
            None => (0..n_layer)
                .map(|i| if (i + 1) % 6 == 0 { "full_attention" } else { "sliding_attention" }.to_string())
                .collect(),
        };
        if layer_types.len() as u64 != n_layer {
            return Err(c.error(format!("layer_types has {} entries for {n_layer} layers", layer_types.len())));
        }
        let mut swa: Vec<bool> = layer_types.iter().map(|t| t == "sliding_attention").collect();
        // transformers forces the last layer to full attention.
        if let Some(last) = swa.last_mut() {
            *last = false;
        }

        let default_rope = serde_json::json!({
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        });
        let rope = c.get("rope_parameters").unwrap_or(&default_rope);
        let rope_full = rope.get("full_attention").cloned().unwrap_or_else(|| default_rope["full_attention"].clone());
        let rope_swa =
            rope.get("sliding_attention").cloned().unwrap_or_else(|| default_rope["sliding_attention"].clone());

        // transformers turns global_head_dim / num_global_key_value_heads into a per-layer
        // override of the full-attention layers (the kv heads only when attention_k_eq_v), and
        // the converter reads them back from there.
        let k_eq_v = c.bool_or("attention_k_eq_v", false)?;
        let (head_dim_full, n_head_kv_full) = match c.get("per_layer_config").and_then(|p| p.as_object()) {
            Some(per_layer) => {
                let full_layer = |key: &str| {
                    per_layer.iter().find_map(|(idx, cfg)| {
                        let idx: usize = idx.parse().ok()?;
                        (idx < swa.len() && !swa[idx]).then(|| cfg.get(key).and_then(|v| v.as_u64())).flatten()
                    })
                };
                let hd = full_layer("head_dim")
                    .ok_or_else(|| c.error("per_layer_config gives no head_dim for a full-attention layer"))?;
                (hd, full_layer("num_key_value_heads"))
            }
            None => {
                let kv = if k_eq_v { c.u64_opt("num_global_key_value_heads")? } else { None };
                (c.u64_or("global_head_dim", 512)?, kv)
            }
        };
        let softcap = c.f64_opt("final_logit_softcapping")?.filter(|&s| s != 0.0);
        Ok(Hparams {
            n_layer,
            n_ctx: c.u64_or("max_position_embeddings", 131072)?,
            n_embd: c.u64_or("hidden_size", 2304)?,
            n_ff: c.u64_or("intermediate_size", 9216)?,
            n_head: c.u64_or("num_attention_heads", 8)?,
            n_head_kv: c.u64_or("num_key_value_heads", 4)?,
            head_dim: c.u64_or("head_dim", 256)?,
            head_dim_full,
            n_head_kv_full,
            swa,
            sliding_window: c.u64_or("sliding_window", 512)?,
            rope_full,
            rope_swa,
            eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            softcap,
            n_expert: c.u64_opt("num_experts")?,
            n_expert_used: c.u64_opt("top_k_experts")?,
            n_ff_exp: match c.u64_opt("expert_intermediate_size")? {
                Some(v) => Some(v),
                None => c.u64_opt("moe_intermediate_size")?,
            },
            n_kv_shared: c.u64_or("num_kv_shared_layers", 0)?,
            // null means none (0); absent means transformers' default.
            n_embd_per_layer: match c.u64_opt("hidden_size_per_layer_input")? {
                Some(n) => n,
                None if c.present("hidden_size_per_layer_input") => 0,
                None => 256,
            },
            double_wide_mlp: c.bool_or("use_double_wide_mlp", false)?,
            causal: c.str_opt("use_bidirectional_attention")? != Some("all"),
        })
    }

    fn rope_theta(rope: &Json) -> Option<f64> {
        rope.get("rope_theta").and_then(|t| t.as_f64())
    }

    /// `rope_freqs`: 1 for the rotated frequency pairs of the full-attention head, 1e30 (no
    /// rotation) for the rest (GEMMA4.md 1.2).
    fn rope_freqs(&self, c: &Config) -> Result<Vec<f32>, CheckpointError> {
        if self.rope_full.get("rope_type").and_then(|t| t.as_str()) != Some("proportional") {
            return Err(c.error("rope_parameters.full_attention.rope_type must be \"proportional\" for Gemma 4"));
        }
        let factor = self
            .rope_full
            .get("partial_rotary_factor")
            .and_then(|f| f.as_f64())
            .ok_or_else(|| c.error("rope_parameters.full_attention has no partial_rotary_factor"))?;
        let n_rot = (self.head_dim_full as f64 * factor / 2.0) as usize;
        let half = (self.head_dim_full / 2) as usize;
        Ok((0..half).map(|i| if i < n_rot { 1.0 } else { 1e30 }).collect())
    }

    /// The converter's metadata keys, in the order it sets them (generic `TextModel`, then
    /// `Gemma3Model`, then `Gemma4Model`; a key set twice keeps its first position).
    fn write(&self, m: &mut Metadata) {
        let k = |s: &str| format!("{ARCH}.{s}");
        m.u32(k("block_count"), self.n_layer);
        m.u32(k("context_length"), self.n_ctx);
        m.u32(k("embedding_length"), self.n_embd);
        m.u32(k("feed_forward_length"), self.n_ff);
        m.u32(k("attention.head_count"), self.n_head);
        m.u32(k("attention.head_count_kv"), self.n_head_kv);
        if !self.causal {
            m.bool(k("attention.causal"), false);
        }
        if let Some(theta) = Hparams::rope_theta(&self.rope_full) {
            m.f32(k("rope.freq_base"), theta);
        }
        if let Some(theta) = Hparams::rope_theta(&self.rope_swa) {
            m.f32(k("rope.freq_base_swa"), theta);
        }
        m.f32(k("attention.layer_norm_rms_epsilon"), self.eps);
        if let Some(n) = self.n_expert {
            m.u32(k("expert_count"), n);
        }
        if let Some(n) = self.n_expert_used {
            m.u32(k("expert_used_count"), n);
        }
        m.u32(k("attention.key_length"), self.head_dim);
        m.u32(k("attention.value_length"), self.head_dim);
        m.u32("general.file_type", 0);
        // Gemma3Model
        if let Some(softcap) = self.softcap {
            m.f32(k("final_logit_softcapping"), softcap);
        }
        m.u32(k("attention.sliding_window"), self.sliding_window);
        // Gemma4Model
        m.u32(k("attention.shared_kv_layers"), self.n_kv_shared);
        m.u32(k("embedding_length_per_layer_input"), self.n_embd_per_layer);
        m.array(k("attention.sliding_window_pattern"), Array::Bool(self.swa.clone()));
        m.u32(k("attention.key_length"), self.head_dim_full);
        m.u32(k("attention.value_length"), self.head_dim_full);
        m.u32(k("attention.key_length_swa"), self.head_dim);
        m.u32(k("attention.value_length_swa"), self.head_dim);
        if let Some(n) = self.n_ff_exp {
            m.u32(k("expert_feed_forward_length"), n);
        }
        if self.double_wide_mlp {
            let first_shared = self.n_layer.saturating_sub(self.n_kv_shared);
            let per_layer =
                (0..self.n_layer).map(|il| (if il < first_shared { self.n_ff } else { 2 * self.n_ff }) as i32);
            m.array(k("feed_forward_length"), Array::I32(per_layer.collect()));
        }
        if let Some(full) = self.n_head_kv_full {
            let per_layer = self.swa.iter().map(|&s| (if s { self.n_head_kv } else { full }) as i32);
            m.array(k("attention.head_count_kv"), Array::I32(per_layer.collect()));
        }
        m.u32(k("rope.dimension_count"), self.head_dim_full);
        m.u32(k("rope.dimension_count_swa"), self.head_dim);
    }
}

/// HF name (after `model.`-prefix handling) -> GGUF name, for the text model's tensors.
fn gguf_name(hf: &str) -> Option<String> {
    let global = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        "model.embed_tokens_per_layer.weight" => Some("per_layer_token_embd.weight"),
        "model.per_layer_model_projection.weight" => Some("per_layer_model_proj.weight"),
        "model.per_layer_projection_norm.weight" => Some("per_layer_proj_norm.weight"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: u64 = il.parse().ok()?;
    let role = match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "router.proj.weight" => "ffn_gate_inp.weight",
        "router.scale" => "ffn_gate_inp.scale",
        "router.per_expert_scale" => "ffn_down_exps.scale",
        "experts.gate_up_proj.weight" => "ffn_gate_up_exps.weight",
        "experts.down_proj.weight" => "ffn_down_exps.weight",
        "pre_feedforward_layernorm_2.weight" => "pre_ffw_norm_2.weight",
        "post_feedforward_layernorm_1.weight" => "post_ffw_norm_1.weight",
        "post_feedforward_layernorm_2.weight" => "post_ffw_norm_2.weight",
        "layer_scalar.weight" => "layer_output_scale.weight",
        "per_layer_input_gate.weight" => "inp_gate.weight",
        "per_layer_projection.weight" => "proj.weight",
        "post_per_layer_input_norm.weight" => "post_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{il}.{role}"))
}

/// Gemma 4's renames before mapping: `layer_scalar` and the 3-D expert parameters get `.weight`.
fn gemma4_rename(name: &str) -> String {
    let mut name = name.to_string();
    if name.ends_with("per_dim_scale") || name.ends_with("layer_scalar") {
        name.push_str(".weight");
    }
    if name.contains(".experts.")
        && ![".weight", ".weight_scale", ".weight_scale_2", ".input_scale"].iter().any(|s| name.ends_with(s))
    {
        name.push_str(".weight");
    }
    name
}

pub fn convert(dir: &Path, config: &Config, weights: &Weights) -> Result<Conversion, ConvertError> {
    let hp = Hparams::read(config)?;
    let vocab = Vocab::gemma4(dir, config)?;

    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    tensors.push(PlannedTensor {
        name: "rope_freqs.weight".into(),
        source_name: "-".into(),
        dims: vec![hp.head_dim_full / 2],
        source: Source::Values(hp.rope_freqs(config)?),
        converted: GgmlType::F32,
        ty: GgmlType::F32,
    });
    for &r in &weights.order {
        let entry = weights.entry(r);
        let renamed = gemma4_rename(&entry.name);
        if skip_multimodal(&renamed) {
            skipped.push(entry.name.clone());
            continue;
        }
        let hf = hf_tensor_name(&renamed);
        if hf.ends_with(".attention.masked_bias")
            || hf.ends_with(".attention.bias")
            || hf.ends_with(".rotary_emb.inv_freq")
        {
            continue;
        }
        let name = gguf_name(&hf).ok_or_else(|| ConvertError::UnknownTensor {
            name: entry.name.clone(),
            file: weights.path(r).to_path_buf(),
        })?;
        let mut shape = entry.shape.clone();
        if shape.is_empty() {
            shape.push(1);
        }
        if hf == "model.embed_tokens.weight" {
            shape[0] = shape[0].min(vocab.embedding_rows);
        }
        let rows = shape[..shape.len() - 1].iter().product();
        tensors.push(PlannedTensor {
            name,
            source_name: entry.name.clone(),
            dims: shape.iter().rev().copied().collect(),
            source: checkpoint_source(weights, r, rows, 0.0)?,
            converted: GgmlType::F32,
            ty: GgmlType::F32,
        });
    }
    check_required(&hp, &tensors)?;

    let mut m = Metadata::new();
    m.string("general.architecture", ARCH);
    m.string("general.type", "model");
    m.string("general.name", model_name(dir));
    if let Some(label) = size_label(&tensors) {
        m.string("general.size_label", label);
    }
    hp.write(&mut m);
    m.set("general.quantization_version", Value::U32(2));
    vocab.write(&mut m);
    m.bool("tokenizer.ggml.add_space_prefix", false);
    m.bool("tokenizer.ggml.add_bos_token", true);

    let n_head_kv0 =
        if hp.swa.first() == Some(&false) { hp.n_head_kv_full.unwrap_or(hp.n_head_kv) } else { hp.n_head_kv };
    let facts = ModelFacts {
        n_layer: hp.n_layer as usize,
        n_expert: hp.n_expert.unwrap_or(0) as usize,
        n_gqa: (hp.n_head / n_head_kv0.max(1)) as usize,
    };
    Ok(Conversion { tensors, metadata: m, facts, skipped, requantize: false })
}

/// The tensors llama.cpp's gemma4 loader cannot do without, checked here so that a checkpoint
/// missing one fails before anything is written.
fn check_required(hp: &Hparams, tensors: &[PlannedTensor]) -> Result<(), ConvertError> {
    let has = |n: &str| tensors.iter().any(|t| t.name == n);
    let mut need = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
    let first_shared = hp.n_layer.saturating_sub(hp.n_kv_shared);
    for il in 0..hp.n_layer {
        for role in [
            "attn_norm",
            "attn_q",
            "attn_q_norm",
            "attn_output",
            "post_attention_norm",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "post_ffw_norm",
        ] {
            need.push(format!("blk.{il}.{role}.weight"));
        }
        if il < first_shared {
            need.push(format!("blk.{il}.attn_k.weight"));
            need.push(format!("blk.{il}.attn_k_norm.weight"));
        }
        if hp.n_expert.unwrap_or(0) > 0 {
            for role in [
                "ffn_gate_inp.weight",
                "ffn_gate_inp.scale",
                "ffn_gate_up_exps.weight",
                "ffn_down_exps.weight",
                "ffn_down_exps.scale",
                "pre_ffw_norm_2.weight",
                "post_ffw_norm_1.weight",
                "post_ffw_norm_2.weight",
            ] {
                need.push(format!("blk.{il}.{role}"));
            }
        }
    }
    match need.iter().find(|n| !has(n)) {
        Some(n) => Err(ConvertError::MissingTensor(n.clone())),
        None => Ok(()),
    }
}

/// `general.name`: the checkpoint folder's name (the converter's fallback when there is no
/// model card).
pub fn model_name(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_the_converter_maps_them() {
        assert_eq!(gguf_name("model.layers.3.router.scale").unwrap(), "blk.3.ffn_gate_inp.scale");
        assert_eq!(
            gguf_name(&gemma4_rename("model.layers.0.experts.down_proj")).unwrap(),
            "blk.0.ffn_down_exps.weight"
        );
        assert_eq!(
            gguf_name(&gemma4_rename("model.layers.5.layer_scalar")).unwrap(),
            "blk.5.layer_output_scale.weight"
        );
        assert_eq!(gguf_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("model.layers.0.mlp.unknown.weight"), None);
    }
}
