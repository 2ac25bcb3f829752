//! The decoder both Gemma generations share, written once: the layers' weights named by
//! tensor role, the forward pass over them on the CPU, the hand-over to the GPU for the layers
//! `-ngl` puts there ([`super::gpu`]), and the output head. `gemma4.rs` and `gemma3.rs` read
//! their hyperparameters and tensors into a [`Decoder`]; what differs between them is data in
//! each [`Layer`] (head sizes and counts, window, which RoPE table, a query scale, the V norm,
//! the experts, the output scale).
//!
//! Per token, `x: [n_embd]` (GEMMA4.md section 3):
//!
//! ```text
//! x = token_embd[token] * sqrt(n_embd)
//! for each layer (head dim hd and KV heads per layer):
//!     h = rmsnorm(x) * attn_norm
//!     q = rope(rmsnorm(attn_q h) * attn_q_norm) [* q_scale]             (per head)
//!     k_raw = attn_k h;  v_raw = attn_v h, or k_raw when there is no attn_v (k_eq_v)
//!     k = rope(rmsnorm(k_raw) * attn_k_norm);  v = rmsnorm(v_raw) or v_raw (v: no weight, no rope)
//!     a = softmax(q kᵀ, causal [+ window]) v                           (scale 1.0)
//!     x = x + rmsnorm(attn_output a) * post_attention_norm             (x_mid)
//!     m = ffn_down(gelu(ffn_gate h2) * ffn_up h2),  h2 = rmsnorm(x) * ffn_norm
//!     if MoE layer:
//!         m = rmsnorm(m) * post_ffw_norm_1
//!         r = rmsnorm(x) * ffn_gate_inp.scale / sqrt(n_embd)           (router input: x_mid)
//!         experts, weights = top_k(softmax(ffn_gate_inp r)), renormalized, * ffn_down_exps.scale
//!         e = Σ weight · down_e(gelu(gate_e h3) * up_e h3),  h3 = rmsnorm(x) * pre_ffw_norm_2
//!         m = m + rmsnorm(e) * post_ffw_norm_2
//!     x = (x + rmsnorm(m) * post_ffw_norm) [* layer_output_scale]
//! logits = softcap(output · (rmsnorm(x) * output_norm))                (tied: output = token_embd)
//! ```

use ggml::attention::AttnShape;
use ggml::gguf::GgufFile;
use ggml::kernels::moe::{moe_ffn, GateUp};
use ggml::kernels::Isa;
use ggml::ops::elementwise::{add, mul, scale, softcap};
use ggml::ops::gelu::gelu_mul;
use ggml::ops::norm::rms_norm_heads;
use ggml::ops::rope::{rope_neox_cached, RopeCache};
use ggml::ops::softmax::softmax_top_k;

#[cfg(feature = "vulkan")]
use super::gpu::GpuDecoder;
use super::offload::{Offload, Resolved};
use super::{
    norm_rows, norm_rows_inplace, prompt_rows, Cancel, Cancelled, ExpertStack, Input, Logits, Matrix, ModelError,
    Never, Stopped,
};
use crate::kv_cache::{KvCache, KvCacheError, KvTypes, LayerSpec};

/// One decoder layer: its shape, and its weights named by tensor role (`hd`: its head dim).
pub(crate) struct Layer {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Positions a sliding layer sees, the current one included; `None` on global layers.
    pub window: Option<usize>,
    /// Rotates by the global layers' RoPE ([`Decoder::rope_full`]), else by the sliding ones'.
    pub full_rope: bool,
    /// Multiplies q after RoPE (Gemma 3's `query_pre_attn_scalar^-1/2`; Gemma 4: none).
    pub q_scale: Option<f32>,
    /// Whether V goes through a weightless per-head RMSNorm (Gemma 4).
    pub v_norm: bool,
    /// `[n_embd]`
    pub attn_norm: Vec<f32>,
    /// `{n_embd, n_head · hd}`
    pub attn_q: Matrix,
    /// `{n_embd, n_head_kv · hd}`
    pub attn_k: Matrix,
    /// `{n_embd, n_head_kv · hd}`; `None` on k_eq_v layers, where V is the raw K projection.
    pub attn_v: Option<Matrix>,
    /// `[hd]`, shared by every head
    pub attn_q_norm: Vec<f32>,
    /// `[hd]`
    pub attn_k_norm: Vec<f32>,
    /// `{n_head · hd, n_embd}`
    pub attn_output: Matrix,
    /// `[n_embd]`
    pub post_attention_norm: Vec<f32>,
    /// `[n_embd]`
    pub ffn_norm: Vec<f32>,
    /// `{n_embd, n_ff}`
    pub ffn_gate: Matrix,
    /// `{n_embd, n_ff}`
    pub ffn_up: Matrix,
    /// `{n_ff, n_embd}`
    pub ffn_down: Matrix,
    /// `[n_embd]`
    pub post_ffw_norm: Vec<f32>,
    pub moe: Option<Moe>,
    /// Multiplies the whole residual stream at the end of the layer (`layer_output_scale`).
    pub output_scale: Option<f32>,
}

