//! Gemma 3 text decoder, as llama.cpp runs it (`src/models/gemma3.cpp`), over a GGUF file.
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

use ggml::attention::{attention, AttnShape};
use ggml::gguf::{GgufFile, GgufHeader, Value};
use ggml::kernels::Isa;
use ggml::ops::elementwise::{add, scale};
use ggml::ops::gelu::gelu_mul;
use ggml::ops::norm::rms_norm_heads;
use ggml::ops::rope::{rope_neox_cached, RopeCache};

#[cfg(feature = "vulkan")]
use super::gpu::{GpuDecoder, LayerDesc, OutputDesc, Placement};
use super::{
    find_vector, norm_rows, norm_rows_inplace, Cancel, Cancelled, Input, Logits, Matrix, Metadata, ModelError, Never,
    Offload,
};
use crate::kv_cache::{KvCache, KvCacheError, KvType, LayerSpec};

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

/// One decoder layer's weights, named by tensor role.
struct Layer {
    /// `[n_embd]`
    attn_norm: Vec<f32>,
    /// `{n_embd, n_head · head_dim}`
    attn_q: Matrix,
    /// `{n_embd, n_head_kv · head_dim}`
    attn_k: Matrix,
    /// `{n_embd, n_head_kv · head_dim}`
    attn_v: Matrix,
    /// `[head_dim]`, shared by every head
    attn_q_norm: Vec<f32>,
    /// `[head_dim]`
    attn_k_norm: Vec<f32>,
    /// `{n_head · head_dim, n_embd}`
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
}

impl Layer {
    fn load(header: &GgufHeader, file: &[u8], hp: &Hparams, il: usize) -> Result<Layer, ModelError> {
        let name = |role: &str| format!("blk.{il}.{role}.weight");
        let vector = |role: &str, n| find_vector(header, file, &name(role), n);
        let matrix = |role: &str, n_in, n_out| Matrix::find(header, &name(role), n_in, n_out);
        let (q_width, kv_width) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
        Ok(Layer {
            attn_norm: vector("attn_norm", hp.n_embd)?,
            attn_q: matrix("attn_q", hp.n_embd, q_width)?,
            attn_k: matrix("attn_k", hp.n_embd, kv_width)?,
            attn_v: matrix("attn_v", hp.n_embd, kv_width)?,
            attn_q_norm: vector("attn_q_norm", hp.head_dim)?,
            attn_k_norm: vector("attn_k_norm", hp.head_dim)?,
            attn_output: matrix("attn_output", q_width, hp.n_embd)?,
            post_attention_norm: vector("post_attention_norm", hp.n_embd)?,
            ffn_norm: vector("ffn_norm", hp.n_embd)?,
            ffn_gate: matrix("ffn_gate", hp.n_embd, hp.n_ff)?,
            ffn_up: matrix("ffn_up", hp.n_embd, hp.n_ff)?,
            ffn_down: matrix("ffn_down", hp.n_ff, hp.n_embd)?,
            post_ffw_norm: vector("post_ffw_norm", hp.n_embd)?,
        })
    }
}

