//! The GPU layers whose experts stay in RAM (`--cpu-moe`, `--n-cpu-moe`, or the fit): the GPU
//! runs attention, the dense MLP and the router; the experts run one of three ways per pass:
//!
//! - **on the CPU**: the experts' input and each token's choices cross to the host; the CPU
//!   runs them while the GPU runs the dense MLP; their sum crosses back;
//! - **copied to VRAM** (`--moe-upload`; prompts): the layer's stacks cross the bus into
//!   buffers that hold any one such layer's, and run there, when the measured speeds say that
//!   is faster than the CPU for the batch;
//! - **split by the hot-expert cache** (`--expert-cache`): VRAM left over holds each layer's
//!   most often routed experts; a token's cached choices run on the GPU, the others on the
//!   CPU at the same time, and the two sums are added.
//!
//! ```text
//! h3 = rmsnorm(x) pre_ffw_norm_2;  (ids, weights) = route(x)          (GPU)
//! e = Σ_{cached j} w_j E_slot(j)(h3)  (GPU)  +  Σ_{other j} w_j E_j(h3)  (CPU)
//! ```

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use ggml::vulkan::weights::Stack;
use ggml::vulkan::{Buffer, Commands, Gpu, GpuMatrix, VkError};

use super::{CpuExperts, GpuDecoder, GpuExperts, GpuLayer, GpuMoe, Scratch};
use crate::model::decoder::{ExpertGateUp, Layer, MoeStats};
use crate::model::fit::Placement;
use crate::model::offload::MoeUpload;
use crate::model::ExpertStack;

/// Everything the layers with their experts in RAM use between passes.
pub(super) struct RamExperts {
    crossing: Option<Crossing>,
    uploads: Option<ExpertUploads>,
    cache: Option<ExpertCache>,
    pub stats: MoeStats,
    /// Seconds per (token, expert) of the CPU's experts, as last measured.
    cpu_per_slot: Option<f64>,
}

/// Host buffers through which a layer hands its routed tokens to the CPU and takes the
/// experts' output back: `h` `[n_tokens][n_embd]` (the experts' input), `ids` and `weights`
/// `[n_tokens][k]`, `e` `[n_tokens][n_embd]`.
struct Crossing {
    n_tokens: usize,
    k: usize,
    h: Buffer,
    ids: Buffer,
    weights: Buffer,
    e: Buffer,
}

/// The buffers a layer's experts are copied into for a batch, reused layer after layer, and
/// two host buffers their bytes cross from, in turn: one layer's bytes are written into one
/// while the submission that copies the previous layer's from the other runs.
struct ExpertUploads {
    staging: [Buffer; 2],
    /// The staging buffer the next layer's bytes go to.
    next: usize,
    /// Per GPU layer with its experts in RAM: its stacks laid over the shared buffers, and
    /// where their bytes are in the file, in staging order.
    layers: Vec<Option<UploadedLayer>>,
    mode: MoeUpload,
    /// Seconds per byte of weights copied from the file into VRAM (measured at load).
    upload_per_byte: f64,
}

struct UploadedLayer {
    experts: GpuExperts,
    sources: Vec<Range<usize>>,
    bytes: u64,
}

/// Each layer's most often routed experts, in VRAM.
struct ExpertCache {
    layers: Vec<Option<CachedLayer>>,
    /// The host buffer entering experts' bytes cross through (one layer's at a time: the
    /// submission that copies them is waited for before the next layer).
    staging: Buffer,
}

struct CachedLayer {
    /// Stacks of `residency.held.len()` experts, of the layer's types.
    experts: GpuExperts,
    /// Per stack, in staging order: where the stack starts in the file, the bytes of one
    /// expert, and its rows.
    sources: Vec<(usize, usize, usize)>,
    residency: Residency,
}

/// Which experts a layer's cache holds, and how often each was chosen lately.
#[derive(Debug, PartialEq)]
struct Residency {
    /// The slot each expert is in, and the expert each slot holds.
    slot_of: Vec<Option<u32>>,
    held: Vec<Option<usize>>,
    /// Choices of each expert (halved every `DECAY` choices, so the cache follows the text).
    counts: Vec<u32>,
    seen: u64,
}

