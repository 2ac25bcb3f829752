//! Gemma 3 over a GGUF file, as llama.cpp runs it (`src/models/gemma3.cpp`): the
//! hyperparameters and tensors read into the [`Decoder`] it shares with Gemma 4 (`decoder.rs`).
//!
//! Per token, `x: [n_embd]`:
//!
//! ```text
//! x = token_embd[token] * sqrt(n_embd)
//! for each layer:
//!     h = rmsnorm(x) * attn_norm
//!     q, k, v = attn_q h, attn_k h, attn_v h            (per head: [head_dim])
//!     q, k = rmsnorm(q) * attn_q_norm, rmsnorm(k) * attn_k_norm   (each head)
//!     q, k = rope_neox(q, pos), rope_neox(k, pos)       (base 10000 sliding, 1e6 global)
//!     a = softmax(attn_scale q kᵀ, causal [+ window]) v (K and V through the f16 cache)
//!     x = x + rmsnorm(attn_output a) * post_attention_norm
//!     h = rmsnorm(x) * ffn_norm
//!     x = x + rmsnorm(ffn_down(gelu(ffn_gate h) * ffn_up h)) * post_ffw_norm
//! logits = token_embd · (rmsnorm(x) * output_norm)     (tied output head)
//! ```
//!
//! The norm weights are used as stored: the GGUF converter already added Gemma's `+1`
//! (GEMMA4.md pitfall 1). Sliding layers see the last `sliding_window` positions, the current
//! one included; by default 5 of every 6 layers slide and the 6th is global.

use ggml::gguf::{GgufFile, GgufHeader, Value};

use super::decoder::{Decoder, Layer, Parts, Rope};
use super::{find_vector, Matrix, Metadata, ModelError, Offload};

const ARCH: &str = "gemma3";

/// llama.cpp's RoPE base for sliding layers when the file has no `rope.freq_base_swa` (Gemma 3
/// files do not: the local base of 10,000 is hard-coded there).
const DEFAULT_ROPE_BASE_SWA: f32 = 10_000.0;
/// Layers per sliding/global period when the file has no `attention.sliding_window_pattern`.
const DEFAULT_SWA_PERIOD: usize = 6;

#[derive(Clone, Debug, PartialEq)]
pub struct Hparams {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Elements per head, for Q, K and V.
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_vocab: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    /// RoPE base of global layers.
    pub rope_base: f32,
    /// RoPE base of sliding layers.
    pub rope_base_swa: f32,
    /// Positions a sliding layer sees, the current one included.
    pub sliding_window: usize,
    /// `[n_layer]`: whether each layer slides.
    pub sliding: Vec<bool>,
    /// Multiplies q before attention: `query_pre_attn_scalar^-1/2`, which is `head_dim^-1/2`
    /// on every size but 27B, where it is `(n_embd / n_head)^-1/2` (as llama.cpp decides it).
    pub attn_scale: f32,
    /// `c` of the final `c tanh(logits / c)`; none on Gemma 3.
    pub final_logit_softcap: Option<f32>,
}

