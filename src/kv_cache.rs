//! The KV cache: per layer, the keys and values of the positions attention can still see,
//! laid out as [`ggml::attention::attention`] reads them (`[n_kv_head][capacity][head_dim]`, the
//! token position of each used slot beside them; the kernel masks by position, so slots may be
//! in any order).
//!
//! K and V are f16 by default, as llama.cpp keeps them. Each has its own type ([`KvTypes`]:
//! `-ctk`, `-ctv`, or `--kv-type` for both), any of [`KvType`]'s: f32 (`--kv-type f32`, twice
//! the memory and the bytes read per decode step, for runs that must match a float32
//! reference closely: there the f16 rounding of K and V is the largest error), bf16, or the
//! block formats q8_0 and q4_0 (53% and 28% of f16's bytes, for long contexts; rows are whole
//! blocks of 32, ggml's layout and rounding). The types are chosen once, at
//! [`KvCache::with_type`]; the ring, growth and rewinding below are the same code for all,
//! on rows of `head_dim / block` units. A block type stores its rows rotated by a
//! Walsh–Hadamard transform ([`ggml::attention::rotation`], as llama.cpp does), which spreads
//! outliers before they coarsen a block's grid; [`LayerCache::attend`] rotates the queries and
//! the output to match, so callers see plain attention.
//!
//! Global (full-attention) layers keep every position of the context. Sliding layers keep a
//! ring: once full, each new token overwrites the slot of the oldest position.
//!
//! ## How big a ring is
//!
//! A batch of `B` tokens at positions `p .. p + B` is appended before its attention runs, and
//! its first token still sees keys back to `p - W + 1` (window `W`, GEMMA4.md 1.3 and pitfall
//! 16: the window includes the current token). So `W - 1 + B` keys must be held at once: with
//! `W = 1024` and `B = 512`, positions `p - 1023 ..= p + 511`, 1,535 slots. A ring of 1,024
//! would let the batch's last 511 tokens overwrite the keys its first tokens need. A sliding
//! ring therefore holds `W - 1 + B` slots for the largest batch appended so far (`W` if only
//! ever one token at a time), never more than the context.
//!
//! ## Memory
//!
//! - Lazy, geometric growth: a layer allocates nothing until its first update, then grows to
//!   what the update needs, at least doubling (from [`MIN_SLOTS`]) and never past what the
//!   layer can ever hold (the context, or a sliding ring's size). A short chat with a 256K
//!   context holds a few hundred slots per layer, not 256K. Fixed-size chunks would not do: the
//!   kernel wants each head's rows contiguous, so growing re-lays every head, and chunked growth
//!   would copy `O(n²)` in total; doubling copies less than the final size in total. Growing
//!   copies each head's rows into fresh zeroed memory, whose pages the OS maps only when
//!   written: the resident memory follows the rows held, not the doubled capacity.
//! - [`KvCache::bytes`] is what the cache holds at full context for one-token decode: K and V
//!   for `min(context, window)` positions on each layer that has a cache of its own, the number
//!   GEMMA4.md 1.1 gives (in f16) and `gemma info` prints; twice that in f32, 17/32 of it in
//!   q8_0 and 9/32 in q4_0.
//!   [`KvCache::allocated_bytes`] is what is allocated now: less before the context fills, plus
//!   `B - 1` slots per sliding layer after a batch of `B` (for 26B-A4B, f16 and `B = 512`:
//!   25 · 511 · 4,096 · 2 bytes, 100 MiB).
//!
//! ## Rewinding
//!
//! [`KvCache::truncate`] drops the newest positions so that a chat session can regenerate. A
//! global layer can rewind anywhere; a ring only as far as it still holds the keys the next
//! token will see (`B` positions past a full ring of `W - 1 + B`). Past that the whole cache is
//! cleared and `truncate` says so by returning 0: the caller re-runs the prompt.

use std::fmt;
use std::mem::size_of;

use ggml::attention::rotation::{k_rotation, rotate, v_rotation};
use ggml::attention::{attention_to, AttnShape, KvData, KvElem, KvSlots};
pub use ggml::attention::{KvType, ParseKvTypeError};
use ggml::kernels::Isa;
use ggml::quants::q4_0::BlockQ4_0;
use ggml::quants::q8_0::BlockQ8_0;
use half::{bf16, f16};

/// Slots a layer allocates at its first update (unless the context is shorter): 1 MiB of f16
/// K and V on a Gemma 4 global layer (2 KV heads × 512), 2 MiB on a 26B-A4B sliding one.
pub const MIN_SLOTS: usize = 256;

/// `$body` with `$x` bound to the `Vec` inside a [`Column`] (or a reference to one),
/// whichever its element type: one generic body, matched once per call.
macro_rules! with_column {
    ($column:expr, $x:ident => $body:expr) => {
        match $column {
            Column::F32($x) => $body,
            Column::F16($x) => $body,
            Column::Bf16($x) => $body,
            Column::Q8_0($x) => $body,
            Column::Q4_0($x) => $body,
        }
    };
}

/// The element types of a cache's keys and of its values (`-ctk`, `-ctv`; `--kv-type` sets
/// both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvTypes {
    pub k: KvType,
    pub v: KvType,
}

impl KvTypes {
    /// K and V of the same type.
    pub const fn both(t: KvType) -> KvTypes {
        KvTypes { k: t, v: t }
    }

    /// Bytes of one K row and one V row of `head_dim` elements.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        self.k.row_bytes(head_dim) + self.v.row_bytes(head_dim)
    }

    /// Whether rows of `head_dim` elements are whole units of both types.
    pub fn fit(self, head_dim: usize) -> bool {
        head_dim.is_multiple_of(self.k.block()) && head_dim.is_multiple_of(self.v.block())
    }
}

impl From<KvType> for KvTypes {
    fn from(t: KvType) -> KvTypes {
        KvTypes::both(t)
    }
}

/// `f16`, or `K q8_0, V f16` when they differ.
impl fmt::Display for KvTypes {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.k == self.v {
            write!(f, "{}", self.k)
        } else {
            write!(f, "K {}, V {}", self.k, self.v)
        }
    }
}

/// The attention shape of one layer, as far as its cache cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Key/value heads (per layer on Gemma 4: 8 sliding and 2 global on 26B-A4B).
    pub n_kv_head: usize,
    /// Elements per head (256 sliding, 512 global).
    pub head_dim: usize,
    /// Sliding window in positions, the current one included; `None` for a global layer.
    pub window: Option<usize>,
    /// E2B/E4B KV sharing (GEMMA4.md 5.2): the earlier layer whose cache this one reads; it
    /// then holds none and computes no K/V of its own.
    pub shares_cache_of: Option<usize>,
}

impl LayerSpec {
    /// Slots this layer's cache takes in VRAM, allocated whole ([`LayerCache::on_device`]):
    /// every position of the context on a global layer, `window - 1 + max_batch` on a
    /// sliding one.
    pub fn device_capacity(&self, context: usize, max_batch: usize) -> usize {
        device_capacity(self.window, context, max_batch)
    }

    /// Slots this layer's host cache holds at most: every position of the context on a global
    /// layer, the window on a sliding one.
    pub fn host_capacity(&self, context: usize) -> usize {
        host_capacity(self.window, context)
    }

    /// Bytes of K and V in a cache of `capacity` slots (none when it reads another's).
    pub fn bytes(&self, capacity: usize, types: KvTypes) -> u64 {
        match self.shares_cache_of {
            Some(_) => 0,
            None => (self.n_kv_head * capacity * types.row_bytes(self.head_dim)) as u64,
        }
    }
}

fn host_capacity(window: Option<usize>, context: usize) -> usize {
    window.map_or(context, |w| w.min(context))
}

