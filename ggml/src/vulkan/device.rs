//! One opened device: its compute queue, the memory allocator, the pipelines built from the
//! compiled shaders, buffers, and blocking copies between host memory and buffers.
//!
//! Buffers are bound with push descriptors, so recording needs no descriptor pools; every
//! pipeline has a push-constant block of up to 128 bytes for its sizes and strides.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ash::vk;
use gpu_allocator::vulkan::{Allocation, AllocationCreateDesc, AllocationScheme, Allocator, AllocatorCreateDesc};
use gpu_allocator::MemoryLocation;

use super::instance::{DeviceInfo, Vulkan};
use super::{check, VkError};

mod spirv {
    include!(concat!(env!("OUT_DIR"), "/shaders.rs"));
}

/// How long a submission may run before we call the device hung (a prefill of thousands of
/// tokens on lavapipe takes minutes; a real GPU, well under a second per batch).
pub(crate) const SUBMIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Bytes of the host-visible staging buffer that uploads and downloads go through.
pub const STAGING_BYTES: u64 = 64 << 20;

/// One pipeline per shader variant.
pub(crate) struct Pipeline {
    pub layout: vk::PipelineLayout,
    pub pipeline: vk::Pipeline,
    set_layout: vk::DescriptorSetLayout,
}

/// What must be used by one thread at a time: the queue, the command pool and the staging
/// buffer.
pub(crate) struct Queue {
    pub queue: vk::Queue,
    pub pool: vk::CommandPool,
    pub cmd: vk::CommandBuffer,
    pub fence: vk::Fence,
    /// Host-visible buffers for uploads (write-combined is fine) and downloads (host-cached:
    /// reading write-combined memory from the CPU is slow).
    staging: Option<Raw>,
    readback: Option<Raw>,
}

pub(crate) struct Inner {
    /// Keeps the instance (and the loader) alive while the device is.
    _vulkan: Arc<Vulkan>,
    pub info: DeviceInfo,
    pub device: ash::Device,
    pub push: ash::khr::push_descriptor::Device,
    allocator: ManuallyDrop<Mutex<Allocator>>,
    pipelines: Mutex<HashMap<&'static str, Arc<Pipeline>>>,
    pub queue: Mutex<Queue>,
    /// Bytes of the allocator's memory in host RAM (readback and host buffers): not VRAM.
    host_bytes: std::sync::atomic::AtomicU64,
}

/// An opened Vulkan device. Cheap to clone (one shared device).
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<Inner>,
}

/// A storage buffer in device memory.
pub struct Buffer {
    pub(crate) inner: Arc<Inner>,
    pub(crate) buffer: vk::Buffer,
    allocation: Option<Allocation>,
    /// Bytes.
    pub size: u64,
    /// In host memory ([`Gpu::host_buffer`]).
    host: bool,
}

impl Buffer {
    /// The mapped bytes of a [`Gpu::host_buffer`]; an error for a device-local one.
    fn mapped(&self) -> Result<&[u8], VkError> {
        let a = self.allocation.as_ref().expect("allocated until dropped");
        a.mapped_slice().ok_or_else(|| VkError::Shape("a device-local buffer cannot be mapped".into()))
    }