/// Choices after which a layer's routing counts are halved, so the cache follows the text.
const DECAY: u64 = 4096;
/// Experts a layer may take into empty slots per pass, and swap for better ones.
const FILLS_PER_PASS: usize = 8;
const SWAPS_PER_PASS: usize = 1;

/// A layer's expert stacks with their tensor roles, in staging order: gate (and up, or fused),
/// then down.
pub(super) fn stacks(l: &Layer) -> Vec<(&'static str, &ExpertStack)> {
    let Some(e) = &l.moe else { return Vec::new() };
    let mut v = match &e.gate_up {
        ExpertGateUp::Fused(gu) => vec![("ffn_gate_up_exps.weight", gu)],
        ExpertGateUp::Split { gate, up } => vec![("ffn_gate_exps.weight", gate), ("ffn_up_exps.weight", up)],
    };
    v.push(("ffn_down_exps.weight", &e.down_exps));
    v
}

/// A layer's experts from stacks in staging order (gate, maybe up, down).
pub(super) fn experts_of(mut mats: Vec<GpuMatrix>) -> GpuExperts {
    let down = mats.pop().expect("a down stack");
    let up = (mats.len() == 2).then(|| mats.pop().expect("two stacks left"));
    let gate = mats.pop().expect("a gate stack");
    GpuExperts { gate, up, down }
}

/// The GPU layers of `layers` (every layer of the model) whose experts `placement` keeps in RAM.
fn in_ram(placement: &Placement, layers: &[Layer]) -> Vec<usize> {
    (placement.first_gpu_layer.min(layers.len())..layers.len())
        .filter(|&il| layers[il].moe.is_some() && placement.experts_in_ram_at(il))
        .collect()
}

impl RamExperts {
    /// What the layers `placement` keeps the experts of in RAM need: the upload buffers (unless
    /// `moe_upload` is off) and a cache of up to `cache_bytes`.
    pub fn new(
        gpu: &Gpu,
        placement: &Placement,
        layers: &[Layer],
        moe_upload: MoeUpload,
        upload_per_byte: f64,
        cache_bytes: u64,
    ) -> Result<RamExperts, VkError> {
        let uploads = match moe_upload {
            MoeUpload::Off => None,
            mode => ExpertUploads::new(gpu, placement, layers, mode, upload_per_byte)?,
        };
        Ok(RamExperts {
            crossing: None,
            uploads,
            cache: ExpertCache::new(gpu, placement, layers, cache_bytes)?,
            stats: MoeStats::default(),
            cpu_per_slot: None,
        })
    }

