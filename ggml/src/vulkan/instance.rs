//! The Vulkan loader and the devices it reports.
//!
//! The loader is opened at run time (`ash`'s `loaded`), so a binary built with Vulkan starts
//! where none is installed: [`Vulkan::load`] is then an error the caller turns into a warning.
//! Device choice follows llama.cpp's users' expectations: the first discrete GPU, else the first
//! integrated one; a CPU device (lavapipe) or a virtual one only when named by index.

use std::ffi::CStr;

use ash::vk;

use super::{check, VkError};

/// What kind of device Vulkan says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Discrete,
    Integrated,
    Virtual,
    Cpu,
    Other,
}

impl DeviceKind {
    fn of(t: vk::PhysicalDeviceType) -> DeviceKind {
        match t {
            vk::PhysicalDeviceType::DISCRETE_GPU => DeviceKind::Discrete,
            vk::PhysicalDeviceType::INTEGRATED_GPU => DeviceKind::Integrated,
            vk::PhysicalDeviceType::VIRTUAL_GPU => DeviceKind::Virtual,
            vk::PhysicalDeviceType::CPU => DeviceKind::Cpu,
            _ => DeviceKind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Discrete => "discrete GPU",
            DeviceKind::Integrated => "integrated GPU",
            DeviceKind::Virtual => "virtual GPU",
            DeviceKind::Cpu => "CPU",
            DeviceKind::Other => "other",
        }
    }
}

/// One device as `gemma devices` lists it: what decides whether and how we use it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceInfo {
    /// Its position in the loader's list: what `--device N` names.
    pub index: usize,
    pub name: String,
    pub kind: DeviceKind,
    /// `major.minor.patch` of the Vulkan API it supports.
    pub api_version: (u32, u32, u32),
    /// Bytes of device-local memory (the largest device-local heap).
    pub memory: u64,
    /// Bytes of that heap this process may still allocate, as the driver estimates it
    /// (`VK_EXT_memory_budget`: its budget less what is in use); `None` without the extension.
    pub free_memory: Option<u64>,
    pub subgroup_size: u32,
    /// f16 arithmetic in shaders (`shaderFloat16`).
    pub fp16: bool,
    /// Integer dot products (`VK_KHR_shader_integer_dot_product` or Vulkan 1.3).
    pub int_dot: bool,
    /// Cooperative matrices (`VK_KHR_cooperative_matrix` or `VK_NV_cooperative_matrix`).
    pub coop_matrix: bool,
    /// The largest range one storage buffer binding may have: larger tensors are split.
    pub max_buffer_range: u64,
    /// The largest single memory allocation.
    pub max_allocation: u64,
    /// Push descriptors (`VK_KHR_push_descriptor`): our pipelines bind buffers with them.
    pub push_descriptor: bool,
}

impl DeviceInfo {
    /// What this device lacks to run our shaders, if anything.
    pub fn missing(&self) -> Option<String> {
        let mut missing = Vec::new();
        if self.api_version < (1, 2, 0) {
            missing.push(format!("Vulkan 1.2 (it has {}.{})", self.api_version.0, self.api_version.1));
        }
        if !self.push_descriptor {
            missing.push("VK_KHR_push_descriptor".to_string());
        }
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// The index of the device to use by default: the first suitable discrete GPU, else the first
/// suitable integrated one. CPU and virtual devices are never chosen unless named.
pub fn default_device(devices: &[DeviceInfo]) -> Option<usize> {
    [DeviceKind::Discrete, DeviceKind::Integrated]
        .iter()
        .find_map(|&kind| devices.iter().find(|d| d.kind == kind && d.missing().is_none()).map(|d| d.index))
}

/// The opened loader and one instance.
pub struct Vulkan {
    /// The loaded library: the instance's functions live in it.
    _entry: ash::Entry,
    pub(crate) instance: ash::Instance,
}

impl Vulkan {
    /// Opens the system's Vulkan loader and creates an instance (Vulkan 1.2).
    pub fn load() -> Result<Vulkan, VkError> {
        // SAFETY: loading libvulkan runs its initializers; it is the system's Vulkan loader.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| VkError::NoLoader(e.to_string()))?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"gemma.rs")
            .engine_name(c"gemma.rs")
            .api_version(vk::API_VERSION_1_2);
        // Portability enumeration lists non-conformant implementations too (MoltenVK).
        let extensions = [ash::khr::portability_enumeration::NAME.as_ptr()];
        let available = unsafe { entry.enumerate_instance_extension_properties(None) }.unwrap_or_default();
        let has_portability = available
            .iter()
            .any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == ash::khr::portability_enumeration::NAME));
        let mut info = vk::InstanceCreateInfo::default().application_info(&app);
        if has_portability {
            info = info.enabled_extension_names(&extensions).flags(vk::InstanceCreateFlags::ENUMERATE_PORTABILITY_KHR);
        }
        // SAFETY: `info` and what it points to live across the call.
        let instance = check("vkCreateInstance", unsafe { entry.create_instance(&info, None) })?;
        Ok(Vulkan { _entry: entry, instance })
    }

