//! Where the weights go when a GPU is used: the placement (`-ngl`, `--cpu-moe`,
//! `--n-cpu-moe`) and the automatic fit that chooses one for a memory budget.
//!
//! A Gemma 4 26B-A4B layer is ~30 MB of attention, dense MLP and router beside ~460-555 MB
//! of experts, of which a token reads 8 of 128. So the fit fills the GPU in this order:
//!
//! 1. everything, when it fits;
//! 2. else every layer's non-expert part, the output head, the whole KV cache and the
//!    activations; then the experts of whole layers, the last layers first, while they fit —
//!    the rest of the experts stay in RAM and the CPU runs them (`--n-cpu-moe N` with the
//!    smallest N that fits);
//! 3. else, when not even that fits, whole layers as `-ngl` places them (the last ones, each
//!    with its experts and its KV), as many as fit, and the plan says so.
//!
//! The costs come from the GGUF header alone ([`Costs::from_header`]), so `gemma info --plan`
//! shows the plan without loading anything, and the loader uses the same numbers.

use std::fmt::Write as _;

use ggml::gguf::GgufHeader;
use serde::Serialize;

use crate::info::{human_bytes, Hparams};
use crate::kv_cache::KvTypes;

/// Bytes one decoder layer takes on the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LayerCost {
    /// Attention, dense MLP, router and norms.
    pub dense: u64,
    /// The expert stacks (`*_exps.weight`).
    pub experts: u64,
    /// Its KV cache in VRAM at the planned context, with the slots' positions.
    pub kv: u64,
}

/// What a model costs on the GPU, piece by piece, for one context and batch size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Costs {
    pub layers: Vec<LayerCost>,
    /// The output norm and matrix (a tied head is a copy of the embedding: the lookups stay
    /// on the CPU).
    pub head: u64,
    /// One pass's activations for a batch of `max_batch` tokens, a piece of logits, and the
    /// upload staging buffer.
    pub compute: u64,
    /// Whether the experts kept in RAM may cross to VRAM for a prompt (`--moe-upload` not
    /// off): then VRAM holds buffers for the largest such layer's experts.
    pub uploads: bool,
}

/// The widths that size a GPU pass's activations (the widest layer's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Widths {
    pub n_embd: usize,
    /// `n_head · head_dim` and `n_head_kv · head_dim`.
    pub q: usize,
    pub kv: usize,
    pub n_ff: usize,
    pub n_expert: usize,
    pub k: usize,
    pub n_ff_exp: usize,
    pub n_vocab: usize,
}

/// Bytes of the host-visible buffer uploads go through (`ggml::vulkan::device::STAGING_BYTES`),
/// which a card with resizable BAR places in VRAM: the fit counts it.
pub const UPLOAD_STAGING: u64 = 64 << 20;

/// The most bytes of logits the GPU computes before they are read back (`--logits-out`
/// reads every position's, in pieces of this size).
pub const LOGITS_PIECE: u64 = 64 << 20;

/// cos and sin of up to 512 rotated pairs per token.
pub(crate) const ROPE_TABLE: usize = 2 * 512;

impl Widths {
    /// Bytes of the activations of a pass of `t` tokens through `n_layer` GPU layers:
    /// `gpu.rs`'s `Scratch`, buffer by buffer, a piece of logits (every row's, up to
    /// [`LOGITS_PIECE`]), and the upload staging.
    pub fn scratch_bytes(&self, t: usize, n_layer: usize) -> u64 {
        let t = t.max(1);
        let (e, k) = (self.n_embd.max(1), self.k.max(1));
        let per_token = 5 * e
            + 2 * self.q.max(1)
            + 2 * self.kv.max(1)
            + 2 * self.n_ff.max(1)
            + self.n_expert.max(1)
            + 2 * k
            + k * 2 * self.n_ff_exp.max(1)
            + k * self.n_ff_exp.max(1)
            + k * e
            + 2 * ROPE_TABLE
            + 1
            + n_layer;
        4 * (t * per_token) as u64 + self.logits_piece_rows(t) as u64 * 4 * self.n_vocab as u64 + UPLOAD_STAGING
    }

    /// Rows of logits per piece for a batch of `t` tokens.
    pub fn logits_piece_rows(&self, t: usize) -> usize {
        (LOGITS_PIECE as usize / (4 * self.n_vocab.max(1))).clamp(1, t.max(1))
    }
}