    /// Records layer `i` (model layer `il`)'s experts for the routed stream in `s` into `s.e`,
    /// with the dense MLP beside them into `s.m` (normed by `post_ffw_norm_1`), and returns
    /// the commands to continue with. `file`: the mapped GGUF.
    #[allow(clippy::too_many_arguments)]
    pub fn layer<'g>(
        &mut self,
        gpu: &'g Gpu,
        mut c: Commands<'g>,
        s: &Scratch,
        l: &GpuLayer,
        e: &GpuMoe,
        (i, il): (usize, usize),
        (n_embd, n_tokens, eps): (usize, usize, f32),
        file: &[u8],
        cpu_experts: &CpuExperts,
    ) -> Result<Commands<'g>, VkError> {
        let upload = self.uploads.as_mut().filter(|u| u.wanted(i, n_tokens, e.k, self.cpu_per_slot));
        if let Some(u) = upload {
            // The experts cross to VRAM: their bytes go to a host staging buffer while the GPU
            // runs the dense MLP and the router.
            GpuDecoder::dense_mlp(&mut c, s, l, n_embd, n_tokens, eps)?;
            c.rms_norm(&s.m, &s.m, Some(&e.post_ffw_norm_1), n_embd, n_tokens, eps)?;
            GpuDecoder::route(&mut c, s, e, n_embd, n_tokens, eps)?;
            let pending = c.submit()?;
            let up = u.layers[i].as_ref().expect("wanted");
            let staging = &mut u.staging[u.next];
            u.next = 1 - u.next;
            let mut at = 0;
            for range in &up.sources {
                staging.write(at, &file[range.clone()])?;
                at += range.len();
            }
            let mut c = pending.wait()?;
            let w = &up.experts;
            let mut at = 0;
            for m in [Some(&w.gate), w.up.as_ref(), Some(&w.down)].into_iter().flatten() {
                m.copy_from(&mut c, staging, at)?;
                at += m.bytes();
            }
            GpuDecoder::experts(&mut c, s, e, w, n_embd, n_tokens)?;
            self.stats.uploaded += 1;
            self.stats.uploaded_bytes += up.bytes;
            return Ok(c);
        }

        // The CPU runs them (all, or those the cache does not hold) while the GPU runs the dense
        // MLP (and the cached ones); their sum crosses back.
        let cross = match self.crossing.as_mut().filter(|x| x.n_tokens >= n_tokens && x.k >= e.k) {
            Some(cross) => cross,
            None => self.crossing.insert(Crossing::new(gpu, n_tokens, n_embd, e.k)?),
        };
        GpuDecoder::route(&mut c, s, e, n_embd, n_tokens, eps)?;
        c.copy(&s.h, 0, &cross.h, 0, (4 * n_tokens * n_embd) as u64)?;
        c.copy(&s.ids, 0, &cross.ids, 0, (4 * n_tokens * e.k) as u64)?;
        c.copy(&s.weights, 0, &cross.weights, 0, (4 * n_tokens * e.k) as u64)?;
        let mut c = c.submit()?.wait()?;
        let (h, mut choices) = cross.read(n_tokens, n_embd, e.k)?;
        let cached = self.cache.as_mut().and_then(|cache| {
            let staging = &mut cache.staging;
            cache.layers[i].as_mut().map(|layer| (layer, staging))
        });
        let on_gpu = match cached {
            None => false,
            Some((layer, staging)) => {
                // Take in the experts chosen most, then split the choices: the cached ones on
                // the GPU (slot ids, the others weighted 0), the rest on the CPU (the cached
                // ones weighted 0).
                layer.residency.count(&choices);
                layer.refresh(&mut c, staging, file)?;
                let (ids, weights, hits) = layer.residency.split(&mut choices);
                self.stats.cache_hits += hits as u64;
                self.stats.cache_choices += choices.len() as u64;
                if hits > 0 {
                    c.update(&s.ids, 0, bytemuck::cast_slice(&ids))?;
                    c.update(&s.weights, 0, bytemuck::cast_slice(&weights))?;
                    GpuDecoder::experts(&mut c, s, e, &layer.experts, n_embd, n_tokens)?;
                }
                hits > 0
            }
        };
        GpuDecoder::dense_mlp(&mut c, s, l, n_embd, n_tokens, eps)?;
        let dense = c.submit()?;
        // The CPU's share: every choice the cache left it (none when it holds them all).
        let n_cpu = choices.iter().filter(|&&(_, w)| w != 0.0).count();
        let e_cpu = (n_cpu > 0 || !on_gpu).then(|| {
            let started = Instant::now();
            let e_cpu = cpu_experts(il, &h, &choices);
            if n_cpu > 0 {
                self.cpu_per_slot = Some(started.elapsed().as_secs_f64() / n_cpu as f64);
            }
            e_cpu
        });
        let mut c = dense.wait()?;
        if let Some(e_cpu) = e_cpu {
            // Into s.e when the GPU ran none, else into s.o and added to the GPU's sum in s.e.
            cross.e.write(0, bytemuck::cast_slice(&e_cpu))?;
            c.copy(&cross.e, 0, if on_gpu { &s.o } else { &s.e }, 0, (4 * n_tokens * n_embd) as u64)?;
            if on_gpu {
                c.add(&s.e, &s.o, n_tokens * n_embd)?;
            }
        }
        c.rms_norm(&s.m, &s.m, Some(&e.post_ffw_norm_1), n_embd, n_tokens, eps)?;
        self.stats.cpu += (n_cpu > 0) as u64;
        Ok(c)
    }
}

/// The experts' input and the router's (expert, weight) choices, on the host.
type Routed = (Vec<f32>, Vec<(usize, f32)>);

impl Crossing {
    fn new(gpu: &Gpu, n_tokens: usize, n_embd: usize, k: usize) -> Result<Crossing, VkError> {
        let f = |n: usize, what: &str| gpu.host_buffer(4 * n as u64, what);
        Ok(Crossing {
            n_tokens,
            k,
            h: f(n_tokens * n_embd, "the experts' input (host)")?,
            ids: f(n_tokens * k, "expert ids (host)")?,
            weights: f(n_tokens * k, "expert weights (host)")?,
            e: f(n_tokens * n_embd, "the experts' output (host)")?,
        })
    }

