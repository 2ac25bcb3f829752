//! What the user asked of the GPU (`-ngl N`, `--device N`), and opening that device: the one
//! place that decides between the GPU and the CPU, so both models resolve it the same way.
//!
//! No Vulkan loader, no device or no suitable one is never an error: the model runs on the CPU
//! and [`Resolved::note`] says why (the CLI prints it as one warning). A device named with
//! `--device` that does not exist is an error.

use super::ModelError;

/// The GPU request: how many layers (llama.cpp's `-ngl`, the output head counting as one), on
/// which Vulkan device (`None`: the default, a discrete GPU else an integrated one), and the
/// largest batch a forward pass gets (sizes the GPU's sliding-window rings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offload {
    pub gpu_layers: usize,
    pub device: Option<usize>,
    pub max_batch: usize,
}

impl Default for Offload {
    fn default() -> Offload {
        Offload { gpu_layers: 0, device: None, max_batch: 512 }
    }
}

/// The device to use, if any, and a line saying what was decided.
pub struct Resolved {
    #[cfg(feature = "vulkan")]
    pub gpu: Option<ggml::vulkan::Gpu>,
    pub note: String,
}

impl Offload {
    /// Opens the device this request names, or explains why the model stays on the CPU.
    pub fn resolve(&self) -> Result<Resolved, ModelError> {
        if self.gpu_layers == 0 {
            return Ok(Resolved {
                #[cfg(feature = "vulkan")]
                gpu: None,
                note: "CPU".to_string(),
            });
        }
        self.open()
    }

    #[cfg(not(feature = "vulkan"))]
    fn open(&self) -> Result<Resolved, ModelError> {
        Ok(Resolved { note: "CPU (this gemma was built without the vulkan feature; -ngl is ignored)".to_string() })
    }

    #[cfg(feature = "vulkan")]
    fn open(&self) -> Result<Resolved, ModelError> {
        use std::sync::Arc;

        use ggml::vulkan::instance::default_device;
        use ggml::vulkan::{Gpu, Vulkan};
        let cpu = |why: String| Ok(Resolved { gpu: None, note: format!("CPU ({why}; -ngl is ignored)") });
        let vk = match Vulkan::load() {
            Ok(vk) => Arc::new(vk),
            Err(e) => return cpu(format!("no GPU: {e}")),
        };
        let devices = match vk.devices() {
            Ok(d) => d,
            Err(e) => return cpu(format!("no GPU: {e}")),
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
                    return cpu("no GPU found; CPU Vulkan devices such as lavapipe run only when named with --device N"
                        .to_string())
                }
            },
        };
        let gpu = Gpu::open(vk, index).map_err(|e| ModelError::Unsupported(format!("Vulkan device {index}: {e}")))?;
        let note = format!("GPU {index}: {}", gpu.info().name);
        Ok(Resolved { gpu: Some(gpu), note })
    }
}
