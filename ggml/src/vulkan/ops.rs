//! Recording the forward pass's ops into one command buffer, submitted and waited for by
//! [`Commands::finish`]. Each op is one dispatch of one shader variant (`ggml/shaders/`),
//! after a barrier that makes every earlier write visible (ops run in the order recorded).
//!
//! Every op names its CPU twin; the tests compare the two on lavapipe.

use std::sync::MutexGuard;

use ash::vk;

use super::device::{Gpu, Queue};
use super::weights::GpuMatrix;
use super::VkError;
use crate::attention::{rotation, KvType};
use crate::vulkan::Buffer;

/// Shader variants of the matrix kernels, in the order of [`super::weights::TYPES`].
const MATVEC: [&str; 7] =
    ["matvec_f32", "matvec_f16", "matvec_bf16", "matvec_q8_0", "matvec_q5_0", "matvec_q4_k", "matvec_q6_k"];
const MATVEC_ID: [&str; 7] = [
    "matvec_id_f32",
    "matvec_id_f16",
    "matvec_id_bf16",
    "matvec_id_q8_0",
    "matvec_id_q5_0",
    "matvec_id_q4_k",
    "matvec_id_q6_k",
];
const GET_ROWS: [&str; 7] = [
    "get_rows_f32",
    "get_rows_f16",
    "get_rows_bf16",
    "get_rows_q8_0",
    "get_rows_q5_0",
    "get_rows_q4_k",
    "get_rows_q6_k",
];

/// One layer's K and V in VRAM, `[n_kv_head][capacity][head_dim]` elements each, in the
/// layouts of the host cache ([`crate::attention::KvType`]; a block type's rows rotated as the
/// host's are, [`crate::attention::rotation`]).
pub struct KvBuffers {
    pub k: Buffer,
    pub v: Buffer,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub k_type: KvType,
    pub v_type: KvType,
    /// The rotations of K and V rows (block types).
    pub rot_k: Option<usize>,
    pub rot_v: Option<usize>,
}

impl KvBuffers {
    /// Room for `capacity` positions (`what` names the layer in an out-of-memory error), or an
    /// error for a pair of types the shaders do not read.
    pub fn new(
        gpu: &Gpu,
        n_kv_head: usize,
        head_dim: usize,
        capacity: usize,
        k_type: KvType,
        v_type: KvType,
        what: &str,
    ) -> Result<KvBuffers, VkError> {
        for t in [k_type, v_type] {
            // Rows of whole words, so that a block type's store writes words of its own.
            let whole = if t.is_quantized() { 64 } else { 2 };
            if !head_dim.is_multiple_of(whole) || head_dim > 512 {
                return Err(VkError::Shape(format!(
                    "a {t} KV cache on the GPU needs heads of a multiple of {whole} elements, at most 512, not {head_dim}"
                )));
            }
        }
        let bytes = |t: KvType| (n_kv_head * capacity * t.row_bytes(head_dim)) as u64;
        let (k, v) = (gpu.buffer(bytes(k_type), what)?, gpu.buffer(bytes(v_type), what)?);
        let (rot_k, rot_v) = (rotation::k_rotation(k_type, head_dim), rotation::v_rotation(v_type, head_dim));
        Ok(KvBuffers { k, v, n_kv_head, head_dim, capacity, k_type, v_type, rot_k, rot_v })
    }

    /// Rotates each head's slots left by `shift`, so that slot `shift` becomes slot 0 (a ring
    /// laid out in position order again before it is rewound). CPU twin: `rotate_left` on each
    /// head of the host cache.
    pub fn rotate_slots(&self, gpu: &Gpu, shift: usize) -> Result<(), VkError> {
        let (cap, shift) = (self.capacity as u64, shift as u64 % self.capacity.max(1) as u64);
        if shift == 0 {
            return Ok(());
        }
        let tmp = gpu.buffer(self.k.size.max(self.v.size), "a KV rotation")?;
        for (x, t) in [(&self.k, self.k_type), (&self.v, self.v_type)] {
            let row = t.row_bytes(self.head_dim) as u64;
            let regions: Vec<vk::BufferCopy> = (0..self.n_kv_head as u64)
                .flat_map(|h| {
                    let head = h * cap * row;
                    [
                        vk::BufferCopy { src_offset: head + shift * row, dst_offset: head, size: (cap - shift) * row },
                        vk::BufferCopy { src_offset: head, dst_offset: head + (cap - shift) * row, size: shift * row },
                    ]
                })
                .collect();
            gpu.copy(x, &tmp, &regions)?;
            let whole = [vk::BufferCopy { src_offset: 0, dst_offset: 0, size: self.n_kv_head as u64 * cap * row }];
            gpu.copy(&tmp, x, &whole)?;
        }
        Ok(())
    }
}

