//! `gemma info`: what a GGUF file holds, for people (text) and scripts (JSON).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ggml::gguf::{Array, GgufFile, GgufHeader, Value};
use serde::Serialize;
use serde_json::json;

use crate::kv_cache::{KvType, KvTypes};

/// Everything `gemma info` reports about one file.
#[derive(Debug, Serialize)]
pub struct ModelInfo {
    pub file: String,
    pub file_size: u64,
    pub gguf_version: u32,
    pub alignment: u64,
    pub n_metadata: usize,
    pub n_tensors: usize,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub size_label: Option<String>,
    pub file_type: Option<FileType>,
    /// Sum of the element counts of all tensors.
    pub n_params: u64,
    /// Bytes and tensors per tensor type, largest first.
    pub type_mix: Vec<TypeShare>,
    pub hparams: Hparams,
    /// An mmproj's vision encoder (`general.architecture = "clip"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vision: Option<VisionInfo>,
    pub tokenizer: Option<TokenizerInfo>,
    /// Length in bytes of `tokenizer.chat_template`, if the file has one.
    pub chat_template_bytes: Option<usize>,
    pub memory: MemoryEstimate,
    /// Every metadata key: scalars in full, arrays as type, length and first elements.
    pub metadata: BTreeMap<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorRow>>,
    /// `--plan`: what the fit would place on the GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanReport>,
    /// The cache types the memory estimate is for.
    #[serde(skip)]
    kv_types: KvTypes,
}

/// The fit's plan for a file (`gemma info --plan`): for what budget, what goes where, and the
/// costs it weighed.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    /// The device and budget it was made for.
    #[serde(rename = "for")]
    pub made_for: String,
    pub plan: crate::model::fit::Plan,
    pub costs: crate::model::fit::Costs,
}