impl Hparams {
    /// From the `gemma3.*` metadata; `n_vocab` comes from the embedding's shape.
    pub fn from_header(header: &GgufHeader) -> Result<Hparams, ModelError> {
        let found = header.get_str("general.architecture")?;
        if found != ARCH {
            return Err(ModelError::Architecture { expected: ARCH, found: found.to_string() });
        }
        let m = Metadata { header, arch: ARCH };
        let n_layer = m.usize("block_count")?;
        let n_embd = m.usize("embedding_length")?;
        let n_head = m.usize("attention.head_count")?;
        let head_dim = m.usize("attention.key_length")?;
        let sliding_window = m.usize("attention.sliding_window")?;
        let sliding = match header.get(&m.key("attention.sliding_window_pattern")) {
            Some(Value::Array(a)) => (0..n_layer).map(|il| a.get_i64(il).unwrap_or(0) != 0).collect(),
            Some(_) => sliding_pattern(n_layer, m.usize("attention.sliding_window_pattern")?),
            None => sliding_pattern(n_layer, DEFAULT_SWA_PERIOD),
        };
        let softcap = m.f32_or("final_logit_softcapping", 0.0)?;
        let scale_dim = if n_layer == 62 { n_embd / n_head } else { head_dim };
        let token_embd =
            header.tensor(TOKEN_EMBD).ok_or_else(|| ModelError::MissingTensor { name: TOKEN_EMBD.to_string() })?;
        Ok(Hparams {
            n_layer,
            n_embd,
            n_head,
            n_head_kv: m.usize("attention.head_count_kv")?,
            head_dim,
            n_ff: m.usize("feed_forward_length")?,
            n_vocab: token_embd.dims.get(1).copied().unwrap_or(0) as usize,
            context_length: m.usize("context_length")?,
            rms_eps: m.f32("attention.layer_norm_rms_epsilon")?,
            rope_base: m.f32("rope.freq_base")?,
            rope_base_swa: m.f32_or("rope.freq_base_swa", DEFAULT_ROPE_BASE_SWA)?,
            sliding_window,
            sliding,
            attn_scale: 1.0 / (scale_dim as f32).sqrt(),
            final_logit_softcap: (softcap != 0.0).then_some(softcap),
        })
    }
}

/// Layers `il % period < period - 1` slide; the last of each period is global.
fn sliding_pattern(n_layer: usize, period: usize) -> Vec<bool> {
    (0..n_layer).map(|il| period == 0 || il % period < period - 1).collect()
}

// The GGUF tensor names, each spelled once.
const TOKEN_EMBD: &str = "token_embd.weight";
const OUTPUT_NORM: &str = "output_norm.weight";
const OUTPUT: &str = "output.weight";

/// Layer `il`'s shape and weights (its tensors `blk.{il}.*`): every layer has `attn_v`, no V
/// norm and no experts; q is scaled after RoPE.
fn load_layer(header: &GgufHeader, file: &[u8], hp: &Hparams, il: usize) -> Result<Layer, ModelError> {
    let name = |role: &str| format!("blk.{il}.{role}.weight");
    let vector = |role: &str, n| find_vector(header, file, &name(role), n);
    let matrix = |role: &str, n_in, n_out| Matrix::find(header, &name(role), n_in, n_out);
    let (q_width, kv_width) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    Ok(Layer {
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
        window: hp.sliding[il].then_some(hp.sliding_window),
        full_rope: !hp.sliding[il],
        q_scale: Some(hp.attn_scale),
        v_norm: false,
        attn_norm: vector("attn_norm", hp.n_embd)?,
        attn_q: matrix("attn_q", hp.n_embd, q_width)?,
        attn_k: matrix("attn_k", hp.n_embd, kv_width)?,
        attn_v: Some(matrix("attn_v", hp.n_embd, kv_width)?),
        attn_q_norm: vector("attn_q_norm", hp.head_dim)?,
        attn_k_norm: vector("attn_k_norm", hp.head_dim)?,
        attn_output: matrix("attn_output", q_width, hp.n_embd)?,
        post_attention_norm: vector("post_attention_norm", hp.n_embd)?,
        ffn_norm: vector("ffn_norm", hp.n_embd)?,
        ffn_gate: matrix("ffn_gate", hp.n_embd, hp.n_ff)?,
        ffn_up: matrix("ffn_up", hp.n_embd, hp.n_ff)?,
        ffn_down: matrix("ffn_down", hp.n_ff, hp.n_embd)?,
        post_ffw_norm: vector("post_ffw_norm", hp.n_embd)?,
        moe: None,
        output_scale: None,
    })
}

/// A Gemma 3 model: its hyperparameters and the shared [`Decoder`] (which it derefs to for
/// `forward`, `new_cache`, ...).
pub struct Gemma3 {
    pub hparams: Hparams,
    decoder: Decoder,
}

impl std::ops::Deref for Gemma3 {
    type Target = Decoder;
    fn deref(&self) -> &Decoder {
        &self.decoder
    }
}

impl std::ops::DerefMut for Gemma3 {
    fn deref_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }
}

impl Gemma3 {
    pub fn load(gguf: GgufFile) -> Result<Gemma3, ModelError> {
        Gemma3::load_with(gguf, &Offload::default())
    }