/// The expert half of an MoE layer's feed-forward block.
pub(crate) struct Moe {
    /// `{n_embd, n_expert}`: the router.
    pub gate_inp: Matrix,
    /// `[n_embd]`: multiplies the router's normed input.
    pub gate_inp_scale: Vec<f32>,
    /// `[n_embd]`
    pub pre_ffw_norm_2: Vec<f32>,
    /// `[n_embd]`: norms the dense MLP's output.
    pub post_ffw_norm_1: Vec<f32>,
    /// `[n_embd]`: norms the experts' output.
    pub post_ffw_norm_2: Vec<f32>,
    pub gate_up: ExpertGateUp,
    /// `{n_ff_exp, n_embd, n_expert}`
    pub down_exps: ExpertStack,
    /// `[n_expert]`: multiplies each chosen expert's routing weight (1 when absent).
    pub down_exps_scale: Vec<f32>,
    /// Experts per token.
    pub n_expert_used: usize,
}

/// `ffn_gate_up_exps` `{n_embd, 2 n_ff_exp, n_expert}` (gate rows first), or the two halves.
pub(crate) enum ExpertGateUp {
    Fused(ExpertStack),
    Split { gate: ExpertStack, up: ExpertStack },
}

/// How often the GPU layers that keep their experts in RAM had the CPU run them, and had
/// them copied to VRAM and run there (`--moe-upload`; `gemma bench` reports it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MoeStats {
    /// Layer passes in which the CPU ran experts (all of them, or those the cache lacked).
    pub cpu: u64,
    /// Layer passes whose experts were copied to VRAM and run there, and the bytes copied.
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Of the choices routed in the passes the CPU ran, how many the hot-expert cache held
    /// (and the GPU ran).
    pub cache_hits: u64,
    pub cache_choices: u64,
}

impl MoeStats {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: MoeStats) -> MoeStats {
        MoeStats {
            cpu: self.cpu - earlier.cpu,
            uploaded: self.uploaded - earlier.uploaded,
            uploaded_bytes: self.uploaded_bytes - earlier.uploaded_bytes,
            cache_hits: self.cache_hits - earlier.cache_hits,
            cache_choices: self.cache_choices - earlier.cache_choices,
        }
    }

    /// The counts in words: "experts in RAM ran on the CPU in 12 layer passes and were copied
    /// to VRAM in 30 (14.2 GiB); the expert cache held 41.5% of the CPU passes' choices".
    pub fn describe(&self) -> String {
        let cache = match self.cache_choices {
            0 => String::new(),
            n => format!(
                "; the expert cache held {:.1}% of the CPU passes' choices",
                100.0 * self.cache_hits as f64 / n as f64
            ),
        };
        format!(
            "experts in RAM ran on the CPU in {} layer passes and were copied to VRAM in {} ({}){cache}",
            self.cpu,
            self.uploaded,
            crate::info::human_bytes(self.uploaded_bytes)
        )
    }

    /// The sum of two counts.
    pub fn plus(self, other: MoeStats) -> MoeStats {
        MoeStats {
            cpu: self.cpu + other.cpu,
            uploaded: self.uploaded + other.uploaded,
            uploaded_bytes: self.uploaded_bytes + other.uploaded_bytes,
            cache_hits: self.cache_hits + other.cache_hits,
            cache_choices: self.cache_choices + other.cache_choices,
        }
    }
}

/// One layer type's RoPE: base, rotated dimensions, and the per-pair divisors (Gemma 4's
/// proportional RoPE on global layers: `1` rotates, `1e30` stands still; kept f32, pitfall 3).
pub(crate) struct Rope {
    pub base: f32,
    pub n_rot: usize,
    pub freqs: Option<Vec<f32>>,
}

impl Rope {
    /// cos/sin for each position of a batch: `[n_tokens]` of `[n_rot / 2]`.
    fn angles(&self, positions: std::ops::Range<usize>) -> Vec<RopeCache> {
        positions.map(|p| RopeCache::new(p, self.base, self.n_rot, self.freqs.as_deref())).collect()
    }
}

/// A loaded decoder: the mapped file, the weights, and where the layers run.
pub struct Decoder {
    pub(crate) gguf: GgufFile,
    /// `{n_embd, n_vocab}`: the input embedding, one row per token.
    pub(crate) token_embd: Matrix,
    pub(crate) layers: Vec<Layer>,
    /// `[n_embd]`
    pub(crate) output_norm: Vec<f32>,
    /// `{n_embd, n_vocab}`: `output.weight`, or `token_embd` when tied (every Gemma 3 and 4).
    pub(crate) output: Matrix,
    pub(crate) rope_full: Rope,
    pub(crate) rope_swa: Rope,
    pub(crate) n_embd: usize,
    pub(crate) n_vocab: usize,
    pub(crate) eps: f32,
    /// `c` of the final `c tanh(logits / c)`.
    pub(crate) softcap: Option<f32>,
    isa: Isa,
    /// The last layers (and maybe the head) on a GPU (`-ngl`).
    #[cfg(feature = "vulkan")]
    pub(crate) gpu: Option<GpuDecoder>,
    /// Where the model runs, in a line, and the fit's plan below it when the fit placed the
    /// model ([`super::Model::placement`]).
    pub(crate) placement_note: String,
}

/// What a model file gives the decoder.
pub(crate) struct Parts {
    pub gguf: GgufFile,
    pub token_embd: Matrix,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    pub output: Matrix,
    pub rope_full: Rope,
    pub rope_swa: Rope,
    pub n_embd: usize,
    pub n_vocab: usize,
    pub eps: f32,
    pub softcap: Option<f32>,
}