#[derive(Debug, Serialize)]
pub struct FileType {
    pub id: u64,
    pub name: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TypeShare {
    #[serde(rename = "type")]
    pub ty: String,
    pub n_tensors: usize,
    pub n_params: u64,
    pub n_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// ggml order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Offset within the data section.
    pub offset: u64,
    pub n_bytes: u64,
}

/// The hyperparameters that shape a Gemma model, read from `{arch}.*` keys; `None` where the
/// file does not say.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Hparams {
    pub context_length: Option<u64>,
    pub embedding_length: Option<u64>,
    pub block_count: Option<u64>,
    pub feed_forward_length: Option<Vec<u64>>,
    pub head_count: Option<Vec<u64>>,
    pub head_count_kv: Option<Vec<u64>>,
    /// Head dims of global (full-attention) layers.
    pub key_length: Option<u64>,
    pub value_length: Option<u64>,
    /// Head dims of sliding-window layers.
    pub key_length_swa: Option<u64>,
    pub value_length_swa: Option<u64>,
    pub sliding_window: Option<u64>,
    /// Per layer: true for sliding-window attention, false for global.
    pub sliding_layers: Vec<bool>,
    pub rope_freq_base: Option<f64>,
    pub rope_freq_base_swa: Option<f64>,
    pub rope_dimension_count: Option<u64>,
    pub rope_dimension_count_swa: Option<u64>,
    pub expert_count: Option<u64>,
    pub expert_used_count: Option<u64>,
    pub expert_feed_forward_length: Option<u64>,
    pub shared_kv_layers: Option<u64>,
    pub embedding_length_per_layer_input: Option<u64>,
    pub final_logit_softcapping: Option<f64>,
    pub rms_norm_eps: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TokenizerInfo {
    pub model: Option<String>,
    pub pre: Option<String>,
    pub n_tokens: usize,
    pub n_merges: Option<usize>,
    /// How many tokens of each type (normal, control, byte, user-defined, ...).
    pub token_types: BTreeMap<&'static str, usize>,
    pub special: BTreeMap<&'static str, SpecialToken>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct SpecialToken {
    pub id: u64,
    pub text: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MemoryEstimate {
    /// Context length the KV estimate is for.
    pub context: u64,
    pub weights_bytes: u64,
    /// The element types of K and V the estimate is for (`f16`, `K q8_0, V f16`).
    pub kv_types: String,
    /// K and V for every layer that has its own cache; sliding layers keep at most the
    /// window.
    pub kv_cache_bytes: Option<u64>,
    /// The same for each cache type, K and V alike (`-ctk T -ctv T`).
    pub kv_cache_bytes_by_type: Vec<KvTypeBytes>,
    /// With `-ngl N`: what goes to the GPU and what stays in host memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<DeviceSplit>,
}

#[derive(Debug, Serialize)]
pub struct KvTypeBytes {
    #[serde(rename = "type")]
    pub ty: String,
    pub bytes: u64,
}

/// Memory per device for `-ngl N` (llama.cpp's meaning: the last N layers, the output head
/// counting as one more). A tied head on the GPU is a copy: the embedding lookup stays on the
/// CPU, so its bytes count on both sides.
#[derive(Debug, Serialize)]
pub struct DeviceSplit {
    pub gpu_layers: u64,
    pub gpu_weights_bytes: u64,
    pub cpu_weights_bytes: u64,
    /// K and V of the GPU's layers and of the CPU's, at the estimate's context.
    pub gpu_kv_cache_bytes: Option<u64>,
    pub cpu_kv_cache_bytes: Option<u64>,
}

/// llama.cpp's `general.file_type` names (`llama_ftype`).
fn file_type_name(id: u64) -> &'static str {
    match id {
        0 => "ALL_F32",
        1 => "MOSTLY_F16",
        2 => "MOSTLY_Q4_0",
        3 => "MOSTLY_Q4_1",
        7 => "MOSTLY_Q8_0",
        8 => "MOSTLY_Q5_0",
        9 => "MOSTLY_Q5_1",
        10 => "MOSTLY_Q2_K",
        11 => "MOSTLY_Q3_K_S",
        12 => "MOSTLY_Q3_K_M",
        13 => "MOSTLY_Q3_K_L",
        14 => "MOSTLY_Q4_K_S",
        15 => "MOSTLY_Q4_K_M",
        16 => "MOSTLY_Q5_K_S",
        17 => "MOSTLY_Q5_K_M",
        18 => "MOSTLY_Q6_K",
        19 => "MOSTLY_IQ2_XXS",
        20 => "MOSTLY_IQ2_XS",
        21 => "MOSTLY_Q2_K_S",
        22 => "MOSTLY_IQ3_XS",
        23 => "MOSTLY_IQ3_XXS",
        24 => "MOSTLY_IQ1_S",
        25 => "MOSTLY_IQ4_NL",
        26 => "MOSTLY_IQ3_S",
        27 => "MOSTLY_IQ3_M",
        28 => "MOSTLY_IQ2_S",
        29 => "MOSTLY_IQ2_M",
        30 => "MOSTLY_IQ4_XS",
        31 => "MOSTLY_IQ1_M",
        32 => "MOSTLY_BF16",
        36 => "MOSTLY_TQ1_0",
        37 => "MOSTLY_TQ2_0",
        38 => "MOSTLY_MXFP4_MOE",
        39 => "MOSTLY_NVFP4",
        40 => "MOSTLY_Q1_0",
        41 => "MOSTLY_Q2_0",
        _ => "unknown",
    }
}

/// llama.cpp's token types (`llama_token_type`).
fn token_type_name(t: i64) -> &'static str {
    match t {
        0 => "undefined",
        1 => "normal",
        2 => "unknown",
        3 => "control",
        4 => "user_defined",
        5 => "unused",
        6 => "byte",
        _ => "invalid",
    }
}

impl ModelInfo {
    /// Describe `file`; `context` sizes the KV-cache estimate; `tensors` adds the tensor list.
    pub fn new(file: &GgufFile, context: u64, tensors: bool) -> ModelInfo {
        let h = &file.header;
        let str_of = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_string);

        let mut mix: BTreeMap<String, TypeShare> = BTreeMap::new();
        for t in &h.tensors {
            let share = mix.entry(t.ty.name().to_string()).or_insert_with(|| TypeShare {
                ty: t.ty.name().to_string(),
                n_tensors: 0,
                n_params: 0,
                n_bytes: 0,
            });
            share.n_tensors += 1;
            share.n_params += t.n_elements();
            share.n_bytes += t.n_bytes();
        }
        let mut type_mix: Vec<TypeShare> = mix.into_values().collect();
        type_mix.sort_by(|a, b| b.n_bytes.cmp(&a.n_bytes).then(a.ty.cmp(&b.ty)));