fn device_capacity(window: Option<usize>, context: usize, max_batch: usize) -> usize {
    window.map_or(context, |w| (w - 1 + max_batch.max(1)).min(context))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvCacheError {
    #[error("the context length must be positive")]
    ZeroContext,
    #[error("layer {layer}: {problem}")]
    BadShape { layer: usize, problem: &'static str },
    #[error("layer {layer}: a head of {head_dim} elements is not whole blocks of 32, as a {types} cache needs")]
    NotWholeBlocks { layer: usize, head_dim: usize, types: KvTypes },
    #[error("layer {layer} shares the cache of layer {owner}, which {problem}")]
    BadSharing { layer: usize, owner: usize, problem: &'static str },
    #[error("layer {layer}'s cache on the GPU: {problem}")]
    Device { layer: usize, problem: String },
}

/// The caches of all layers of a model.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Layer>,
    types: KvTypes,
}

#[derive(Debug)]
enum Layer {
    Own(LayerCache),
    /// Reads the cache of this (earlier) layer.
    SharesCacheOf(usize),
}

impl KvCache {
    /// One f16 cache per layer for up to `context` positions; a layer that shares another's
    /// cache must name an earlier layer with a cache of its own and the same shape and window.
    pub fn new(specs: &[LayerSpec], context: usize) -> Result<KvCache, KvCacheError> {
        KvCache::with_type(specs, context, KvTypes::default())
    }

    /// [`with_type`](Self::with_type), with layers `first ..` in VRAM on `gpu` for batches of at
    /// most `max_batch` tokens ([`LayerCache::on_device`]).
    #[cfg(feature = "vulkan")]
    pub fn with_device_layers(
        specs: &[LayerSpec],
        context: usize,
        types: KvTypes,
        gpu: &ggml::vulkan::Gpu,
        first: usize,
        max_batch: usize,
    ) -> Result<KvCache, KvCacheError> {
        let mut cache = KvCache::with_type(specs, context, types)?;
        for (layer, spec) in specs.iter().enumerate().skip(first) {
            if let Layer::Own(_) = cache.layers[layer] {
                let what = format!("the KV cache of layer {layer}");
                let on = LayerCache::on_device(
                    spec.n_kv_head,
                    spec.head_dim,
                    spec.window,
                    context,
                    types,
                    max_batch,
                    gpu,
                    &what,
                )
                .map_err(|e| KvCacheError::Device { layer, problem: e.to_string() })?;
                cache.layers[layer] = Layer::Own(on);
            }
        }
        Ok(cache)
    }

    /// The most tokens one forward pass may append: a GPU layer's ring was sized for batches of
    /// this many beside its window ([`LayerCache::on_device`]); `None` when nothing limits it.
    pub fn max_batch(&self) -> Option<usize> {
        self.own().filter_map(LayerCache::max_batch).min()
    }

    /// [`new`](Self::new) with K and V of types `types`.
    pub fn with_type(specs: &[LayerSpec], context: usize, types: KvTypes) -> Result<KvCache, KvCacheError> {
        if context == 0 {
            return Err(KvCacheError::ZeroContext);
        }
        let mut layers = Vec::with_capacity(specs.len());
        for (layer, spec) in specs.iter().enumerate() {
            if spec.n_kv_head == 0 || spec.head_dim == 0 {
                return Err(KvCacheError::BadShape { layer, problem: "n_kv_head and head_dim must be positive" });
            }
            if spec.window == Some(0) {
                return Err(KvCacheError::BadShape { layer, problem: "a window of 0 sees nothing" });
            }
            if !types.fit(spec.head_dim) {
                return Err(KvCacheError::NotWholeBlocks { layer, head_dim: spec.head_dim, types });
            }
            let Some(owner) = spec.shares_cache_of else {
                layers.push(Layer::Own(LayerCache::with_type(
                    spec.n_kv_head,
                    spec.head_dim,
                    spec.window,
                    context,
                    types,
                )));
                continue;
            };
            let bad = |problem| Err(KvCacheError::BadSharing { layer, owner, problem });
            if owner >= layer {
                return bad("is not an earlier layer");
            }
            if specs[owner].shares_cache_of.is_some() {
                return bad("has no cache of its own");
            }
            if (LayerSpec { shares_cache_of: None, ..*spec }) != specs[owner] {
                return bad("has a different head count, head size or window");
            }
            layers.push(Layer::SharesCacheOf(owner));
        }
        Ok(KvCache { layers, types })
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The element types of every layer's K and V.
    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// The cache layer `layer` attends over: its own, or the one it shares.
    pub fn layer(&self, layer: usize) -> &LayerCache {
        match &self.layers[layer] {
            Layer::Own(cache) => cache,
            &Layer::SharesCacheOf(owner) => match &self.layers[owner] {
                Layer::Own(cache) => cache,
                Layer::SharesCacheOf(_) => unreachable!("KvCache::new checks that a shared cache is a layer's own"),
            },
        }
    }

    /// Layer `layer`'s own cache, to update; `None` for a layer that shares another's.
    pub fn layer_mut(&mut self, layer: usize) -> Option<&mut LayerCache> {
        match &mut self.layers[layer] {
            Layer::Own(cache) => Some(cache),
            Layer::SharesCacheOf(_) => None,
        }
    }

    fn own(&self) -> impl Iterator<Item = &LayerCache> {
        self.layers.iter().filter_map(|layer| match layer {
            Layer::Own(cache) => Some(cache),
            Layer::SharesCacheOf(_) => None,
        })
    }

    /// Positions cached: the next token's position (that of the first layer with a cache).
    pub fn n_positions(&self) -> usize {
        self.own().next().map_or(0, LayerCache::n_positions)
    }

    /// Keeps positions `0..n` on every layer, or, where a sliding ring no longer holds the keys
    /// position `n` would see, clears every layer. Returns the positions kept (`n`, 0, or the
    /// current count if that is below `n`): the caller feeds tokens again from there.
    pub fn truncate(&mut self, n: usize) -> usize {
        let kept = self.own().map(|cache| cache.kept_by_truncate(n)).min().unwrap_or(0);
        for layer in &mut self.layers {
            if let Layer::Own(cache) = layer {
                cache.truncate(kept);
            }
        }
        kept
    }

    /// Forgets every position; keeps the memory for the next conversation.
    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            if let Layer::Own(cache) = layer {
                cache.clear();
            }
        }
    }

    /// K and V at full context, one-token decode (see the module docs).
    pub fn bytes(&self) -> usize {
        self.own().map(LayerCache::bytes).sum()
    }

    /// What the caches have allocated now.
    pub fn allocated_bytes(&self) -> usize {
        self.own().map(LayerCache::allocated_bytes).sum()
    }
}

/// One layer's keys and values: a list up to the context (global layers) or a ring (sliding
/// layers), growing as the module docs describe; or, for a layer on the GPU, the same
/// bookkeeping over rows in VRAM, allocated whole up front.
#[derive(Debug)]
pub struct LayerCache {
    n_kv_head: usize,
    head_dim: usize,
    window: Option<usize>,
    context: usize,
    /// Slots per head: K and V each hold `n_kv_head · capacity · head_dim` elements.
    capacity: usize,
    /// The element types of K and V.
    types: KvTypes,
    /// The Walsh–Hadamard rotations K and V rows are stored with (block types only).
    rot_k: Option<usize>,
    rot_v: Option<usize>,
    /// K and V, `[n_kv_head][capacity][head_dim]` elements each, in their types.
    data: Data,
    /// The position held by each used slot; slots `0..pos.len()` are used.
    pos: Vec<usize>,
    /// When every slot is used, the slot of the oldest position: the next one overwritten.
    /// Otherwise 0, and the used slots hold consecutive positions in order.
    oldest: usize,
    /// Positions appended so far; the next update starts here.
    n_positions: usize,
}

impl LayerCache {
    /// An empty f16 cache (nothing allocated) for up to `context` positions.
    pub fn new(n_kv_head: usize, head_dim: usize, window: Option<usize>, context: usize) -> LayerCache {
        LayerCache::with_type(n_kv_head, head_dim, window, context, KvTypes::default())
    }

    /// [`new`](Self::new) with K and V of types `types` (rows of `head_dim` must be whole
    /// units of both: [`KvTypes::fit`]).
    pub fn with_type(
        n_kv_head: usize,
        head_dim: usize,
        window: Option<usize>,
        context: usize,
        types: KvTypes,
    ) -> LayerCache {
        assert!(n_kv_head > 0 && head_dim > 0 && window != Some(0) && context > 0, "empty cache shape");
        assert!(types.fit(head_dim), "rows of {head_dim} are not whole blocks of {types}");
        LayerCache {
            n_kv_head,
            head_dim,
            window,
            context,
            capacity: 0,
            types,
            rot_k: k_rotation(types.k, head_dim),
            rot_v: v_rotation(types.v, head_dim),
            data: Data::Host { k: Column::new(types.k, head_dim), v: Column::new(types.v, head_dim) },
            pos: Vec::new(),
            oldest: 0,
            n_positions: 0,
        }
    }

    /// A cache whose K and V live in VRAM on `gpu`, allocated whole: every position of the
    /// context on a global layer, `window - 1 + max_batch` on a sliding one (batches of at most
    /// `max_batch` tokens; the module docs say why). The GPU writes and reads the rows
    /// ([`append_slots`](Self::append_slots) gives it the slots); rewinding rotates them there.
    #[cfg(feature = "vulkan")]
    #[allow(clippy::too_many_arguments)]
    pub fn on_device(
        n_kv_head: usize,
        head_dim: usize,
        window: Option<usize>,
        context: usize,
        types: KvTypes,
        max_batch: usize,
        gpu: &ggml::vulkan::Gpu,
        what: &str,
    ) -> Result<LayerCache, ggml::vulkan::VkError> {
        let mut cache = LayerCache::with_type(n_kv_head, head_dim, window, context, types);
        let capacity = device_capacity(window, context, max_batch);
        let rows = ggml::vulkan::KvBuffers::new(gpu, n_kv_head, head_dim, capacity, types.k, types.v, what)?;
        cache.data = Data::Device(Box::new(DeviceRows { gpu: gpu.clone(), rows }));
        cache.capacity = capacity;
        cache.pos.reserve_exact(capacity);
        Ok(cache)
    }

    /// The batch a GPU layer's ring holds beside its window; `None` for a host layer (it grows)
    /// or one that holds the whole context.
    pub fn max_batch(&self) -> Option<usize> {
        match &self.data {
            #[cfg(feature = "vulkan")]
            Data::Device(_) => match self.window {
                Some(w) if self.capacity < self.context => Some(self.capacity + 1 - w),
                _ => None,
            },
            _ => None,
        }
    }

    /// A GPU layer's rows, `None` for a layer in host memory.
    #[cfg(feature = "vulkan")]
    pub fn device(&self) -> Option<&DeviceRows> {
        match &self.data {
            Data::Device(d) => Some(d),
            _ => None,
        }
    }

    /// Appends the keys and values of `n_tokens` consecutive tokens at positions
    /// `pos .. pos + n_tokens` (one token for decode, a batch for prefill), `k` and `v`
    /// `[n_tokens][n_kv_head][head_dim]` f32, stored as they are in an f32 cache and rounded
    /// (or quantized) as ggml does in the others. Call it
    /// before attention: afterwards the cache holds every key each of these tokens sees.
    ///
    /// Panics unless `pos` is [`n_positions`](Self::n_positions) (positions are token
    /// indices, appended in order), the buffers hold whole tokens, and the tokens fit the
    /// context.
    pub fn update(&mut self, pos: usize, k: &[f32], v: &[f32]) {
        let (d, row) = (self.head_dim, self.n_kv_head * self.head_dim);
        assert!(
            k.len() == v.len() && !k.is_empty() && k.len().is_multiple_of(row),
            "k and v must both hold [n_tokens][{}][{d}]",
            self.n_kv_head
        );
        let slots = self.append_slots(pos, k.len() / row);
        let (kc, vc) = self.data.host().expect("a GPU layer's keys and values are written by the GPU");
        let mut rotated = vec![0.0f32; d];
        let mut store = |column: &mut Column, at: usize, x: &[f32], rotation: Option<usize>| match rotation {
            Some(n) => {
                rotated.copy_from_slice(x);
                rotate(&mut rotated, n);
                column.store(at, &rotated);
            }
            None => column.store(at, x),
        };
        for ((k, v), slot) in k.chunks_exact(row).zip(v.chunks_exact(row)).zip(slots) {
            for (h, (k, v)) in k.chunks_exact(d).zip(v.chunks_exact(d)).enumerate() {
                let at = h * self.capacity + slot;
                store(kc, at, k, self.rot_k);
                store(vc, at, v, self.rot_v);
            }
        }
    }

    /// The bookkeeping of [`update`](Self::update) alone: takes the slots of `n_tokens` new
    /// positions `pos ..` (overwriting the oldest ones in a full ring) and returns them, in
    /// token order, for whoever writes the rows (the GPU, for a layer whose rows are in VRAM).
    pub fn append_slots(&mut self, pos: usize, n_tokens: usize) -> Vec<usize> {
        assert_eq!(pos, self.n_positions, "positions are appended in order: the cache holds 0..{}", self.n_positions);
        assert!(
            pos + n_tokens <= self.context,
            "positions {pos}..{} past the context of {}",
            pos + n_tokens,
            self.context
        );
        self.make_room(n_tokens);
        let slots = (0..n_tokens)
            .map(|t| {
                if self.pos.len() < self.capacity {
                    self.pos.push(pos + t);
                    self.pos.len() - 1
                } else {
                    let slot = self.oldest;
                    self.pos[slot] = pos + t;
                    self.oldest = (slot + 1) % self.capacity;
                    slot
                }
            })
            .collect();
        self.n_positions += n_tokens;
        slots
    }

    /// The position held by each used slot (`[capacity]` at most; slots in use come first).
    pub fn positions(&self) -> &[usize] {
        &self.pos
    }

    /// The cache as the attention kernel takes it.
    pub fn slots(&self) -> KvSlots<'_> {
        match &self.data {
            Data::Host { k, v } => KvSlots { k: k.data(), v: v.data(), pos: &self.pos },
            #[cfg(feature = "vulkan")]
            Data::Device(_) => panic!("a GPU layer's keys and values are not in host memory"),
        }
    }

    /// The element types of K and V.
    pub fn types(&self) -> KvTypes {
        self.types
    }

    /// Attention of `q` (`[n_tokens][n_head][head_dim]` at positions `q_pos`) over this cache
    /// into `out` ([`attention`] at instruction-set level `isa`), with the queries rotated as
    /// the stored keys are and the output rotated back from the stored values' rotation.
    pub fn attend(&self, isa: Isa, shape: &AttnShape, q: &[f32], q_pos: &[usize], out: &mut [f32]) {
        self.attend_to(isa, shape, q, q_pos, q_pos, out)
    }

    /// [`attend`](Self::attend) where query `t` sees keys up to position `q_last[t]`
    /// ([`AttnShape::visible_to`]: an image's soft tokens on a sliding layer).
    pub fn attend_to(
        &self,
        isa: Isa,
        shape: &AttnShape,
        q: &[f32],
        q_pos: &[usize],
        q_last: &[usize],
        out: &mut [f32],
    ) {
        let q = match self.rot_k {
            Some(n) => {
                let mut q = q.to_vec();
                rotate(&mut q, n);
                std::borrow::Cow::Owned(q)
            }
            None => std::borrow::Cow::Borrowed(q),
        };
        attention_to(isa, shape, &q, q_pos, q_last, self.slots(), out);
        if let Some(n) = self.rot_v {
            rotate(out, n);
        }
    }

    /// Positions appended so far: the next token's position.
    pub fn n_positions(&self) -> usize {
        self.n_positions
    }

    /// Slots per head allocated now.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn window(&self) -> Option<usize> {
        self.window
    }

    /// Keeps positions `0..n` (nothing changes if `n >= n_positions`), or, if this is a ring
    /// that no longer holds every key position `n` would see, clears the cache. Returns the
    /// positions kept.
    pub fn truncate(&mut self, n: usize) -> usize {
        let kept = self.kept_by_truncate(n);
        if kept == 0 {
            self.clear();
        } else if kept < self.n_positions {
            self.linearize();
            let oldest = self.n_positions - self.pos.len();
            self.pos.truncate(kept - oldest);
            self.n_positions = kept;
        }
        kept
    }

    /// What [`truncate`](Self::truncate)`(n)` would keep.
    fn kept_by_truncate(&self, n: usize) -> usize {
        let oldest = self.n_positions - self.pos.len();
        if n >= self.n_positions {
            self.n_positions
        } else if oldest <= self.first_seen(n) {
            n
        } else {
            0
        }
    }

    /// Forgets every position; keeps the memory.
    pub fn clear(&mut self) {
        self.pos.clear();
        self.oldest = 0;
        self.n_positions = 0;
    }

    /// K and V for `min(context, window)` positions: the full-context decode footprint.
    pub fn bytes(&self) -> usize {
        host_capacity(self.window, self.context) * self.n_kv_head * self.types.row_bytes(self.head_dim)
    }

    /// K, V and positions as allocated now in host memory (a GPU layer's K and V are in VRAM,
    /// counted by the device's allocator).
    pub fn allocated_bytes(&self) -> usize {
        let rows = match &self.data {
            #[cfg(feature = "vulkan")]
            Data::Device(_) => 0,
            Data::Host { k, v } => k.allocated_bytes() + v.allocated_bytes(),
        };
        rows + self.pos.capacity() * size_of::<usize>()
    }

    /// The oldest position a query at `pos` sees.
    fn first_seen(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    /// Grows the cache, if needed, to hold `n_tokens` new tokens and every key the first of
    /// them sees (the module docs say why that is the bound and how growth goes).
    fn make_room(&mut self, n_tokens: usize) {
        let first = self.n_positions;
        let needed = first + n_tokens - self.first_seen(first);
        if needed <= self.capacity {
            return;
        }
        #[cfg(feature = "vulkan")]
        if let Data::Device(_) = self.data {
            panic!("a batch of {n_tokens} needs {needed} slots of a GPU layer's {}: split it", self.capacity);
        }
        let most = self.window.map_or(self.context, |w| (w - 1 + n_tokens).min(self.context));
        let capacity = needed.max(2 * self.capacity).max(MIN_SLOTS).min(most);
        self.linearize();
        let (n_kv_head, old, used) = (self.n_kv_head, self.capacity, self.pos.len());
        let (k, v) = self.data.host().expect("a GPU layer's cache does not grow (checked above)");
        k.grow(n_kv_head, old, used, capacity);
        v.grow(n_kv_head, old, used, capacity);
        self.pos.reserve_exact(capacity - used);
        self.capacity = capacity;
    }

    /// Rotates a full ring so that slots hold positions in order, the oldest in slot 0.
    fn linearize(&mut self) {
        if self.oldest == 0 {
            return;
        }
        match &mut self.data {
            #[cfg(feature = "vulkan")]
            Data::Device(d) => d
                .rows
                .rotate_slots(&d.gpu, self.oldest)
                .unwrap_or_else(|e| panic!("rewinding a GPU layer's cache: {e}")),
            Data::Host { k, v } => {
                k.rotate_heads(self.capacity, self.oldest);
                v.rotate_heads(self.capacity, self.oldest);
            }
        }
        self.pos.rotate_left(self.oldest);
        self.oldest = 0;
    }
}