/// The `kv_store` variant per cache type and the `attention` variant per pair (K, V), indexed
/// as [`KvType::ALL`] (`build.rs` compiles them).
const KV_STORE: [&str; 5] = ["kv_store_f32", "kv_store_f16", "kv_store_bf16", "kv_store_q8_0", "kv_store_q4_0"];
const ATTENTION: [[&str; 5]; 5] = [
    ["attention_f32_f32", "attention_f32_f16", "attention_f32_bf16", "attention_f32_q8_0", "attention_f32_q4_0"],
    ["attention_f16_f32", "attention_f16_f16", "attention_f16_bf16", "attention_f16_q8_0", "attention_f16_q4_0"],
    ["attention_bf16_f32", "attention_bf16_f16", "attention_bf16_bf16", "attention_bf16_q8_0", "attention_bf16_q4_0"],
    ["attention_q8_0_f32", "attention_q8_0_f16", "attention_q8_0_bf16", "attention_q8_0_q8_0", "attention_q8_0_q4_0"],
    ["attention_q4_0_f32", "attention_q4_0_f16", "attention_q4_0_bf16", "attention_q4_0_q8_0", "attention_q4_0_q4_0"],
];

/// `t`'s index in [`KvType::ALL`].
fn kv_index(t: KvType) -> usize {
    KvType::ALL.iter().position(|&x| x == t).expect("every type is in ALL")
}

/// Workgroups per dispatch dimension (Vulkan guarantees at least this many).
const MAX_GROUPS: u32 = 65535;

/// Ops being recorded; nothing runs before [`finish`](Commands::finish).
pub struct Commands<'g> {
    gpu: &'g Gpu,
    queue: MutexGuard<'g, Queue>,
    dispatches: usize,
}

/// Commands submitted and not yet waited for ([`Commands::submit`]). Holds the queue; dropped
/// without [`wait`](Self::wait), it waits anyway (nothing may stay in flight while the
/// buffers it uses can be dropped).
pub struct InFlight<'g> {
    commands: Option<Commands<'g>>,
}

impl<'g> InFlight<'g> {
    /// Waits for the GPU to finish, then starts recording again on the same queue.
    pub fn wait(mut self) -> Result<Commands<'g>, VkError> {
        let mut c = self.commands.take().expect("waited once");
        c.queue.wait(&c.gpu.inner, "the recorded ops")?;
        c.queue.begin(&c.gpu.inner)?;
        // The first op waits for the earlier submission's writes, as any later op would.
        c.dispatches = 1;
        Ok(c)
    }

    /// Waits for the GPU to finish.
    pub fn done(mut self) -> Result<(), VkError> {
        let mut c = self.commands.take().expect("waited once");
        c.queue.wait(&c.gpu.inner, "the recorded ops")
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.commands.take() {
            let _ = c.queue.wait(&c.gpu.inner, "the recorded ops");
        }
    }
}

impl Gpu {
    /// Starts recording (holds the device's queue until [`Commands::finish`]).
    pub fn commands(&self) -> Result<Commands<'_>, VkError> {
        let mut queue = self.lock_queue();
        queue.begin(&self.inner)?;
        Ok(Commands { gpu: self, queue, dispatches: 0 })
    }
}

/// Push constants: every field is a u32 or an f32, written as its bits.
fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u(n: usize) -> u32 {
    u32::try_from(n).expect("sizes fit in 32 bits")
}

