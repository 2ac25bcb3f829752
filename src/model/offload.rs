//! What the user asked of the GPU (`-ngl N`, `--cpu-moe`, `--n-cpu-moe N`, `--fit`,
//! `--vram-budget`, `--device N`), and opening that device: the one place that decides
//! between the GPU and the CPU and what goes where, so both models resolve it the same way.
//!
//! - `-ngl`, `--cpu-moe` or `--n-cpu-moe` given: that placement, checked against the device's
//!   memory (or `--vram-budget`) before anything is uploaded; too large is an error that says
//!   what the fit would do instead.
//! - none of them, and `--fit` on (the command line's default): when a GPU is found, the fit
//!   ([`super::fit`]) places the model within its free memory (or `--vram-budget`).
//! - No Vulkan loader, no device or no suitable one is never an error: the model runs on the
//!   CPU and [`Resolved::note`] says why (printed when a GPU was asked for). A device named
//!   with `--device` that does not exist is an error.

use ggml::gguf::GgufHeader;

use super::fit::{fit, Costs, Placement, Plan};
use super::ModelError;
use crate::info::human_bytes;
use crate::kv_cache::KvTypes;

/// The GPU request, and the context and batch sizes it is planned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offload {
    /// `-ngl`: the last N layers, the output head counting as one more; `None`: not given.
    pub gpu_layers: Option<usize>,
    /// `--n-cpu-moe N`: the experts of the first N layers stay in RAM (`--cpu-moe`: all).
    pub n_cpu_moe: Option<usize>,
    /// Fit the model to the GPU when no placement is given.
    pub fit: bool,
    /// Bytes of VRAM to plan for at most (`--vram-budget`); else the device's free memory.
    pub vram_budget: Option<u64>,
    /// The Vulkan device (`None`: a discrete GPU, else an integrated one).
    pub device: Option<usize>,
    /// The largest batch a forward pass gets (sizes the activations and the GPU's rings).
    pub max_batch: usize,
    /// The context the KV cache is planned for, and its element type.
    pub context: usize,
    pub kv_types: KvTypes,
    /// Whether a prompt's experts that are in RAM are copied to VRAM for the batch
    /// (`--moe-upload`).
    pub moe_upload: MoeUpload,
    /// Bytes of VRAM for the hot-expert cache (`--expert-cache`); `None`: what the placement
    /// leaves of the budget.
    pub expert_cache: Option<u64>,
}

/// `--moe-upload`: whether the experts of a GPU layer that keeps them in RAM cross to VRAM for
/// a batch (and run there) or stay on the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MoeUpload {
    /// When moving the layer's experts takes less time than the CPU would take for the batch
    /// (both measured): prompts yes, generation no.
    #[default]
    Auto,
    /// Always (every batch, generation too).
    On,
    /// Never: the CPU runs them.
    Off,
}

impl Default for Offload {
    /// Everything on the CPU.
    fn default() -> Offload {
        Offload {
            gpu_layers: None,
            n_cpu_moe: None,
            fit: false,
            vram_budget: None,
            device: None,
            max_batch: 512,
            context: 4096,
            kv_types: KvTypes::default(),
            moe_upload: MoeUpload::Auto,
            expert_cache: None,
        }
    }
}

#[cfg(feature = "vulkan")]
enum Found {
    Device { vk: std::sync::Arc<ggml::vulkan::Vulkan>, info: ggml::vulkan::DeviceInfo },
    None(String),
}

/// The device to use, if any, what goes there, and a line (or a few) saying what was decided.
pub struct Resolved {
    #[cfg(feature = "vulkan")]
    pub gpu: Option<ggml::vulkan::Gpu>,
    pub placement: Placement,
    /// Where the model runs, in a line ("CPU", "CPU (why)", "GPU 0: NAME").
    pub note: String,
    /// The fit's plan, in a few lines, when the fit placed the model.
    pub plan: Option<String>,
    /// Bytes of the budget the placement leaves free: the hot-expert cache's by default.
    pub spare: u64,
    /// `--moe-upload`, or off when the fit found no room for the upload buffers.
    pub moe_upload: MoeUpload,
}

impl Offload {
    /// Whether a placement was given (rather than left to the fit).
    fn explicit(&self) -> bool {
        self.gpu_layers.is_some() || self.n_cpu_moe.is_some()
    }

    /// Whether the user asked for the GPU in any way: then where the model runs is worth a
    /// line on stderr even when it is the CPU.
    pub fn asks_for_gpu(&self) -> bool {
        self.gpu_layers.is_some_and(|n| n > 0) || self.n_cpu_moe.is_some() || self.vram_budget.is_some()
    }