    /// Copies `out.len()` bytes from byte `offset` of a host buffer (after the submission
    /// that wrote them was waited for).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), VkError> {
        let bytes = self.mapped()?;
        let src = bytes.get(offset..offset + out.len()).ok_or_else(|| {
            VkError::Shape(format!("read of {} bytes at {offset} of a {}-byte buffer", out.len(), self.size))
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    /// Writes `data` at byte `offset` of a host buffer (before the submission that reads it),
    /// on every thread when it is large (an MoE layer's experts: hundreds of MB that the CPU
    /// copies while the GPU works).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Result<(), VkError> {
        const CHUNK: usize = 4 << 20;
        self.mapped()?;
        let size = self.size;
        let a = self.allocation.as_mut().expect("allocated until dropped");
        let bytes = a.mapped_slice_mut().expect("checked above");
        let dst = bytes.get_mut(offset..offset + data.len()).ok_or_else(|| {
            VkError::Shape(format!("write of {} bytes at {offset} of a {size}-byte buffer", data.len()))
        })?;
        match data.len() > CHUNK {
            true => crate::parallel::for_each_chunk_mut(dst, CHUNK, |i, d| {
                d.copy_from_slice(&data[i * CHUNK..i * CHUNK + d.len()]);
            }),
            false => dst.copy_from_slice(data),
        }
        Ok(())
    }
}

/// A buffer and its memory, freed by whoever owns it (the staging buffer, by the device).
struct Raw {
    buffer: vk::Buffer,
    allocation: Allocation,
}

impl Gpu {
    /// Opens device `index` of `vk` (any kind: the caller decides which kinds it accepts).
    pub fn open(vk: Arc<Vulkan>, index: usize) -> Result<Gpu, VkError> {
        let pds = vk.physical_devices()?;
        let pd = *pds.get(index).ok_or(VkError::NoSuchDevice { index, count: pds.len() })?;
        let info = vk.describe(index, pd);
        if let Some(missing) = info.missing() {
            return Err(VkError::Unsuitable { name: info.name, missing });
        }
        let inst = &vk.instance;
        // SAFETY: every handle below is created from this instance and device and destroyed in
        // `Inner::drop` in reverse order; the create-info structs outlive their calls.
        unsafe {
            let families = inst.get_physical_device_queue_family_properties(pd);
            let family = families
                .iter()
                .position(|f| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
                .ok_or_else(|| VkError::Unsuitable { name: info.name.clone(), missing: "a compute queue".into() })?
                as u32;
            let priorities = [1.0f32];
            let queues =
                [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
            let extensions = [ash::khr::push_descriptor::NAME.as_ptr()];
            let info_ci =
                vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&extensions);
            let device = check("vkCreateDevice", inst.create_device(pd, &info_ci, None))?;
            let queue = device.get_device_queue(family, 0);
            let pool = check(
                "vkCreateCommandPool",
                device.create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                ),
            )?;
            let cmd = check(
                "vkAllocateCommandBuffers",
                device.allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(pool)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(1),
                ),
            )?[0];
            let fence = check("vkCreateFence", device.create_fence(&vk::FenceCreateInfo::default(), None))?;
            let allocator = Allocator::new(&AllocatorCreateDesc {
                instance: inst.clone(),
                device: device.clone(),
                physical_device: pd,
                debug_settings: Default::default(),
                buffer_device_address: false,
                allocation_sizes: Default::default(),
            })
            .map_err(|e| VkError::OutOfMemory {
                what: "the allocator".into(),
                bytes: 0,
                detail: e.to_string(),
            })?;
            let push = ash::khr::push_descriptor::Device::new(inst, &device);
            let inner = Arc::new(Inner {
                _vulkan: vk.clone(),
                info,
                device,
                push,
                allocator: ManuallyDrop::new(Mutex::new(allocator)),
                pipelines: Mutex::new(HashMap::new()),
                queue: Mutex::new(Queue { queue, pool, cmd, fence, staging: None, readback: None }),
                host_bytes: std::sync::atomic::AtomicU64::new(0),
            });
            Ok(Gpu { inner })
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// A device-local buffer of at least `size` bytes (`what` names it in an out-of-memory
    /// error). Sizes are rounded up to whole 16-byte words: shaders read `uint`s and `vec4`s,
    /// and a word that straddles the end of a buffer reads as zero.
    pub fn buffer(&self, size: u64, what: &str) -> Result<Buffer, VkError> {
        let size = size.max(1).next_multiple_of(16);
        let raw = self.inner.raw_buffer(size, what, MemoryLocation::GpuOnly)?;
        Ok(Buffer {
            inner: self.inner.clone(),
            buffer: raw.buffer,
            allocation: Some(raw.allocation),
            size,
            host: false,
        })
    }

    /// A buffer in host memory that shaders and copies can use too (host-cached where the
    /// device has such memory): what crosses between the CPU and the GPU mid-pass goes through
    /// one, read and written with [`Buffer::read`] and [`Buffer::write`] while no submission
    /// uses it.
    pub fn host_buffer(&self, size: u64, what: &str) -> Result<Buffer, VkError> {
        let size = size.max(1).next_multiple_of(16);
        let raw = self.inner.raw_buffer(size, what, MemoryLocation::GpuToCpu)?;
        self.inner.host_bytes.fetch_add(raw.allocation.size(), std::sync::atomic::Ordering::Relaxed);
        Ok(Buffer { inner: self.inner.clone(), buffer: raw.buffer, allocation: Some(raw.allocation), size, host: true })
    }

    /// Bytes of device memory allocated through this device's allocator now: buffers, and the
    /// upload staging buffer (in VRAM on a card with resizable BAR); not what lies in host RAM
    /// (the readback buffer, host buffers).
    pub fn allocated_bytes(&self) -> u64 {
        let allocator = self.inner.allocator.lock().unwrap();
        let host = self.inner.host_bytes.load(std::sync::atomic::Ordering::Relaxed);
        allocator.generate_report().total_allocated_bytes.saturating_sub(host)
    }

    /// Copies `data` into `dst` at byte `offset`, through the staging buffer; blocks.
    pub fn upload(&self, dst: &Buffer, offset: u64, data: &[u8]) -> Result<(), VkError> {
        assert!(offset + data.len() as u64 <= dst.size, "upload past the end of the buffer");
        let mut q = self.inner.queue.lock().unwrap();
        let staging = q.staging(&self.inner)?.buffer;
        let mut done = 0u64;
        while done < data.len() as u64 {
            let n = (data.len() as u64 - done).min(STAGING_BYTES);
            let s = q.staging.as_mut().expect("made above");
            s.allocation.mapped_slice_mut().expect("host-visible")[..n as usize]
                .copy_from_slice(&data[done as usize..(done + n) as usize]);
            let region = vk::BufferCopy { src_offset: 0, dst_offset: offset + done, size: n };
            q.run(&self.inner, "an upload", |d, cmd| unsafe {
                d.cmd_copy_buffer(cmd, staging, dst.buffer, &[region])
            })?;
            done += n;
        }
        Ok(())
    }

    /// Copies `out.len()` bytes of `src` from byte `offset` into `out`; blocks.
    pub fn download(&self, src: &Buffer, offset: u64, out: &mut [u8]) -> Result<(), VkError> {
        assert!(offset + out.len() as u64 <= src.size, "download past the end of the buffer");
        let mut q = self.inner.queue.lock().unwrap();
        let staging = q.readback(&self.inner)?.buffer;
        let mut done = 0u64;
        while done < out.len() as u64 {
            let n = (out.len() as u64 - done).min(STAGING_BYTES);
            let region = vk::BufferCopy { src_offset: offset + done, dst_offset: 0, size: n };
            q.run(&self.inner, "a download", |d, cmd| unsafe {
                d.cmd_copy_buffer(cmd, src.buffer, staging, &[region])
            })?;
            let s = q.readback.as_ref().expect("made above");
            out[done as usize..(done + n) as usize]
                .copy_from_slice(&s.allocation.mapped_slice().expect("host-visible")[..n as usize]);
            done += n;
        }
        Ok(())
    }

    /// Copies `regions` of `src` to `dst`; blocks.
    pub fn copy(&self, src: &Buffer, dst: &Buffer, regions: &[vk::BufferCopy]) -> Result<(), VkError> {
        let mut q = self.inner.queue.lock().unwrap();
        // SAFETY: both buffers outlive the submission, which `run` waits for.
        q.run(&self.inner, "a copy", |d, cmd| unsafe { d.cmd_copy_buffer(cmd, src.buffer, dst.buffer, regions) })
    }

    /// A buffer holding `data` (f32s, ids, ...).
    pub fn buffer_from<T: bytemuck::Pod>(&self, data: &[T], what: &str) -> Result<Buffer, VkError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let b = self.buffer((bytes.len() as u64).max(4), what)?;
        self.upload(&b, 0, bytes)?;
        Ok(b)
    }

