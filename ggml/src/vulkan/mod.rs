//! The Vulkan compute backend: devices, buffers in VRAM, and the ops of the forward pass as
//! compute shaders (GLSL in `ggml/shaders/`, compiled to SPIR-V at build time).
//!
//! - [`instance`]: the Vulkan loader, opened at run time (a machine without Vulkan still runs
//!   everything on the CPU), the devices it reports ([`DeviceInfo`]) and which one is used by
//!   default.
//! - [`device`]: one opened device ([`Gpu`]): its queue, the memory allocator, the pipelines
//!   (one per shader variant, built on first use), [`Buffer`]s and copies to and from them.
//! - [`ops`]: recording ops into a command buffer ([`Commands`]) and waiting for them.
//! - [`weights`]: a weight matrix in VRAM ([`GpuMatrix`]), split by rows across buffers when
//!   larger than the device's storage-buffer range.
//!
//! Every shader has a CPU twin in this crate (the dequantizers, `ops::*`); the tests run both
//! on lavapipe (Mesa's Vulkan device on the CPU) and compare.

pub mod device;
pub mod instance;
pub mod ops;
pub mod weights;

#[cfg(test)]
mod tests;

pub use device::{Buffer, Gpu};
pub use instance::{DeviceInfo, DeviceKind, Vulkan};
pub use ops::{Commands, InFlight, KvBuffers};
pub use weights::GpuMatrix;

use ash::vk;

#[derive(Debug, thiserror::Error)]
pub enum VkError {
    #[error("no Vulkan loader (libvulkan.so.1) could be opened: {0}")]
    NoLoader(String),
    #[error("Vulkan {call} failed: {result}")]
    Call { call: &'static str, result: vk::Result },
    #[error("Vulkan device {index} does not exist ({count} found)")]
    NoSuchDevice { index: usize, count: usize },
    #[error("Vulkan device {name:?} cannot run gemma.rs's shaders: {missing}")]
    Unsuitable { name: String, missing: String },
    #[error("out of GPU memory allocating {what} ({bytes} bytes): {detail}")]
    OutOfMemory { what: String, bytes: u64, detail: String },
    #[error("the GPU was lost (VK_ERROR_DEVICE_LOST) while {doing}")]
    DeviceLost { doing: &'static str },
    #[error("the GPU did not finish {doing} within {seconds} s")]
    Timeout { doing: &'static str, seconds: u64 },
    #[error("{0}")]
    Shape(String),
}

/// Maps a failed `vk*` call to [`VkError::Call`] (device loss to [`VkError::DeviceLost`]).
pub(crate) fn check<T>(call: &'static str, r: Result<T, vk::Result>) -> Result<T, VkError> {
    r.map_err(|result| match result {
        vk::Result::ERROR_DEVICE_LOST => VkError::DeviceLost { doing: call },
        result => VkError::Call { call, result },
    })
}
