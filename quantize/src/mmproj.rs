//! A Gemma 4 checkpoint's vision tower as the mmproj GGUF llama.cpp's converter writes with
//! `--mmproj` (`clip.vision.projector_type = "gemma4v"`; GEMMA4.md section 8): the same
//! metadata keys in the same order, the same tensors in the same order with the same types,
//! byte for byte (`quantize/tests/fixtures/tiny-gemma4-vision.mmproj.convert.json` is the
//! oracle, for F32, F16, BF16 and Q8_0).
//!
//! Tensors, from `model.vision_tower.*` and `model.embed_vision.*`:
//! - `v.patch_embd.weight` `{16, 16, 3, n_embd}`: `patch_embedder.input_proj` (`[n_embd][p·p·3]`,
//!   its columns row, column, channel) as a conv kernel (`[n_embd][3][p][p]`);
//! - `v.position_embd.weight` `{n_embd, n_pos, 2}`: the x and y tables, as they are;
//! - `v.blk.N.{attn_q,attn_k,attn_v,attn_out,ffn_gate,ffn_up,ffn_down}.weight` and their clamp
//!   bounds `.input_min/.input_max/.output_min/.output_max` (`{1}`), the norms (`ln1`, `ln2`,
//!   `attn_post_norm`, `ffn_post_norm`, `attn_q_norm`, `attn_k_norm`);
//! - `v.std_bias`, `v.std_scale`, `mm.input_projection.weight`.
//!
//! Types: 2-D weights take the output type (a Q8_0 row that is not whole blocks falls back to
//! F16, as the converter's does); the patch embedding is F16 in an F16 file and F32 otherwise;
//! the position tables, norms, clamp bounds and standardization stay F32.

use ggml::gguf::{Array, Value};
use ggml::GgmlType;

use crate::checkpoint::{Config, Weights};
use crate::ftype::{FileType, ModelFacts};
use crate::meta::Metadata;
use crate::plan::{size_label, Conversion, PlannedTensor, Source};
use crate::safetensors::Dtype;
use crate::{checkpoint_source, ConvertError};

/// The mmproj types: the converter's `--outtype` choices for a vision tower.
pub const TYPES: [FileType; 4] = [FileType::F32, FileType::F16, FileType::BF16, FileType::Q8_0];

/// The vision config with transformers' `Gemma4VisionConfig` defaults.
struct Vision {
    n_embd: u64,
    n_ff: u64,
    n_block: u64,
    n_head: u64,
    patch_size: u64,
    /// The text model's hidden size: what the projector writes.
    n_embd_text: u64,
}

impl Vision {
    fn read(config: &Config) -> Result<Vision, ConvertError> {
        let vision = match config.raw.get("vision_config") {
            Some(serde_json::Value::Object(v)) => Config::from_map(config.path.clone(), v.clone()),
            _ => return Err(config.error("has no vision_config: this checkpoint has no vision tower").into()),
        };
        Ok(Vision {
            n_embd: vision.u64_or("hidden_size", 768)?,
            n_ff: vision.u64_or("intermediate_size", 3072)?,
            n_block: vision.u64_or("num_hidden_layers", 16)?,
            n_head: vision.u64_or("num_attention_heads", 12)?,
            patch_size: vision.u64_or("patch_size", 16)?,
            n_embd_text: config.u64_or("hidden_size", 2304)?,
        })
    }
}