/// One tensor of a layer's cache, K or V, in its element type: `[n_kv_head][capacity][row]`
/// units (`row` = `head_dim / block`). The [`LayerCache`] keeps the shape and the slot
/// bookkeeping; these are its moves on the rows.
#[derive(Clone, Debug)]
enum Column {
    F32(Units<f32>),
    F16(Units<f16>),
    Bf16(Units<bf16>),
    Q8_0(Units<BlockQ8_0>),
    Q4_0(Units<BlockQ4_0>),
}

/// The rows of a [`Column`], and the units in a row.
#[derive(Clone, Debug)]
struct Units<T> {
    x: Vec<T>,
    row: usize,
}

impl Column {
    /// Nothing allocated, for rows of `head_dim` elements of type `t`.
    fn new(t: KvType, head_dim: usize) -> Column {
        fn units<T: KvElem>(head_dim: usize) -> Units<T> {
            Units { x: Vec::new(), row: T::units(head_dim) }
        }
        match t {
            KvType::F32 => Column::F32(units(head_dim)),
            KvType::F16 => Column::F16(units(head_dim)),
            KvType::Bf16 => Column::Bf16(units(head_dim)),
            KvType::Q8_0 => Column::Q8_0(units(head_dim)),
            KvType::Q4_0 => Column::Q4_0(units(head_dim)),
        }
    }