impl Costs {
    /// The costs of the model in `h` with a KV cache of `types` for `context` positions and
    /// batches of up to `max_batch` tokens. `None` when the header lacks the layer shapes.
    pub fn from_header(h: &GgufHeader, context: usize, types: impl Into<KvTypes>, max_batch: usize) -> Option<Costs> {
        let hp = Hparams::read(h);
        let sizes = h.tensors.iter().map(|t| (t.name.as_str(), t.n_bytes()));
        let n_vocab = h.tensor("token_embd.weight")?.dims.get(1).copied()? as usize;
        Costs::new(sizes, &hp, n_vocab, context, types.into(), max_batch)
    }

    /// [`from_header`](Self::from_header) from a tensor table (name, bytes), the
    /// hyperparameters and the vocabulary size.
    pub fn new<'a>(
        tensors: impl Iterator<Item = (&'a str, u64)>,
        hp: &Hparams,
        n_vocab: usize,
        context: usize,
        types: KvTypes,
        max_batch: usize,
    ) -> Option<Costs> {
        let specs = hp.layer_specs()?;
        let mut layers: Vec<LayerCost> = (specs.iter())
            .map(|s| {
                let capacity = s.device_capacity(context, max_batch);
                let kv = s.bytes(capacity, types) + if s.shares_cache_of.is_none() { 4 * capacity as u64 } else { 0 };
                LayerCost { kv, ..LayerCost::default() }
            })
            .collect();
        let (mut output, mut embd, mut output_norm) = (None, 0, 0);
        for (name, bytes) in tensors {
            if let Some(rest) = name.strip_prefix("blk.") {
                let (il, role) = rest.split_once('.')?;
                let layer = layers.get_mut(il.parse::<usize>().ok()?)?;
                match role.contains("_exps.weight") {
                    true => layer.experts += bytes,
                    false => layer.dense += bytes,
                }
                continue;
            }
            match name {
                "output.weight" => output = Some(bytes),
                "token_embd.weight" => embd = bytes,
                "output_norm.weight" => output_norm = bytes,
                _ => {}
            }
        }
        let widths = hp.widths(n_vocab)?;
        Some(Costs {
            compute: widths.scratch_bytes(max_batch, layers.len()),
            layers,
            head: output.unwrap_or(embd) + output_norm,
            uploads: true,
        })
    }

    pub fn n_layer(&self) -> usize {
        self.layers.len()
    }
}

/// Where the layers, their experts and the output head run: the layers from
/// `first_gpu_layer` on the GPU (the head too when `output_on_gpu`), except the experts of
/// layers below `n_cpu_moe`, which stay in RAM for the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub first_gpu_layer: usize,
    pub output_on_gpu: bool,
    pub n_cpu_moe: usize,
}

impl Placement {
    /// Everything on the CPU.
    pub fn cpu(n_layer: usize) -> Placement {
        Placement { first_gpu_layer: n_layer, output_on_gpu: false, n_cpu_moe: 0 }
    }

    /// llama.cpp's `-ngl N` for a model of `n_layer` layers: the last `N` of the `n_layer + 1`
    /// (the output head counting as the last one); and `--n-cpu-moe` (`--cpu-moe`: any number
    /// past the last layer).
    pub fn from_gpu_layers(n_layer: usize, gpu_layers: usize, n_cpu_moe: usize) -> Placement {
        let n = gpu_layers.min(n_layer + 1);
        Placement {
            first_gpu_layer: n_layer - n.min(n_layer),
            output_on_gpu: n > n_layer,
            n_cpu_moe: n_cpu_moe.min(n_layer),
        }
    }

    pub fn layer_on_gpu(&self, il: usize) -> bool {
        il >= self.first_gpu_layer
    }

    /// Whether layer `il`'s experts are in VRAM (else the CPU runs them from RAM).
    pub fn experts_on_gpu(&self, il: usize) -> bool {
        self.layer_on_gpu(il) && il >= self.n_cpu_moe
    }

    /// Whether layer `il` is on the GPU with its experts in RAM.
    pub fn experts_in_ram_at(&self, il: usize) -> bool {
        self.layer_on_gpu(il) && !self.experts_on_gpu(il)
    }