    /// The first `out.len()` f32s of `src`.
    pub fn read_f32(&self, src: &Buffer, out: &mut [f32]) -> Result<(), VkError> {
        self.download(src, 0, bytemuck::cast_slice_mut(out))
    }

    /// The pipeline of shader variant `name` with `bindings` storage buffers, built on first use.
    pub(crate) fn pipeline(&self, name: &'static str, bindings: u32) -> Result<Arc<Pipeline>, VkError> {
        let mut pipelines = self.inner.pipelines.lock().unwrap();
        if let Some(p) = pipelines.get(name) {
            return Ok(p.clone());
        }
        let spirv =
            spirv::SHADERS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no shader variant {name}")).1;
        let code = ash::util::read_spv(&mut std::io::Cursor::new(spirv)).expect("SPIR-V from build.rs");
        let d = &self.inner.device;
        // SAFETY: the create-info structs outlive the calls; the module is destroyed once the
        // pipeline holds the code.
        unsafe {
            let binding_list: Vec<_> = (0..bindings)
                .map(|b| {
                    vk::DescriptorSetLayoutBinding::default()
                        .binding(b)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .descriptor_count(1)
                        .stage_flags(vk::ShaderStageFlags::COMPUTE)
                })
                .collect();
            let set_layout = check(
                "vkCreateDescriptorSetLayout",
                d.create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default()
                        .flags(vk::DescriptorSetLayoutCreateFlags::PUSH_DESCRIPTOR_KHR)
                        .bindings(&binding_list),
                    None,
                ),
            )?;
            let ranges = [vk::PushConstantRange { stage_flags: vk::ShaderStageFlags::COMPUTE, offset: 0, size: 128 }];
            let set_layouts = [set_layout];
            let layout = check(
                "vkCreatePipelineLayout",
                d.create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts).push_constant_ranges(&ranges),
                    None,
                ),
            )?;
            let module = check(
                "vkCreateShaderModule",
                d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None),
            )?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let info = [vk::ComputePipelineCreateInfo::default().stage(stage).layout(layout)];
            let made = d.create_compute_pipelines(vk::PipelineCache::null(), &info, None);
            d.destroy_shader_module(module, None);
            let pipeline = check("vkCreateComputePipelines", made.map_err(|(_, e)| e))?[0];
            let p = Arc::new(Pipeline { layout, pipeline, set_layout });
            pipelines.insert(name, p.clone());
            Ok(p)
        }
    }

    pub(crate) fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.inner.queue.lock().unwrap()
    }
}