    /// The placement `-ngl` and `--n-cpu-moe` give: `--cpu-moe` alone means every layer on
    /// the GPU with its experts in RAM, as llama.cpp users write `-ngl 99 --cpu-moe`.
    fn given(&self, n_layer: usize) -> Placement {
        let ngl = self.gpu_layers.unwrap_or(if self.n_cpu_moe.is_some() { n_layer + 1 } else { 0 });
        Placement::from_gpu_layers(n_layer, ngl, self.n_cpu_moe.unwrap_or(0))
    }

    /// Everything on the CPU, `note` saying so (and why).
    fn on_cpu(&self, n_layer: usize, note: String) -> Resolved {
        Resolved {
            #[cfg(feature = "vulkan")]
            gpu: None,
            placement: Placement::cpu(n_layer),
            note,
            plan: None,
            spare: 0,
            moe_upload: self.moe_upload,
        }
    }

    /// Opens the device this request needs and places the model of header `h` there, or
    /// explains why it stays on the CPU.
    pub fn resolve(&self, h: &GgufHeader, n_layer: usize) -> Result<Resolved, ModelError> {
        let wanted = match self.explicit() {
            true => self.given(n_layer).uses_gpu(n_layer),
            false => self.fit,
        };
        if !wanted {
            return Ok(self.on_cpu(n_layer, "CPU".into()));
        }
        let mut costs = Costs::from_header(h, self.context, self.kv_types, self.max_batch).ok_or_else(|| {
            ModelError::Unsupported("the file lacks the layer shapes to plan the GPU's memory".into())
        })?;
        costs.uploads = self.moe_upload != MoeUpload::Off;
        self.open(&costs, n_layer)
    }

    #[cfg(not(feature = "vulkan"))]
    fn open(&self, _costs: &Costs, n_layer: usize) -> Result<Resolved, ModelError> {
        let note = match self.asks_for_gpu() {
            true => "CPU (this gemma was built without the vulkan feature; -ngl is ignored)",
            false => "CPU",
        };
        Ok(self.on_cpu(n_layer, note.into()))
    }

    /// The device this request names (or the default one), or why there is none.
    #[cfg(feature = "vulkan")]
    fn find_device(&self) -> Result<Found, ModelError> {
        use ggml::vulkan::instance::default_device;
        use ggml::vulkan::Vulkan;
        let vk = match Vulkan::load() {
            Ok(vk) => std::sync::Arc::new(vk),
            Err(e) => return Ok(Found::None(format!("no GPU: {e}"))),
        };
        let devices = match vk.devices() {
            Ok(d) => d,
            Err(e) => return Ok(Found::None(format!("no GPU: {e}"))),
        };
        let index = match self.device {
            Some(i) if i < devices.len() => i,
            Some(i) => {
                return Err(ModelError::Unsupported(format!(
                    "--device {i}: there is no Vulkan device {i} ({} found; `gemma devices` lists them)",
                    devices.len()
                )))
            }
            None => match default_device(&devices) {
                Some(i) => i,
                None => {
                    return Ok(Found::None(
                        "no GPU found; CPU Vulkan devices such as lavapipe run only when named with --device N".into(),
                    ))
                }
            },
        };
        Ok(Found::Device { vk, info: devices[index].clone() })
    }

    /// The fit for `costs` without loading anything (`gemma info --plan`): for `--vram-budget`,
    /// else for the device's free memory. Also says for what.
    pub fn plan(&self, costs: &Costs) -> Result<(Plan, String), ModelError> {
        #[cfg(feature = "vulkan")]
        if let Found::Device { info, .. } = self.find_device()? {
            let (budget, of) = self.budget(info.memory, info.free_memory);
            return Ok((fit(costs, budget), format!("GPU {}: {}, {of}", info.index, info.name)));
        }
        match self.vram_budget {
            Some(b) => Ok((fit(costs, b), format!("--vram-budget {}", human_bytes(b)))),
            None => Err(ModelError::Unsupported("no GPU found to plan for: give --vram-budget GIB".into())),
        }
    }