    pub fn uses_gpu(&self, n_layer: usize) -> bool {
        self.first_gpu_layer < n_layer || self.output_on_gpu
    }

    /// Bytes on the GPU: weights, KV cache and activations (none when nothing is there).
    pub fn gpu_bytes(&self, c: &Costs) -> u64 {
        if !self.uses_gpu(c.n_layer()) {
            return 0;
        }
        self.gpu_weights(c) + self.gpu_kv(c) + c.compute + self.upload_buffers(c)
    }

    /// Bytes of the buffers the experts kept in RAM cross to VRAM through: the largest such
    /// layer's, when uploads are on.
    pub fn upload_buffers(&self, c: &Costs) -> u64 {
        let in_ram = (c.layers.iter().enumerate()).filter(|&(il, _)| self.experts_in_ram_at(il));
        match c.uploads {
            true => in_ram.map(|(_, l)| l.experts).max().unwrap_or(0),
            false => 0,
        }
    }

    pub fn gpu_weights(&self, c: &Costs) -> u64 {
        let layers: u64 = (c.layers.iter().enumerate())
            .filter(|&(il, _)| self.layer_on_gpu(il))
            .map(|(il, l)| l.dense + if self.experts_on_gpu(il) { l.experts } else { 0 })
            .sum();
        layers + if self.output_on_gpu { c.head } else { 0 }
    }

    pub fn gpu_kv(&self, c: &Costs) -> u64 {
        (c.layers.iter().enumerate()).filter(|&(il, _)| self.layer_on_gpu(il)).map(|(_, l)| l.kv).sum()
    }

    /// Expert bytes of the GPU's layers that stay in RAM.
    pub fn experts_in_ram(&self, c: &Costs) -> u64 {
        (c.layers.iter().enumerate()).filter(|&(il, _)| self.experts_in_ram_at(il)).map(|(_, l)| l.experts).sum()
    }

    /// What runs where, in a line: "18 of 30 layers (experts of layers 0..12 in RAM) and the
    /// output head".
    pub fn summary(&self, n_layer: usize) -> String {
        let first = self.first_gpu_layer.min(n_layer);
        let mut s = format!("{} of {n_layer} layers", n_layer - first);
        // The GPU's layers whose experts stay in RAM.
        let ram = first..self.n_cpu_moe.clamp(first, n_layer);
        if ram.len() == n_layer - first && !ram.is_empty() {
            s.push_str(" (their experts in RAM)");
        } else if !ram.is_empty() {
            let _ = write!(s, " (the experts of layers {}..{} in RAM)", ram.start, ram.end);
        }
        if self.output_on_gpu {
            s.push_str(" and the output head");
        }
        s
    }
}

/// How the fit placed the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FitKind {
    /// Everything on the GPU.
    All,
    /// Every layer and the head on the GPU, some layers' experts in RAM.
    ExpertsInRam,
    /// Not even the non-expert part fits: whole layers, as `-ngl` places them.
    WholeLayers,
    /// Nothing fits (or there is no GPU memory to plan for): the CPU runs everything.
    Cpu,
}

/// A placement chosen for a budget, and what it costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub kind: FitKind,
    pub placement: Placement,
    /// Bytes of VRAM the plan was made for.
    pub budget: u64,
    /// Bytes it takes there.
    pub gpu_bytes: u64,
    /// Whether the buffers the experts kept in RAM cross to VRAM through are part of it (when
    /// the costs ask for them and they fit beside the layers without their experts).
    pub uploads: bool,
}