        let hparams = Hparams::read(h);
        let weights_bytes = h.tensors.iter().map(|t| t.n_bytes()).sum();
        ModelInfo {
            file: file.path.display().to_string(),
            file_size: file.len(),
            gguf_version: h.version,
            alignment: h.alignment,
            n_metadata: h.metadata.len(),
            n_tensors: h.tensors.len(),
            architecture: h.architecture().map(str::to_string),
            name: str_of("general.name"),
            size_label: str_of("general.size_label"),
            file_type: h
                .get("general.file_type")
                .and_then(Value::as_u64)
                .map(|id| FileType { id, name: file_type_name(id) }),
            n_params: h.tensors.iter().map(|t| t.n_elements()).sum(),
            type_mix,
            memory: MemoryEstimate {
                context,
                weights_bytes,
                kv_types: KvTypes::default().to_string(),
                kv_cache_bytes: hparams.kv_cache_bytes(context, 0, KvTypes::default()),
                kv_cache_bytes_by_type: KvType::ALL
                    .into_iter()
                    .filter_map(|t| {
                        Some(KvTypeBytes { ty: t.to_string(), bytes: hparams.kv_cache_bytes(context, 0, t.into())? })
                    })
                    .collect(),
                split: None,
            },
            hparams,
            vision: VisionInfo::read(h),
            tokenizer: TokenizerInfo::read(h),
            chat_template_bytes: h.get("tokenizer.chat_template").and_then(Value::as_str).map(str::len),
            metadata: h.metadata.iter().map(|(k, v)| (k.clone(), value_json(v))).collect(),
            plan: None,
            kv_types: KvTypes::default(),
            tensors: tensors.then(|| {
                h.tensors
                    .iter()
                    .map(|t| TensorRow {
                        name: t.name.clone(),
                        ty: t.ty.name().to_string(),
                        dims: t.dims.clone(),
                        offset: t.offset,
                        n_bytes: t.n_bytes(),
                    })
                    .collect()
            }),
        }
    }

    /// The report as text, one fact per line.
    /// The estimate for K and V of `types` (before [`with_gpu_layers`](Self::with_gpu_layers)).
    pub fn with_kv_types(mut self, types: KvTypes) -> ModelInfo {
        self.memory.kv_types = types.to_string();
        self.memory.kv_cache_bytes = self.hparams.kv_cache_bytes(self.memory.context, 0, types);
        self.kv_types = types;
        self
    }

    /// The memory of [`DeviceSplit`] for `-ngl gpu_layers`, added to the estimate.
    pub fn with_gpu_layers(mut self, gguf: &GgufFile, gpu_layers: u64) -> ModelInfo {
        let Some(n_layer) = self.hparams.block_count else { return self };
        let first = n_layer - gpu_layers.min(n_layer);
        let head_on_gpu = gpu_layers > n_layer;
        let h = &gguf.header;
        let tied = h.tensor("output.weight").is_none();
        let (mut gpu, mut cpu) = (0u64, 0u64);
        for t in &h.tensors {
            let layer = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()?.parse::<u64>().ok());
            let on_gpu = match (layer, t.name.as_str()) {
                (Some(il), _) => il >= first,
                (None, "output.weight" | "output_norm.weight") => head_on_gpu,
                _ => false,
            };
            if on_gpu {
                gpu += t.n_bytes();
            } else {
                cpu += t.n_bytes();
            }
            if tied && head_on_gpu && t.name == "token_embd.weight" {
                gpu += t.n_bytes();
            }
        }
        let context = self.memory.context;
        let gpu_kv = self.hparams.kv_cache_bytes(context, first as usize, self.kv_types);
        self.memory.split = Some(DeviceSplit {
            gpu_layers,
            gpu_weights_bytes: gpu,
            cpu_weights_bytes: cpu,
            cpu_kv_cache_bytes: self.memory.kv_cache_bytes.zip(gpu_kv).map(|(all, g)| all - g),
            gpu_kv_cache_bytes: gpu_kv,
        });
        self
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mut line = |label: &str, text: String| {
            let _ = writeln!(s, "{label:<15}{text}");
        };
        line(
            "file",
            format!(
                "{} ({}, GGUF v{}, {} tensors, {} metadata keys, alignment {})",
                self.file,
                human_bytes(self.file_size),
                self.gguf_version,
                self.n_tensors,
                self.n_metadata,
                self.alignment
            ),
        );
        let mut model = self.architecture.clone().unwrap_or_else(|| "(no general.architecture)".into());
        if let Some(name) = &self.name {
            let _ = write!(model, " \"{name}\"");
        }
        if let Some(size) = &self.size_label {
            let _ = write!(model, " ({size})");
        }
        line("model", model);
        if let Some(ft) = &self.file_type {
            line("file type", format!("{} ({})", ft.name, ft.id));
        }
        line(
            "parameters",
            format!(
                "{} ({} of weights, {:.2} bits per weight)",
                human_count(self.n_params),
                human_bytes(self.memory.weights_bytes),
                self.memory.weights_bytes as f64 * 8.0 / self.n_params.max(1) as f64
            ),
        );
        for (i, t) in self.type_mix.iter().enumerate() {
            line(
                if i == 0 { "tensor types" } else { "" },
                format!(
                    "{:<8}{:>5} tensors {:>10} params {:>10} {:>5.1}%",
                    t.ty,
                    t.n_tensors,
                    human_count(t.n_params),
                    human_bytes(t.n_bytes),
                    100.0 * t.n_bytes as f64 / self.memory.weights_bytes.max(1) as f64
                ),
            );
        }
        self.hparams.describe(&mut line);
        if let Some(v) = &self.vision {
            v.describe(&mut line);
        }
        match &self.tokenizer {
            Some(t) => t.describe(&mut line),
            None => line("tokenizer", "none".into()),
        }
        line(
            "chat template",
            match self.chat_template_bytes {
                Some(n) => format!("yes ({n} bytes)"),
                None => "no".into(),
            },
        );
        let m = &self.memory;
        line(
            "memory",
            match m.kv_cache_bytes {
                Some(kv) => format!(
                    "weights {} + KV cache ({}, -c {}) {} = {}",
                    human_bytes(m.weights_bytes),
                    m.kv_types,
                    m.context,
                    human_bytes(kv),
                    human_bytes(m.weights_bytes + kv)
                ),
                None if self.vision.is_some() => {
                    format!("weights {} (an image encoder: no KV cache)", human_bytes(m.weights_bytes))
                }
                None => format!("weights {} (KV cache: unknown layer shapes)", human_bytes(m.weights_bytes)),
            },
        );
        if !m.kv_cache_bytes_by_type.is_empty() {
            let by_type: Vec<String> =
                m.kv_cache_bytes_by_type.iter().map(|t| format!("{} {}", t.ty, human_bytes(t.bytes))).collect();
            line("KV by type", format!("{} (-c {}, K and V alike)", by_type.join(" · "), m.context));
        }
        if let Some(d) = &m.split {
            let side = |weights: u64, kv: Option<u64>| match kv {
                Some(kv) => {
                    format!("{} + KV {} = {}", human_bytes(weights), human_bytes(kv), human_bytes(weights + kv))
                }
                None => human_bytes(weights),
            };
            line(
                &format!("-ngl {}", d.gpu_layers),
                format!(
                    "GPU {}; CPU {}",
                    side(d.gpu_weights_bytes, d.gpu_kv_cache_bytes),
                    side(d.cpu_weights_bytes, d.cpu_kv_cache_bytes)
                ),
            );
        }
        if let Some(p) = &self.plan {
            let _ = writeln!(s, "{:<15}{}", "plan for", p.made_for);
            s.push_str(&p.plan.describe(&p.costs));
        }
        if let Some(tensors) = &self.tensors {
            let _ = writeln!(
                s,
                "\n{:>5}  {:<48} {:<8} {:<24} {:>12} {:>12}",
                "#", "name", "type", "dims", "offset", "bytes"
            );
            for (i, t) in tensors.iter().enumerate() {
                let dims = t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" x ");
                let _ =
                    writeln!(s, "{i:>5}  {:<48} {:<8} {:<24} {:>12} {:>12}", t.name, t.ty, dims, t.offset, t.n_bytes);
            }
        }
        s
    }
}