impl Decoder {
    /// The decoder of `parts`, with the last layers on a GPU as `offload` asks.
    pub(crate) fn new(parts: Parts, offload: &Offload) -> Result<Decoder, ModelError> {
        let resolved: Resolved = offload.resolve(&parts.gguf.header, parts.layers.len())?;
        #[cfg(feature = "vulkan")]
        let gpu = resolved.gpu;
        let Parts { gguf, token_embd, layers, output_norm, output, rope_full, rope_swa, n_embd, n_vocab, eps, softcap } =
            parts;
        #[cfg_attr(not(feature = "vulkan"), allow(unused_mut))]
        let mut decoder = Decoder {
            gguf,
            token_embd,
            layers,
            output_norm,
            output,
            rope_full,
            rope_swa,
            n_embd,
            n_vocab,
            eps,
            softcap,
            isa: Isa::best(),
            #[cfg(feature = "vulkan")]
            gpu: None,
            placement_note: resolved.note,
        };
        #[cfg(feature = "vulkan")]
        if let Some(gpu) = gpu {
            let placement = resolved.placement;
            let head = placement.output_on_gpu.then_some((&decoder.output_norm[..], &decoder.output, decoder.softcap));
            let uploaded = GpuDecoder::upload(
                &gpu,
                &decoder.gguf,
                &placement,
                &decoder.layers,
                head,
                decoder.n_embd,
                decoder.n_vocab,
                decoder.eps,
                offload.max_batch,
                resolved.moe_upload,
                offload.expert_cache.unwrap_or(resolved.spare),
            )
            .map_err(|e| ModelError::Unsupported(format!("uploading to the GPU: {e}")))?;
            decoder.placement_note = format!(
                "{}, {} ({} of VRAM){}",
                decoder.placement_note,
                placement.summary(decoder.layers.len()),
                crate::info::human_bytes(gpu.allocated_bytes()),
                resolved.plan.map(|plan| format!("\n{plan}")).unwrap_or_default()
            );
            decoder.gpu = Some(uploaded);
        }
        Ok(decoder)
    }

    /// Starts mapping the whole file in the background ([`GgufFile::prefetch`]), once. Called
    /// after the first prompt, so that it does not compete with the time to first token.
    pub fn prefetch(&self) {
        self.gguf.prefetch()
    }

    /// Where the model runs, in a line: "CPU", or the GPU, its layers and VRAM; with the
    /// reason when a GPU was asked for and none is used.
    pub fn placement(&self) -> &str {
        &self.placement_note
    }

    /// Tokens in the vocabulary: the width of a row of logits.
    /// The hidden size: the width of a token's (or a soft token's) embedding.
    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The cache shape of every layer.
    pub fn kv_specs(&self) -> Vec<LayerSpec> {
        (self.layers.iter())
            .map(|l| LayerSpec {
                n_kv_head: l.n_head_kv,
                head_dim: l.head_dim,
                window: l.window,
                shares_cache_of: None,
            })
            .collect()
    }

    /// An empty f16 cache for up to `context` positions.
    pub fn new_cache(&self, context: usize) -> Result<KvCache, KvCacheError> {
        self.new_cache_of(context, KvTypes::default())
    }

    /// An empty cache of K and V of `types` for up to `context` positions.
    pub fn new_cache_of(&self, context: usize, types: impl Into<KvTypes>) -> Result<KvCache, KvCacheError> {
        self.new_cache_for(context, types, None)
    }

    /// [`new_cache_of`](Self::new_cache_of), in VRAM for the layers on a GPU, their rings sized
    /// for batches of `max_batch` (`None`: the `-b` given at load).
    pub fn new_cache_for(
        &self,
        context: usize,
        types: impl Into<KvTypes>,
        #[allow(unused_variables)] max_batch: Option<usize>,
    ) -> Result<KvCache, KvCacheError> {
        let types = types.into();
        #[cfg(feature = "vulkan")]
        if let Some(g) = &self.gpu {
            return g.new_cache(&self.kv_specs(), context, types, max_batch);
        }
        KvCache::with_type(&self.kv_specs(), context, types)
    }

    /// How the GPU layers that keep their experts in RAM ran them so far (`None` when no layer
    /// does).
    pub fn moe_stats(&self) -> Option<MoeStats> {
        #[cfg(feature = "vulkan")]
        return self.gpu.as_ref().and_then(|g| g.moe_stats());
        #[cfg(not(feature = "vulkan"))]
        None
    }

    /// Device memory allocated now, when layers run on a GPU.
    pub fn vram_bytes(&self) -> Option<u64> {
        #[cfg(feature = "vulkan")]
        return self.gpu.as_ref().map(|g| g.gpu().allocated_bytes());
        #[cfg(not(feature = "vulkan"))]
        None
    }

    /// Runs `tokens` at positions `pos ..`, appending their keys and values to `cache` (which
    /// must hold exactly `pos` positions), and returns the logits `[n_rows][n_vocab]` of every
    /// token or of the last one. Panics if a GPU fails: the sessions call
    /// [`forward_cancellable`](Self::forward_cancellable), which says so as an error.
    pub fn forward(&mut self, tokens: &[u32], pos: usize, cache: &mut KvCache, which: Logits) -> Vec<f32> {
        match self.forward_cancellable(tokens, pos, cache, which, &Never) {
            Ok(logits) => logits,
            Err(Stopped::Cancelled(_)) => unreachable!("Never does not cancel"),
            Err(e) => panic!("{e}"),
        }
    }