/// The placement that puts the most on the GPU within `budget` bytes (module docs: the order).
pub fn fit(c: &Costs, budget: u64) -> Plan {
    let n = c.n_layer();
    let plan = |kind, placement: Placement, c: &Costs| Plan {
        kind,
        placement,
        budget,
        gpu_bytes: placement.gpu_bytes(c),
        uploads: c.uploads && placement.upload_buffers(c) > 0,
    };
    let all = Placement::from_gpu_layers(n, n + 1, 0);
    if all.gpu_bytes(c) <= budget {
        return plan(FitKind::All, all, c);
    }
    // Every non-expert part (with the upload buffers, else without them); then the experts of
    // the last layers, as many as fit.
    let without_uploads = Costs { uploads: false, ..c.clone() };
    for c in [c, &without_uploads] {
        if let Some(n_cpu_moe) = (0..=n).find(|&m| Placement::from_gpu_layers(n, n + 1, m).gpu_bytes(c) <= budget) {
            return plan(FitKind::ExpertsInRam, Placement::from_gpu_layers(n, n + 1, n_cpu_moe), c);
        }
    }
    // Whole layers, the last ones first (`-ngl n` never includes the head here: it came with
    // every layer above, and that did not fit).
    match (1..=n).rev().find(|&ngl| Placement::from_gpu_layers(n, ngl, 0).gpu_bytes(c) <= budget) {
        Some(ngl) => plan(FitKind::WholeLayers, Placement::from_gpu_layers(n, ngl, 0), c),
        None => plan(FitKind::Cpu, Placement::cpu(n), c),
    }
}

impl Plan {
    /// The costs as this plan counts them (without the upload buffers when it left them out).
    pub fn costs(&self, c: &Costs) -> Costs {
        Costs { uploads: c.uploads && self.uploads, ..c.clone() }
    }

