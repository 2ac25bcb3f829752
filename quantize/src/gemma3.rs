//! Gemma 3 (`Gemma3ForCausalLM`, `Gemma3ForConditionalGeneration`) to GGUF arch `gemma3`, as
//! llama.cpp's converter (class `Gemma3Model`) does it: the generic text-model keys plus
//! Gemma 3's, RMSNorm weights shifted by +1 (Gemma 3 stores `w - 1` and computes `x * (1 + w)`),
//! the SentencePiece tokenizer, the vision tower left out.
//!
//! Missing config values take transformers' `Gemma3TextConfig` defaults. Older configs give the
//! RoPE bases as `rope_theta` / `rope_local_base_freq` and scaling as `rope_scaling`; newer ones
//! as `rope_parameters.{full,sliding}_attention`: both are read.

use std::path::Path;

use ggml::gguf::Value;
use ggml::GgmlType;
use serde_json::Value as Json;

use crate::checkpoint::{CheckpointError, Config, Weights};
use crate::ftype::ModelFacts;
use crate::gemma4::model_name;
use crate::meta::Metadata;
use crate::plan::{size_label, Conversion, PlannedTensor};
use crate::vocab::Vocab;
use crate::{checkpoint_source, hf_tensor_name, skip_multimodal, ConvertError};

const ARCH: &str = "gemma3";

struct Hparams {
    n_layer: u64,
    n_ctx: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    eps: f64,
    theta: f64,
    theta_swa: f64,
    /// `(type, factor)` of the full-attention layers' RoPE scaling.
    scaling: Option<(String, f64)>,
    softcap: Option<f64>,
    sliding_window: Option<u64>,
}

impl Hparams {
    fn read(c: &Config) -> Result<Hparams, CheckpointError> {
        if c.f64_opt("attn_logit_softcapping")?.is_some() {
            return Err(c.error("attn_logit_softcapping is set; Gemma 3 has none"));
        }
        let rope = c.get("rope_parameters");
        let full = rope.and_then(|r| r.get("full_attention"));
        let swa = rope.and_then(|r| r.get("sliding_attention"));
        let theta_of = |r: Option<&Json>| r.and_then(|r| r.get("rope_theta")).and_then(|t| t.as_f64());
        let theta = theta_of(full).or(c.f64_opt("rope_theta")?).unwrap_or(1_000_000.0);
        let theta_swa = theta_of(swa).or(c.f64_opt("rope_local_base_freq")?).unwrap_or(10_000.0);
        let scaling_src = full.or_else(|| c.get("rope_scaling"));
        let scaling = match scaling_src {
            Some(s) => {
                let ty = s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()).unwrap_or("default");
                let factor = s.get("factor").and_then(|f| f.as_f64());
                match (ty, factor) {
                    ("linear", Some(f)) => Some(("linear".to_string(), f)),
                    ("default", _) | ("linear", None) => None,
                    (other, _) => return Err(c.error(format!("RoPE scaling {other:?} is not supported for Gemma 3"))),
                }
            }
            None => None,
        };
        let pattern = c.u64_opt("sliding_window_pattern")?;
        Ok(Hparams {
            n_layer: c.u64_or("num_hidden_layers", 26)?,
            n_ctx: c.u64_or("max_position_embeddings", 131072)?,
            n_embd: c.u64_or("hidden_size", 2304)?,
            n_ff: c.u64_or("intermediate_size", 9216)?,
            n_head: c.u64_or("num_attention_heads", 8)?,
            n_head_kv: c.u64_or("num_key_value_heads", 4)?,
            head_dim: c.u64_or("head_dim", 256)?,
            eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            theta,
            theta_swa,
            scaling,
            softcap: c.f64_opt("final_logit_softcapping")?.filter(|&s| s != 0.0),
            sliding_window: if pattern == Some(1) { None } else { Some(c.u64_or("sliding_window", 4096)?) },
        })
    }

    /// The converter's keys in its order (`TextModel`, then `Gemma3Model`).
    fn write(&self, m: &mut Metadata) {
        let k = |s: &str| format!("{ARCH}.{s}");
        m.u32(k("block_count"), self.n_layer);
        m.u32(k("context_length"), self.n_ctx);
        m.u32(k("embedding_length"), self.n_embd);
        m.u32(k("feed_forward_length"), self.n_ff);
        m.u32(k("attention.head_count"), self.n_head);
        m.u32(k("attention.head_count_kv"), self.n_head_kv);
        if let Some((ty, factor)) = &self.scaling {
            m.string(k("rope.scaling.type"), ty.clone());
            m.f32(k("rope.scaling.factor"), *factor);
        }
        m.f32(k("rope.freq_base"), self.theta);
        m.f32(k("rope.freq_base_swa"), self.theta_swa);
        m.f32(k("attention.layer_norm_rms_epsilon"), self.eps);
        m.u32(k("attention.key_length"), self.head_dim);
        m.u32(k("attention.value_length"), self.head_dim);
        m.u32("general.file_type", 0);
        if let Some(softcap) = self.softcap {
            m.f32(k("final_logit_softcapping"), softcap);
        }
        if let Some(w) = self.sliding_window {
            m.u32(k("attention.sliding_window"), w);
        }
    }
}

fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let (il, rest) = hf.strip_prefix("model.layers.")?.split_once('.')?;
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
        "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{il}.{role}"))
}

pub fn convert(dir: &Path, config: &Config, weights: &Weights) -> Result<Conversion, ConvertError> {
    let hp = Hparams::read(config)?;
    let vocab_size = match config.u64_opt("vocab_size_per_layer_input")? {
        Some(v) => Some(v),
        None => config.u64_opt("vocab_size")?,
    };
    let vocab = Vocab::sentencepiece(dir, config, vocab_size)?;

    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    for &r in &weights.order {
        let entry = weights.entry(r);
        if skip_multimodal(&entry.name) {
            skipped.push(entry.name.clone());
            continue;
        }
        let hf = hf_tensor_name(&entry.name);
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
        if hf.contains("embed_tokens.weight") {
            shape[0] = shape[0].min(vocab.embedding_rows);
        }
        let rows = shape[..shape.len() - 1].iter().product();
        let shift = if hf.ends_with("norm.weight") { 1.0 } else { 0.0 };
        tensors.push(PlannedTensor {
            name,
            source_name: entry.name.clone(),
            dims: shape.iter().rev().copied().collect(),
            source: checkpoint_source(weights, r, rows, shift)?,
            converted: GgmlType::F32,
            ty: GgmlType::F32,
        });
    }
    let has = |n: &str| tensors.iter().any(|t| t.name == n);
    let mut need = vec!["token_embd.weight".to_string(), "output_norm.weight".to_string()];
    for il in 0..hp.n_layer {
        for role in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_q_norm",
            "attn_k_norm",
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
    }
    if let Some(n) = need.iter().find(|n| !has(n)) {
        return Err(ConvertError::MissingTensor(n.clone()));
    }

    let mut m = Metadata::new();
    m.string("general.architecture", ARCH);
    m.string("general.type", "model");
    m.string("general.name", model_name(dir));
    if let Some(label) = size_label(&tensors) {
        m.string("general.size_label", label);
    }
    hp.write(&mut m);
    m.set("general.quantization_version", Value::U32(2));
    m.string("tokenizer.ggml.model", vocab.model);
    m.string("tokenizer.ggml.pre", "default");
    vocab.write(&mut m);
    m.bool("tokenizer.ggml.add_space_prefix", false);

    let facts =
        ModelFacts { n_layer: hp.n_layer as usize, n_expert: 0, n_gqa: (hp.n_head / hp.n_head_kv.max(1)) as usize };
    Ok(Conversion { tensors, metadata: m, facts, skipped, requantize: false })
}