/// What an mmproj's header says about its vision encoder.
#[derive(Debug, Serialize)]
pub struct VisionInfo {
    pub projector_type: Option<String>,
    pub n_block: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_head: Option<u64>,
    pub n_ff: Option<u64>,
    pub patch_size: Option<u64>,
    /// The text model's hidden size it projects to (a model with another is refused).
    pub projection_dim: Option<u64>,
    /// Entries of each position table: the longest side, in patches.
    pub n_pos: Option<u64>,
    /// Projections with clamp bounds (`Gemma4ClippableLinear`).
    pub n_clamped: usize,
}

impl VisionInfo {
    fn read(h: &GgufHeader) -> Option<VisionInfo> {
        if h.architecture() != Some("clip") {
            return None;
        }
        let u = |k: &str| h.get(k).and_then(Value::as_u64);
        let projector = h.get("clip.vision.projector_type").or_else(|| h.get("clip.projector_type"));
        Some(VisionInfo {
            projector_type: projector.and_then(Value::as_str).map(str::to_string),
            n_block: u("clip.vision.block_count"),
            n_embd: u("clip.vision.embedding_length"),
            n_head: u("clip.vision.attention.head_count"),
            n_ff: u("clip.vision.feed_forward_length"),
            patch_size: u("clip.vision.patch_size"),
            projection_dim: u("clip.vision.projection_dim"),
            n_pos: h.tensor("v.position_embd.weight").and_then(|t| t.dims.get(1).copied()),
            n_clamped: h.tensors.iter().filter(|t| t.name.ends_with(".input_min")).count(),
        })
    }