impl<'g> Commands<'g> {
    /// Makes every earlier shader and transfer access (reads and writes: a later write must not
    /// overtake an earlier read) visible to the `dst` accesses of stage `stage` recorded next.
    fn barrier(&mut self, dst: vk::AccessFlags, stage: vk::PipelineStageFlags) {
        let src = vk::AccessFlags::SHADER_READ
            | vk::AccessFlags::SHADER_WRITE
            | vk::AccessFlags::TRANSFER_READ
            | vk::AccessFlags::TRANSFER_WRITE;
        let barrier = [vk::MemoryBarrier::default().src_access_mask(src).dst_access_mask(dst)];
        // SAFETY: the command buffer is recording (begun in `commands`).
        unsafe {
            self.gpu.inner.device.cmd_pipeline_barrier(
                self.queue.cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                stage,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
    }

    /// One dispatch of `groups` workgroups (laid out as `common.glsl` reads them) times `z`.
    fn dispatch(
        &mut self,
        name: &'static str,
        buffers: &[&Buffer],
        push: &[u32],
        groups: usize,
        z: usize,
    ) -> Result<(), VkError> {
        let max_range = self.gpu.info().max_buffer_range;
        if let Some(b) = buffers.iter().find(|b| b.size > max_range) {
            return Err(VkError::Shape(format!(
                "{name}: a buffer of {} bytes is bound whole, past the device's range of {max_range}",
                b.size
            )));
        }
        if groups == 0 || z == 0 {
            return Ok(());
        }
        let pipeline = self.gpu.pipeline(name, buffers.len() as u32)?;
        let d = &self.gpu.inner.device;
        let cmd = self.queue.cmd;
        let infos: Vec<_> = buffers
            .iter()
            .map(|b| [vk::DescriptorBufferInfo { buffer: b.buffer, offset: 0, range: vk::WHOLE_SIZE }])
            .collect();
        let writes: Vec<_> = infos
            .iter()
            .enumerate()
            .map(|(i, info)| {
                vk::WriteDescriptorSet::default()
                    .dst_binding(i as u32)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(info)
            })
            .collect();
        let gx = (groups as u32).min(MAX_GROUPS);
        let gy = u(groups.div_ceil(MAX_GROUPS as usize));
        // SAFETY: the command buffer is recording (begun in `commands`); the pipeline, its
        // layout and the bound buffers outlive the submission, which `finish` waits for.
        if self.dispatches > 0 {
            let read_write = vk::AccessFlags::SHADER_READ | vk::AccessFlags::SHADER_WRITE;
            self.barrier(read_write, vk::PipelineStageFlags::COMPUTE_SHADER);
        }
        unsafe {
            d.cmd_bind_pipeline(cmd, vk::PipelineBindPoint::COMPUTE, pipeline.pipeline);
            self.gpu.inner.push.cmd_push_descriptor_set(
                cmd,
                vk::PipelineBindPoint::COMPUTE,
                pipeline.layout,
                0,
                &writes,
            );
            d.cmd_push_constants(cmd, pipeline.layout, vk::ShaderStageFlags::COMPUTE, 0, &words(push));
            d.cmd_dispatch(cmd, gx, gy, u(z));
        }
        self.dispatches += 1;
        Ok(())
    }

    /// `y[t][..n_out] = W · x[t]` for `n_tokens` tokens: `x: [n_tokens][x_stride]`,
    /// `y: [n_tokens][y_stride]`. CPU twin: dequantize the rows, then an f32 dot product.
    pub fn matvec(
        &mut self,
        w: &GpuMatrix,
        x: &Buffer,
        x_stride: usize,
        y: &Buffer,
        y_stride: usize,
        n_tokens: usize,
    ) -> Result<(), VkError> {
        if !x_stride.is_multiple_of(4) || x_stride < w.n_in || y_stride < w.n_out {
            return Err(VkError::Shape(format!(
                "matvec of {}x{}: x stride {x_stride}, y stride {y_stride}",
                w.n_out, w.n_in
            )));
        }
        self.fits(x, n_tokens * x_stride, "matvec input")?;
        self.fits(y, n_tokens * y_stride, "matvec output")?;
        for part in &w.parts {
            let push = [u(w.n_in), u(part.n_rows), u(w.row_bytes), u(part.row0), u(x_stride), u(y_stride), 0, 0, 0];
            self.dispatch(MATVEC[w.suffix()], &[&*part.buffer, x, y], &push, part.n_rows.div_ceil(4), n_tokens)?;
        }
        Ok(())
    }

    /// The experts' products: for each token `t` and choice `j < k`, `y[t k + j][..rows] =
    /// E_e · x` with `e = ids[t k + j]`, `E_e` rows `e rows ..` of the stack `w` (uploaded with
    /// [`GpuMatrix::upload_stack`]), and `x` row `t k + j` when `x_per_slot`, else row `t`.
    /// CPU twin: the per-expert matmuls of `kernels::moe::moe_ffn`.
    #[allow(clippy::too_many_arguments)]
    pub fn matvec_id(
        &mut self,
        w: &GpuMatrix,
        ids: &Buffer,
        k: usize,
        n_tokens: usize,
        x: &Buffer,
        x_stride: usize,
        x_per_slot: bool,
        y: &Buffer,
        y_stride: usize,
    ) -> Result<(), VkError> {
        let rows = w.group;
        if !x_stride.is_multiple_of(4) || x_stride < w.n_in || y_stride < rows {
            return Err(VkError::Shape(format!(
                "expert matvec of {rows}x{}: x stride {x_stride}, y stride {y_stride}",
                w.n_in
            )));
        }
        let slots = n_tokens * k;
        self.fits(x, if x_per_slot { slots } else { n_tokens } * x_stride, "expert input")?;
        self.fits(y, slots * y_stride, "expert output")?;
        self.fits(ids, slots, "expert ids")?;
        for part in &w.parts {
            let push = [
                u(w.n_in),
                u(part.n_rows),
                u(w.row_bytes),
                u(part.row0),
                u(x_stride),
                u(y_stride),
                u(rows),
                u(k),
                x_per_slot as u32,
            ];
            self.dispatch(MATVEC_ID[w.suffix()], &[&*part.buffer, x, y, ids], &push, rows.div_ceil(4), slots)?;
        }
        Ok(())
    }

    /// The router's choice per token: softmax of `logits: [n_tokens][n_expert]`, the `k` most
    /// probable into `ids: [n_tokens][k]`, their renormalized probabilities times
    /// `scale[expert]` into `weights: [n_tokens][k]`. CPU twin: `ops::softmax::softmax_top_k`.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_route(
        &mut self,
        logits: &Buffer,
        n_expert: usize,
        k: usize,
        n_tokens: usize,
        scale: &Buffer,
        ids: &Buffer,
        weights: &Buffer,
    ) -> Result<(), VkError> {
        if n_expert > 256 || k > 8 || k > n_expert {
            return Err(VkError::Shape(format!("top-{k} of {n_expert} experts (at most 8 of 256 on the GPU)")));
        }
        self.fits(logits, n_tokens * n_expert, "router logits")?;
        self.fits(scale, n_expert, "expert scales")?;
        self.fits(ids, n_tokens * k, "expert ids")?;
        self.fits(weights, n_tokens * k, "expert weights")?;
        let push = [u(n_expert), u(k), u(n_tokens)];
        self.dispatch("moe_route", &[logits, ids, weights, scale], &push, n_tokens.div_ceil(64), 1)
    }

    /// `out[t] = Σ_j weights[t][j] · y[t k + j]` over rows of `n`, in ascending expert order.
    /// CPU twin: the final sum of `kernels::moe::moe_ffn`.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_sum(
        &mut self,
        y: &Buffer,
        ids: &Buffer,
        weights: &Buffer,
        n: usize,
        k: usize,
        n_tokens: usize,
        out: &Buffer,
    ) -> Result<(), VkError> {
        if k > 8 {
            return Err(VkError::Shape(format!("{k} experts per token (at most 8 on the GPU)")));
        }
        self.fits(y, n_tokens * k * n, "expert outputs")?;
        self.fits(out, n_tokens * n, "MoE output")?;
        let push = [u(n), u(k), u(n_tokens)];
        self.dispatch("moe_sum", &[y, ids, weights, out], &push, (n * n_tokens).div_ceil(64), 1)
    }