    /// The experts' input `[n_tokens][n_embd]` and each token's `k` (expert, weight) choices
    /// the GPU left here.
    fn read(&self, n_tokens: usize, n_embd: usize, k: usize) -> Result<Routed, VkError> {
        let mut h = vec![0f32; n_tokens * n_embd];
        self.h.read(0, bytemuck::cast_slice_mut(&mut h))?;
        let (mut ids, mut weights) = (vec![0u32; n_tokens * k], vec![0f32; n_tokens * k]);
        self.ids.read(0, bytemuck::cast_slice_mut(&mut ids))?;
        self.weights.read(0, bytemuck::cast_slice_mut(&mut weights))?;
        Ok((h, ids.iter().zip(&weights).map(|(&e, &w)| (e as usize, w)).collect()))
    }
}

impl ExpertUploads {
    /// The buffers and views for the layers whose experts `placement` keeps in RAM; `None`
    /// when there are none.
    fn new(
        gpu: &Gpu,
        placement: &Placement,
        layers: &[Layer],
        mode: MoeUpload,
        upload_per_byte: f64,
    ) -> Result<Option<ExpertUploads>, VkError> {
        let first = placement.first_gpu_layer.min(layers.len());
        let in_ram = in_ram(placement, layers);
        if in_ram.is_empty() {
            return Ok(None);
        }
        let parts = |name: &str, st: &ExpertStack| GpuMatrix::stack_parts(gpu, name, st.shape());
        // Buffers as large as the largest part at each position of any layer's list of parts.
        let mut sizes: Vec<u64> = Vec::new();
        let mut staging_bytes = 0;
        for &il in &in_ram {
            let mut list = Vec::new();
            for (name, st) in stacks(&layers[il]) {
                list.extend(parts(name, st)?);
            }
            for (j, &b) in list.iter().enumerate() {
                match sizes.get_mut(j) {
                    Some(size) => *size = (*size).max(b),
                    None => sizes.push(b),
                }
            }
            staging_bytes = staging_bytes.max(list.iter().sum::<u64>());
        }
        let buffers: Vec<Arc<Buffer>> =
            sizes.iter().map(|&b| gpu.buffer(b, "uploaded experts").map(Arc::new)).collect::<Result<_, _>>()?;
        let staging =
            [gpu.host_buffer(staging_bytes, "upload staging")?, gpu.host_buffer(staging_bytes, "upload staging")?];
        let mut views: Vec<Option<UploadedLayer>> = (first..layers.len()).map(|_| None).collect();
        for il in in_ram {
            let (mut next, mut mats, mut sources) = (0, Vec::new(), Vec::new());
            for (name, st) in stacks(&layers[il]) {
                let n = parts(name, st)?.len();
                let name = format!("blk.{il}.{name}");
                mats.push(GpuMatrix::stack_over(gpu, &name, st.shape(), &buffers[next..])?);
                sources.push(st.bytes.clone());
                next += n;
            }
            let bytes = sources.iter().map(|r| r.len() as u64).sum();
            views[il - first] = Some(UploadedLayer { experts: experts_of(mats), sources, bytes });
        }
        Ok(Some(ExpertUploads { staging, next: 0, layers: views, mode, upload_per_byte }))
    }

    /// Whether GPU layer `i` copies its experts to VRAM for a batch of `n_tokens` tokens routed
    /// to `k` experts each: forced, or when moving its bytes (at the speed measured at load)
    /// takes less time than the CPU took per routed token lately (`cpu_per_slot`). Until the
    /// CPU has been timed once, the CPU runs them.
    fn wanted(&self, i: usize, n_tokens: usize, k: usize, cpu_per_slot: Option<f64>) -> bool {
        let Some(layer) = self.layers.get(i).and_then(Option::as_ref) else { return false };
        match self.mode {
            MoeUpload::On => true,
            MoeUpload::Off => false,
            MoeUpload::Auto => {
                cpu_per_slot.is_some_and(|cpu| layer.bytes as f64 * self.upload_per_byte < (n_tokens * k) as f64 * cpu)
            }
        }
    }
}

