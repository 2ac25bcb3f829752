//! ggml's block formats, byte for byte: dequantize a row to f32, and the reference quantizers
//! (f32 row to blocks) that produce the same bytes as ggml's `quantize_row_*_ref` /
//! `ggml_quantize_chunk` without an importance matrix.
//!
//! Each format lives in its own module with a `#[repr(C)]` block struct laid out exactly as
//! ggml's, `dequantize(&[Block], &mut [f32])` and `quantize(&[f32], &mut [Block])`. This module
//! adds the byte-level, type-dispatched entry points used by GGUF readers and writers.

pub mod float;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod kquants;
pub mod mxfp4;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
pub mod rounding;

use bytemuck::Pod;
use thiserror::Error;

use crate::types::GgmlType;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("tensor type {0} is not supported")]
    Unsupported(GgmlType),
    #[error("{ty}: {n} elements is not a whole number of {block}-element blocks")]
    PartialBlock { ty: GgmlType, n: usize, block: usize },
    #[error("{ty}: {n} elements need {expected} bytes of blocks, got {got}")]
    ByteLength { ty: GgmlType, n: usize, expected: usize, got: usize },
    #[error("{ty}: block data at address {addr:#x} is not aligned to {align} bytes")]
    Misaligned { ty: GgmlType, addr: usize, align: usize },
}

/// Expands the type-dispatched entry points over every block format implemented here.
macro_rules! block_formats {
    ($( $ty:ident => $module:ident :: $block:ident ),* $(,)?) => {
        /// Whether `ty` can be dequantized and quantized by this crate.
        pub fn supports(ty: GgmlType) -> bool {
            matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 $( | GgmlType::$ty )*)
        }

        /// Decode `dst.len()` elements of type `ty` from `src` (exactly their bytes).
        pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
            check_lengths(ty, dst.len(), src.len())?;
            match ty {
                GgmlType::F32 => dst.copy_from_slice(cast::<f32>(ty, src)?),
                GgmlType::F16 => float::dequantize_f16(cast(ty, src)?, dst),
                GgmlType::BF16 => float::dequantize_bf16(cast(ty, src)?, dst),
                $( GgmlType::$ty => $module::dequantize(cast::<$module::$block>(ty, src)?, dst), )*
                _ => return Err(QuantError::Unsupported(ty)),
            }
            Ok(())
        }

        /// Encode `src` as type `ty` into `dst` (exactly its bytes) with ggml's reference
        /// quantizer for that type.
        pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
            check_lengths(ty, src.len(), dst.len())?;
            match ty {
                GgmlType::F32 => cast_mut::<f32>(ty, dst)?.copy_from_slice(src),
                GgmlType::F16 => float::quantize_f16(src, cast_mut(ty, dst)?),
                GgmlType::BF16 => float::quantize_bf16(src, cast_mut(ty, dst)?),
                $( GgmlType::$ty => $module::quantize(src, cast_mut::<$module::$block>(ty, dst)?), )*
                _ => return Err(QuantError::Unsupported(ty)),
            }
            Ok(())
        }

        #[cfg(test)]
        mod layout_tests {
            use super::*;

            #[test]
            fn block_structs_have_ggml_sizes() {
                $( assert_eq!(
                    std::mem::size_of::<$module::$block>(),
                    GgmlType::$ty.type_size(),
                    stringify!($block)
                ); )*
            }
        }
    };
}

block_formats! {
    Q4_0 => q4_0::BlockQ4_0,
    Q4_1 => q4_1::BlockQ4_1,
    Q5_0 => q5_0::BlockQ5_0,
    Q5_1 => q5_1::BlockQ5_1,
    Q8_0 => q8_0::BlockQ8_0,
    Q8_1 => q8_1::BlockQ8_1,
    Q2_K => q2_k::BlockQ2K,
    Q3_K => q3_k::BlockQ3K,
    Q4_K => q4_k::BlockQ4K,
    Q5_K => q5_k::BlockQ5K,
    Q6_K => q6_k::BlockQ6K,
    Q8_K => q8_k::BlockQ8K,
    IQ4_NL => iq4_nl::BlockIQ4NL,
    IQ4_XS => iq4_xs::BlockIQ4XS,
    MXFP4 => mxfp4::BlockMXFP4,
}

fn check_lengths(ty: GgmlType, n: usize, bytes: usize) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !n.is_multiple_of(block) {
        return Err(QuantError::PartialBlock { ty, n, block });
    }
    let expected = n / block * ty.type_size();
    if bytes != expected {
        return Err(QuantError::ByteLength { ty, n, expected, got: bytes });
    }
    Ok(())
}

/// View `bytes` as whole blocks of type `ty` (block struct `T`).
pub fn cast_blocks<T: Pod>(ty: GgmlType, bytes: &[u8]) -> Result<&[T], QuantError> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        let n = bytes.len() / size * ty.block_size();
        return Err(QuantError::ByteLength { ty, n, expected: bytes.len() / size * size, got: bytes.len() });
    }
    cast(ty, bytes)
}

fn cast<T: Pod>(ty: GgmlType, bytes: &[u8]) -> Result<&[T], QuantError> {
    bytemuck::try_cast_slice(bytes).map_err(|_| QuantError::Misaligned {
        ty,
        addr: bytes.as_ptr() as usize,
        align: std::mem::align_of::<T>(),
    })
}

fn cast_mut<T: Pod>(ty: GgmlType, bytes: &mut [u8]) -> Result<&mut [T], QuantError> {
    let addr = bytes.as_ptr() as usize;
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| QuantError::Misaligned {
        ty,
        addr,
        align: std::mem::align_of::<T>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_type_round_trips_close() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for &ty in GgmlType::ALL.iter().filter(|t| supports(**t)) {
            let n_bytes = ty.row_bytes(512).unwrap() as usize;
            // u64-backed buffer so every block struct is aligned.
            let mut aligned = vec![0u64; n_bytes.div_ceil(8)];
            let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..n_bytes];
            quantize_row(ty, &x, buf).unwrap();
            let mut y = vec![0f32; 512];
            dequantize_row(ty, buf, &mut y).unwrap();
            let err = x.iter().zip(&y).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            // 2-bit formats are coarse; anything worse than a third of the range is broken.
            assert!(err <= amax / 3.0, "{ty}: max abs error {err} for amax {amax}");
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut y = [0f32; 32];
        assert_eq!(
            dequantize_row(GgmlType::Q8_0, &[0u8; 33], &mut y),
            Err(QuantError::ByteLength { ty: GgmlType::Q8_0, n: 32, expected: 34, got: 33 })
        );
        assert!(matches!(
            quantize_row(GgmlType::Q8_0, &[0f32; 31], &mut [0u8; 34]),
            Err(QuantError::PartialBlock { .. })
        ));
        assert_eq!(
            dequantize_row(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]),
            Err(QuantError::Unsupported(GgmlType::IQ2_XXS))
        );
    }
}