    /// Writes the keys and values of `n_tokens` tokens (`k`, `v`: `[n_tokens][n_kv_head]
    /// [head_dim]` f32) into slots `slots[t]` of a layer's cache (`cache.k`, `cache.v`:
    /// `[n_kv_head][capacity][head_dim]`), rotating `k` and `v` in place first where the cache's
    /// types are rotated. CPU twin: the stores of the host KV cache (`LayerCache::update`).
    pub fn kv_store(
        &mut self,
        cache: &KvBuffers,
        k: &Buffer,
        v: &Buffer,
        slots: &Buffer,
        n_tokens: usize,
    ) -> Result<(), VkError> {
        let row = cache.n_kv_head * cache.head_dim;
        self.fits(k, n_tokens * row, "new keys")?;
        self.fits(v, n_tokens * row, "new values")?;
        self.fits(slots, n_tokens, "cache slots")?;
        let push = [u(cache.n_kv_head), u(cache.head_dim), u(cache.capacity), u(n_tokens)];
        for (dst, x, t, rot) in [(&cache.k, k, cache.k_type, cache.rot_k), (&cache.v, v, cache.v_type, cache.rot_v)] {
            if let Some(n) = rot {
                self.hadamard(x, n_tokens * row, n)?;
            }
            // A block type's store takes a row per invocation, the others a pair of elements.
            let units = if t.is_quantized() { n_tokens * cache.n_kv_head } else { n_tokens * row / 2 };
            self.dispatch(KV_STORE[kv_index(t)], &[dst, x, slots], &push, units.div_ceil(64), 1)?;
        }
        Ok(())
    }