impl ExpertCache {
    /// Slots for the same number of experts in every layer whose experts are in RAM, as many
    /// as `bytes` hold; `None` when not one expert of each fits.
    fn new(gpu: &Gpu, placement: &Placement, layers: &[Layer], bytes: u64) -> Result<Option<ExpertCache>, VkError> {
        let first = placement.first_gpu_layer.min(layers.len());
        let in_ram = in_ram(placement, layers);
        let per_expert = |il: usize| -> u64 {
            stacks(&layers[il]).iter().map(|(_, st)| st.bytes.len() as u64 / st.n_expert as u64).sum()
        };
        let one_each: u64 = in_ram.iter().map(|&il| per_expert(il)).sum();
        if in_ram.is_empty() || one_each == 0 || bytes < one_each {
            return Ok(None);
        }
        let mut cached: Vec<Option<CachedLayer>> = (first..layers.len()).map(|_| None).collect();
        let mut staging_bytes = 0u64;
        for &il in &in_ram {
            let all = stacks(&layers[il]);
            let n_expert = all[0].1.n_expert;
            let slots = ((bytes / one_each) as usize).min(n_expert);
            let (mut mats, mut sources) = (Vec::new(), Vec::new());
            for (name, st) in &all {
                let name = format!("blk.{il}.{name} (cache)");
                let shape = Stack { n_expert: slots, ..st.shape() };
                let sizes = GpuMatrix::stack_parts(gpu, &name, shape)?;
                let buffers: Vec<Arc<Buffer>> =
                    sizes.iter().map(|&b| gpu.buffer(b, &name).map(Arc::new)).collect::<Result<_, _>>()?;
                mats.push(GpuMatrix::stack_over(gpu, &name, shape, &buffers)?);
                sources.push((st.bytes.start, st.bytes.len() / st.n_expert, st.rows));
            }
            let expert_bytes: usize = sources.iter().map(|s| s.1).sum();
            staging_bytes = staging_bytes.max((expert_bytes * (FILLS_PER_PASS + SWAPS_PER_PASS)) as u64);
            cached[il - first] =
                Some(CachedLayer { experts: experts_of(mats), sources, residency: Residency::new(n_expert, slots) });
        }
        let staging = gpu.host_buffer(staging_bytes, "expert cache staging")?;
        Ok(Some(ExpertCache { layers: cached, staging }))
    }
}

impl CachedLayer {
    /// Takes in the experts [`Residency::plan`] picks: their bytes go through `staging` and are
    /// copied into their slots by `c`, before anything reads them.
    fn refresh(&mut self, c: &mut Commands, staging: &mut Buffer, file: &[u8]) -> Result<(), VkError> {
        let mut at = 0usize;
        for (slot, expert) in self.residency.plan() {
            let w = &self.experts;
            let stacks = [Some(&w.gate), w.up.as_ref(), Some(&w.down)].into_iter().flatten();
            for (m, &(start, bytes, rows)) in stacks.zip(&self.sources) {
                let src = start + expert * bytes;
                staging.write(at, &file[src..src + bytes])?;
                m.copy_rows_from(c, staging, at as u64, slot * rows, rows)?;
                at += bytes;
            }
        }
        Ok(())
    }
}

impl Residency {
    fn new(n_expert: usize, slots: usize) -> Residency {
        Residency { slot_of: vec![None; n_expert], held: vec![None; slots], counts: vec![0; n_expert], seen: 0 }
    }

    /// Counts a pass's choices.
    fn count(&mut self, choices: &[(usize, f32)]) {
        for &(e, _) in choices {
            self.counts[e] = self.counts[e].saturating_add(1);
        }
        self.seen += choices.len() as u64;
        if self.seen >= DECAY {
            self.seen = 0;
            self.counts.iter_mut().for_each(|c| *c /= 2);
        }
    }