    /// The plan in a few lines, per device: what and how much.
    pub fn describe(&self, c: &Costs) -> String {
        let dropped_uploads = c.uploads && !self.uploads && self.kind == FitKind::ExpertsInRam;
        let c = &self.costs(c);
        let p = &self.placement;
        let n = c.n_layer();
        let h = human_bytes;
        let mut s = String::new();
        let how = match self.kind {
            FitKind::All => "everything fits".to_string(),
            FitKind::ExpertsInRam => format!(
                "--n-cpu-moe {}: the experts of the first layers stay in RAM{}",
                p.n_cpu_moe,
                match dropped_uploads {
                    true => " (no room to copy them to VRAM for prompts: the CPU runs them, as --moe-upload off)",
                    false => "",
                }
            ),
            FitKind::WholeLayers => format!(
                "-ngl {}: not even the layers without their experts fit, so whole layers go (as -ngl places them)",
                n - p.first_gpu_layer
            ),
            FitKind::Cpu => "nothing fits: the CPU runs everything".to_string(),
        };
        let _ = writeln!(s, "plan           {how} (budget {})", h(self.budget));
        if p.uses_gpu(n) {
            let uploads = match p.upload_buffers(c) {
                0 => String::new(),
                b => format!(", expert uploads {}", h(b)),
            };
            let _ = writeln!(
                s,
                "  GPU          {}: weights {} ({}), KV {}, activations {}{uploads}",
                h(self.gpu_bytes),
                h(p.gpu_weights(c)),
                p.summary(n),
                h(p.gpu_kv(c)),
                h(c.compute),
            );
        }
        let cpu_layers: u64 = (c.layers.iter().enumerate())
            .filter(|&(il, _)| !p.layer_on_gpu(il))
            .map(|(_, l)| l.dense + l.experts)
            .sum();
        let cpu_kv: u64 = (c.layers.iter().enumerate()).filter(|&(il, _)| !p.layer_on_gpu(il)).map(|(_, l)| l.kv).sum();
        let _ = writeln!(
            s,
            "  CPU          layers {} + experts {} + KV {}{}",
            h(cpu_layers),
            h(p.experts_in_ram(c)),
            h(cpu_kv),
            if p.output_on_gpu { String::new() } else { format!(" + output head {}", h(c.head)) },
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    /// 4 layers of 0.1 GiB dense, 1 GiB of experts and 0.05 GiB of KV, a 1 GiB head, 0.2 GiB
    /// of activations: everything is 5.8 GiB, the non-expert part 1.8 GiB, one whole layer
    /// with the activations 1.35 GiB.
    fn costs() -> Costs {
        let l = LayerCost { dense: GB / 10, experts: GB, kv: GB / 20 };
        Costs { layers: vec![l; 4], head: GB, compute: GB / 5, uploads: false }
    }

    #[test]
    fn placement_follows_llama_cpp_ngl_and_n_cpu_moe() {
        // 30 layers: -ngl 0 nothing, 10 the last ten, 30 every layer but not the head, 31 and
        // more everything.
        let p = |ngl, moe| Placement::from_gpu_layers(30, ngl, moe);
        assert_eq!(p(0, 0), Placement { first_gpu_layer: 30, output_on_gpu: false, n_cpu_moe: 0 });
        assert_eq!(p(10, 0), Placement { first_gpu_layer: 20, output_on_gpu: false, n_cpu_moe: 0 });
        assert_eq!(p(30, 0), Placement { first_gpu_layer: 0, output_on_gpu: false, n_cpu_moe: 0 });
        assert_eq!(p(31, 0), Placement { first_gpu_layer: 0, output_on_gpu: true, n_cpu_moe: 0 });
        assert_eq!(p(99, 0), Placement { first_gpu_layer: 0, output_on_gpu: true, n_cpu_moe: 0 });
        // --n-cpu-moe 4: the experts of layers 0..4 in RAM; --cpu-moe: all of them.
        assert!(!p(99, 4).experts_on_gpu(3) && p(99, 4).experts_on_gpu(4) && p(99, 4).layer_on_gpu(3));
        assert!((0..30).all(|il| !p(99, usize::MAX).experts_on_gpu(il)));
        assert!(!p(10, 0).experts_on_gpu(19) && p(10, 0).experts_on_gpu(20));
        assert_eq!(p(99, 12).summary(30), "30 of 30 layers (the experts of layers 0..12 in RAM) and the output head");
        assert_eq!(p(99, usize::MAX).summary(30), "30 of 30 layers (their experts in RAM) and the output head");
        assert_eq!(p(10, 25).summary(30), "10 of 30 layers (the experts of layers 20..25 in RAM)");
        assert_eq!(p(10, 5).summary(30), "10 of 30 layers");
    }

    #[test]
    fn the_fit_fills_the_gpu_in_order() {
        let c = costs();
        let f = |gb: f64| fit(&c, (gb * GB as f64) as u64);
        assert_eq!(f(5.9).kind, FitKind::All);
        assert_eq!(f(5.9).placement, Placement::from_gpu_layers(4, 99, 0));
        // 4 GiB: the non-expert part (1.8) and two layers' experts (2.0), the last two.
        assert_eq!(f(4.0).kind, FitKind::ExpertsInRam);
        assert_eq!(f(4.0).placement, Placement::from_gpu_layers(4, 99, 2));
        assert_eq!(f(4.0).gpu_bytes, c.compute + c.head + 4 * (GB / 10 + GB / 20) + 2 * GB);
        // 1.85 GiB: the non-expert part only.
        assert_eq!(f(1.85).placement, Placement::from_gpu_layers(4, 99, 4));
        // 1.5 GiB: one whole layer; 1.2: nothing.
        assert_eq!(f(1.5).kind, FitKind::WholeLayers);
        assert_eq!(f(1.5).placement, Placement::from_gpu_layers(4, 1, 0));
        assert_eq!(f(1.5).gpu_bytes, c.compute + GB / 10 + GB + GB / 20);
        assert_eq!(f(1.2).kind, FitKind::Cpu);
        assert_eq!(f(1.2).gpu_bytes, 0);
        for gb in [1.2, 1.5, 1.85, 4.0, 5.9] {
            assert!(f(gb).gpu_bytes <= f(gb).budget, "{gb} GiB: over budget");
        }
    }

    #[test]
    fn the_upload_buffers_come_after_the_layers_without_their_experts() {
        // With uploads, VRAM holds one layer's experts (1 GiB) for prompts beside the rest.
        let c = Costs { uploads: true, ..costs() };
        let f = |gb: f64| fit(&c, (gb * GB as f64) as u64);
        // 2.5 GiB: the layers without experts (1.8) fit, the buffers beside them (2.8) do not.
        assert_eq!((f(2.5).placement.n_cpu_moe, f(2.5).uploads), (4, false));
        assert_eq!(f(2.5).gpu_bytes, Placement::from_gpu_layers(4, 99, 4).gpu_bytes(&costs()));
        assert!(f(2.5).describe(&c).contains("no room to copy them to VRAM"));
        // 3 GiB: both; 3.8: both and the last layer's experts.
        let non_expert = c.compute + c.head + 4 * (GB / 10 + GB / 20);
        assert_eq!((f(3.0).placement.n_cpu_moe, f(3.0).uploads, f(3.0).gpu_bytes), (4, true, non_expert + GB));
        assert_eq!((f(3.8).placement.n_cpu_moe, f(3.8).uploads), (3, true));
        assert!(f(3.8).describe(&c).contains("expert uploads 1.00 GiB"));
        // Everything on the GPU needs none.
        assert_eq!((f(5.9).kind, f(5.9).uploads, f(5.9).gpu_bytes), (FitKind::All, false, non_expert + 4 * GB));
    }

    /// The real 26B-A4B's costs: the tensor table of the 30-layer synthetic Q4_K_M (llama.cpp
    /// chose every type: `synth_gemma4 --table`) and the hyperparameters of llama.cpp's
    /// Gemma 4 vocabulary file (the real model's metadata).
    fn gemma4_26b(context: usize) -> Costs {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let vocab = root.join("models/ggml-vocab-gemma-4.gguf");
        let vocab = ggml::gguf::GgufFile::open(&vocab).expect("models/ggml-vocab-gemma-4.gguf: run scripts/setup.sh");
        let table = std::fs::read_to_string(root.join("tests/fixtures/gemma4-26b-a4b-q4_k_m.tensors.json")).unwrap();
        let table: Vec<serde_json::Value> = serde_json::from_str(&table).unwrap();
        let rows: Vec<(String, u64)> = (table.iter())
            .map(|t| {
                let ty = t["type"].as_str().unwrap();
                let ty = *ggml::GgmlType::ALL.iter().find(|g| g.name() == ty).unwrap();
                let dims: Vec<u64> = t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
                (
                    t["name"].as_str().unwrap().to_string(),
                    ty.row_bytes(dims[0]).unwrap() * dims[1..].iter().product::<u64>(),
                )
            })
            .collect();
        let hp = Hparams::read(&vocab.header);
        let sizes = rows.iter().map(|(n, b)| (n.as_str(), *b));
        Costs::new(sizes, &hp, 262144, context, KvTypes::default(), 512).unwrap()
    }

    #[test]
    fn the_26b_a4b_plans_stay_in_budget_and_grow_with_it() {
        for context in [4096, 32768, 262144] {
            let c = gemma4_26b(context);
            assert_eq!(c.n_layer(), 30);
            let weights: u64 = c.layers.iter().map(|l| l.dense + l.experts).sum::<u64>() + c.head;
            // 16.8 GB of Q4_K_M less the embedding (CPU) plus the tied head's copy.
            assert!((15 * GB..17 * GB).contains(&weights), "{weights}");
            let non_expert = Placement::from_gpu_layers(30, 99, 30).gpu_bytes(&c);
            let mut last: Option<Plan> = None;
            for gb in [4, 8, 12, 16, 24] {
                let plan = fit(&c, gb * GB);
                let p = &plan.placement;
                eprint!("-c {context}, {gb} GiB: {}", plan.describe(&c));
                assert!(plan.gpu_bytes <= gb * GB, "-c {context}, {gb} GiB: {} over budget", plan.gpu_bytes);
                assert_eq!(plan.gpu_bytes, p.gpu_bytes(&c));
                if non_expert <= gb * GB {
                    assert!(p.first_gpu_layer == 0 && p.output_on_gpu, "-c {context}, {gb} GiB: {p:?}");
                    // And no room was left for one more layer's experts.
                    if p.n_cpu_moe > 0 {
                        let more = Placement { n_cpu_moe: p.n_cpu_moe - 1, ..*p };
                        assert!(more.gpu_bytes(&c) > gb * GB, "-c {context}, {gb} GiB: room left");
                    }
                }
                if let Some(last) = &last {
                    assert!(plan.gpu_bytes >= last.gpu_bytes, "-c {context}: less on {gb} GiB than on less");
                }
                last = Some(plan);
            }
        }
        // The numbers the note quotes: at 4K, 8 GiB keeps the experts of about half the
        // layers in RAM; 24 GiB takes everything.
        let c = gemma4_26b(4096);
        assert_eq!(fit(&c, 24 * GB).kind, FitKind::All);
        let at8 = fit(&c, 8 * GB).placement.n_cpu_moe;
        assert!((10..20).contains(&at8), "{at8}");
        // At 256K, the f16 KV of the five global layers (5 GiB) pushes experts out.
        assert!(fit(&gemma4_26b(262144), 12 * GB).placement.n_cpu_moe > fit(&c, 12 * GB).placement.n_cpu_moe);
    }
}