    /// [`forward`](Self::forward), or stops before a layer once `cancel` fires, with the cache
    /// rewound to `pos` ([`Stopped::Cancelled`]), or when a GPU fails ([`Stopped::Device`]).
    pub fn forward_cancellable(
        &mut self,
        tokens: &[u32],
        pos: usize,
        cache: &mut KvCache,
        which: Logits,
        cancel: &dyn Cancel,
    ) -> Result<Vec<f32>, Stopped> {
        self.forward_images(tokens, &[], pos, cache, which, cancel)
    }

    /// [`forward_cancellable`](Self::forward_cancellable) with some rows an image's soft
    /// tokens: their input is the image's embeddings instead of the tokens', and on sliding
    /// layers they also see the later soft tokens of their image (GEMMA4.md 1.3), on the CPU's
    /// layers and the GPU's alike. Each image must be whole in the pass.
    pub fn forward_images(
        &mut self,
        tokens: &[u32],
        images: &[ImageRows<'_>],
        pos: usize,
        cache: &mut KvCache,
        which: Logits,
        cancel: &dyn Cancel,
    ) -> Result<Vec<f32>, Stopped> {
        for image in images {
            assert!(image.rows.end <= tokens.len(), "image rows {:?} past a pass of {}", image.rows, tokens.len());
            assert_eq!(image.embd.len(), image.rows.len() * self.n_embd, "one embedding row per soft token");
        }
        if let Some(max) = cache.max_batch().filter(|&m| tokens.len() > m) {
            // A GPU layer's ring holds one batch of at most `max` beside its window. (Callers
            // keep an image within a batch: `Session` refuses a larger one.)
            assert!(images.is_empty(), "a pass with images of {} tokens, past the batch of {max}", tokens.len());
            return in_pieces(tokens, pos, cache, which, max, |t, p, c, w| {
                self.forward_cancellable(t, p, c, w, cancel)
            });
        }
        let n_tokens = tokens.len();
        let spans = [Span { rows: 0..n_tokens, pos }];
        let (rope_full, rope_swa) =
            (self.rope_full.angles(pos..pos + n_tokens), self.rope_swa.angles(pos..pos + n_tokens));
        let mut x = self.embed(tokens);
        for image in images {
            x[image.rows.start * self.n_embd..image.rows.end * self.n_embd].copy_from_slice(image.embd);
        }
        let prompt = prompt_rows(n_tokens);
        self.cpu_layers(&mut x, &spans, images, prompt, &rope_full, &rope_swa, &mut [cache], cancel)?;

        #[cfg(feature = "vulkan")]
        if let Some(g) = &mut self.gpu {
            let (isa, file, layers) = (self.isa, self.gguf.bytes(), &self.layers);
            let cpu_experts = |il: usize, h: &[f32], choices: &[(usize, f32)]| {
                let prompt = prompt_rows(h.len() / layers[il].attn_norm.len());
                expert_ffn(isa, file, layers[il].moe.as_ref().expect("an MoE layer"), h, choices, prompt)
            };
            let mut q_last: Vec<usize> = (pos..pos + n_tokens).collect();
            for image in images {
                q_last[image.rows.clone()].fill(pos + image.rows.end - 1);
            }
            match g.forward(&x, pos, &q_last, cache, &rope_full, &rope_swa, which, file, &cpu_experts, cancel)? {
                super::gpu::Out::Logits(logits) => return Ok(logits),
                super::gpu::Out::Stream(out) => x = out,
            }
        }
        Ok(self.output_head(x, n_tokens, which))
    }

    /// Several sequences in one pass, each with its own tokens, positions and cache (a server's
    /// slots: decode tokens of some, prompt chunks of others): every projection and expert runs
    /// once over all their tokens, so they share the weight reads, and only the cache writes and
    /// attention go sequence by sequence. Returns each sequence's logits as
    /// [`forward`](Self::forward) would, to the bit: a sequence of one token is a generated
    /// token and one of several a prompt chunk, as in `gemma run`, and each token takes the
    /// kernels of its role whatever else is in the pass
    /// ([`ggml::kernels::matmul::QuantizedActs`]). Layers on a GPU
    /// run the sequences one after another.
    pub fn forward_seqs(&mut self, seqs: &mut [Seq<'_>]) -> Result<Vec<Vec<f32>>, Stopped> {
        #[cfg(feature = "vulkan")]
        if self.gpu.is_some() {
            return (seqs.iter_mut())
                .map(|s| self.forward_images(s.tokens, &s.images, s.pos, s.cache, s.which, &Never))
                .collect();
        }
        // In the stream: prompt chunks whose every row wants logits, then the other prompt
        // chunks, then generated tokens, so that the prompt rows (of the stream, and of the
        // output head's input) come first.
        let class = |s: &Seq| match (s.tokens.len() >= 2, s.which) {
            (true, Logits::All) => 0,
            (true, Logits::Last) => 1,
            (false, _) => 2,
        };
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| class(&seqs[i]));
        let mut spans = vec![Span { rows: 0..0, pos: 0 }; seqs.len()];
        let (mut tokens, mut rope_full, mut rope_swa) = (Vec::new(), Vec::new(), Vec::new());
        for &i in &order {
            let s = &seqs[i];
            let start = tokens.len();
            tokens.extend_from_slice(s.tokens);
            spans[i] = Span { rows: start..tokens.len(), pos: s.pos };
            rope_full.extend(self.rope_full.angles(s.pos..s.pos + s.tokens.len()));
            rope_swa.extend(self.rope_swa.angles(s.pos..s.pos + s.tokens.len()));
        }
        let prompt: usize = seqs.iter().filter(|s| class(s) < 2).map(|s| s.tokens.len()).sum();
        let mut x = self.embed(&tokens);
        // Every sequence's images, as rows of the stream.
        let mut images = Vec::new();
        for (s, span) in seqs.iter().zip(&spans) {
            for image in &s.images {
                assert!(image.rows.end <= s.tokens.len(), "image rows {:?} past {} tokens", image.rows, s.tokens.len());
                assert_eq!(image.embd.len(), image.rows.len() * self.n_embd, "one embedding row per soft token");
                let rows = span.rows.start + image.rows.start..span.rows.start + image.rows.end;
                x[rows.start * self.n_embd..rows.end * self.n_embd].copy_from_slice(image.embd);
                images.push(ImageRows { rows, embd: image.embd });
            }
        }
        let mut caches: Vec<&mut KvCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        self.cpu_layers(&mut x, &spans, &images, prompt, &rope_full, &rope_swa, &mut caches, &Never)?;

        // The rows each sequence wants logits of, through the output head together (in stream
        // order: the rows of `Logits::All` chunks first, the head's prompt rows).
        let n_embd = self.n_embd;
        let wanted = |i: usize| match seqs[i].which {
            Logits::All => spans[i].rows.clone(),
            Logits::Last => spans[i].rows.end - 1..spans[i].rows.end,
        };
        let rows: Vec<usize> = order.iter().flat_map(|&i| wanted(i)).collect();
        let head_prompt: usize = order.iter().filter(|&&i| class(&seqs[i]) == 0).map(|&i| wanted(i).len()).sum();
        let picked: Vec<f32> = rows.iter().flat_map(|&r| x[r * n_embd..(r + 1) * n_embd].iter().copied()).collect();
        let logits = self.head(picked, head_prompt);
        let mut by_seq = vec![Vec::new(); seqs.len()];
        let mut rest = &logits[..];
        for &i in &order {
            let (mine, after) = rest.split_at(wanted(i).len() * self.n_vocab);
            by_seq[i] = mine.to_vec();
            rest = after;
        }
        Ok(by_seq)
    }

    /// The input stream of `tokens`: `[n_tokens][n_embd]`, each row the token's embedding
    /// times `sqrt(n_embd)`.
    fn embed(&self, tokens: &[u32]) -> Vec<f32> {
        let (n_embd, file) = (self.n_embd, self.gguf.bytes());
        let mut x = vec![0.0f32; tokens.len() * n_embd];
        for (&token, row) in tokens.iter().zip(x.chunks_exact_mut(n_embd)) {
            assert!((token as usize) < self.n_vocab, "token {token} is past the vocabulary of {}", self.n_vocab);
            self.token_embd.dequantize_row(file, token as usize, row);
            scale(row, (n_embd as f32).sqrt());
        }
        x
    }

    /// The layers the CPU runs, on the stream `x: [n_tokens][n_embd]` of the sequences `spans`
    /// (one cache each; `rope_*`: one angle set per row; `images`: rows of the stream that are
    /// an image's soft tokens). A cancel rewinds every cache to its span's first position.
    #[allow(clippy::too_many_arguments)]
    fn cpu_layers(
        &self,
        x: &mut [f32],
        spans: &[Span],
        images: &[ImageRows],
        prompt: usize,
        rope_full: &[RopeCache],
        rope_swa: &[RopeCache],
        caches: &mut [&mut KvCache],
        cancel: &dyn Cancel,
    ) -> Result<(), Stopped> {
        // The position of every row of the stream (the spans may list the rows out of order).
        let mut q_pos = vec![0; x.len() / self.n_embd];
        for s in spans {
            for (k, r) in s.rows.clone().enumerate() {
                q_pos[r] = s.pos + k;
            }
        }
        // The last position each row sees on sliding layers: its own, or its image's last.
        let mut q_last = q_pos.clone();
        for image in images {
            let last = q_pos[image.rows.end - 1];
            q_last[image.rows.clone()].fill(last);
        }
        #[cfg(feature = "vulkan")]
        let n_cpu = self.gpu.as_ref().map_or(self.layers.len(), |g| g.first_layer());
        #[cfg(not(feature = "vulkan"))]
        let n_cpu = self.layers.len();
        for (il, layer) in self.layers.iter().enumerate().take(n_cpu) {
            if cancel.is_cancelled() {
                let mut kept = Cancelled { kept: 0 };
                for (span, cache) in spans.iter().zip(caches.iter_mut()) {
                    kept = Cancelled::rewind(cache, span.pos);
                }
                return Err(kept.into());
            }
            let rope = if layer.full_rope { rope_full } else { rope_swa };
            let sees = if layer.window.is_some() { &q_last } else { &q_pos };
            self.layer(il, layer, x, &q_pos, sees, rope, spans, prompt, caches);
        }
        Ok(())
    }

    /// Layer `il` on the CPU, on the stream `x: [n_tokens][n_embd]` in place: the rows of
    /// each of `spans` are one sequence, at positions `q_pos` and seeing keys up to `q_last`,
    /// with its cache in `caches`; the first `prompt` rows are prompt tokens.
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        il: usize,
        layer: &Layer,
        x: &mut [f32],
        q_pos: &[usize],
        q_last: &[usize],
        rope: &[RopeCache],
        spans: &[Span],
        prompt: usize,
        caches: &mut [&mut KvCache],
    ) {
        let (n_embd, eps, isa) = (self.n_embd, self.eps, self.isa);
        let file = self.gguf.bytes();
        let (hd, n_head, n_head_kv) = (layer.head_dim, layer.n_head, layer.n_head_kv);

        // Attention. h: [n_tokens][n_embd]
        let h = norm_rows(x, n_embd, Some(&layer.attn_norm), eps);
        let mut input = Input::with_prompt_rows(&h, n_embd, prompt);
        // q: [n_tokens][n_head][hd]; k, v: [n_tokens][n_head_kv][hd]
        let mut q = input.project(isa, file, &layer.attn_q);
        let mut k = input.project(isa, file, &layer.attn_k);
        let mut v = match &layer.attn_v {
            Some(attn_v) => input.project(isa, file, attn_v),
            None => k.clone(),
        };
        rms_norm_heads(&mut q, hd, Some(&layer.attn_q_norm), eps);
        rms_norm_heads(&mut k, hd, Some(&layer.attn_k_norm), eps);
        if layer.v_norm {
            rms_norm_heads(&mut v, hd, None, eps);
        }
        let (q_row, kv_row) = (n_head * hd, n_head_kv * hd);
        for (t, rope) in rope.iter().enumerate() {
            rope_neox_cached(&mut q[t * q_row..(t + 1) * q_row], hd, rope);
            rope_neox_cached(&mut k[t * kv_row..(t + 1) * kv_row], hd, rope);
        }
        if let Some(s) = layer.q_scale {
            scale(&mut q, s);
        }
        let shape = AttnShape { n_head, n_kv_head: n_head_kv, head_dim: hd, scale: 1.0, window: layer.window };
        // a: [n_tokens][n_head][hd]; each sequence writes and reads its own cache.
        let mut a = vec![0.0f32; q.len()];
        for (span, cache) in spans.iter().zip(caches.iter_mut()) {
            let r = span.rows.clone();
            let (kv, qr) = (r.start * kv_row..r.end * kv_row, r.start * q_row..r.end * q_row);
            let own = cache.layer_mut(il).expect("Gemma 3 and 4 26B/31B layers own their caches");
            own.update(span.pos, &k[kv.clone()], &v[kv]);
            cache.layer(il).attend_to(isa, &shape, &q[qr.clone()], &q_pos[r.clone()], &q_last[r], &mut a[qr]);
        }
        let mut out = Input::with_prompt_rows(&a, q_row, prompt).project(isa, file, &layer.attn_output);
        norm_rows_inplace(&mut out, n_embd, Some(&layer.post_attention_norm), eps);
        add(x, &out);

        // Feed-forward: the dense MLP, then the experts beside it. gate, up: [n_tokens][n_ff]
        let h = norm_rows(x, n_embd, Some(&layer.ffn_norm), eps);
        let mut input = Input::with_prompt_rows(&h, n_embd, prompt);
        let mut gate = input.project(isa, file, &layer.ffn_gate);
        let up = input.project(isa, file, &layer.ffn_up);
        gelu_mul(&mut gate, &up);
        // m: [n_tokens][n_embd]
        let mut m = Input::with_prompt_rows(&gate, layer.ffn_gate.n_out, prompt).project(isa, file, &layer.ffn_down);
        if let Some(moe) = &layer.moe {
            norm_rows_inplace(&mut m, n_embd, Some(&moe.post_ffw_norm_1), eps);
            let mut e = self.experts(moe, x, prompt);
            norm_rows_inplace(&mut e, n_embd, Some(&moe.post_ffw_norm_2), eps);
            add(&mut m, &e);
        }
        norm_rows_inplace(&mut m, n_embd, Some(&layer.post_ffw_norm), eps);
        add(x, &m);
        if let Some(s) = layer.output_scale {
            scale(x, s);
        }
    }