    /// `x = H x` on each run of `n` of the first `len` elements of `x`: the Walsh–Hadamard
    /// rotation of a block-type cache's rows. CPU twin: [`crate::attention::rotation::rotate`].
    pub fn hadamard(&mut self, x: &Buffer, len: usize, n: usize) -> Result<(), VkError> {
        if !n.is_power_of_two() || n > 512 || !len.is_multiple_of(n) {
            return Err(VkError::Shape(format!("Hadamard rotations of {n} over {len} elements")));
        }
        self.fits(x, len, "rotated rows")?;
        let scale = 1.0 / (n as f32).sqrt();
        self.dispatch("hadamard", &[x], &[u(n), u(len / n), scale.to_bits()], len / n, 1)
    }

    /// Attention of `q: [n_tokens][n_head][head_dim]` at positions `qpos: [n_tokens]` (i32),
    /// each seeing up to `qlast: [n_tokens]` (i32: its own position, or on a sliding layer its
    /// image's last; `AttnShape::visible_to`), over
    /// the first `n_slots` slots of `cache`, whose positions are `kpos: [capacity]` (i32),
    /// into `out` (the shape of `q`); where the cache's types are rotated, `q` is rotated in
    /// place first and the output rotated back. CPU twin: `LayerCache::attend` (the rotations
    /// around `attention::attention`).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        shape: &crate::attention::AttnShape,
        q: &Buffer,
        qpos: &Buffer,
        qlast: &Buffer,
        cache: &KvBuffers,
        kpos: &Buffer,
        n_slots: usize,
        n_tokens: usize,
        out: &Buffer,
    ) -> Result<(), VkError> {
        let (n_head, hd) = (shape.n_head, shape.head_dim);
        if hd != cache.head_dim || shape.n_kv_head != cache.n_kv_head || hd > 512 || !hd.is_multiple_of(2) {
            return Err(VkError::Shape(format!(
                "attention of {n_head}x{hd} heads over a cache of {}x{}",
                cache.n_kv_head, cache.head_dim
            )));
        }
        if !n_head.is_multiple_of(shape.n_kv_head) || n_slots > cache.capacity {
            return Err(VkError::Shape(format!(
                "attention: {n_head} heads over {} KV heads, {n_slots} of {} slots",
                shape.n_kv_head, cache.capacity
            )));
        }
        self.fits(q, n_tokens * n_head * hd, "queries")?;
        self.fits(out, n_tokens * n_head * hd, "attention output")?;
        self.fits(qpos, n_tokens, "query positions")?;
        self.fits(qlast, n_tokens, "the last positions the queries see")?;
        self.fits(kpos, n_slots, "slot positions")?;
        let name = ATTENTION[kv_index(cache.k_type)][kv_index(cache.v_type)];
        let len = n_tokens * n_head * hd;
        if let Some(n) = cache.rot_k {
            self.hadamard(q, len, n)?;
        }
        let push = [
            u(n_head),
            u(shape.n_kv_head),
            u(hd),
            u(cache.capacity),
            u(n_slots),
            shape.scale.to_bits(),
            u(shape.window.unwrap_or(0)),
            u(n_tokens),
        ];
        self.dispatch(name, &[q, &cache.k, &cache.v, kpos, qpos, out, qlast], &push, n_tokens * n_head, 1)?;
        match cache.rot_v {
            Some(n) => self.hadamard(out, len, n),
            None => Ok(()),
        }
    }

    /// `out[t] = W[ids[t]] · scale`, `out: [n_tokens][n_in]`: the embedding lookup. Ids must be
    /// below `w.n_out` (checked by the caller; a row past the end is not written).
    pub fn get_rows(
        &mut self,
        w: &GpuMatrix,
        ids: &Buffer,
        n_tokens: usize,
        out: &Buffer,
        scale: f32,
    ) -> Result<(), VkError> {
        self.fits(out, n_tokens * w.n_in, "embedding output")?;
        for part in &w.parts {
            let push = [u(w.n_in), u(part.n_rows), u(w.row_bytes), u(part.row0), scale.to_bits()];
            self.dispatch(GET_ROWS[w.suffix()], &[&*part.buffer, ids, out], &push, n_tokens, 1)?;
        }
        Ok(())
    }

    /// `y[r] = rmsnorm(x[r]) [· w]` for `n_rows` rows of `n` (`y` may be `x`). CPU twin:
    /// `ops::norm::rms_norm`.
    pub fn rms_norm(
        &mut self,
        x: &Buffer,
        y: &Buffer,
        w: Option<&Buffer>,
        n: usize,
        n_rows: usize,
        eps: f32,
    ) -> Result<(), VkError> {
        self.fits(x, n * n_rows, "rms_norm input")?;
        self.fits(y, n * n_rows, "rms_norm output")?;
        let push = [u(n), u(n_rows), eps.to_bits(), w.is_some() as u32];
        self.dispatch("rms_norm", &[x, y, w.unwrap_or(x)], &push, n_rows, 1)
    }

    /// NeoX RoPE in place on `x: [n_tokens][n_heads][head_dim]`, by the angles of
    /// `cos_sin: [n_tokens][2][n_rot / 2]` (cos, then sin; [`crate::ops::rope::RopeCache`]'s
    /// values). CPU twin: `ops::rope::rope_neox_cached`.
    pub fn rope_neox(
        &mut self,
        x: &Buffer,
        cos_sin: &Buffer,
        head_dim: usize,
        n_heads: usize,
        n_rot: usize,
        n_tokens: usize,
    ) -> Result<(), VkError> {
        self.fits(x, n_tokens * n_heads * head_dim, "rope input")?;
        self.fits(cos_sin, n_tokens * n_rot, "rope angles")?;
        let half = n_rot / 2;
        let push = [u(head_dim), u(n_heads), u(half), u(n_tokens)];
        self.dispatch("rope_neox", &[x, cos_sin], &push, (n_tokens * n_heads * half).div_ceil(64), 1)
    }

    /// `gate[t][e] = gelu(gate[t][e]) · up[t][up_offset + e]` for `e < n`, `t < n_rows`, rows
    /// `gate_stride` and `up_stride` apart (gate and up may be one buffer, the fused experts'
    /// halves). CPU twin: `ops::gelu::gelu_mul`.
    #[allow(clippy::too_many_arguments)]
    pub fn gelu_mul(
        &mut self,
        gate: &Buffer,
        up: &Buffer,
        n: usize,
        n_rows: usize,
        gate_stride: usize,
        up_stride: usize,
        up_offset: usize,
    ) -> Result<(), VkError> {
        self.fits(gate, (n_rows.max(1) - 1) * gate_stride + n, "gelu gate")?;
        self.fits(up, (n_rows.max(1) - 1) * up_stride + up_offset + n, "gelu up")?;
        let push = [u(n), u(n_rows), u(gate_stride), u(up_stride), u(up_offset)];
        self.dispatch("gelu_mul", &[gate, up], &push, (n * n_rows).div_ceil(64), 1)
    }

    /// `y[i] += x[i]` for `i < n`. CPU twin: `ops::elementwise::add`.
    pub fn add(&mut self, y: &Buffer, x: &Buffer, n: usize) -> Result<(), VkError> {
        self.binary(y, x, n, n, 0)
    }

    /// `y[i] *= x[i mod n_x]` for `i < n` (a row vector broadcast over rows). CPU twin:
    /// `ops::elementwise::mul` per row.
    pub fn mul(&mut self, y: &Buffer, x: &Buffer, n: usize, n_x: usize) -> Result<(), VkError> {
        self.binary(y, x, n, n_x, 1)
    }

    fn binary(&mut self, y: &Buffer, x: &Buffer, n: usize, n_x: usize, op: u32) -> Result<(), VkError> {
        self.fits(y, n, "element-wise output")?;
        self.fits(x, n_x, "element-wise input")?;
        self.dispatch("binary", &[y, x], &[u(n), u(n_x.max(1)), op], n.div_ceil(64), 1)
    }

    /// `y[i] *= a` for `i < n`. CPU twin: `ops::elementwise::scale`.
    pub fn scale(&mut self, y: &Buffer, a: f32, n: usize) -> Result<(), VkError> {
        self.fits(y, n, "scale")?;
        self.dispatch("unary", &[y], &[u(n), 0, a.to_bits()], n.div_ceil(64), 1)
    }

    /// `y[i] = c tanh(y[i] / c)` for `i < n`. CPU twin: `ops::elementwise::softcap`.
    pub fn softcap(&mut self, y: &Buffer, c: f32, n: usize) -> Result<(), VkError> {
        self.fits(y, n, "softcap")?;
        self.dispatch("unary", &[y], &[u(n), 1, c.to_bits()], n.div_ceil(64), 1)
    }

    /// Copies `bytes` bytes of `src` from byte `src_offset` to `dst` at `dst_offset`, after
    /// every op recorded before it (and before every op recorded after it).
    pub fn copy(
        &mut self,
        src: &Buffer,
        src_offset: u64,
        dst: &Buffer,
        dst_offset: u64,
        bytes: u64,
    ) -> Result<(), VkError> {
        if src_offset + bytes > src.size || dst_offset + bytes > dst.size {
            return Err(VkError::Shape(format!(
                "copy of {bytes} bytes from {src_offset} of {} to {dst_offset} of {}",
                src.size, dst.size
            )));
        }
        self.barrier(
            vk::AccessFlags::TRANSFER_READ | vk::AccessFlags::TRANSFER_WRITE,
            vk::PipelineStageFlags::TRANSFER,
        );
        let d = &self.gpu.inner.device;
        let cmd = self.queue.cmd;
        // SAFETY: the command buffer is recording; both buffers outlive the submission.
        unsafe {
            let region = [vk::BufferCopy { src_offset, dst_offset, size: bytes }];
            d.cmd_copy_buffer(cmd, src.buffer, dst.buffer, &region);
        }
        // The next dispatch's barrier covers transfer writes.
        self.dispatches += 1;
        Ok(())
    }

    /// Writes `data` into `dst` at byte `offset` when the commands run (in order with the ops
    /// around it): the small per-pass inputs (positions, slots, angles, the stream), carried in
    /// the command buffer itself instead of a staging copy and a submission of their own.
    pub fn update(&mut self, dst: &Buffer, offset: u64, data: &[u8]) -> Result<(), VkError> {
        // vkCmdUpdateBuffer takes multiples of 4 bytes, at most 65536 at a time.
        const MAX: usize = 65536;
        if !offset.is_multiple_of(4) || !data.len().is_multiple_of(4) || offset + data.len() as u64 > dst.size {
            return Err(VkError::Shape(format!("update of {} bytes at {offset} of {}", data.len(), dst.size)));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.barrier(vk::AccessFlags::TRANSFER_WRITE, vk::PipelineStageFlags::TRANSFER);
        let d = &self.gpu.inner.device;
        let cmd = self.queue.cmd;
        // SAFETY: the command buffer is recording; `dst` outlives the submission; the data is
        // copied into the command buffer by the call.
        unsafe {
            for (i, chunk) in data.chunks(MAX).enumerate() {
                d.cmd_update_buffer(cmd, dst.buffer, offset + (i * MAX) as u64, chunk);
            }
        }
        // The next dispatch's barrier covers transfer writes.
        self.dispatches += 1;
        Ok(())
    }

    /// Submits everything recorded and waits for it.
    pub fn finish(self) -> Result<(), VkError> {
        self.submit()?.done()
    }

    /// Submits everything recorded and returns at once: the CPU works beside the GPU until
    /// [`InFlight::wait`]. Host buffers the ops wrote are readable once it returns.
    pub fn submit(mut self) -> Result<InFlight<'g>, VkError> {
        // Every write before this point, visible to the host after the wait.
        let barrier = [vk::MemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)];
        // SAFETY: the command buffer is recording (begun in `commands`).
        unsafe {
            self.gpu.inner.device.cmd_pipeline_barrier(
                self.queue.cmd,
                vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &barrier,
                &[],
                &[],
            );
        }
        self.queue.submit(&self.gpu.inner)?;
        Ok(InFlight { commands: Some(self) })
    }

    /// An error unless `b` holds at least `n` f32s.
    fn fits(&self, b: &Buffer, n: usize, what: &str) -> Result<(), VkError> {
        match (n as u64) * 4 <= b.size {
            true => Ok(()),
            false => Err(VkError::Shape(format!("{what}: {n} values do not fit a buffer of {} bytes", b.size))),
        }
    }
}
