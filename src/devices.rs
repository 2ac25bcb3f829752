//! `gemma devices`: the GPUs this machine offers through Vulkan, what each supports, and which
//! one would be used by default (the first discrete GPU, else an integrated one; a CPU device
//! such as lavapipe only when named with `--device N`).

use serde::Serialize;

use crate::info::human_bytes;

/// One device as listed.
#[derive(Clone, Debug, Serialize)]
pub struct Device {
    pub index: usize,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub vulkan: String,
    pub memory_bytes: u64,
    pub subgroup_size: u32,
    pub fp16: bool,
    pub integer_dot: bool,
    pub cooperative_matrix: bool,
    pub max_buffer_range: u64,
    /// Why the device cannot run our shaders, if it cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsuitable: Option<String>,
}

/// Every Vulkan device and the default choice, or why none could be listed.
#[derive(Clone, Debug, Serialize)]
pub struct Devices {
    pub devices: Vec<Device>,
    pub default: Option<usize>,
    /// Set when Vulkan itself is missing (no loader) or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Devices {
    /// Asks the Vulkan loader; never fails (a machine without Vulkan has no devices).
    #[cfg(feature = "vulkan")]
    pub fn list() -> Devices {
        use ggml::vulkan::{instance::default_device, Vulkan};
        let found = Vulkan::load().and_then(|vk| vk.devices());
        match found {
            Ok(infos) => Devices {
                default: default_device(&infos),
                devices: infos
                    .into_iter()
                    .map(|d| Device {
                        index: d.index,
                        kind: d.kind.name(),
                        vulkan: format!("{}.{}.{}", d.api_version.0, d.api_version.1, d.api_version.2),
                        memory_bytes: d.memory,
                        subgroup_size: d.subgroup_size,
                        fp16: d.fp16,
                        integer_dot: d.int_dot,
                        cooperative_matrix: d.coop_matrix,
                        max_buffer_range: d.max_buffer_range,
                        unsuitable: d.missing(),
                        name: d.name,
                    })
                    .collect(),
                error: None,
            },
            Err(e) => Devices { devices: Vec::new(), default: None, error: Some(e.to_string()) },
        }
    }

    /// This build has no GPU backend.
    #[cfg(not(feature = "vulkan"))]
    pub fn list() -> Devices {
        let error = Some("this gemma was built without the `vulkan` feature".to_string());
        Devices { devices: Vec::new(), default: None, error }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(e) = &self.error {
            s += &format!("no GPU devices: {e}\n");
            return s;
        }
        if self.devices.is_empty() {
            s += "no GPU devices: the Vulkan loader reports none (is the GPU driver's Vulkan support installed?)\n";
            return s;
        }
        s += "Vulkan devices:\n";
        for d in &self.devices {
            let yes = |b: bool| if b { "yes" } else { "no" };
            s += &format!(
                "  {}: {} ({}, Vulkan {})\n     memory {}, subgroup {}, fp16 {}, integer dot {}, cooperative matrix {}, \
                 max buffer {}\n",
                d.index,
                d.name,
                d.kind,
                d.vulkan,
                human_bytes(d.memory_bytes),
                d.subgroup_size,
                yes(d.fp16),
                yes(d.integer_dot),
                yes(d.cooperative_matrix),
                human_bytes(d.max_buffer_range),
            );
            if let Some(why) = &d.unsuitable {
                s += &format!("     cannot be used: lacks {why}\n");
            }
        }
        s += &match self.default {
            Some(i) => format!("default: device {i} ({})\n", self.devices[i].name),
            None => "default: none (CPU and virtual devices are used only when named with --device N)\n".to_string(),
        };
        s
    }
}
