//! Dot products of quantized weight rows with quantized activation rows, and the matrix-vector
//! and matrix-matrix products built on them.
//!
//! Activations are quantized once per matmul to the weight type's *dot type* (ggml's
//! `vec_dot_type`): Q8_K for the k-quants and IQ4_XS, Q8_0 for Q4_0/Q5_0/Q8_0/IQ4_NL/MXFP4,
//! Q8_1 for Q4_1/Q5_1. Each weight family has a module holding a scalar reference and the
//! SIMD versions; [`Isa::best`] picks the widest this CPU runs, once per process.

pub mod bf16;
pub mod cpu;
pub mod f16;
pub mod f32;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod matmul;
pub mod moe;
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
pub mod tile;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

pub use cpu::Isa;

use crate::quants::{cast_blocks, QuantError};
use crate::types::GgmlType;

/// The activation type ggml pairs with weights of type `ty` in dot products.
pub fn dot_type(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | MXFP4 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => Q8_K,
        F32 | F16 | BF16 => ty,
        _ => return None,
    })
}

/// Expands [`vec_dot`] over every weight type with kernels: each listed module provides
/// `dot_scalar(&[W], &[A]) -> f32` and, on x86-64, `dot_avx2` and `dot_avx512` with the same
/// signature (target-feature functions, unsafe to call unless the CPU has the features).
/// Modules marked `[tiled]` also provide `group_avx512`, a [`tile::GroupFn`], and `TILE_ACTS`,
/// the activation layout it expects.
macro_rules! dot_kernels {
    ($( $ty:ident => $module:ident ($w:ty, $a:ty) $([$tiled:ident])? ),* $(,)?) => {
        /// Whether [`vec_dot`] has kernels for weights of type `ty`.
        pub fn has_kernels(ty: GgmlType) -> bool {
            matches!(ty, $( GgmlType::$ty )|*)
        }

        /// `w · a` for one row: `w` holds `n` elements of type `ty`, `a` the same `n` elements
        /// of activations already quantized to `dot_type(ty)`, computed at level `isa` (or the
        /// scalar reference if this CPU lacks `isa`).
        pub fn vec_dot(ty: GgmlType, isa: Isa, w: &[u8], a: &[u8]) -> Result<f32, QuantError> {
            match ty {
                $( GgmlType::$ty => {
                    let w: &[$w] = cast_blocks(ty, w)?;
                    let a_ty = dot_type(ty).expect("listed types have a dot type");
                    let a: &[$a] = cast_blocks(a_ty, a)?;
                    check_pair(ty, w.len(), a_ty, a.len())?;
                    let dot: DotFn<$w, $a> = pick!($module, isa);
                    // SAFETY: `pick!` only returns a SIMD kernel this CPU supports.
                    Ok(unsafe { dot(w, a) })
                } )*
                _ => Err(QuantError::Unsupported(ty)),
            }
        }

        /// `W[r] · acts[t]` for `rows` weight rows and the `n_tokens` rows of `acts` (its
        /// prompt rows on the tiles) into `out`: the kernel is chosen and the operands are cast
        /// once, then rows are split across threads.
        pub(crate) fn dot_rows(
            ty: GgmlType,
            isa: Isa,
            w: &[u8],
            rows: usize,
            acts: &matmul::QuantizedActs,
            out: matmul::Products<'_>,
        ) -> Result<(), QuantError> {
            let (n_tokens, tiled) = (acts.n_rows, acts.tiled);
            match ty {
                $( GgmlType::$ty => {
                    let w: &[$w] = cast_blocks(ty, w)?;
                    let a_ty = dot_type(ty).expect("listed types have a dot type");
                    let a: &[$a] = cast_blocks(a_ty, acts.bytes())?;
                    check_pair(ty, w.len() / rows.max(1), a_ty, a.len() / n_tokens.max(1))?;
                    let tiles: Option<tile::Tiles<$w, $a>> = pick_tile!($module, isa $(, $tiled)?);
                    matmul::dot_rows_with(pick!($module, isa), tiles, w, rows, a, n_tokens, tiled, out);
                    Ok(())
                } )*
                _ => Err(QuantError::Unsupported(ty)),
            }
        }
    };
}

/// A dot kernel over typed blocks. Calling it is unsafe because SIMD kernels need CPU features;
/// [`pick!`] only hands out kernels this CPU supports.
pub(crate) type DotFn<W, A> = unsafe fn(&[W], &[A]) -> f32;