    /// The experts' output for the post-attention stream `x_mid: [n_tokens][n_embd]`: each token
    /// routed to its top experts (GEMMA4.md 2.5-2.6). Returns `[n_tokens][n_embd]`.
    fn experts(&self, moe: &Moe, x_mid: &[f32], prompt: usize) -> Vec<f32> {
        let (n_embd, k) = (self.n_embd, moe.n_expert_used);
        let file = self.gguf.bytes();
        let n_expert = moe.down_exps.n_expert;
        // The router sees x_mid through a weightless norm, times its scale and n_embd^-1/2.
        let mut r = norm_rows(x_mid, n_embd, None, self.eps);
        for row in r.chunks_exact_mut(n_embd) {
            mul(row, &moe.gate_inp_scale);
            scale(row, 1.0 / (n_embd as f32).sqrt());
        }
        // router_logits: [n_tokens][n_expert]
        let router_logits = Input::with_prompt_rows(&r, n_embd, prompt).project(self.isa, file, &moe.gate_inp);
        // choices: [n_tokens][k] of (expert, weight)
        let mut choices = Vec::with_capacity(x_mid.len() / n_embd * k);
        for row in router_logits.chunks_exact(n_expert) {
            let (experts, weights) = softmax_top_k(row, k);
            choices.extend(experts.into_iter().zip(weights).map(|(e, w)| (e, w * moe.down_exps_scale[e])));
        }
        let h = norm_rows(x_mid, n_embd, Some(&moe.pre_ffw_norm_2), self.eps);
        expert_ffn(self.isa, file, moe, &h, &choices, prompt)
    }