pub struct Gemma3 {
    pub hparams: Hparams,
    pub(crate) gguf: GgufFile,
    /// `{n_embd, n_vocab}`: the input embedding, one row per token.
    token_embd: Matrix,
    layers: Vec<Layer>,
    /// `[n_embd]`
    output_norm: Vec<f32>,
    /// `{n_embd, n_vocab}`: `output.weight`, or `token_embd` when tied (as on every Gemma 3).
    output: Matrix,
    isa: Isa,
    /// The last layers (and maybe the head) on a GPU (`-ngl`).
    #[cfg(feature = "vulkan")]
    pub(crate) gpu: Option<GpuDecoder>,
    /// Where the model runs, in a line ([`super::Model::placement`]).
    pub(crate) placement_note: String,
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
        let layers = (0..hp.n_layer).map(|il| Layer::load(header, file, hp, il)).collect::<Result<_, _>>()?;
        let output_norm = find_vector(header, file, OUTPUT_NORM, hp.n_embd)?;
        let resolved = offload.resolve()?;
        let mut model = Gemma3 {
            token_embd,
            layers,
            output_norm,
            output,
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
                    n_head: hp.n_head,
                    n_head_kv: hp.n_head_kv,
                    head_dim: hp.head_dim,
                    window: hp.sliding[il].then_some(hp.sliding_window),
                    full_rope: !hp.sliding[il],
                    q_scale: Some(hp.attn_scale),
                    v_norm: false,
                    attn_norm: &l.attn_norm,
                    attn_q: &l.attn_q,
                    attn_k: &l.attn_k,
                    attn_v: Some(&l.attn_v),
                    attn_q_norm: &l.attn_q_norm,
                    attn_k_norm: &l.attn_k_norm,
                    attn_output: &l.attn_output,
                    post_attention_norm: &l.post_attention_norm,
                    ffn_norm: &l.ffn_norm,
                    ffn_gate: &l.ffn_gate,
                    ffn_up: &l.ffn_up,
                    ffn_down: &l.ffn_down,
                    post_ffw_norm: &l.post_ffw_norm,
                    moe: None,
                    output_scale: None,
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
        (hp.sliding.iter())
            .map(|&sliding| LayerSpec {
                n_kv_head: hp.n_head_kv,
                head_dim: hp.head_dim,
                window: sliding.then_some(hp.sliding_window),
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
        // cos/sin per position: [n_tokens] of [head_dim / 2]
        let angles = |base| q_pos.iter().map(|&p| RopeCache::new(p, base, hp.head_dim, None)).collect::<Vec<_>>();
        let (rope_global, rope_sliding) = (angles(hp.rope_base), angles(hp.rope_base_swa));

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
            let sliding = hp.sliding[il];
            let rope = if sliding { &rope_sliding } else { &rope_global };
            let shape = AttnShape {
                n_head: hp.n_head,
                n_kv_head: hp.n_head_kv,
                head_dim: hp.head_dim,
                scale: 1.0,
                window: sliding.then_some(hp.sliding_window),
            };

            // Attention. h: [n_tokens][n_embd]
            let h = norm_rows(&x, n_embd, Some(&layer.attn_norm), hp.rms_eps);
            let mut input = Input::new(&h, n_embd);
            // q: [n_tokens][n_head][head_dim]; k, v: [n_tokens][n_head_kv][head_dim]
            let mut q = input.project(self.isa, file, &layer.attn_q);
            let mut k = input.project(self.isa, file, &layer.attn_k);
            let v = input.project(self.isa, file, &layer.attn_v);
            rms_norm_heads(&mut q, hp.head_dim, Some(&layer.attn_q_norm), hp.rms_eps);
            rms_norm_heads(&mut k, hp.head_dim, Some(&layer.attn_k_norm), hp.rms_eps);
            let (q_row, kv_row) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
            for (t, rope) in rope.iter().enumerate() {
                rope_neox_cached(&mut q[t * q_row..(t + 1) * q_row], hp.head_dim, rope);
                rope_neox_cached(&mut k[t * kv_row..(t + 1) * kv_row], hp.head_dim, rope);
            }
            scale(&mut q, hp.attn_scale);
            cache.layer_mut(il).expect("Gemma 3 layers own their caches").update(pos, &k, &v);
            // a: [n_tokens][n_head][head_dim]
            let mut a = vec![0.0f32; q.len()];
            attention(self.isa, &shape, &q, &q_pos, cache.layer(il).slots(), &mut a);
            let mut out = Input::new(&a, q_row).project(self.isa, file, &layer.attn_output);
            norm_rows_inplace(&mut out, n_embd, Some(&layer.post_attention_norm), hp.rms_eps);
            add(&mut x, &out);

            // Feed-forward. gate, up: [n_tokens][n_ff]
            let h = norm_rows(&x, n_embd, Some(&layer.ffn_norm), hp.rms_eps);
            let mut input = Input::new(&h, n_embd);
            let mut gate = input.project(self.isa, file, &layer.ffn_gate);
            let up = input.project(self.isa, file, &layer.ffn_up);
            gelu_mul(&mut gate, &up);
            let mut out = Input::new(&gate, hp.n_ff).project(self.isa, file, &layer.ffn_down);
            norm_rows_inplace(&mut out, n_embd, Some(&layer.post_ffw_norm), hp.rms_eps);
            add(&mut x, &out);
        }

        #[cfg(feature = "vulkan")]
        if let Some(g) = &mut self.gpu {
            match g.forward(&x, pos, cache, &rope_global, &rope_sliding, which, cancel)? {
                super::gpu::Out::Logits(logits) => return Ok(logits),
                super::gpu::Out::Stream(out) => x = out,
            }
        }
        if which == Logits::Last {
            x.drain(..(n_tokens - 1) * n_embd);
        }
        norm_rows_inplace(&mut x, n_embd, Some(&self.output_norm), hp.rms_eps);
        // logits: [n_rows][n_vocab]
        let mut logits = Input::new(&x, n_embd).project(self.isa, file, &self.output);
        if let Some(c) = hp.final_logit_softcap {
            ggml::ops::elementwise::softcap(&mut logits, c);
        }
        Ok(logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CancelAfter;
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
        assert_eq!(err, Cancelled { kept: 8 });
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