    pub(crate) fn physical_devices(&self) -> Result<Vec<vk::PhysicalDevice>, VkError> {
        // SAFETY: the instance is alive.
        check("vkEnumeratePhysicalDevices", unsafe { self.instance.enumerate_physical_devices() })
    }

    /// Every device the loader reports, in its order.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, VkError> {
        Ok(self.physical_devices()?.into_iter().enumerate().map(|(i, pd)| self.describe(i, pd)).collect())
    }

    pub(crate) fn describe(&self, index: usize, pd: vk::PhysicalDevice) -> DeviceInfo {
        let inst = &self.instance;
        // SAFETY: `pd` came from this instance; the chained structs outlive the calls.
        unsafe {
            let extensions = inst.enumerate_device_extension_properties(pd).unwrap_or_default();
            let has = |name: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str().is_ok_and(|n| n == name));
            let mut subgroup = vk::PhysicalDeviceSubgroupProperties::default();
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut subgroup);
            inst.get_physical_device_properties2(pd, &mut props);
            let p = props.properties;
            let mut f12 = vk::PhysicalDeviceVulkan12Features::default();
            let mut features = vk::PhysicalDeviceFeatures2::default().push_next(&mut f12);
            inst.get_physical_device_features2(pd, &mut features);
            let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
            let mut memory = vk::PhysicalDeviceMemoryProperties2::default();
            let has_budget = has(ash::ext::memory_budget::NAME);
            if has_budget {
                memory = memory.push_next(&mut budget);
            }
            inst.get_physical_device_memory_properties2(pd, &mut memory);
            let props = memory.memory_properties;
            let heaps = &props.memory_heaps[..props.memory_heap_count as usize];
            // The largest device-local heap: its size, and what its budget leaves.
            let vram_heap = (0..heaps.len())
                .filter(|&i| heaps[i].flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
                .max_by_key(|&i| heaps[i].size);
            let vram = vram_heap.map_or(0, |i| heaps[i].size);
            let free_memory = vram_heap
                .filter(|_| has_budget)
                .map(|i| budget.heap_budget[i].saturating_sub(budget.heap_usage[i]))
                .filter(|&free| free > 0);
            let mut max_allocation = vk::PhysicalDeviceMaintenance3Properties::default();
            let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut max_allocation);
            inst.get_physical_device_properties2(pd, &mut props);
            let v = p.api_version;
            DeviceInfo {
                index,
                name: p.device_name_as_c_str().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                kind: DeviceKind::of(p.device_type),
                api_version: (vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v)),
                memory: vram,
                free_memory,
                subgroup_size: subgroup.subgroup_size,
                fp16: f12.shader_float16 != 0,
                int_dot: has(ash::khr::shader_integer_dot_product::NAME) || v >= vk::API_VERSION_1_3,
                coop_matrix: has(ash::khr::cooperative_matrix::NAME) || has(ash::nv::cooperative_matrix::NAME),
                max_buffer_range: p.limits.max_storage_buffer_range as u64,
                max_allocation: max_allocation.max_memory_allocation_size,
                push_descriptor: has(ash::khr::push_descriptor::NAME),
            }
        }
    }
}

impl Drop for Vulkan {
    fn drop(&mut self) {
        // SAFETY: every device made from this instance holds an Arc to it and is gone by now.
        unsafe { self.instance.destroy_instance(None) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(index: usize, kind: DeviceKind) -> DeviceInfo {
        DeviceInfo {
            index,
            name: format!("dev{index}"),
            kind,
            api_version: (1, 3, 0),
            memory: 1 << 30,
            free_memory: None,
            subgroup_size: 32,
            fp16: true,
            int_dot: true,
            coop_matrix: false,
            max_buffer_range: 1 << 27,
            max_allocation: 1 << 31,
            push_descriptor: true,
        }
    }

    #[test]
    fn the_default_is_the_first_discrete_gpu_then_an_integrated_one_never_a_cpu() {
        use DeviceKind::*;
        let list = |kinds: &[DeviceKind]| kinds.iter().enumerate().map(|(i, &k)| info(i, k)).collect::<Vec<_>>();
        assert_eq!(default_device(&list(&[Cpu, Integrated, Discrete, Discrete])), Some(2));
        assert_eq!(default_device(&list(&[Cpu, Integrated])), Some(1));
        assert_eq!(default_device(&list(&[Cpu, Virtual])), None);
        assert_eq!(default_device(&[]), None);
        let mut old = list(&[Discrete, Integrated]);
        old[0].api_version = (1, 1, 0);
        assert_eq!(default_device(&old), Some(1), "a device without Vulkan 1.2 is passed over");
        assert!(old[0].missing().unwrap().contains("Vulkan 1.2"));
    }
}
