//! The K/V element types a cache may hold (f16, f32) and the views of a cache the kernels read.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::quants::float::f32_to_f16;

/// An element type of K and V in a cache: `half::f16` or `f32` (sealed: each kernel path has
/// a row load for each). The row operations below are what the cache and the portable paths
/// need; the SIMD loads stay private.
pub trait KvElem: sealed::Sealed + Copy + Send + Sync + std::fmt::Debug + 'static {
    /// What a freshly allocated slot holds until written.
    const ZERO: Self;

    /// `dst = src` in this type: for f16 rounded as ggml rounds (nearest even, overflow to
    /// infinity, NaN to the canonical quiet NaN); for f32 a copy.
    fn store_row(src: &[f32], dst: &mut [Self]);

    /// The row in f32 (exact): `src` itself for f32, widened into `buf` for f16. Whole rows
    /// at a time, since `half`'s slice conversion checks the CPU once per call.
    fn as_f32<'b>(src: &'b [Self], buf: &'b mut [f32]) -> &'b [f32];

    /// `dst = src` widened to f64 (exact).
    fn to_f64_row(src: &[Self], dst: &mut [f64]);
}

impl KvElem for f16 {
    const ZERO: f16 = f16::ZERO;

    fn store_row(src: &[f32], dst: &mut [f16]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = f32_to_f16(src);
        }
    }

    fn as_f32<'b>(src: &'b [f16], buf: &'b mut [f32]) -> &'b [f32] {
        src.convert_to_f32_slice(buf);
        buf
    }

    fn to_f64_row(src: &[f16], dst: &mut [f64]) {
        src.convert_to_f64_slice(dst);
    }
}

impl KvElem for f32 {
    const ZERO: f32 = 0.0;

    fn store_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn as_f32<'b>(src: &'b [f32], _buf: &'b mut [f32]) -> &'b [f32] {
        src
    }

    fn to_f64_row(src: &[f32], dst: &mut [f64]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = src as f64;
        }
    }
}

mod sealed {
    use half::f16;

    use super::{KvRows, KvSlots};

    /// What only this module may use of an element type: its [`KvSlots`] variant and its
    /// SIMD row loads.
    pub trait Sealed: Sized {
        fn wrap(rows: KvRows<'_, Self>) -> KvSlots<'_>;

        /// 8 elements from `p`, widened to f32.
        ///
        /// # Safety
        /// 8 elements are readable from `p`; the CPU supports AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x8(p: *const Self) -> std::arch::x86_64::__m256;

        /// 16 elements from `p`, widened to f32.
        ///
        /// # Safety
        /// 16 elements are readable from `p`; the CPU supports AVX2, FMA, F16C and AVX-512
        /// F/BW/VL/VNNI.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x16(p: *const Self) -> std::arch::x86_64::__m512;
    }

    impl Sealed for f16 {
        fn wrap(rows: KvRows<'_, f16>) -> KvSlots<'_> {
            KvSlots::F16(rows)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(p: *const f16) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable elements (16 bytes); loadu has no
            // alignment requirement.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(p: *const f16) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 16 readable elements (32 bytes).
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
        }
    }

    impl Sealed for f32 {
        fn wrap(rows: KvRows<'_, f32>) -> KvSlots<'_> {
            KvSlots::F32(rows)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(p: *const f32) -> std::arch::x86_64::__m256 {
            // SAFETY: the caller guarantees 8 readable elements (32 bytes).
            unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(p: *const f32) -> std::arch::x86_64::__m512 {
            // SAFETY: the caller guarantees 16 readable elements (64 bytes).
            unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
        }
    }
}

/// A layer's KV cache in element type `T`: K and V laid out `[n_kv_head][capacity][head_dim]`
/// (capacity = `k.len() / (n_kv_head · head_dim)`), and the token position held by each used
/// slot. Slots `0..pos.len()` are used, in any position order; the rest are never read.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a, T> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub pos: &'a [usize],
}

/// A layer's KV cache as [`attention`] takes it: [`KvRows`] of either element type.
#[derive(Clone, Copy, Debug)]
pub enum KvSlots<'a> {
    F16(KvRows<'a, f16>),
    F32(KvRows<'a, f32>),
}

impl<'a> KvSlots<'a> {
    /// K and V rows of type `T` (`[n_kv_head][capacity][head_dim]` each) and the positions of
    /// the used slots.
    pub fn new<T: KvElem>(k: &'a [T], v: &'a [T], pos: &'a [usize]) -> KvSlots<'a> {
        T::wrap(KvRows { k, v, pos })
    }

    /// The position held by each used slot.
    pub fn pos(&self) -> &'a [usize] {
        match self {
            KvSlots::F16(rows) => rows.pos,
            KvSlots::F32(rows) => rows.pos,
        }
    }
}

impl<'a, T: KvElem> From<KvRows<'a, T>> for KvSlots<'a> {
    fn from(rows: KvRows<'a, T>) -> KvSlots<'a> {
        T::wrap(rows)
    }
}