    fn describe(&self, line: &mut impl FnMut(&str, String)) {
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        line(
            "vision",
            format!(
                "{} encoder: {} blocks, hidden {}, {} heads, feed-forward {}, {}-pixel patches",
                self.projector_type.as_deref().unwrap_or("(no projector type)"),
                n(self.n_block),
                n(self.n_embd),
                n(self.n_head),
                n(self.n_ff),
                n(self.patch_size)
            ),
        );
        line(
            "projector",
            format!(
                "to a hidden size of {} (the text model's); positions up to {} patches a side; {} clamped projections",
                n(self.projection_dim),
                n(self.n_pos),
                self.n_clamped
            ),
        );
        if self.projector_type.as_deref() == Some("gemma4v") {
            line(
                "images",
                format!(
                    "70, 140, 280 (default), 560 or 1120 soft tokens each (--image-tokens): one per {0}x{0} pixels",
                    3 * self.patch_size.unwrap_or(16)
                ),
            );
        }
    }
}

impl Hparams {
    pub(crate) fn read(h: &GgufHeader) -> Hparams {
        let Some(arch) = h.architecture() else { return Hparams::default() };
        let key = |k: &str| format!("{arch}.{k}");
        let u = |k: &str| h.get(&key(k)).and_then(Value::as_u64);
        let f = |k: &str| h.get(&key(k)).and_then(Value::as_f64);
        let block_count = u("block_count");
        // Some keys are a scalar for all layers or an array with one value per layer.
        let per_layer = |k: &str| -> Option<Vec<u64>> {
            match h.get(&key(k))? {
                Value::Array(a) => (0..a.len()).map(|i| a.get_i64(i).and_then(|v| u64::try_from(v).ok())).collect(),
                v => v.as_u64().map(|x| vec![x; block_count.unwrap_or(1) as usize]),
            }
        };
        let sliding_window = u("attention.sliding_window");
        let sliding_layers = match h.get(&key("attention.sliding_window_pattern")) {
            Some(Value::Array(Array::Bool(p))) => p.clone(),
            // Gemma 3 files carry no pattern: llama.cpp fixes it at five sliding layers then one
            // global.
            _ if arch == "gemma3" && sliding_window.is_some() => {
                (0..block_count.unwrap_or(0)).map(|i| (i + 1) % 6 != 0).collect()
            }
            _ => vec![sliding_window.is_some(); block_count.unwrap_or(0) as usize],
        };
        Hparams {
            context_length: u("context_length"),
            embedding_length: u("embedding_length"),
            block_count,
            feed_forward_length: per_layer("feed_forward_length"),
            head_count: per_layer("attention.head_count"),
            head_count_kv: per_layer("attention.head_count_kv"),
            key_length: u("attention.key_length"),
            value_length: u("attention.value_length"),
            key_length_swa: u("attention.key_length_swa"),
            value_length_swa: u("attention.value_length_swa"),
            sliding_window,
            sliding_layers,
            rope_freq_base: f("rope.freq_base"),
            rope_freq_base_swa: f("rope.freq_base_swa"),
            rope_dimension_count: u("rope.dimension_count"),
            rope_dimension_count_swa: u("rope.dimension_count_swa"),
            expert_count: u("expert_count"),
            expert_used_count: u("expert_used_count"),
            expert_feed_forward_length: u("expert_feed_forward_length"),
            shared_kv_layers: u("attention.shared_kv_layers"),
            embedding_length_per_layer_input: u("embedding_length_per_layer_input"),
            final_logit_softcapping: f("final_logit_softcapping"),
            rms_norm_eps: f("attention.layer_norm_rms_epsilon"),
        }
    }