impl Inner {
    fn raw_buffer(&self, size: u64, what: &str, location: MemoryLocation) -> Result<Raw, VkError> {
        let d = &self.device;
        let oom = |detail: String| VkError::OutOfMemory { what: what.to_string(), bytes: size, detail };
        // SAFETY: the buffer is bound to memory of the size it requires, once, and destroyed
        // with it in `Buffer::drop`.
        unsafe {
            let usage = vk::BufferUsageFlags::STORAGE_BUFFER
                | vk::BufferUsageFlags::TRANSFER_SRC
                | vk::BufferUsageFlags::TRANSFER_DST;
            let buffer = check(
                "vkCreateBuffer",
                d.create_buffer(&vk::BufferCreateInfo::default().size(size).usage(usage), None),
            )?;
            let requirements = d.get_buffer_memory_requirements(buffer);
            let allocation = self.allocator.lock().unwrap().allocate(&AllocationCreateDesc {
                name: what,
                requirements,
                location,
                linear: true,
                allocation_scheme: AllocationScheme::GpuAllocatorManaged,
            });
            let allocation = match allocation {
                Ok(a) => a,
                Err(e) => {
                    d.destroy_buffer(buffer, None);
                    return Err(oom(e.to_string()));
                }
            };
            if let Err(e) = d.bind_buffer_memory(buffer, allocation.memory(), allocation.offset()) {
                d.destroy_buffer(buffer, None);
                let _ = self.allocator.lock().unwrap().free(allocation);
                return Err(check::<()>("vkBindBufferMemory", Err(e)).unwrap_err());
            }
            Ok(Raw { buffer, allocation })
        }
    }
}

impl Queue {
    fn staging(&mut self, inner: &Inner) -> Result<&Raw, VkError> {
        if self.staging.is_none() {
            self.staging = Some(inner.raw_buffer(STAGING_BYTES, "the staging buffer", MemoryLocation::CpuToGpu)?);
        }
        Ok(self.staging.as_ref().expect("just made"))
    }

    fn readback(&mut self, inner: &Inner) -> Result<&Raw, VkError> {
        if self.readback.is_none() {
            let raw = inner.raw_buffer(STAGING_BYTES, "the readback buffer", MemoryLocation::GpuToCpu)?;
            inner.host_bytes.fetch_add(raw.allocation.size(), std::sync::atomic::Ordering::Relaxed);
            self.readback = Some(raw);
        }
        Ok(self.readback.as_ref().expect("just made"))
    }