    /// Writes row `row` (`head · capacity + slot`) from `src`, `head_dim` f32.
    fn store(&mut self, row: usize, src: &[f32]) {
        with_column!(self, u => u.store(row, src))
    }

    fn data(&self) -> KvData<'_> {
        with_column!(self, u => KvData::new(&u.x))
    }

    fn grow(&mut self, n_kv_head: usize, old: usize, used: usize, capacity: usize) {
        with_column!(self, u => u.grow(n_kv_head, old, used, capacity))
    }

    fn rotate_heads(&mut self, capacity: usize, shift: usize) {
        with_column!(self, u => u.rotate_heads(capacity, shift))
    }

    fn allocated_bytes(&self) -> usize {
        with_column!(self, u => u.allocated_bytes())
    }
}

impl<T: KvElem> Units<T> {
    fn store(&mut self, row: usize, src: &[f32]) {
        let r = self.row;
        T::store_row(src, &mut self.x[row * r..(row + 1) * r]);
    }

    fn allocated_bytes(&self) -> usize {
        self.x.capacity() * size_of::<T>()
    }

    /// Re-lays `[n_kv_head][old][row]`, of which each head's first `used` slots are in use, as
    /// `[n_kv_head][capacity][row]` in fresh zeroed memory. The allocator takes that from the
    /// OS as untouched pages (calloc of a large block maps it), which become resident only as
    /// rows are written: the process holds the rows in use, not the capacity the doubling
    /// reserved.
    fn grow(&mut self, n_kv_head: usize, old: usize, used: usize, capacity: usize) {
        let r = self.row;
        let mut x: Vec<T> = bytemuck::zeroed_vec(n_kv_head * capacity * r);
        for h in 0..n_kv_head {
            x[h * capacity * r..(h * capacity + used) * r].copy_from_slice(&self.x[h * old * r..(h * old + used) * r]);
        }
        self.x = x;
    }

    /// Rotates each head's `capacity` slots left by `shift`.
    fn rotate_heads(&mut self, capacity: usize, shift: usize) {
        let r = self.row;
        self.x.chunks_exact_mut(capacity * r).for_each(|head| head.rotate_left(shift * r));
    }
}

/// A layer's K and V in host memory, or a GPU layer's rows in VRAM.
enum Data {
    Host {
        k: Column,
        v: Column,
    },
    #[cfg(feature = "vulkan")]
    Device(Box<DeviceRows>),
}