    /// Head dims (K, V) of layer `il`: the `_swa` keys on sliding layers, else the global
    /// ones; a missing value length means the key length, and a missing key length means
    /// embedding / heads, as llama.cpp assumes.
    fn head_dims(&self, il: usize) -> Option<(u64, u64)> {
        let default = self.embedding_length? / (*self.head_count.as_ref()?.get(il)?).max(1);
        let k_global = self.key_length.unwrap_or(default);
        let v_global = self.value_length.unwrap_or(k_global);
        if self.sliding_layers.get(il) == Some(&true) {
            let k = self.key_length_swa.unwrap_or(k_global);
            Some((k, self.value_length_swa.unwrap_or(k)))
        } else {
            Some((k_global, v_global))
        }
    }

    /// Each layer's cache shape (K's head dim; Gemma's V heads are as wide), `None` when the
    /// file lacks a layer's head count or dims. Layers past `block_count - shared_kv_layers`
    /// read the last earlier cache of their type.
    pub(crate) fn layer_specs(&self) -> Option<Vec<crate::kv_cache::LayerSpec>> {
        let n = self.block_count? as usize;
        let own = n - (self.shared_kv_layers.unwrap_or(0) as usize).min(n);
        let sliding = |il: usize| self.sliding_layers.get(il) == Some(&true);
        (0..n)
            .map(|il| {
                Some(crate::kv_cache::LayerSpec {
                    n_kv_head: *self.head_count_kv.as_ref()?.get(il)? as usize,
                    head_dim: self.head_dims(il)?.0 as usize,
                    window: sliding(il).then_some(self.sliding_window? as usize),
                    shares_cache_of: (il >= own).then(|| (0..own).rev().find(|&j| sliding(j) == sliding(il))).flatten(),
                })
            })
            .collect()
    }

    /// The widths that size a GPU pass's activations, `None` without the basic shapes.
    pub(crate) fn widths(&self, n_vocab: usize) -> Option<crate::model::fit::Widths> {
        let n = self.block_count? as usize;
        let max = |f: &dyn Fn(usize) -> Option<u64>| (0..n).filter_map(f).max().unwrap_or(0) as usize;
        let heads = |v: &Option<Vec<u64>>, il: usize| v.as_ref()?.get(il).copied();
        Some(crate::model::fit::Widths {
            n_embd: self.embedding_length? as usize,
            q: max(&|il| Some(heads(&self.head_count, il)? * self.head_dims(il)?.0)),
            kv: max(&|il| Some(heads(&self.head_count_kv, il)? * self.head_dims(il)?.0)),
            n_ff: max(&|il| heads(&self.feed_forward_length, il)),
            n_expert: self.expert_count.unwrap_or(0) as usize,
            k: self.expert_used_count.unwrap_or(0) as usize,
            n_ff_exp: self.expert_feed_forward_length.unwrap_or(0) as usize,
            n_vocab,
        })
    }

    /// K and V of `types` at `context` positions of layers `first ..`.
    fn kv_cache_bytes(&self, context: u64, first: usize, types: KvTypes) -> Option<u64> {
        let specs = self.layer_specs()?;
        let mut total = 0u64;
        for spec in specs.iter().skip(first) {
            if spec.shares_cache_of.is_none() && !types.fit(spec.head_dim) {
                return None; // rows that are not whole blocks
            }
            total += spec.bytes(spec.host_capacity(context as usize), types);
        }
        Some(total)
    }