    /// The (slot, expert) moves of this pass, made: the most chosen uncached experts into empty
    /// slots (a few per pass), else in place of the least chosen cached one when chosen
    /// clearly more often (one per pass: a cache that has settled changes rarely).
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let (mut moves, mut fills, mut swaps) = (Vec::new(), 0, 0);
        loop {
            let candidate = (0..self.counts.len())
                .filter(|&e| self.slot_of[e].is_none() && self.counts[e] > 0)
                .max_by_key(|&e| (self.counts[e], std::cmp::Reverse(e)));
            let Some(expert) = candidate else { break };
            let slot = match self.held.iter().position(Option::is_none) {
                Some(slot) if fills < FILLS_PER_PASS => {
                    fills += 1;
                    slot
                }
                Some(_) => break,
                None => {
                    let count = |slot: usize| self.counts[self.held[slot].expect("every slot is full")];
                    let victim = (0..self.held.len()).min_by_key(|&slot| count(slot)).expect("a slot");
                    // Hysteresis: only a clearly better expert takes a slot.
                    if swaps >= SWAPS_PER_PASS || self.counts[expert] <= count(victim) + count(victim) / 4 + 1 {
                        break;
                    }
                    swaps += 1;
                    victim
                }
            };
            if let Some(old) = self.held[slot] {
                self.slot_of[old] = None;
            }
            self.held[slot] = Some(expert);
            self.slot_of[expert] = Some(slot as u32);
            moves.push((slot, expert));
        }
        moves
    }

    /// Splits `choices` between the cache and the CPU: returns the GPU's ids (slots; 0 for an
    /// uncached choice) and weights (0 for an uncached choice), and how many choices the cache
    /// holds; the cached ones are weighted 0 in `choices`, left out by the CPU.
    fn split(&self, choices: &mut [(usize, f32)]) -> (Vec<u32>, Vec<f32>, usize) {
        let (mut ids, mut weights, mut hits) =
            (Vec::with_capacity(choices.len()), Vec::with_capacity(choices.len()), 0);
        for (e, w) in choices.iter_mut() {
            match self.slot_of[*e] {
                Some(slot) => {
                    ids.push(slot);
                    weights.push(*w);
                    *w = 0.0;
                    hits += 1;
                }
                None => {
                    ids.push(0);
                    weights.push(0.0);
                }
            }
        }
        (ids, weights, hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Choices of `experts` (weight 0.5 each).
    fn chose(r: &mut Residency, experts: &[usize]) {
        r.count(&experts.iter().map(|&e| (e, 0.5)).collect::<Vec<_>>());
    }

    #[test]
    fn the_cache_takes_the_most_chosen_experts_and_changes_slowly() {
        let mut r = Residency::new(6, 2);
        assert_eq!(r.plan(), vec![], "nothing chosen yet");
        chose(&mut r, &[3, 3, 3, 1, 1, 5]);
        // Empty slots take the most chosen first: 3, then 1 (5 waits: no slot left).
        assert_eq!(r.plan(), vec![(0, 3), (1, 1)]);
        // 5 now chosen 3 times against 1's 2: not clearly more (hysteresis: 2 + 0 + 1).
        chose(&mut r, &[5, 5]);
        assert_eq!(r.plan(), vec![]);
        // 4 (6 choices) takes the slot of the least chosen, 1 (2); one swap per pass, so 5
        // (5 choices) waits, then takes 3's (3).
        chose(&mut r, &[5, 5, 4, 4, 4, 4, 4, 4]);
        assert_eq!(r.plan(), vec![(1, 4)]);
        assert_eq!(r.plan(), vec![(0, 5)]);
        assert_eq!(r.plan(), vec![]);
        assert_eq!((r.slot_of[4], r.slot_of[5], r.slot_of[3], r.slot_of[1]), (Some(1), Some(0), None, None));

        // The split: cached choices go to the GPU (slots), the others stay with the CPU.
        let mut choices = vec![(4, 0.25), (2, 0.75), (5, 0.5), (3, 0.5)];
        let (ids, weights, hits) = r.split(&mut choices);
        assert_eq!((ids, weights, hits), (vec![1, 0, 0, 0], vec![0.25, 0.0, 0.5, 0.0], 2));
        assert_eq!(choices, vec![(4, 0.0), (2, 0.75), (5, 0.0), (3, 0.5)]);
    }

    #[test]
    fn counts_decay_so_the_cache_follows_the_text() {
        let mut r = Residency::new(4, 1);
        chose(&mut r, &vec![0; DECAY as usize - 2]);
        assert_eq!(r.counts[0], DECAY as u32 - 2);
        chose(&mut r, &[1, 1]);
        assert_eq!((r.counts[0], r.counts[1], r.seen), ((DECAY as u32 - 2) / 2, 1, 0));
    }
}