impl Data {
    /// K and V in host memory, `None` for a GPU layer's.
    fn host(&mut self) -> Option<(&mut Column, &mut Column)> {
        match self {
            Data::Host { k, v } => Some((k, v)),
            #[cfg(feature = "vulkan")]
            Data::Device(_) => None,
        }
    }
}

/// A GPU layer's K and V and the device they are on.
#[cfg(feature = "vulkan")]
pub struct DeviceRows {
    pub gpu: ggml::vulkan::Gpu,
    pub rows: ggml::vulkan::KvBuffers,
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Data::Host { k, v } => f.debug_struct("Host").field("k", k).field("v", v).finish(),
            #[cfg(feature = "vulkan")]
            Data::Device(d) => write!(f, "Device({} + {} bytes)", d.rows.k.size, d.rows.v.size),
        }
    }
}

#[cfg(test)]
mod tests {
    use ggml::attention::{attention, attention_reference, AttnShape};
    use ggml::kernels::Isa;
    use ggml::quants::float::{f32_to_bf16, f32_to_f16};
    use ggml::quants::{q4_0, q8_0};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Random K and V rows (`[n_kv_head][head_dim]` each, in ±1) for every position of a run,
    /// so that a cache and the plain list it is checked against get the same values.
    struct Tokens {
        row: usize,
        k: Vec<f32>,
        v: Vec<f32>,
    }

    impl Tokens {
        fn random(n: usize, n_kv_head: usize, head_dim: usize, seed: u64) -> Tokens {
            let mut rng = StdRng::seed_from_u64(seed);
            let row = n_kv_head * head_dim;
            let mut values = || (0..n * row).map(|_| rng.gen_range(-1.0..1.0)).collect();
            Tokens { row, k: values(), v: values() }
        }

        /// `[n_tokens][n_kv_head][head_dim]` for positions `range`.
        fn k(&self, range: std::ops::Range<usize>) -> &[f32] {
            &self.k[range.start * self.row..range.end * self.row]
        }

        fn v(&self, range: std::ops::Range<usize>) -> &[f32] {
            &self.v[range.start * self.row..range.end * self.row]
        }

        /// Appends positions `range` to `cache` in one update.
        fn append(&self, cache: &mut LayerCache, range: std::ops::Range<usize>) {
            cache.update(range.start, self.k(range.clone()), self.v(range));
        }
    }

    /// `x` (whole blocks) as a cache of type `kv_type` holds it, back in f32 (exact): rounded
    /// as ggml rounds to f16 or bf16, quantized (q8_0 by ggml's reference quantizer, q4_0 by
    /// least squares), or unchanged.
    /// Written apart from the cache's own store, as the oracle.
    fn as_stored(x: &[f32], kv_type: KvType) -> Vec<f32> {
        let mut y = vec![0.0; x.len()];
        match kv_type {
            KvType::F32 => y.copy_from_slice(x),
            KvType::F16 => y.iter_mut().zip(x).for_each(|(y, &x)| *y = f32_to_f16(x).to_f32()),
            KvType::Bf16 => y.iter_mut().zip(x).for_each(|(y, &x)| *y = f32_to_bf16(x).to_f32()),
            KvType::Q8_0 => {
                let mut b = vec![BlockQ8_0::ZERO; x.len() / 32];
                q8_0::quantize(x, &mut b);
                q8_0::dequantize(&b, &mut y);
            }
            KvType::Q4_0 => {
                let mut b = vec![BlockQ4_0::ZERO; x.len() / 32];
                q4_0::quantize_least_squares(x, &mut b);
                q4_0::dequantize(&b, &mut y);
            }
        }
        y
    }

    /// A plain list of positions `range` in order, in the kernel's layout: what the cache must
    /// be equivalent to.
    struct Plain {
        k: Column,
        v: Column,
        pos: Vec<usize>,
    }

    impl Plain {
        fn new(tokens: &Tokens, n_kv_head: usize, range: std::ops::Range<usize>, types: KvTypes) -> Plain {
            let d = tokens.row / n_kv_head;
            // `[n_kv_head][range.len()][d]` from the tokens' `[position][n_kv_head][d]`.
            let rows = |x: &[f32], t: KvType| -> Column {
                let mut c = Column::new(t, d);
                c.grow(n_kv_head, 0, 0, range.len());
                for h in 0..n_kv_head {
                    for (i, p) in range.clone().enumerate() {
                        c.store(h * range.len() + i, &x[p * tokens.row + h * d..p * tokens.row + (h + 1) * d]);
                    }
                }
                c
            };
            Plain { k: rows(&tokens.k, types.k), v: rows(&tokens.v, types.v), pos: range.clone().collect() }
        }