    fn describe(&self, line: &mut impl FnMut(&str, String)) {
        let Some(n) = self.block_count else { return };
        let sliding: Vec<usize> = (0..n as usize).filter(|&i| self.sliding_layers.get(i) == Some(&true)).collect();
        let global: Vec<usize> = (0..n as usize).filter(|&i| self.sliding_layers.get(i) != Some(&true)).collect();
        let mut layers = format!("{n}");
        if !sliding.is_empty() {
            let _ = write!(
                layers,
                ": {} sliding (window {}) + {} global at {:?}",
                sliding.len(),
                self.sliding_window.unwrap_or(0),
                global.len(),
                global
            );
        }
        line("layers", layers);
        if let Some(e) = self.embedding_length {
            let ff = self.feed_forward_length.as_deref().map(summarize).unwrap_or_else(|| "?".into());
            line("widths", format!("embedding {e}, feed-forward {ff}"));
        }
        let mut heads = Vec::new();
        for (kind, layers) in [("sliding", &sliding), ("global", &global)] {
            let Some(&il) = layers.first() else { continue };
            let q = self.head_count.as_ref().and_then(|v| v.get(il).copied());
            let kv = self.head_count_kv.as_ref().and_then(|v| v.get(il).copied());
            if let (Some(q), Some(kv), Some((k, v))) = (q, kv, self.head_dims(il)) {
                let v_dim = if v == k { String::new() } else { format!(", v dim {v}") };
                heads.push(format!("{kind}: {q} q heads / {kv} kv heads x {k}{v_dim}"));
            }
        }
        if !heads.is_empty() {
            line("attention", heads.join("; "));
        }
        let mut rope = Vec::new();
        if let (Some(b), Some(d)) = (self.rope_freq_base_swa, self.rope_dimension_count_swa) {
            rope.push(format!("sliding base {b} dims {d}"));
        }
        if let Some(b) = self.rope_freq_base {
            let dims = self.rope_dimension_count.map(|d| format!(" dims {d}")).unwrap_or_default();
            rope.push(format!("global base {b}{dims}"));
        }
        if !rope.is_empty() {
            line("rope", rope.join("; "));
        }
        if let Some(e) = self.expert_count.filter(|&e| e > 0) {
            line(
                "experts",
                format!(
                    "{e}, {} used per token, width {}",
                    self.expert_used_count.unwrap_or(0),
                    self.expert_feed_forward_length.unwrap_or(0)
                ),
            );
        }
        let mut other = Vec::new();
        if let Some(c) = self.context_length {
            other.push(format!("trained context {c}"));
        }
        if let Some(s) = self.final_logit_softcapping {
            other.push(format!("logit softcap {s}"));
        }
        if let Some(eps) = self.rms_norm_eps {
            // Stored as f32: print the f32, not its f64 widening (1e-6, not 9.99999997e-7).
            other.push(format!("rms eps {:e}", eps as f32));
        }
        if let Some(s) = self.shared_kv_layers.filter(|&s| s > 0) {
            other.push(format!("{s} kv-shared layers"));
        }
        if let Some(p) = self.embedding_length_per_layer_input.filter(|&p| p > 0) {
            other.push(format!("per-layer embeddings {p}"));
        }
        if !other.is_empty() {
            line("", other.join(", "));
        }
    }
}

impl TokenizerInfo {
    fn read(h: &GgufHeader) -> Option<TokenizerInfo> {
        let tokens = match h.get("tokenizer.ggml.tokens") {
            Some(Value::Array(Array::String(t))) => t,
            _ => return None,
        };
        let str_of = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_string);
        let mut token_types = BTreeMap::new();
        if let Some(types) = h.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
            for i in 0..types.len() {
                *token_types.entry(token_type_name(types.get_i64(i).unwrap_or(-1))).or_default() += 1;
            }
        }
        let mut special = BTreeMap::new();
        for (name, key) in [
            ("bos", "tokenizer.ggml.bos_token_id"),
            ("eos", "tokenizer.ggml.eos_token_id"),
            ("eot", "tokenizer.ggml.eot_token_id"),
            ("unk", "tokenizer.ggml.unknown_token_id"),
            ("pad", "tokenizer.ggml.padding_token_id"),
            ("mask", "tokenizer.ggml.mask_token_id"),
        ] {
            if let Some(id) = h.get(key).and_then(Value::as_u64) {
                special.insert(name, SpecialToken { id, text: tokens.get(id as usize).cloned() });
            }
        }
        Some(TokenizerInfo {
            model: str_of("tokenizer.ggml.model"),
            pre: str_of("tokenizer.ggml.pre"),
            n_tokens: tokens.len(),
            n_merges: h.get("tokenizer.ggml.merges").and_then(Value::as_array).map(Array::len),
            token_types,
            special,
            add_bos_token: h.get("tokenizer.ggml.add_bos_token").and_then(Value::as_bool),
            add_eos_token: h.get("tokenizer.ggml.add_eos_token").and_then(Value::as_bool),
        })
    }

    fn describe(&self, line: &mut impl FnMut(&str, String)) {
        let mut s = format!(
            "{} (pre {}), {} tokens",
            self.model.as_deref().unwrap_or("?"),
            self.pre.as_deref().unwrap_or("-"),
            self.n_tokens
        );
        if let Some(m) = self.n_merges {
            let _ = write!(s, ", {m} merges");
        }
        line("tokenizer", s);
        if !self.token_types.is_empty() {
            let types: Vec<String> = self.token_types.iter().map(|(k, v)| format!("{v} {k}")).collect();
            line("", types.join(", "));
        }
        let special: Vec<String> = self
            .special
            .iter()
            .map(|(name, t)| format!("{name} {} {:?}", t.id, t.text.as_deref().unwrap_or("(out of range)")))
            .collect();
        let mut s = special.join(", ");
        if let Some(b) = self.add_bos_token {
            let _ = write!(s, "; add_bos {b}");
        }
        if let Some(e) = self.add_eos_token {
            let _ = write!(s, ", add_eos {e}");
        }
        if !s.is_empty() {
            line("", s);
        }
    }
}