    /// `softcap(output · (rmsnorm(x) * output_norm))` of the rows of `x: [n_tokens][n_embd]`
    /// that `which` asks for: `[n_rows][n_vocab]`.
    fn output_head(&self, mut x: Vec<f32>, n_tokens: usize, which: Logits) -> Vec<f32> {
        if which == Logits::Last {
            x.drain(..(n_tokens - 1) * self.n_embd);
        }
        let n_rows = x.len() / self.n_embd;
        self.head(x, prompt_rows(n_rows))
    }

    /// The output head of every row of `x: [n_rows][n_embd]`, the first `prompt` of them prompt
    /// rows: `[n_rows][n_vocab]`.
    fn head(&self, mut x: Vec<f32>, prompt: usize) -> Vec<f32> {
        let n_embd = self.n_embd;
        norm_rows_inplace(&mut x, n_embd, Some(&self.output_norm), self.eps);
        // logits: [n_rows][n_vocab]
        let mut logits = Input::with_prompt_rows(&x, n_embd, prompt).project(self.isa, self.gguf.bytes(), &self.output);
        if let Some(c) = self.softcap {
            softcap(&mut logits, c);
        }
        logits
    }
}

/// One sequence's part of [`Decoder::forward_seqs`]: its tokens, run at positions `pos ..`
/// against its own cache (which holds exactly `pos` positions), and which logits it wants.
pub struct Seq<'a> {
    pub tokens: &'a [u32],
    pub pos: usize,
    pub cache: &'a mut KvCache,
    pub which: Logits,
    /// Rows of `tokens` that are images' soft tokens (each image whole), as in
    /// [`Decoder::forward_images`].
    pub images: Vec<ImageRows<'a>>,
}