        fn slots(&self) -> KvSlots<'_> {
            KvSlots { k: self.k.data(), v: self.v.data(), pos: &self.pos }
        }
    }

    /// `(position, K rows, V rows)` of every used slot, by position, widened to f32 (exact):
    /// the cache's content whatever the slot order and element type.
    fn content(cache: &LayerCache) -> Vec<(usize, Vec<f32>, Vec<f32>)> {
        let (d, cap) = (cache.head_dim, cache.capacity);
        let (k, v) = (cache.slots().k.to_f32(), cache.slots().v.to_f32());
        let rows = |x: &[f32], slot: usize| -> Vec<f32> {
            (0..cache.n_kv_head).flat_map(|h| x[(h * cap + slot) * d..(h * cap + slot + 1) * d].to_vec()).collect()
        };
        let mut content: Vec<_> =
            cache.pos.iter().enumerate().map(|(slot, &p)| (p, rows(&k, slot), rows(&v, slot))).collect();
        content.sort_by_key(|&(p, _, _)| p);
        content
    }

    /// What [`content`] must give for a cache of type `kv_type` holding positions `range` of
    /// `tokens`.
    fn expected(tokens: &Tokens, range: std::ops::Range<usize>, types: KvTypes) -> Vec<(usize, Vec<f32>, Vec<f32>)> {
        range.map(|p| (p, as_stored(tokens.k(p..p + 1), types.k), as_stored(tokens.v(p..p + 1), types.v))).collect()
    }

    /// Attention of random queries at `q_pos` over `kv`: the f64 reference, then every
    /// streaming path.
    fn attend(shape: &AttnShape, q: &[f32], q_pos: &[usize], kv: KvSlots) -> Vec<Vec<f32>> {
        let mut outs = vec![vec![f32::NAN; q.len()]];
        attention_reference(shape, q, q_pos, kv, &mut outs[0]);
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; q.len()];
            attention(isa, shape, q, q_pos, kv, &mut out);
            outs.push(out);
        }
        outs
    }

    /// Attention over `cache` equals attention over `plain` for queries at `q_pos`: every path
    /// over the cache within `1e-5` (the kernel tests' bound for |v| <= 1; the two lists sum
    /// in different orders) of the reference over the plain list.
    fn assert_same_attention(shape: &AttnShape, cache: &LayerCache, plain: &Plain, q_pos: &[usize], seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let range = 3.0 / (shape.head_dim as f32).sqrt();
        let q: Vec<f32> =
            (0..q_pos.len() * shape.n_head * shape.head_dim).map(|_| rng.gen_range(-range..range)).collect();
        let want = &attend(shape, &q, q_pos, plain.slots())[0];
        for (i, got) in attend(shape, &q, q_pos, cache.slots()).iter().enumerate() {
            let err = got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
            assert!(err <= 1e-5, "path {i}, queries at {:?}..: error {err}", q_pos.first());
        }
    }

    /// Every type for K and V alike, and two mixed pairs.
    const ALL: [KvTypes; 7] = [
        KvTypes::both(KvType::F16),
        KvTypes::both(KvType::F32),
        KvTypes::both(KvType::Bf16),
        KvTypes::both(KvType::Q8_0),
        KvTypes::both(KvType::Q4_0),
        KvTypes { k: KvType::Q8_0, v: KvType::F16 },
        KvTypes { k: KvType::F32, v: KvType::Q4_0 },
    ];

    #[test]
    fn the_ring_overwrites_the_oldest_slot() {
        let (n_kv_head, d) = (2, 32);
        let tokens = Tokens::random(7, n_kv_head, d, 1);
        for kv_type in ALL {
            let mut cache = LayerCache::with_type(n_kv_head, d, Some(4), 100, kv_type);
            for p in 0..4 {
                tokens.append(&mut cache, p..p + 1);
            }
            assert_eq!((cache.capacity(), cache.slots().pos()), (4, &[0, 1, 2, 3][..]));
            tokens.append(&mut cache, 4..5);
            assert_eq!(cache.slots().pos(), [4, 1, 2, 3]);
            tokens.append(&mut cache, 5..6);
            tokens.append(&mut cache, 6..7);
            assert_eq!(cache.slots().pos(), [4, 5, 6, 3]);
            assert_eq!(cache.n_positions(), 7);
            // Every slot holds its position's rows, both heads.
            assert_eq!(content(&cache), expected(&tokens, 3..7, kv_type), "{kv_type}");
            // The kernel's view: capacity 4 per head, in the cache's types.
            let slots = cache.slots();
            assert_eq!((slots.k.kv_type(), slots.v.kv_type()), (kv_type.k, kv_type.v));
            assert_eq!(slots.k.len(), n_kv_head * 4 * d / kv_type.k.block());
            assert_eq!(slots.v.len(), n_kv_head * 4 * d / kv_type.v.block());
        }
    }

    /// 3,000 one-token updates on a window-16 layer; every 97 steps (and at the end) attention
    /// at the newest position over the ring equals attention over a list of the last 16.
    #[test]
    fn a_ring_attends_like_a_list_of_the_window() {
        let shape = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 32, scale: 1.0, window: Some(16) };
        let tokens = Tokens::random(3000, shape.n_kv_head, shape.head_dim, 2);
        for kv_type in ALL {
            let mut cache = LayerCache::with_type(shape.n_kv_head, shape.head_dim, shape.window, 4096, kv_type);
            for p in 0..3000 {
                tokens.append(&mut cache, p..p + 1);
                if p % 97 == 0 || p == 2999 {
                    let plain = Plain::new(&tokens, shape.n_kv_head, p.saturating_sub(15)..p + 1, kv_type);
                    assert_same_attention(&shape, &cache, &plain, &[p], p as u64);
                }
            }
            assert_eq!(cache.capacity(), 16);
            assert_eq!(content(&cache).iter().map(|c| c.0).collect::<Vec<_>>(), (2984..3000).collect::<Vec<_>>());
        }
    }

    /// Window 1024, batches of 512 appended before their attention: after each batch, all
    /// its queries over the ring equal the same over a list of every position so far (the
    /// mask applies the window), so the ring kept every key the batch's first token sees.
    /// The first batch is 100 tokens so that later ones wrap the ring mid-batch; single-token
    /// decode follows.
    #[test]
    fn a_batch_keeps_the_keys_its_first_token_sees() {
        let shape = AttnShape { n_head: 2, n_kv_head: 1, head_dim: 32, scale: 1.0, window: Some(1024) };
        let n = 100 + 6 * 512 + 3;
        let tokens = Tokens::random(n, shape.n_kv_head, shape.head_dim, 3);
        for kv_type in ALL {
            let mut cache = LayerCache::with_type(shape.n_kv_head, shape.head_dim, shape.window, 8192, kv_type);
            // Batch boundaries: 0, 100, 612, .., 3172, then one token at a time to n.
            let bounds: Vec<usize> = [0].into_iter().chain((0..=6).map(|i| 100 + 512 * i)).chain(n - 2..=n).collect();
            for batch in bounds.windows(2).map(|b| b[0]..b[1]) {
                tokens.append(&mut cache, batch.clone());
                // The first query sees back to batch.start - 1023; that key is still here.
                let first_seen = (batch.start + 1).saturating_sub(1024);
                assert!(cache.slots().pos().contains(&first_seen), "batch {batch:?} lost position {first_seen}");
                let plain = Plain::new(&tokens, shape.n_kv_head, 0..batch.end, kv_type);
                let q_pos: Vec<usize> = batch.clone().collect();
                assert_same_attention(&shape, &cache, &plain, &q_pos, batch.start as u64);
            }
            // W - 1 + B slots: the ring stopped growing at 1,535 (and decode did not shrink it).
            assert_eq!(cache.capacity(), 1023 + 512);
            // A ring of 1,024 would not do: the first token of the last 512-batch sees 1023 keys
            // before it, and the batch adds 511 after it.
            assert_eq!(cache.slots().pos().len(), 1535);
        }
    }

    /// Truncating and appending the same tokens again gives the same content as never having
    /// gone past: on a global layer at once, on a ring once the rewound span is refilled (until
    /// then it may lack keys older than any query sees, and has all the others).
    #[test]
    fn truncate_then_reappend_matches_never_going_past() {
        let (n_kv_head, d) = (2, 32);
        let tokens = Tokens::random(700, n_kv_head, d, 4);
        for (kv_type, window) in ALL.into_iter().flat_map(|t| [(t, None), (t, Some(64))]) {
            let build = |upto: usize| {
                let mut cache = LayerCache::with_type(n_kv_head, d, window, 1000, kv_type);
                for start in (0..upto).step_by(40) {
                    tokens.append(&mut cache, start..(start + 40).min(upto));
                }
                cache
            };
            // Batches of 40: a ring of 64 - 1 + 40 = 103 slots, which can rewind 40.
            let mut cache = build(650);
            assert_eq!(cache.truncate(700), 650);
            assert_eq!(cache.truncate(620), 620);
            assert_eq!(cache.n_positions(), 620);
            let straight = build(620);
            let seen = |c: &LayerCache| -> Vec<_> {
                let first = c.first_seen(c.n_positions());
                content(c).into_iter().filter(|x| x.0 >= first).collect()
            };
            assert_eq!(seen(&cache), seen(&straight), "{kv_type} {window:?} after truncate");
            if window.is_none() {
                assert_eq!(content(&cache), content(&straight));
            }
            for p in 620..700 {
                tokens.append(&mut cache, p..p + 1);
            }
            let mut straight = straight;
            for p in 620..700 {
                tokens.append(&mut straight, p..p + 1);
            }
            assert_eq!(content(&cache), content(&straight), "{kv_type} {window:?} after re-appending");
            assert_eq!(content(&cache), expected(&tokens, 700 - cache.slots().pos().len()..700, kv_type));
        }
    }

    #[test]
    fn a_ring_rewound_past_its_keys_clears() {
        let tokens = Tokens::random(300, 1, 16, 5);
        let mut cache = LayerCache::new(1, 16, Some(64), 1000);
        tokens.append(&mut cache, 0..150);
        tokens.append(&mut cache, 150..300);
        // Ring of 64 - 1 + 150 = 213: holds 87..300. Position 150 sees 87.. (kept); 149 sees 86.
        assert_eq!(cache.capacity(), 213);
        assert_eq!(cache.kept_by_truncate(150), 150);
        assert_eq!(cache.truncate(149), 0);
        assert_eq!((cache.n_positions(), cache.slots().pos().len()), (0, 0));
        tokens.append(&mut cache, 0..10);
        assert_eq!(cache.slots().pos(), (0..10).collect::<Vec<_>>());
    }

    /// Rows with special values up front (rounding edges, overflow, NaNs of both signs and a
    /// payload, infinity, a subnormal) and random ones after, for 2 heads of 16 in a cache
    /// of 10 slots, stored in slot 0 of a new cache.
    fn stored_specials(kv_type: KvType) -> (Vec<f32>, Vec<f32>, LayerCache) {
        let d = 32;
        let payload_nan = f32::from_bits(0x7fa0_0001);
        let specials =
            [0.1, -2.5e-8, 6.0e-5, 65504.0, 65520.0, 1e9, -0.0, f32::NAN, -f32::NAN, f32::INFINITY, payload_nan, 1e-40];
        let mut rng = StdRng::seed_from_u64(6);
        let mut k: Vec<f32> = (0..2 * d).map(|_| rng.gen_range(-100.0..100.0)).collect();
        k[..specials.len()].copy_from_slice(&specials);
        let v: Vec<f32> = k.iter().map(|x| x * 3.3).collect();
        let mut cache = LayerCache::with_type(2, d, None, 10, KvTypes::both(kv_type));
        cache.update(0, &k, &v);
        assert_eq!(cache.capacity(), 10);
        (k, v, cache)
    }

    #[test]
    fn stores_f16_rounded_as_ggml_does() {
        let d = 32;
        let (k, v, cache) = stored_specials(KvType::F16);
        let (KvData::F16(kc), KvData::F16(vc)) = (cache.slots().k, cache.slots().v) else { panic!("not f16 slots") };
        let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&x| f32_to_f16(x).to_bits()).collect() };
        let stored =
            |x: &[f16]| -> Vec<u16> { [&x[..d], &x[10 * d..11 * d]].concat().iter().map(|x| x.to_bits()).collect() };
        assert_eq!(stored(kc), bits(&k));
        assert_eq!(stored(vc), bits(&v));
    }

    /// An f32 cache gives back exactly the bits it was given, NaN payloads included.
    #[test]
    fn stores_f32_unchanged() {
        let d = 32;
        let (k, v, cache) = stored_specials(KvType::F32);
        let (KvData::F32(kc), KvData::F32(vc)) = (cache.slots().k, cache.slots().v) else { panic!("not f32 slots") };
        let bits = |x: &[f32]| -> Vec<u32> { x.iter().map(|x| x.to_bits()).collect() };
        let stored = |x: &[f32]| -> Vec<u32> { bits(&[&x[..d], &x[10 * d..11 * d]].concat()) };
        assert_eq!(stored(kc), bits(&k));
        assert_eq!(stored(vc), bits(&v));
    }

    /// bf16 rounds as ggml does (`f32_to_bf16`, checked against ggml's rule in `ggml`), and
    /// the block types hold, byte for byte, what their quantizers (ggml's reference for q8_0,
    /// least squares for q4_0) make of each head's row rotated (K of 64 by a Hadamard rotation
    /// of 64, V by 64; on a random row: the specials' infinities and NaNs are no input for a
    /// scale).
    #[test]
    fn stores_bf16_and_blocks_as_ggml_does() {
        let (k, _, cache) = stored_specials(KvType::Bf16);
        let KvData::Bf16(kc) = cache.slots().k else { panic!("not bf16 slots") };
        let want: Vec<u16> = k[..32].iter().map(|&x| f32_to_bf16(x).to_bits()).collect();
        assert_eq!(kc[..32].iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        let mut rng = StdRng::seed_from_u64(60);
        let k: Vec<f32> = (0..2 * 64).map(|_| rng.gen_range(-3.0..3.0)).collect();
        let v: Vec<f32> = k.iter().map(|x| x * -0.7).collect();
        let mut cache = LayerCache::with_type(2, 64, None, 10, KvTypes { k: KvType::Q8_0, v: KvType::Q4_0 });
        cache.update(0, &k, &v);
        let (KvData::Q8_0(kc), KvData::Q4_0(vc)) = (cache.slots().k, cache.slots().v) else { panic!("wrong slots") };
        // Head h's slot 0 is blocks 2 · 10 · h .. + 2 (rows of 2 blocks, 10 slots a head).
        for h in 0..2 {
            let rotated = |x: &[f32]| {
                let mut x = x[64 * h..64 * (h + 1)].to_vec();
                rotate(&mut x, 64);
                x
            };
            let mut kq = [BlockQ8_0::ZERO; 2];
            q8_0::quantize(&rotated(&k), &mut kq);
            let mut vq = [BlockQ4_0::ZERO; 2];
            q4_0::quantize_least_squares(&rotated(&v), &mut vq);
            let head = 20 * h..20 * h + 2;
            assert_eq!(bytemuck::cast_slice::<_, u8>(&kc[head.clone()]), bytemuck::cast_slice::<_, u8>(&kq));
            assert_eq!(bytemuck::cast_slice::<_, u8>(&vc[head]), bytemuck::cast_slice::<_, u8>(&vq));
        }
    }

    /// Growth keeps every head's rows (2 heads, so the second moves), and allocation is lazy
    /// and counts the element size.
    #[test]
    fn growth_is_lazy_and_keeps_the_rows() {
        let tokens = Tokens::random(1000, 2, 32, 7);
        for kv_type in ALL {
            let mut cache = LayerCache::with_type(2, 32, None, 262_144, kv_type);
            assert_eq!((cache.capacity(), cache.allocated_bytes()), (0, 0));
            let mut straight = Vec::new();
            for (start, end) in [(0, 1), (1, 300), (300, 301), (301, 1000)] {
                tokens.append(&mut cache, start..end);
                straight.push(cache.capacity());
            }
            assert_eq!(straight, [256, 512, 512, 1024]);
            assert_eq!(content(&cache), expected(&tokens, 0..1000, kv_type), "{kv_type}");
            assert_eq!(cache.allocated_bytes(), 2 * 1024 * kv_type.row_bytes(32) + 1024 * 8);
        }
    }

    /// Keys and values with an outlier dimension (as real ones have): the rotated q8_0 and q4_0
    /// caches attend as an f32 cache does with a fraction of the error the same blocks give
    /// unrotated (a plain list of the rows stored as they come), and with the queries and
    /// output rotated right (a mismatch would be errors of order 1, not of the blocks'
    /// rounding).
    #[test]
    fn the_rotation_spreads_outliers() {
        let shape = AttnShape { n_head: 4, n_kv_head: 2, head_dim: 128, scale: 1.0, window: None };
        let mut tokens = Tokens::random(40, 2, 128, 11);
        for x in tokens.k.iter_mut().step_by(128).chain(tokens.v.iter_mut().skip(5).step_by(128)) {
            *x *= 40.0;
        }
        let mut rng = StdRng::seed_from_u64(12);
        let q: Vec<f32> = (0..3 * 4 * 128).map(|_| rng.gen_range(-0.3..0.3)).collect();
        let q_pos = [10, 25, 39];
        let attend = |t: KvTypes| {
            let mut cache = LayerCache::with_type(2, 128, None, 40, t);
            tokens.append(&mut cache, 0..40);
            let mut out = vec![0.0; q.len()];
            cache.attend(Isa::best(), &shape, &q, &q_pos, &mut out);
            out
        };
        let exact = attend(KvTypes::both(KvType::F32));
        let max_err = |x: &[f32]| x.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        for t in [KvType::Q8_0, KvType::Q4_0] {
            let rotated = max_err(&attend(KvTypes::both(t)));
            let plain = Plain::new(&tokens, 2, 0..40, KvTypes::both(t));
            let mut unrotated = vec![0.0; q.len()];
            attention(Isa::best(), &shape, &q, &q_pos, plain.slots(), &mut unrotated);
            let unrotated = max_err(&unrotated);
            println!("{t}: max error {rotated:.2e} rotated, {unrotated:.2e} unrotated");
            assert!(rotated < unrotated / 2.0, "{t}: {rotated} rotated against {unrotated}");
        }
    }

    #[test]
    fn kv_types_name_both_or_each() {
        assert_eq!(KvTypes::default(), KvTypes::both(KvType::F16));
        assert_eq!(KvTypes::both(KvType::Q8_0).to_string(), "q8_0");
        assert_eq!(KvTypes { k: KvType::Q8_0, v: KvType::F16 }.to_string(), "K q8_0, V f16");
        // 256 elements: 272 + 512 bytes.
        assert_eq!(KvTypes { k: KvType::Q8_0, v: KvType::F16 }.row_bytes(256), 784);
        assert!(!KvTypes { k: KvType::F16, v: KvType::Q4_0 }.fit(48) && KvTypes::both(KvType::Bf16).fit(48));
    }

    /// A head that is not whole blocks of a block type is an error naming the layer.
    #[test]
    fn a_head_of_partial_blocks_is_an_error() {
        let spec = LayerSpec { n_kv_head: 1, head_dim: 48, window: None, shares_cache_of: None };
        let err = KvCache::with_type(&[spec, spec], 10, KvTypes { k: KvType::F16, v: KvType::Q4_0 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "layer 0: a head of 48 elements is not whole blocks of 32, as a K f16, V q4_0 cache needs"
        );
    }

    fn gemma4_26b_a4b() -> Vec<LayerSpec> {
        let sliding = LayerSpec { n_kv_head: 8, head_dim: 256, window: Some(1024), shares_cache_of: None };
        let global = LayerSpec { n_kv_head: 2, head_dim: 512, window: None, shares_cache_of: None };
        (0..30).map(|i| if (i + 1) % 6 == 0 { global } else { sliding }).collect()
    }

    /// GEMMA4.md 1.1: 25 sliding layers keep 1,024 positions of 8 × 256 K and as many V; 5
    /// global layers keep the whole context of 2 × 512 K and V; f16 is 2 bytes.
    #[test]
    fn bytes_of_gemma4_26b_a4b() {
        let cache = KvCache::new(&gemma4_26b_a4b(), 262_144).unwrap();
        let sliding = 25 * 1024 * (8 * 256 * 2) * 2; // 209,715,200 = 200 MiB
        let global = 5 * 262_144 * (2 * 512 * 2) * 2; // 5,368,709,120 = 5 GiB
        assert_eq!(cache.bytes(), sliding + global);
        assert_eq!(cache.bytes(), 5_578_424_320);
        assert_eq!(cache.allocated_bytes(), 0);
        // f32: 4 bytes an element, twice the f16 footprint.
        let f32_cache = KvCache::with_type(&gemma4_26b_a4b(), 262_144, KvTypes::both(KvType::F32)).unwrap();
        assert_eq!((cache.types(), f32_cache.types()), (KvTypes::both(KvType::F16), KvTypes::both(KvType::F32)));
        assert_eq!(f32_cache.bytes(), 2 * 5_578_424_320);
        assert_eq!(f32_cache.layer(0).types(), KvTypes::both(KvType::F32));
        // q8_0: 34 bytes per 32 elements against f16's 64; q4_0: 18.
        let bytes = |k, v| KvCache::with_type(&gemma4_26b_a4b(), 262_144, KvTypes { k, v }).unwrap().bytes();
        assert_eq!(bytes(KvType::Q8_0, KvType::Q8_0), 2_963_537_920);
        assert_eq!(bytes(KvType::Q4_0, KvType::Q4_0), 1_568_931_840);
        assert_eq!(bytes(KvType::Q8_0, KvType::Q4_0), (2_963_537_920 + 1_568_931_840) / 2);
        // Up to the window every layer keeps every position: 112,640 values per token, 220 KiB.
        let short = KvCache::new(&gemma4_26b_a4b(), 1024).unwrap();
        assert_eq!(short.bytes(), 1024 * (25 * 4096 + 5 * 2048) * 2);
        assert_eq!(short.bytes() / 1024, 220 * 1024);
    }

    /// E2B (GEMMA4.md 5.2 and 6): 35 layers, full every 5th, layers 15.. share the caches of
    /// 13 (sliding) and 14 (full).
    fn gemma4_e2b() -> Vec<LayerSpec> {
        (0..35)
            .map(|i| {
                let full = (i + 1) % 5 == 0;
                let (head_dim, window, shared) = if full { (512, None, 14) } else { (256, Some(512), 13) };
                LayerSpec { n_kv_head: 1, head_dim, window, shares_cache_of: (i >= 15).then_some(shared) }
            })
            .collect()
    }

    #[test]
    fn shared_layers_read_their_owners_cache() {
        let mut cache = KvCache::new(&gemma4_e2b(), 131_072).unwrap();
        // Layers 0..15 own caches: 3 full (4, 9, 14) and 12 sliding.
        assert_eq!(cache.bytes(), 12 * 512 * 256 * 2 * 2 + 3 * 131_072 * 512 * 2 * 2);
        assert!(cache.layer_mut(15).is_none() && cache.layer_mut(14).is_some());
        let tokens = Tokens::random(3, 1, 256, 8);
        for l in 0..cache.n_layers() {
            if let Some(layer) = cache.layer_mut(l) {
                if layer.window().is_some() {
                    tokens.append(layer, 0..3);
                }
            }
        }
        assert_eq!(cache.layer(33).slots().pos(), [0, 1, 2]);
        assert!(std::ptr::eq(cache.layer(33), cache.layer(13)));
        assert!(std::ptr::eq(cache.layer(34), cache.layer(14)));
        assert_eq!(cache.layer(34).n_positions(), 0);
    }

    #[test]
    fn bad_specs_are_errors() {
        let mut specs = gemma4_e2b();
        specs[16].shares_cache_of = Some(15);
        assert_eq!(
            KvCache::new(&specs, 100).unwrap_err(),
            KvCacheError::BadSharing { layer: 16, owner: 15, problem: "has no cache of its own" }
        );
        specs[16].shares_cache_of = Some(14);
        assert!(
            matches!(KvCache::new(&specs, 100), Err(KvCacheError::BadSharing { problem, .. }) if problem.contains("different"))
        );
        specs[16].shares_cache_of = Some(20);
        assert!(matches!(KvCache::new(&specs, 100), Err(KvCacheError::BadSharing { owner: 20, .. })));
        assert_eq!(KvCache::new(&gemma4_e2b(), 0).unwrap_err(), KvCacheError::ZeroContext);
    }

    /// The whole-model truncate keeps what every layer can keep, and clears all if one cannot.
    #[test]
    fn the_model_rewinds_together() {
        let sliding = LayerSpec { n_kv_head: 1, head_dim: 16, window: Some(8), shares_cache_of: None };
        let specs = [sliding, LayerSpec { window: None, ..sliding }];
        let mut cache = KvCache::new(&specs, 100).unwrap();
        let tokens = Tokens::random(20, 1, 16, 9);
        for p in 0..20 {
            for l in 0..2 {
                tokens.append(cache.layer_mut(l).unwrap(), p..p + 1);
            }
        }
        // The ring (8 slots) holds 12..20; position 19 sees 12.., so 19 can be kept.
        assert_eq!(cache.truncate(25), 20);
        assert_eq!(cache.truncate(19), 19);
        assert_eq!((cache.layer(0).n_positions(), cache.layer(1).n_positions()), (19, 19));
        // Position 15 would see 8.., gone from the ring: both layers start over.
        assert_eq!(cache.truncate(15), 0);
        assert_eq!((cache.layer(0).n_positions(), cache.layer(1).slots().pos().len()), (0, 0));
        assert!(cache.allocated_bytes() > 0);
        tokens.append(cache.layer_mut(1).unwrap(), 0..5);
        cache.clear();
        assert_eq!(cache.n_positions(), 0);
    }
}
