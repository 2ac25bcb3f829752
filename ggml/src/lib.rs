//! `ggml`: gemma.rs's tensor layer, in Rust.
//!
//! - [`gguf`]: read (memory-mapped, validated) and write GGUF files.
//! - [`types`]: ggml's tensor types and their block geometry.
//! - [`quants`]: ggml's block formats, bit-exact dequantizers and reference quantizers.
//! - [`kernels`]: dot products (scalar, AVX2, AVX-512), matmul and the MoE feed-forward.
//! - [`ops`]: the f32 element-wise ops of the forward pass (RMSNorm, GELU, softmax, RoPE, ...).
//! - [`attention`]: streaming (online-softmax) attention over the KV cache types (f32, f16, bf16,
//!   q8_0, q4_0).
//! - [`output`]: output files written through a temporary file, renamed into place when whole.
//! - [`parallel`]: the spinning thread pool every parallel kernel runs on.
//! - [`vulkan`] (feature `vulkan`): the GPU backend, Vulkan compute shaders beside their CPU twins.
//!
//! Nothing here knows about any particular model.

pub mod attention;
pub mod gguf;
pub mod kernels;
pub mod ops;
pub mod output;
pub mod parallel;
pub mod quants;
pub mod types;
#[cfg(feature = "vulkan")]
pub mod vulkan;

pub use types::{GgmlType, QK_K};
