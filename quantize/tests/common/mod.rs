//! What quantize's tests share: the checkpoint fixtures of `scripts/tiny-gemma4-hf.py`, running
//! the binary, and reading a GGUF back as comparable values.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ggml::gguf::{Array, GgufFile, Value};
use sha2::{Digest, Sha256};

/// The tiny checkpoints of `scripts/tiny-gemma4-hf.py`: Gemma 4 26B-A4B's family (MoE), 31B's (dense), and
/// a Gemma 3.
pub const MODELS: [&str; 3] = ["tiny-gemma4-moe", "tiny-gemma4-dense", "tiny-gemma3"];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Hugging Face folder of tiny model `name`.
pub fn checkpoint(name: &str) -> PathBuf {
    let dir = root().join("models").join(format!("{name}-hf"));
    assert!(dir.join("config.json").exists(), "{} is missing: run scripts/setup.sh", dir.display());
    dir
}

pub fn quantize(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quantize"));
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}

/// Runs quantize and panics with its stderr unless it succeeds.
pub fn convert(input: &Path, output: &Path, ty: &str) {
    let out = quantize(&[&input, &output, &ty, &"--force"]);
    assert!(
        out.status.success(),
        "quantize {} {ty} failed:\n{}",
        input.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One tensor of a GGUF: name, type name (ggml's, upper case as gguf-py writes it), ggml dims,
/// sha256 of its bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub ty: String,
    pub dims: Vec<u64>,
    pub sha256: String,
}

pub struct Gguf {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<Tensor>,
}

pub fn read(path: &Path) -> Gguf {
    let f = GgufFile::open(path).unwrap();
    let tensors = f
        .header
        .tensors
        .iter()
        .map(|t| Tensor {
            name: t.name.clone(),
            ty: t.ty.name().to_uppercase(),
            dims: t.dims.clone(),
            sha256: format!("{:x}", Sha256::digest(f.tensor_data(t))),
        })
        .collect();
    Gguf { metadata: f.header.metadata.clone(), tensors }
}

/// A metadata value as `scripts/tiny-gemma4-hf.py oracle` writes it to JSON: gguf-py's type
/// name and the value.
pub fn to_json(v: &Value) -> (String, serde_json::Value) {
    use serde_json::json;
    match v {
        Value::U8(x) => ("UINT8".into(), json!(x)),
        Value::I8(x) => ("INT8".into(), json!(x)),
        Value::U16(x) => ("UINT16".into(), json!(x)),
        Value::I16(x) => ("INT16".into(), json!(x)),
        Value::U32(x) => ("UINT32".into(), json!(x)),
        Value::I32(x) => ("INT32".into(), json!(x)),
        Value::U64(x) => ("UINT64".into(), json!(x)),
        Value::I64(x) => ("INT64".into(), json!(x)),
        Value::F32(x) => ("FLOAT32".into(), json!(*x as f64)),
        Value::F64(x) => ("FLOAT64".into(), json!(x)),
        Value::Bool(x) => ("BOOL".into(), json!(x)),
        Value::String(s) => ("STRING".into(), json!(s)),
        Value::Array(a) => {
            let (elem, items): (&str, Vec<serde_json::Value>) = match a {
                Array::U8(v) => ("UINT8", v.iter().map(|x| json!(x)).collect()),
                Array::I8(v) => ("INT8", v.iter().map(|x| json!(x)).collect()),
                Array::U16(v) => ("UINT16", v.iter().map(|x| json!(x)).collect()),
                Array::I16(v) => ("INT16", v.iter().map(|x| json!(x)).collect()),
                Array::U32(v) => ("UINT32", v.iter().map(|x| json!(x)).collect()),
                Array::I32(v) => ("INT32", v.iter().map(|x| json!(x)).collect()),
                Array::U64(v) => ("UINT64", v.iter().map(|x| json!(x)).collect()),
                Array::I64(v) => ("INT64", v.iter().map(|x| json!(x)).collect()),
                Array::F32(v) => ("FLOAT32", v.iter().map(|x| json!(*x as f64)).collect()),
                Array::F64(v) => ("FLOAT64", v.iter().map(|x| json!(x)).collect()),
                Array::Bool(v) => ("BOOL", v.iter().map(|x| json!(x)).collect()),
                Array::String(v) => ("STRING", v.iter().map(|x| json!(x)).collect()),
                Array::Array(_) => ("ARRAY", vec![]),
            };
            (format!("ARRAY[{elem}]"), serde_json::Value::Array(items))
        }
    }
}

/// Keys that say where a file came from rather than what it holds.
pub fn is_provenance(key: &str) -> bool {
    matches!(key, "general.name" | "general.basename" | "general.finetune" | "general.quantized_by" | "general.version")
}

/// Writes a dense Gemma 4 checkpoint (`Gemma4ForCausalLM`, f32, deterministic values) into
/// `dir` with the tiny models' tokenizer: big enough, with a large `ff`, for a run that lasts.
pub fn synthetic_checkpoint(dir: &Path, hidden: u64, ff: u64, layers: u64) {
    let src = checkpoint("tiny-gemma4-dense");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let (heads, kv, hd, hd_full) = (4u64, 2u64, 64u64, 128u64);
    let full = |il: u64| (il + 1).is_multiple_of(3) || il + 1 == layers;
    let layer_types: Vec<&str> =
        (0..layers).map(|il| if full(il) { "full_attention" } else { "sliding_attention" }).collect();
    let config = serde_json::json!({
        "architectures": ["Gemma4ForCausalLM"], "model_type": "gemma4_text",
        "vocab_size": 1024, "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd, "global_head_dim": hd_full,
        "num_global_key_value_heads": 1, "attention_k_eq_v": true, "sliding_window": 16,
        "layer_types": layer_types, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "final_logit_softcapping": 30.0, "hidden_size_per_layer_input": 0, "num_kv_shared_layers": 0,
        "enable_moe_block": false, "tie_word_embeddings": true,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0}
        }
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut shapes: Vec<(String, Vec<u64>)> =
        vec![("model.embed_tokens.weight".into(), vec![1024, hidden]), ("model.norm.weight".into(), vec![hidden])];
    for il in 0..layers {
        let p = format!("model.layers.{il}.");
        let (h, n_kv) = if full(il) { (hd_full, 1) } else { (hd, kv) };
        let mut add = |n: &str, s: Vec<u64>| shapes.push((format!("{p}{n}"), s));
        add("input_layernorm.weight", vec![hidden]);
        add("self_attn.q_proj.weight", vec![heads * h, hidden]);
        add("self_attn.k_proj.weight", vec![n_kv * h, hidden]);
        if !full(il) {
            add("self_attn.v_proj.weight", vec![n_kv * h, hidden]);
        }
        add("self_attn.q_norm.weight", vec![h]);
        add("self_attn.k_norm.weight", vec![h]);
        add("self_attn.o_proj.weight", vec![hidden, heads * h]);
        add("post_attention_layernorm.weight", vec![hidden]);
        add("pre_feedforward_layernorm.weight", vec![hidden]);
        add("mlp.gate_proj.weight", vec![ff, hidden]);
        add("mlp.up_proj.weight", vec![ff, hidden]);
        add("mlp.down_proj.weight", vec![hidden, ff]);
        add("post_feedforward_layernorm.weight", vec![hidden]);
        add("layer_scalar", vec![1]);
    }
    let tensors: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = shapes
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: u64 = shape.iter().product();
            let data = (0..n)
                .flat_map(|j| (((j * 2654435761 + i as u64) % 1000) as f32 / 1000.0 - 0.5).to_le_bytes())
                .collect();
            (name.as_str(), "F32", shape.clone(), data)
        })
        .collect();
    quantize::safetensors::write(&dir.join("model.safetensors"), &tensors).unwrap();
}