    /// Records `record` into the command buffer, submits it and waits for it.
    pub(crate) fn run(
        &mut self,
        inner: &Inner,
        doing: &'static str,
        record: impl FnOnce(&ash::Device, vk::CommandBuffer),
    ) -> Result<(), VkError> {
        self.begin(inner)?;
        record(&inner.device, self.cmd);
        self.submit_and_wait(inner, doing)
    }

    pub(crate) fn begin(&mut self, inner: &Inner) -> Result<(), VkError> {
        let d = &inner.device;
        // SAFETY: the command buffer is not in flight (every submission is waited for).
        unsafe {
            check("vkResetCommandBuffer", d.reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty()))?;
            check(
                "vkBeginCommandBuffer",
                d.begin_command_buffer(
                    self.cmd,
                    &vk::CommandBufferBeginInfo::default().flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
                ),
            )
        }
    }

    pub(crate) fn submit_and_wait(&mut self, inner: &Inner, doing: &'static str) -> Result<(), VkError> {
        self.submit(inner)?;
        self.wait(inner, doing)
    }

    /// Ends the command buffer and submits it, its fence to signal when done; the caller waits
    /// with [`wait`](Self::wait) before the buffers it uses are touched or dropped.
    pub(crate) fn submit(&mut self, inner: &Inner) -> Result<(), VkError> {
        let d = &inner.device;
        // SAFETY: the command buffer was begun by `begin`; the fence is unsignaled (reset after
        // every wait).
        unsafe {
            check("vkEndCommandBuffer", d.end_command_buffer(self.cmd))?;
            let cmds = [self.cmd];
            let submit = [vk::SubmitInfo::default().command_buffers(&cmds)];
            check("vkQueueSubmit", d.queue_submit(self.queue, &submit, self.fence))
        }
    }

    /// Waits for the submission [`submit`](Self::submit) made, and resets its fence.
    pub(crate) fn wait(&mut self, inner: &Inner, doing: &'static str) -> Result<(), VkError> {
        let d = &inner.device;
        // SAFETY: the fence belongs to this queue and was submitted with its command buffer.
        unsafe {
            let waited = d.wait_for_fences(&[self.fence], true, SUBMIT_TIMEOUT.as_nanos() as u64);
            match waited {
                Ok(()) => {}
                Err(vk::Result::TIMEOUT) => {
                    return Err(VkError::Timeout { doing, seconds: SUBMIT_TIMEOUT.as_secs() });
                }
                Err(vk::Result::ERROR_DEVICE_LOST) => return Err(VkError::DeviceLost { doing }),
                Err(result) => return Err(VkError::Call { call: "vkWaitForFences", result }),
            }
            check("vkResetFences", d.reset_fences(&[self.fence]))
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: no submission is in flight once its recorder returned (every one is waited
        // for), so nothing uses the buffer any more.
        unsafe { self.inner.device.destroy_buffer(self.buffer, None) };
        if let Some(a) = self.allocation.take() {
            if self.host {
                self.inner.host_bytes.fetch_sub(a.size(), std::sync::atomic::Ordering::Relaxed);
            }
            let _ = self.inner.allocator.lock().unwrap().free(a);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let d = &self.device;
        // SAFETY: the last Gpu and Buffer are gone, so nothing is in flight or in use; children
        // are destroyed before the device.
        unsafe {
            let _ = d.device_wait_idle();
            let q = self.queue.get_mut().unwrap();
            for s in [q.staging.take(), q.readback.take()].into_iter().flatten() {
                d.destroy_buffer(s.buffer, None);
                let _ = self.allocator.get_mut().unwrap().free(s.allocation);
            }
            d.destroy_fence(q.fence, None);
            d.destroy_command_pool(q.pool, None);
            for (_, p) in self.pipelines.get_mut().unwrap().drain() {
                d.destroy_pipeline(p.pipeline, None);
                d.destroy_pipeline_layout(p.layout, None);
                d.destroy_descriptor_set_layout(p.set_layout, None);
            }
            ManuallyDrop::drop(&mut self.allocator);
            d.destroy_device(None);
        }
    }
}