/// Rows of a pass that are one image's soft tokens ([`Decoder::forward_images`]).
#[derive(Clone, Debug)]
pub struct ImageRows<'a> {
    /// The rows, consecutive: the whole image.
    pub rows: std::ops::Range<usize>,
    /// `[rows.len()][n_embd]`: the projector's output, taken as it is (soft tokens are not
    /// scaled by `sqrt(n_embd)` as token embeddings are).
    pub embd: &'a [f32],
}

/// Where one sequence's rows are in a pass's stream, and the position of its first row.
#[derive(Clone)]
struct Span {
    rows: std::ops::Range<usize>,
    pos: usize,
}

/// The experts' weighted sum for their input `h: [n_tokens][n_embd]` (`pre_ffw_norm_2` applied)
/// and each token's `k` (expert, weight) choices: `[n_tokens][n_embd]`. The CPU's experts,
/// for its own layers and for GPU layers that keep their experts in RAM.
fn expert_ffn(isa: Isa, file: &[u8], moe: &Moe, h: &[f32], choices: &[(usize, f32)], prompt: usize) -> Vec<f32> {
    let gate_up = match &moe.gate_up {
        ExpertGateUp::Fused(gu) => GateUp::Fused(gu.view(file)),
        ExpertGateUp::Split { gate, up } => GateUp::Split { gate: gate.view(file), up: up.view(file) },
    };
    let mut out = vec![0.0f32; h.len()];
    moe_ffn(isa, gate_up, moe.down_exps.view(file), h, choices, moe.n_expert_used, prompt, &mut out)
        .expect("shapes checked at load");
    out
}