    #[cfg(feature = "vulkan")]
    fn open(&self, costs: &Costs, n_layer: usize) -> Result<Resolved, ModelError> {
        use ggml::vulkan::Gpu;
        let ignored = if self.explicit() { "; -ngl is ignored" } else { "" };
        let cpu = |why: String| Ok(self.on_cpu(n_layer, format!("CPU ({why}{ignored})")));
        let (vk, info) = match self.find_device()? {
            Found::Device { vk, info } => (vk, info),
            Found::None(why) => return cpu(why),
        };
        let index = info.index;
        // What the fit may fill (the device less a margin, or the cap): the expert cache takes
        // what the placement leaves of it.
        let (budget, of) = self.budget(info.memory, info.free_memory);
        let (placement, plan, costs) = match self.explicit() {
            true => {
                // A placement given by hand is held to the device's whole memory (or the cap):
                // the margin is the fit's own caution.
                let (limit, of) = match self.vram_budget {
                    Some(_) => (budget, of.clone()),
                    None => (info.memory, "the device's memory".to_string()),
                };
                let p = self.given(n_layer);
                let need = p.gpu_bytes(costs);
                if need > limit {
                    let h = human_bytes;
                    let instead = fit(costs, limit);
                    return Err(ModelError::Unsupported(format!(
                        "{} on the GPU need {} (weights {}, KV cache at -c {} {}, activations {}), more than {of} \
                         ({}); the fit would place {} (leave out -ngl/--cpu-moe/--n-cpu-moe to use it)",
                        p.summary(n_layer),
                        h(need),
                        h(p.gpu_weights(costs)),
                        self.context,
                        h(p.gpu_kv(costs)),
                        h(costs.compute),
                        h(limit),
                        instead.placement.summary(n_layer),
                    )));
                }
                (p, None, costs.clone())
            }
            false => {
                let plan = fit(costs, budget);
                if plan.kind == super::fit::FitKind::Cpu {
                    return cpu(format!("{} fits nothing of this model on GPU {index}", of));
                }
                (plan.placement, Some(plan.describe(costs).trim_end().to_string()), plan.costs(costs))
            }
        };
        let gpu = Gpu::open(vk, index).map_err(|e| ModelError::Unsupported(format!("Vulkan device {index}: {e}")))?;
        let note = format!("GPU {index}: {}", gpu.info().name);
        let spare = budget.saturating_sub(placement.gpu_bytes(&costs));
        let moe_upload = if costs.uploads { self.moe_upload } else { MoeUpload::Off };
        Ok(Resolved { gpu: Some(gpu), placement, note, plan, spare, moe_upload })
    }

    /// The bytes to plan for, and what they are, for a device of `memory` bytes of which
    /// `free` are free: `--vram-budget` (at most the device's memory), else the free memory
    /// (else all of it) less a margin for the driver and other programs.
    #[cfg_attr(not(feature = "vulkan"), allow(dead_code))]
    fn budget(&self, memory: u64, free: Option<u64>) -> (u64, String) {
        let h = human_bytes;
        if let Some(b) = self.vram_budget {
            return (b.min(memory), format!("--vram-budget {}", h(b)));
        }
        let available = free.unwrap_or(memory).min(memory);
        let margin = (available / 20).max(256 << 20);
        let what =
            if free.is_some() { "the device's free memory less a margin" } else { "the device's memory less a margin" };
        (available.saturating_sub(margin), what.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_cap_or_the_free_memory_less_a_margin() {
        let gb = 1u64 << 30;
        let o = Offload::default();
        assert_eq!(o.budget(24 * gb, None).0, 24 * gb - 24 * gb / 20);
        assert_eq!(o.budget(24 * gb, Some(20 * gb)).0, 19 * gb);
        assert_eq!(o.budget(2 * gb, None).0, 2 * gb - (256 << 20));
        let capped = Offload { vram_budget: Some(8 * gb), ..Offload::default() };
        assert_eq!(capped.budget(24 * gb, Some(20 * gb)).0, 8 * gb);
        assert_eq!(capped.budget(4 * gb, None).0, 4 * gb, "never more than the device has");
    }

    #[test]
    fn cpu_moe_alone_puts_every_layer_on_the_gpu() {
        let o = Offload { n_cpu_moe: Some(usize::MAX), ..Offload::default() };
        assert_eq!(o.given(30), Placement { first_gpu_layer: 0, output_on_gpu: true, n_cpu_moe: 30 });
        let o = Offload { gpu_layers: Some(10), n_cpu_moe: Some(25), ..Offload::default() };
        assert_eq!(o.given(30), Placement { first_gpu_layer: 20, output_on_gpu: false, n_cpu_moe: 25 });
        assert!(!Offload::default().given(30).uses_gpu(30));
    }
}