/// A metadata value as JSON: scalars as themselves, arrays as their type, length and first
/// eight elements.
fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Array(a) => array_json(a),
    }
}

fn array_json(a: &Array) -> serde_json::Value {
    const HEAD: usize = 8;
    fn head<T: Serialize>(v: &[T]) -> serde_json::Value {
        json!(&v[..v.len().min(HEAD)])
    }
    let first = match a {
        Array::U8(v) => head(v),
        Array::I8(v) => head(v),
        Array::U16(v) => head(v),
        Array::I16(v) => head(v),
        Array::U32(v) => head(v),
        Array::I32(v) => head(v),
        Array::F32(v) => head(v),
        Array::Bool(v) => head(v),
        Array::String(v) => head(v),
        Array::U64(v) => head(v),
        Array::I64(v) => head(v),
        Array::F64(v) => head(v),
        Array::Array(v) => json!(v.iter().take(HEAD).map(array_json).collect::<Vec<_>>()),
    };
    json!({ "type": "array", "element_type": a.elem_type().name(), "len": a.len(), "first": first })
}

/// "1.23 GiB"-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[unit])
    }
}

/// "25.23 B"-style counts, as llama.cpp prints parameter counts.
pub fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2} K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

/// Runs of equal values: `[2112; 30]` or the values.
fn summarize(v: &[u64]) -> String {
    match v {
        [first, rest @ ..] if rest.iter().all(|x| x == first) => first.to_string(),
        _ => format!("{v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_count(25_233_142_046), "25.23 B");
        assert_eq!(human_count(999), "999");
    }

    #[test]
    fn kv_cache_counts_window_for_sliding_layers_and_skips_shared_layers() {
        // Two sliding layers (window 4) and one global layer, K=V=8 dims, 2 kv heads.
        let h = Hparams {
            block_count: Some(3),
            embedding_length: Some(32),
            head_count: Some(vec![4; 3]),
            head_count_kv: Some(vec![2; 3]),
            key_length: Some(8),
            sliding_window: Some(4),
            sliding_layers: vec![true, true, false],
            ..Hparams::default()
        };
        // Sliding: min(100, 4) * 2 heads * (8 + 8) * 2 bytes = 256 each; global: 100 * 64.
        let f16 = KvTypes::default();
        assert_eq!(h.kv_cache_bytes(100, 0, f16), Some(2 * 256 + 6400));
        // Rows of 8 are no whole q8_0 blocks: no estimate.
        assert_eq!(h.kv_cache_bytes(100, 0, KvType::Q8_0.into()), None);
        // Rows of 32 in q8_0: 34 bytes; sliding 4 * 2 * (34 + 34) = 544 each, global 100 * 136.
        let wide = Hparams { key_length: Some(32), ..h.clone() };
        assert_eq!(wide.kv_cache_bytes(100, 0, KvType::Q8_0.into()), Some(2 * 544 + 13600));
        // K in q4_0 (18 bytes), V in f32 (128): global 100 * 2 * 146.
        assert_eq!(wide.kv_cache_bytes(100, 2, KvTypes { k: KvType::Q4_0, v: KvType::F32 }), Some(29200));
        // Sliding, global, then two layers reading the last earlier cache of their type: only
        // the first two hold one.
        let shared = Hparams {
            block_count: Some(4),
            head_count: Some(vec![4; 4]),
            head_count_kv: Some(vec![2; 4]),
            sliding_layers: vec![true, false, true, false],
            shared_kv_layers: Some(2),
            ..h
        };
        assert_eq!(shared.kv_cache_bytes(100, 0, f16), Some(256 + 6400));
    }
}