/// Runs a batch longer than `max` tokens as consecutive pieces of at most `max` through
/// `forward` (a decoder's `forward_cancellable`). Logits of every piece (`Logits::All`) or of
/// the last. A cancel rewinds the cache to `pos`, as one pass would.
fn in_pieces(
    tokens: &[u32],
    pos: usize,
    cache: &mut KvCache,
    which: Logits,
    max: usize,
    mut forward: impl FnMut(&[u32], usize, &mut KvCache, Logits) -> Result<Vec<f32>, Stopped>,
) -> Result<Vec<f32>, Stopped> {
    let mut logits = Vec::new();
    let n_pieces = tokens.len().div_ceil(max);
    for (i, piece) in tokens.chunks(max).enumerate() {
        let last = i + 1 == n_pieces;
        match forward(piece, pos + i * max, cache, if last { which } else { Logits::Last }) {
            Ok(l) if last || which == Logits::All => logits.extend(l),
            Ok(_) => {}
            Err(Stopped::Cancelled(_)) => return Err(Cancelled::rewind(cache, pos).into()),
            Err(e) => return Err(e),
        }
    }
    Ok(logits)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ggml::gguf::GgufFile;

    use super::*;
    use crate::kv_cache::KvType;
    use crate::model::Model;

    fn model(name: &str) -> Model {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
        assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
        Model::load(GgufFile::open(&path).unwrap()).unwrap()
    }

    /// `n` token ids of `m`'s vocabulary, spread by `seed`.
    fn ids(m: &Model, seed: u32, n: usize) -> Vec<u32> {
        let n_vocab = m.n_vocab() as u32;
        (0..n as u32).map(|i| (seed * 7919 + i * 104_729) % n_vocab).collect()
    }

    /// A cache of 64 f32 positions holding `prefix`.
    fn primed(m: &mut Model, prefix: &[u32]) -> KvCache {
        let mut cache = m.new_cache_of(64, KvType::F32).unwrap();
        if !prefix.is_empty() {
            m.forward(prefix, 0, &mut cache, Logits::Last);
        }
        cache
    }

    /// Sequences holding images (soft-token rows with their own embeddings and the
    /// bidirectional mask on sliding layers) in one pass beside a decode token give each the
    /// logits it gets alone through `forward_images`, to the bit.
    #[test]
    fn sequences_with_images_batched_together_match_each_alone() {
        let mut m = model("tiny-gemma4-moe.gguf");
        let n_embd = m.n_embd();
        let embd = |seed: u32, n: usize| -> Vec<f32> {
            (0..n * n_embd)
                .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
                .collect()
        };
        // (prefix in the cache, tokens of this pass, image rows), and the images' embeddings.
        let cases = [
            (ids(&m, 1, 0), ids(&m, 2, 8), 2..6),
            (ids(&m, 3, 5), ids(&m, 4, 1), 0..0),
            (ids(&m, 5, 9), ids(&m, 6, 6), 1..4),
        ];
        let embds = [embd(1, 4), Vec::new(), embd(2, 3)];
        fn rows<'e>(r: &std::ops::Range<usize>, e: &'e [f32]) -> Vec<ImageRows<'e>> {
            match r.is_empty() {
                true => Vec::new(),
                false => vec![ImageRows { rows: r.clone(), embd: e }],
            }
        }
        let mut alone = Vec::new();
        for ((prefix, tokens, r), e) in cases.iter().zip(&embds) {
            let mut cache = primed(&mut m, prefix);
            let never = std::sync::atomic::AtomicBool::new(false);
            alone.push(m.forward_images(tokens, &rows(r, e), prefix.len(), &mut cache, Logits::All, &never).unwrap());
        }
        let mut caches: Vec<KvCache> = cases.iter().map(|(prefix, ..)| primed(&mut m, prefix)).collect();
        let mut seqs: Vec<Seq> = (cases.iter().zip(&embds).zip(caches.iter_mut()))
            .map(|(((prefix, tokens, r), e), cache)| Seq {
                tokens,
                pos: prefix.len(),
                cache,
                which: Logits::All,
                images: rows(r, e),
            })
            .collect();
        let together = m.forward_seqs(&mut seqs).unwrap();
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.len(), b.len(), "sequence {i}");
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()), "sequence {i}");
        }
        // The images changed the logits: the soft tokens were not run as their token ids.
        let mut cache = primed(&mut m, &cases[0].0);
        assert_ne!(m.forward(&cases[0].1, 0, &mut cache, Logits::All), together[0]);
    }

    /// Three sequences in one pass — a prompt chunk from position 0, one decode token after a
    /// 5-token prefix, a 3-token chunk after a 9-token prefix — give each sequence the logits
    /// and cache it gets in a pass of its own, to the bit, on both architectures. (When a lone
    /// token took other matmul kernels than a batch, the 270M's bits differed here.)
    #[test]
    fn sequences_batched_together_match_each_alone() {
        for name in ["tiny-gemma4-moe.gguf", "gemma-3-270m-q4_k_m.gguf"] {
            let mut m = model(name);
            // (prefix already in the cache, tokens of this pass, which logits)
            let cases = [
                (ids(&m, 1, 0), ids(&m, 2, 7), Logits::All),
                (ids(&m, 3, 5), ids(&m, 4, 1), Logits::Last),
                (ids(&m, 5, 9), ids(&m, 6, 3), Logits::Last),
            ];
            {
                let mut alone = Vec::new();
                for (prefix, tokens, which) in &cases {
                    let mut cache = primed(&mut m, prefix);
                    let logits = m.forward(tokens, prefix.len(), &mut cache, *which);
                    alone.push((logits, cache));
                }
                let mut caches: Vec<KvCache> = cases.iter().map(|(prefix, ..)| primed(&mut m, prefix)).collect();
                let mut seqs: Vec<Seq> = (cases.iter().zip(caches.iter_mut()))
                    .map(|((prefix, tokens, which), cache)| Seq {
                        tokens,
                        pos: prefix.len(),
                        cache,
                        which: *which,
                        images: Vec::new(),
                    })
                    .collect();
                let together = m.forward_seqs(&mut seqs).unwrap();
                for (i, ((logits, cache), batched)) in alone.iter().zip(&together).enumerate() {
                    assert_eq!(logits.len(), batched.len(), "{name}: sequence {i}");
                    assert!(
                        logits.iter().zip(batched).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{name}: sequence {i}"
                    );
                    assert_eq!(cache.n_positions(), caches[i].n_positions(), "{name}: sequence {i}");
                }
            }
        }
    }
}
