//! `ggml`: gemma.rs's tensor layer, in Rust.
//!
//! - [`gguf`]: read (memory-mapped, validated) and write GGUF files.
//! - [`types`]: ggml's tensor types and their block geometry.
//! - [`quants`]: ggml's block formats, bit-exact dequantizers and reference quantizers.
//!
//! Nothing here knows about any particular model.

pub mod gguf;
pub mod kernels;
pub mod quants;
pub mod types;

pub use types::{GgmlType, QK_K};