/// The kernel of `$module` for `isa`, or its scalar reference when this CPU lacks `isa`.
macro_rules! pick {
    ($module:ident, $isa:expr) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx2 if $crate::kernels::cpu::detected().avx2 => $module::dot_avx2,
            #[cfg(target_arch = "x86_64")]
            $crate::kernels::Isa::Avx512 if $crate::kernels::cpu::detected().avx512 => $module::dot_avx512,
            _ => $module::dot_scalar,
        }
    };
}
#[cfg(test)]
pub(crate) use pick;

/// The tile kernels of `$module` for `isa`, if it has them and this CPU runs them.
macro_rules! pick_tile {
    ($module:ident, $isa:expr) => {
        None
    };
    ($module:ident, $isa:expr, tiled) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if cpu::detected().avx512 => {
                Some(tile::Tiles { group: $module::group_avx512, prepare: $module::TILE_ACTS })
            }
            _ => None,
        }
    };
}

dot_kernels! {
    Q8_0 => q8_0 (crate::quants::q8_0::BlockQ8_0, crate::quants::q8_0::BlockQ8_0) [tiled],
    Q4_K => q4_k (crate::quants::q4_k::BlockQ4K, crate::quants::q8_k::BlockQ8K) [tiled],
    Q5_K => q5_k (crate::quants::q5_k::BlockQ5K, crate::quants::q8_k::BlockQ8K),
    Q6_K => q6_k (crate::quants::q6_k::BlockQ6K, crate::quants::q8_k::BlockQ8K) [tiled],
    Q2_K => q2_k (crate::quants::q2_k::BlockQ2K, crate::quants::q8_k::BlockQ8K),
    Q3_K => q3_k (crate::quants::q3_k::BlockQ3K, crate::quants::q8_k::BlockQ8K),
    IQ4_XS => iq4_xs (crate::quants::iq4_xs::BlockIQ4XS, crate::quants::q8_k::BlockQ8K),
    Q5_0 => q5_0 (crate::quants::q5_0::BlockQ5_0, crate::quants::q8_0::BlockQ8_0) [tiled],
    Q4_0 => q4_0 (crate::quants::q4_0::BlockQ4_0, crate::quants::q8_0::BlockQ8_0),
    Q4_1 => q4_1 (crate::quants::q4_1::BlockQ4_1, crate::quants::q8_1::BlockQ8_1),
    Q5_1 => q5_1 (crate::quants::q5_1::BlockQ5_1, crate::quants::q8_1::BlockQ8_1),
    IQ4_NL => iq4_nl (crate::quants::iq4_nl::BlockIQ4NL, crate::quants::q8_0::BlockQ8_0),
    MXFP4 => mxfp4 (crate::quants::mxfp4::BlockMXFP4, crate::quants::q8_0::BlockQ8_0),
    F32 => f32 (f32, f32) [tiled],
    F16 => f16 (half::f16, half::f16) [tiled],
    BF16 => bf16 (half::bf16, half::bf16) [tiled],
}

/// Weights and activations must cover the same number of elements.
fn check_pair(ty: GgmlType, w_blocks: usize, a_ty: GgmlType, a_blocks: usize) -> Result<(), QuantError> {
    let n = w_blocks * ty.block_size();
    if a_blocks * a_ty.block_size() != n {
        return Err(QuantError::ByteLength {
            ty: a_ty,
            n,
            expected: n / a_ty.block_size() * a_ty.type_size(),
            got: a_blocks * a_ty.type_size(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_lengths_are_errors() {
        let buf = [0u64; 9]; // aligned for the block structs
        let bytes: &[u8] = bytemuck::cast_slice(&buf);
        let (w, a) = (&bytes[..68], &bytes[..34]);
        let err = vec_dot(GgmlType::Q8_0, Isa::Scalar, w, a).unwrap_err();
        assert_eq!(err, QuantError::ByteLength { ty: GgmlType::Q8_0, n: 64, expected: 68, got: 34 });
        assert_eq!(
            vec_dot(GgmlType::Q8_0, Isa::Scalar, &w[..35], a),
            Err(QuantError::ByteLength { ty: GgmlType::Q8_0, n: 32, expected: 34, got: 35 })
        );
    }
}