/// HF name -> mmproj name; `None` for what is not the vision tower.
fn mmproj_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_vision.embedding_projection.weight" => Some("mm.input_projection.weight"),
        "model.vision_tower.patch_embedder.input_proj.weight" => Some("v.patch_embd.weight"),
        "model.vision_tower.patch_embedder.position_embedding_table" => Some("v.position_embd.weight"),
        "model.vision_tower.std_bias" => Some("v.std_bias"),
        "model.vision_tower.std_scale" => Some("v.std_scale"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.vision_tower.encoder.layers.")?;
    let (il, rest) = rest.split_once('.')?;
    let il: u64 = il.parse().ok()?;
    let norm = match rest {
        "input_layernorm.weight" => Some("ln1.weight"),
        "pre_feedforward_layernorm.weight" => Some("ln2.weight"),
        "post_attention_layernorm.weight" => Some("attn_post_norm.weight"),
        "post_feedforward_layernorm.weight" => Some("ffn_post_norm.weight"),
        "self_attn.q_norm.weight" => Some("attn_q_norm.weight"),
        "self_attn.k_norm.weight" => Some("attn_k_norm.weight"),
        _ => None,
    };
    if let Some(n) = norm {
        return Some(format!("v.blk.{il}.{n}"));
    }
    // A clippable linear: `PROJ.linear.weight` and its four bounds.
    let (proj, part) = rest.rsplit_once('.').map(|(p, last)| match p.strip_suffix(".linear") {
        Some(p) => (p, "weight"),
        None => (p, last),
    })?;
    let role = match proj {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_out",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    matches!(part, "weight" | "input_min" | "input_max" | "output_min" | "output_max")
        .then(|| format!("v.blk.{il}.{role}.{part}"))
}

/// The type the converter writes `name` (of `n_dims` dims) as, in an mmproj of `ftype`.
fn mmproj_type(name: &str, n_dims: usize, row: u64, ftype: FileType) -> GgmlType {
    let float = match ftype {
        FileType::F16 => GgmlType::F16,
        FileType::BF16 => GgmlType::BF16,
        FileType::Q8_0 => GgmlType::Q8_0,
        _ => GgmlType::F32,
    };
    if n_dims < 2 || !name.ends_with(".weight") || name.contains("_norm.") || name == "v.position_embd.weight" {
        GgmlType::F32
    } else if name == "v.patch_embd.weight" {
        if ftype == FileType::F16 {
            GgmlType::F16
        } else {
            GgmlType::F32
        }
    } else if float == GgmlType::Q8_0 && !row.is_multiple_of(32) {
        GgmlType::F16
    } else {
        float
    }
}

/// A checkpoint tensor's values as f32 (the patch embedding is reordered before writing).
fn read_f32(weights: &Weights, r: crate::checkpoint::TensorRef) -> Vec<f32> {
    let data = weights.data(r);
    match weights.entry(r).dtype {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::Other(_) => unreachable!("checkpoint_source refused it"),
    }
}

/// The mmproj of the checkpoint in `dir`, of `ftype` (one of [`TYPES`]).
pub fn convert(name: String, config: &Config, weights: &Weights, ftype: FileType) -> Result<Conversion, ConvertError> {
    if !TYPES.contains(&ftype) {
        let names: Vec<&str> = TYPES.iter().map(|t| t.name()).collect();
        return Err(ConvertError::Plan(format!("an mmproj is written as {}, not {}", names.join(", "), ftype.name())));
    }
    let v = Vision::read(config)?;
    let mut tensors = Vec::new();
    for &r in &weights.order {
        let entry = weights.entry(r);
        let Some(gguf) = mmproj_name(&entry.name) else {
            if entry.name.contains("vision_tower.") || entry.name.contains("embed_vision.") {
                return Err(ConvertError::UnknownTensor {
                    name: entry.name.clone(),
                    file: weights.path(r).to_path_buf(),
                });
            }
            continue;
        };
        let mut shape = entry.shape.clone();
        if shape.is_empty() {
            shape.push(1);
        }
        let (dims, source) = if gguf == "v.patch_embd.weight" {
            // [n_embd][p][p][3] -> [n_embd][3][p][p]
            let p = v.patch_size as usize;
            if shape != [v.n_embd, 3 * v.patch_size * v.patch_size] {
                return Err(ConvertError::Plan(format!(
                    "{}: shape {shape:?}, expected [{}, {}]",
                    entry.name,
                    v.n_embd,
                    3 * p * p
                )));
            }
            checkpoint_source(weights, r, v.n_embd, 0.0)?;
            let hf = read_f32(weights, r);
            let mut conv = vec![0.0f32; hf.len()];
            for (src, dst) in hf.chunks_exact(3 * p * p).zip(conv.chunks_exact_mut(3 * p * p)) {
                for y in 0..p {
                    for x in 0..p {
                        for c in 0..3 {
                            dst[(c * p + y) * p + x] = src[(y * p + x) * 3 + c];
                        }
                    }
                }
            }
            (vec![v.patch_size, v.patch_size, 3, v.n_embd], Source::Values(conv))
        } else {
            let rows = shape[..shape.len() - 1].iter().product();
            (shape.iter().rev().copied().collect(), checkpoint_source(weights, r, rows, 0.0)?)
        };
        let ty = mmproj_type(&gguf, dims.len(), dims[0], ftype);
        tensors.push(PlannedTensor { name: gguf, source_name: entry.name.clone(), dims, source, converted: ty, ty });
    }
    for need in ["v.patch_embd.weight", "v.position_embd.weight", "mm.input_projection.weight"] {
        if !tensors.iter().any(|t| t.name == need) {
            return Err(ConvertError::MissingTensor(need.into()));
        }
    }

    let mut m = Metadata::new();
    m.string("general.architecture", "clip");
    m.string("general.type", "mmproj");
    m.string("general.name", name);
    if let Some(label) = size_label(&tensors) {
        m.string("general.size_label", label);
    }
    m.u32("general.file_type", ftype.id() as u64);
    m.bool("clip.has_vision_encoder", true);
    m.u32("clip.vision.projection_dim", v.n_embd_text);
    // The converter's placeholder: Gemma 4 resizes to a token budget, not to a square.
    m.u32("clip.vision.image_size", 224);
    m.u32("clip.vision.patch_size", v.patch_size);
    m.u32("clip.vision.embedding_length", v.n_embd);
    m.u32("clip.vision.feed_forward_length", v.n_ff);
    m.u32("clip.vision.block_count", v.n_block);
    m.u32("clip.vision.attention.head_count", v.n_head);
    // Gemma 4's processor does not normalize (pixels in [0, 1]; the model maps them to 2x - 1).
    m.array("clip.vision.image_mean", Array::F32(vec![0.0; 3]));
    m.array("clip.vision.image_std", Array::F32(vec![1.0; 3]));
    m.string("clip.vision.projector_type", "gemma4v");
    // The converter looks for `layer_norm_eps`, which Gemma 4's config does not have.
    m.f32("clip.vision.attention.layer_norm_epsilon", 1e-6);
    m.set("general.quantization_version", Value::U32(2));
    let facts = ModelFacts { n_layer: v.n_block as usize, n_expert: 0, n_gqa: 1 };
    Ok(Conversion { tensors, metadata: m, facts, skipped: Vec::new(), requantize: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_as_the_converter_maps_them() {
        let n = |hf: &str| mmproj_name(hf);
        assert_eq!(
            n("model.vision_tower.encoder.layers.2.self_attn.q_proj.linear.weight").unwrap(),
            "v.blk.2.attn_q.weight"
        );
        assert_eq!(
            n("model.vision_tower.encoder.layers.0.mlp.down_proj.input_min").unwrap(),
            "v.blk.0.ffn_down.input_min"
        );
        assert_eq!(
            n("model.vision_tower.encoder.layers.1.pre_feedforward_layernorm.weight").unwrap(),
            "v.blk.1.ln2.weight"
        );
        assert_eq!(
            n("model.vision_tower.encoder.layers.1.self_attn.o_proj.output_max").unwrap(),
            "v.blk.1.attn_out.output_max"
        );
        assert_eq!(n("model.language_model.layers.0.mlp.up_proj.weight"), None);
        assert_eq!(n("model.vision_tower.encoder.layers.0.self_attn.q_proj.bias"), None);
    }

    #[test]
    fn q8_0_falls_back_to_f16_on_partial_blocks() {
        assert_eq!(mmproj_type("v.blk.0.ffn_down.weight", 2, 4304, FileType::Q8_0), GgmlType::F16);
        assert_eq!(mmproj_type("v.blk.0.ffn_up.weight", 2, 1152, FileType::Q8_0), GgmlType::Q8_0);
        assert_eq!(mmproj_type("v.patch_embd.weight", 4, 16, FileType::Q8_0), GgmlType::F32);
        assert_eq!(mmproj_type("v.patch_embd.weight", 4, 16, FileType::F16), GgmlType::F16);
        assert_eq!(mmproj_type("v.position_embd.weight", 3, 1152, FileType::F16), GgmlType::F32);
        assert_eq!(mmproj_type("v.blk.0.attn_q.input_min", 1, 1, FileType::F16), GgmlType::F32);
    }
}
