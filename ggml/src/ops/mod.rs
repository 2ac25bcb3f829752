//! The f32 element-wise ops of the forward pass (GEMMA4.md 2.1-2.5): RMSNorm, GELU, softmax and
//! the MoE router's top-k, NeoX RoPE, and the small vector ops (add, mul, scale, softcap).
//!
//! Each family's module holds a scalar reference (`*_scalar`, the documentation) and AVX2+FMA
//! and AVX-512 versions (`*_avx2`, `*_avx512`, x86-64 only); `*_with(isa, ..)` runs one level
//! and the plain name runs [`Isa::best`]. Tests diff every SIMD path against the reference and
//! the reference against f64 math. Slices are row-major; shapes are given per function.

#[cfg(doc)]
use crate::kernels::Isa;

/// Runs the `$avx2` or `$avx512` version of an op when `$isa` asks for it and this CPU has it,
/// else the scalar reference (also for levels with no version of the op, such as NEON).
macro_rules! dispatch {
    ($isa:expr, $scalar:ident, $avx2:ident, $avx512:ident, ($($arg:expr),* $(,)?)) => {
        match $isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checks that this CPU has AVX2 + FMA.
            $crate::kernels::Isa::Avx2 if $crate::kernels::cpu::detected().avx2 => unsafe { $avx2($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checks that this CPU has AVX-512 (and AVX2 + FMA).
            $crate::kernels::Isa::Avx512 if $crate::kernels::cpu::detected().avx512 => unsafe { $avx512($($arg),*) },
            _ => $scalar($($arg),*),
        }
    };
}

pub mod elementwise;
pub mod gelu;
pub mod norm;
pub mod rope;
pub mod softmax;

#[cfg(target_arch = "x86_64")]
mod lanes;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(target_arch = "x86_64")]
pub mod vmath;
