#![allow(dead_code)] // each test binary uses its own part

#[cfg(feature = "oracle")]
pub mod llama;
pub mod tiny;
pub mod vision;