    /// [`load`](Self::load), with the last layers on a GPU as `offload` asks.
    pub fn load_with(gguf: GgufFile, offload: &Offload) -> Result<Gemma3, ModelError> {
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
        // Both layer types rotate the whole head, each with its own base.
        let parts = Parts {
            token_embd,
            layers,
            output_norm,
            output,
            rope_full: Rope { base: hp.rope_base, n_rot: hp.head_dim, freqs: None },
            rope_swa: Rope { base: hp.rope_base_swa, n_rot: hp.head_dim, freqs: None },
            n_embd: hp.n_embd,
            n_vocab: hp.n_vocab,
            eps: hp.rms_eps,
            softcap: hp.final_logit_softcap,
            gguf,
        };
        Ok(Gemma3 { decoder: Decoder::new(parts, offload)?, hparams })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_cache::KvType;
    use crate::model::{CancelAfter, Cancelled, Logits};
    use ggml::gguf::write::assign_offsets;
    use ggml::gguf::{GgufWriter, TensorInfo};
    use ggml::GgmlType;

    /// A 2-layer Gemma 3 with 32-wide f32 tensors, minus the tensors and keys named in `drop`.
    fn tiny_gguf(dir: &std::path::Path, file: &str, drop: &[&str]) -> GgufFile {
        let (n_embd, head_dim, n_ff, n_vocab) = (32u64, 16u64, 64u64, 8u64);
        let metadata: Vec<(String, Value)> = [
            ("general.architecture", Value::String(ARCH.into())),
            ("gemma3.block_count", Value::U32(2)),
            ("gemma3.embedding_length", Value::U32(n_embd as u32)),
            ("gemma3.attention.head_count", Value::U32(2)),
            ("gemma3.attention.head_count_kv", Value::U32(1)),
            ("gemma3.attention.key_length", Value::U32(head_dim as u32)),
            ("gemma3.feed_forward_length", Value::U32(n_ff as u32)),
            ("gemma3.context_length", Value::U32(128)),
            ("gemma3.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("gemma3.rope.freq_base", Value::F32(1e6)),
            ("gemma3.attention.sliding_window", Value::U32(4)),
            ("gemma3.attention.sliding_window_pattern", Value::U32(2)),
        ]
        .into_iter()
        .filter(|(k, _)| !drop.contains(k))
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut tensors =
            vec![(TOKEN_EMBD.to_string(), vec![n_embd, n_vocab]), (OUTPUT_NORM.to_string(), vec![n_embd])];
        for il in 0..2 {
            let dims: [(&str, Vec<u64>); 13] = [
                ("attn_norm", vec![n_embd]),
                ("attn_q", vec![n_embd, 2 * head_dim]),
                ("attn_k", vec![n_embd, head_dim]),
                ("attn_v", vec![n_embd, head_dim]),
                ("attn_q_norm", vec![head_dim]),
                ("attn_k_norm", vec![head_dim]),
                ("attn_output", vec![2 * head_dim, n_embd]),
                ("post_attention_norm", vec![n_embd]),
                ("ffn_norm", vec![n_embd]),
                ("ffn_gate", vec![n_embd, n_ff]),
                ("ffn_up", vec![n_embd, n_ff]),
                ("ffn_down", vec![n_ff, n_embd]),
                ("post_ffw_norm", vec![n_embd]),
            ];
            tensors.extend(dims.into_iter().map(|(role, d)| (format!("blk.{il}.{role}.weight"), d)));
        }
        let mut tensors: Vec<TensorInfo> = (tensors.into_iter())
            .filter(|(name, _)| !drop.contains(&name.as_str()))
            .map(|(name, dims)| TensorInfo { name, ty: GgmlType::F32, dims, offset: 0 })
            .collect();
        assign_offsets(&mut tensors, 32);
        let path = dir.join(file);
        let mut w = GgufWriter::create(&path, 3, &metadata, &tensors).unwrap();
        for t in &tensors {
            let data: Vec<f32> = (0..t.n_elements()).map(|i| ((i % 7) as f32 - 3.0) * 0.05 + 0.01).collect();
            let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_tensor_data(&bytes).unwrap();
        }
        w.finish().unwrap();
        GgufFile::open(&path).unwrap()
    }

    #[test]
    fn loads_hyperparameters() {
        let dir = tempfile::tempdir().unwrap();
        let model = Gemma3::load(tiny_gguf(dir.path(), "tiny.gguf", &[])).unwrap();
        let hp = &model.hparams;
        assert_eq!((hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim), (2, 32, 2, 1, 16));
        assert_eq!((hp.n_ff, hp.n_vocab, hp.sliding_window), (64, 8, 4));
        assert_eq!(hp.sliding, [true, false]);
        assert_eq!((hp.rope_base, hp.rope_base_swa, hp.attn_scale), (1e6, 10_000.0, 0.25));
        assert_eq!(hp.final_logit_softcap, None);
        assert_eq!(model.kv_specs()[0].window, Some(4));
        assert_eq!(model.kv_specs()[1].window, None);
    }

    #[test]
    fn the_default_pattern_is_five_sliding_one_global() {
        assert_eq!(sliding_pattern(8, 6), [true, true, true, true, true, false, true, true]);
    }

    #[test]
    fn a_missing_tensor_or_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Gemma3::load(tiny_gguf(dir.path(), "no-tensor.gguf", &["blk.1.ffn_down.weight"])).err().unwrap();
        assert_eq!(err.to_string(), "cannot find tensor blk.1.ffn_down.weight in the GGUF file");
        let err =
            Gemma3::load(tiny_gguf(dir.path(), "no-key.gguf", &["gemma3.attention.head_count_kv"])).err().unwrap();
        assert_eq!(err.to_string(), "cannot find gemma3.attention.head_count_kv in metadata");
    }

    /// The batched pass and one token at a time give the same logits (to matmul rounding).
    #[test]
    fn a_batch_equals_token_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Gemma3::load(tiny_gguf(dir.path(), "tiny.gguf", &[])).unwrap();
        let tokens = [2u32, 5, 1, 7, 3, 3, 6];
        let mut cache = model.new_cache(16).unwrap();
        let batched = model.forward(&tokens, 0, &mut cache, Logits::All);
        let mut cache = model.new_cache(16).unwrap();
        let mut stepped = Vec::new();
        for (p, &t) in tokens.iter().enumerate() {
            stepped.extend(model.forward(&[t], p, &mut cache, Logits::All));
        }
        assert_eq!(batched.len(), tokens.len() * 8);
        for (i, (a, b)) in batched.iter().zip(&stepped).enumerate() {
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "[{i}] {a} vs {b}");
        }
    }

    /// A pass cancelled before its second layer, after the first (sliding, window 4) has
    /// appended the batch and wrapped its ring: the cache is back at the batch's start on both
    /// layers, and running the batch again gives the logits of a pass never cancelled.
    #[test]
    fn a_cancelled_pass_leaves_the_cache_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = Gemma3::load(tiny_gguf(dir.path(), "tiny.gguf", &[])).unwrap();
        let tokens = [2u32, 5, 1, 7, 3, 3, 6, 4, 1, 2, 0, 5];
        let mut cache = model.new_cache_of(32, KvType::F32).unwrap();
        model.forward(&tokens[..8], 0, &mut cache, Logits::All);
        let cancel = CancelAfter::new(1);
        let err = model.forward_cancellable(&tokens[8..], 8, &mut cache, Logits::All, &cancel).unwrap_err();
        assert_eq!(err, Cancelled { kept: 8 }.into());
        assert_eq!((cache.layer(0).n_positions(), cache.layer(1).n_positions()), (8, 8));
        let resumed = model.forward(&tokens[8..], 8, &mut cache, Logits::All);

        let mut cache = model.new_cache_of(32, KvType::F32).unwrap();
        model.forward(&tokens[..8], 0, &mut cache, Logits::All);
        let whole = model.forward(&tokens[8..], 8, &mut cache, Logits::All);
        // Only the order of the ring's slots differs, so only the softmax's summation order.
        for (i, (a, b)) in resumed.iter().zip(&whole).enumerate() {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "[{i}] {a} vs {b}");
        }
    }
}
