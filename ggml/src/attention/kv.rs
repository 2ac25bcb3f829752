//! The K/V element types a cache may hold and the views of a cache the kernels read.
//!
//! Five types, named as llama.cpp's `--cache-type-k/-v` names them: `f32`, `f16`, `bf16`, and
//! the block formats `q8_0` and `q4_0` (32 elements a block with an f16 scale: 34 and 18
//! bytes, so 8.5 and 4.5 bits an element), in ggml's exact layouts and rounding
//! ([`crate::quants`]); q4_0's blocks are chosen by least squares rather than by ggml's
//! reference quantizer (same layout, 12% less squared error: at 4 bits the largest value
//! should not alone set the grid). A cache row (one head of one slot, `head_dim` elements) is
//! `head_dim / BLOCK` units of the type: elements for the floats, blocks for the others, so a
//! quantized row is whole blocks and `head_dim` must be a multiple of 32.
//!
//! The kernels read every type as f32: a row widened or dequantized on the fly, 8 or 16
//! elements at a time in the SIMD paths. Queries stay f32 (llama.cpp instead rounds them to
//! the key's dot-product type, q8_0 for both block formats): the only rounding a quantized
//! cache adds is that of K and V themselves.

use std::fmt;
use std::str::FromStr;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::quants::float::{f32_to_bf16, f32_to_f16};
use crate::quants::q4_0::{self, BlockQ4_0};
use crate::quants::q8_0::{self, BlockQ8_0};
use crate::GgmlType;

/// `$body` with `$x` bound to the slice inside a [`KvData`], whatever its type: one generic
/// body, instantiated once per type.
macro_rules! match_kv_data {
    ($data:expr, $x:ident => $body:expr) => {
        match $data {
            $crate::attention::KvData::F32($x) => $body,
            $crate::attention::KvData::F16($x) => $body,
            $crate::attention::KvData::Bf16($x) => $body,
            $crate::attention::KvData::Q8_0($x) => $body,
            $crate::attention::KvData::Q4_0($x) => $body,
        }
    };
}
pub(crate) use match_kv_data;

/// `$body` with `$rows` bound to the [`KvRows`] of a [`KvSlots`], whatever its K and V types:
/// the 25 pairs, each instantiated once.
macro_rules! match_kv_slots {
    ($slots:expr, $rows:ident => $body:expr) => {{
        let slots: $crate::attention::KvSlots = $slots;
        $crate::attention::match_kv_data!(slots.k, k => $crate::attention::match_kv_data!(slots.v, v => {
            let $rows = $crate::attention::KvRows { k, v, pos: slots.pos };
            $body
        }))
    }};
}
pub(crate) use match_kv_slots;

/// The element type of a cache's keys or values (`-ctk`, `-ctv`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvType {
    /// Single precision: no rounding of K and V.
    F32,
    /// Half precision, llama.cpp's default.
    #[default]
    F16,
    /// bfloat16: f32's range, 8 bits of mantissa.
    Bf16,
    /// Blocks of 32 signed bytes and an f16 scale: 8.5 bits an element.
    Q8_0,
    /// Blocks of 32 nibbles and an f16 scale: 4.5 bits an element.
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 5] = [KvType::F32, KvType::F16, KvType::Bf16, KvType::Q8_0, KvType::Q4_0];

    /// The name llama.cpp's `--cache-type-k` takes.
    pub fn name(self) -> &'static str {
        self.ggml_type().name()
    }

    /// The ggml tensor type whose layout a row of this type has.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            KvType::F32 => GgmlType::F32,
            KvType::F16 => GgmlType::F16,
            KvType::Bf16 => GgmlType::BF16,
            KvType::Q8_0 => GgmlType::Q8_0,
            KvType::Q4_0 => GgmlType::Q4_0,
        }
    }

    /// Elements per unit: 1 for the floats, 32 for a block.
    pub fn block(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes of a row of `n` elements (`n` a multiple of [`block`](Self::block)).
    pub fn row_bytes(self, n: usize) -> usize {
        n / self.block() * self.ggml_type().type_size()
    }

    /// Whether it is a block format (rows must be whole blocks).
    pub fn is_quantized(self) -> bool {
        self.block() > 1
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown KV cache type {0:?}: expected f32, f16, bf16, q8_0 or q4_0")]
pub struct ParseKvTypeError(String);

impl FromStr for KvType {
    type Err = ParseKvTypeError;

    fn from_str(s: &str) -> Result<KvType, ParseKvTypeError> {
        KvType::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| ParseKvTypeError(s.to_string()))
    }
}

/// A unit of a cache row in one of the [`KvType`]s: `f32`, `half::f16`, `half::bf16`, or a
/// [`BlockQ8_0`] / [`BlockQ4_0`] of 32 elements (sealed: each kernel path has its loads for
/// each). The row operations below are what the cache and the portable paths need; the SIMD
/// loads stay private.
pub trait KvElem: sealed::Sealed + bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static {
    /// The type this is a unit of.
    const TYPE: KvType;
    /// Elements per unit.
    const BLOCK: usize;
    /// What a freshly allocated unit holds until written.
    const ZERO: Self;

    /// Units in a row of `d` elements.
    #[inline(always)]
    fn units(d: usize) -> usize {
        d / Self::BLOCK
    }

    /// `dst = src` in this type (`src.len() == dst.len() · BLOCK`), rounded as ggml rounds:
    /// f16 to nearest even (overflow to infinity, NaN to the canonical quiet NaN), bf16 to
    /// nearest even, q8_0 by ggml's reference quantizer, q4_0 by least squares
    /// ([`q4_0::quantize_least_squares`]); f32 is a copy.
    fn store_row(src: &[f32], dst: &mut [Self]);

    /// The row in f32 (exact): `src` itself for f32, widened or dequantized into `buf`
    /// otherwise. Whole rows at a time, since `half`'s slice conversion checks the CPU once
    /// per call.
    fn as_f32<'b>(src: &'b [Self], buf: &'b mut [f32]) -> &'b [f32];

    /// `dst = src` widened to f64 (exact: a block's `q · d` is exact in f32 already).
    fn to_f64_row(src: &[Self], dst: &mut [f64]) {
        let mut buf = vec![0.0f32; dst.len()];
        for (dst, &x) in dst.iter_mut().zip(Self::as_f32(src, &mut buf)) {
            *dst = x as f64;
        }
    }
}

impl KvElem for f32 {
    const TYPE: KvType = KvType::F32;
    const BLOCK: usize = 1;
    const ZERO: f32 = 0.0;

    fn store_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn as_f32<'b>(src: &'b [f32], _buf: &'b mut [f32]) -> &'b [f32] {
        src
    }
}

impl KvElem for f16 {
    const TYPE: KvType = KvType::F16;
    const BLOCK: usize = 1;
    const ZERO: f16 = f16::ZERO;

    fn store_row(src: &[f32], dst: &mut [f16]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = f32_to_f16(src);
        }
    }

    fn as_f32<'b>(src: &'b [f16], buf: &'b mut [f32]) -> &'b [f32] {
        src.convert_to_f32_slice(&mut buf[..src.len()]);
        &buf[..src.len()]
    }

    fn to_f64_row(src: &[f16], dst: &mut [f64]) {
        src.convert_to_f64_slice(dst);
    }
}

impl KvElem for bf16 {
    const TYPE: KvType = KvType::Bf16;
    const BLOCK: usize = 1;
    const ZERO: bf16 = bf16::ZERO;

    fn store_row(src: &[f32], dst: &mut [bf16]) {
        assert_eq!(src.len(), dst.len());
        for (dst, &src) in dst.iter_mut().zip(src) {
            *dst = f32_to_bf16(src);
        }
    }

    fn as_f32<'b>(src: &'b [bf16], buf: &'b mut [f32]) -> &'b [f32] {
        src.convert_to_f32_slice(&mut buf[..src.len()]);
        &buf[..src.len()]
    }
}

impl KvElem for BlockQ8_0 {
    const TYPE: KvType = KvType::Q8_0;
    const BLOCK: usize = q8_0::QK8_0;
    const ZERO: BlockQ8_0 = BlockQ8_0 { d: f16::ZERO, qs: [0; q8_0::QK8_0] };

    fn store_row(src: &[f32], dst: &mut [BlockQ8_0]) {
        assert_eq!(src.len(), dst.len() * Self::BLOCK);
        q8_0::quantize(src, dst);
    }

    fn as_f32<'b>(src: &'b [BlockQ8_0], buf: &'b mut [f32]) -> &'b [f32] {
        let n = src.len() * Self::BLOCK;
        q8_0::dequantize(src, &mut buf[..n]);
        &buf[..n]
    }
}

impl KvElem for BlockQ4_0 {
    const TYPE: KvType = KvType::Q4_0;
    const BLOCK: usize = q4_0::QK4_0;
    const ZERO: BlockQ4_0 = BlockQ4_0 { d: f16::ZERO, qs: [0; q4_0::QK4_0 / 2] };

    fn store_row(src: &[f32], dst: &mut [BlockQ4_0]) {
        assert_eq!(src.len(), dst.len() * Self::BLOCK);
        q4_0::quantize_least_squares(src, dst);
    }

    fn as_f32<'b>(src: &'b [BlockQ4_0], buf: &'b mut [f32]) -> &'b [f32] {
        let n = src.len() * Self::BLOCK;
        q4_0::dequantize(src, &mut buf[..n]);
        &buf[..n]
    }
}

mod sealed {
    use half::{bf16, f16};

    use super::KvData;
    use crate::quants::q4_0::BlockQ4_0;
    use crate::quants::q8_0::BlockQ8_0;

    /// What only this module may use of an element type: its [`KvData`] variant and its SIMD
    /// row loads. The loads take a row and the index `e` of the first element to load, a
    /// multiple of the load's width, so that a block type finds its block and the half (or
    /// quarter) of it.
    pub trait Sealed: Sized {
        fn wrap(units: &[Self]) -> KvData<'_>;

        /// Elements `e .. e + 8` of the row at `row`, in f32.
        ///
        /// # Safety
        /// `e` is a multiple of 8 and the row holds at least `e + 8` elements; the CPU
        /// supports AVX2, FMA and F16C.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x8(row: *const Self, e: usize) -> std::arch::x86_64::__m256;

        /// Elements `e .. e + 16` of the row at `row`, in f32.
        ///
        /// # Safety
        /// `e` is a multiple of 16 and the row holds at least `e + 16` elements; the CPU
        /// supports AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load_f32x16(row: *const Self, e: usize) -> std::arch::x86_64::__m512;
    }

    impl Sealed for f32 {
        fn wrap(units: &[f32]) -> KvData<'_> {
            KvData::F32(units)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(row: *const f32, e: usize) -> std::arch::x86_64::__m256 {
            // SAFETY: the caller guarantees 8 readable elements (32 bytes) at e; loadu has no
            // alignment requirement.
            unsafe { std::arch::x86_64::_mm256_loadu_ps(row.add(e)) }
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(row: *const f32, e: usize) -> std::arch::x86_64::__m512 {
            // SAFETY: the caller guarantees 16 readable elements (64 bytes) at e.
            unsafe { std::arch::x86_64::_mm512_loadu_ps(row.add(e)) }
        }
    }

    impl Sealed for f16 {
        fn wrap(units: &[f16]) -> KvData<'_> {
            KvData::F16(units)
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(row: *const f16, e: usize) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable elements (16 bytes) at e.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(row.add(e).cast()) })
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(row: *const f16, e: usize) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 16 readable elements (32 bytes) at e.
            _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(row.add(e).cast()) })
        }
    }

    impl Sealed for bf16 {
        fn wrap(units: &[bf16]) -> KvData<'_> {
            KvData::Bf16(units)
        }

        /// bf16 is the top half of an f32: zero-extend and shift left 16.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(row: *const bf16, e: usize) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 8 readable elements (16 bytes) at e.
            let x = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(row.add(e).cast()) });
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(x))
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(row: *const bf16, e: usize) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees 16 readable elements (32 bytes) at e.
            let x = _mm512_cvtepu16_epi32(unsafe { _mm256_loadu_si256(row.add(e).cast()) });
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x))
        }
    }

    /// A block's f16 scale in f32 (F16C).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scale(d: f16) -> f32 {
        use std::arch::x86_64::*;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(d.to_bits() as i32)))
    }

    impl Sealed for BlockQ8_0 {
        fn wrap(units: &[BlockQ8_0]) -> KvData<'_> {
            KvData::Q8_0(units)
        }

        /// `q · d` for 8 of a block's 32 signed bytes.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(row: *const BlockQ8_0, e: usize) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            // SAFETY: the caller guarantees the row holds element e + 7, so block e / 32 is
            // readable; bytes e % 32 .. + 8 are inside its qs.
            let (b, q) = unsafe {
                let b = &*row.add(e / 32);
                (b, _mm_loadl_epi64(b.qs.as_ptr().add(e % 32).cast()))
            };
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), _mm256_set1_ps(scale(b.d)))
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(row: *const BlockQ8_0, e: usize) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: as above, 16 bytes from e % 32 (0 or 16).
            let (b, q) = unsafe {
                let b = &*row.add(e / 32);
                (b, _mm_loadu_si128(b.qs.as_ptr().add(e % 32).cast()))
            };
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), _mm512_set1_ps(scale(b.d)))
        }
    }

    impl Sealed for BlockQ4_0 {
        fn wrap(units: &[BlockQ4_0]) -> KvData<'_> {
            KvData::Q4_0(units)
        }

        /// `(q - 8) · d` for 8 of a block's 32 nibbles: elements 0..16 are the low nibbles of
        /// bytes 0..16, elements 16..32 their high nibbles.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn load_f32x8(row: *const BlockQ4_0, e: usize) -> std::arch::x86_64::__m256 {
            use std::arch::x86_64::*;
            let (block, within) = (e / 32, e % 32);
            // SAFETY: the caller guarantees the row holds element e + 7, so the block is
            // readable; bytes within % 16 .. + 8 are inside its qs.
            let (b, bytes) = unsafe {
                let b = &*row.add(block);
                (b, _mm_loadl_epi64(b.qs.as_ptr().add(within % 16).cast()))
            };
            let bytes = if within < 16 { bytes } else { _mm_srli_epi16::<4>(bytes) };
            let q = _mm256_cvtepu8_epi32(_mm_and_si128(bytes, _mm_set1_epi8(0x0f)));
            let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(8)));
            _mm256_mul_ps(q, _mm256_set1_ps(scale(b.d)))
        }

        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
        unsafe fn load_f32x16(row: *const BlockQ4_0, e: usize) -> std::arch::x86_64::__m512 {
            use std::arch::x86_64::*;
            // SAFETY: as above, all 16 bytes of the block's qs.
            let (b, bytes) = unsafe {
                let b = &*row.add(e / 32);
                (b, _mm_loadu_si128(b.qs.as_ptr().cast()))
            };
            let bytes = if e.is_multiple_of(32) { bytes } else { _mm_srli_epi16::<4>(bytes) };
            let q = _mm512_cvtepu8_epi32(_mm_and_si128(bytes, _mm_set1_epi8(0x0f)));
            let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(8)));
            _mm512_mul_ps(q, _mm512_set1_ps(scale(b.d)))
        }
    }
}

/// One tensor of a layer's cache, K or V, in its type: `[n_kv_head][capacity][head_dim]`
/// elements, as units of the type.
#[derive(Clone, Copy, Debug)]
pub enum KvData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Q8_0(&'a [BlockQ8_0]),
    Q4_0(&'a [BlockQ4_0]),
}

impl<'a> KvData<'a> {
    pub fn new<T: KvElem>(units: &'a [T]) -> KvData<'a> {
        T::wrap(units)
    }

    pub fn kv_type(&self) -> KvType {
        match self {
            KvData::F32(_) => KvType::F32,
            KvData::F16(_) => KvType::F16,
            KvData::Bf16(_) => KvType::Bf16,
            KvData::Q8_0(_) => KvType::Q8_0,
            KvData::Q4_0(_) => KvType::Q4_0,
        }
    }

    /// Units held.
    pub fn len(&self) -> usize {
        match_kv_data!(*self, x => x.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every element, in f32 (exact).
    pub fn to_f32(&self) -> Vec<f32> {
        match_kv_data!(*self, x => KvElem::as_f32(x, &mut vec![0.0; x.len() * self.kv_type().block()]).to_vec())
    }
}

/// A layer's KV cache with K of type `K` and V of type `V`: `[n_kv_head][capacity][head_dim]`
/// elements each (capacity = `k.len() / (n_kv_head · head_dim / K::BLOCK)`), and the token
/// position held by each used slot. Slots `0..pos.len()` are used, in any position order; the
/// rest are never read.
#[derive(Clone, Copy, Debug)]
pub struct KvRows<'a, K, V> {
    pub k: &'a [K],
    pub v: &'a [V],
    pub pos: &'a [usize],
}

/// A layer's KV cache as [`super::attention`] takes it: K and V of any types.
#[derive(Clone, Copy, Debug)]
pub struct KvSlots<'a> {
    pub k: KvData<'a>,
    pub v: KvData<'a>,
    /// The position held by each used slot.
    pub pos: &'a [usize],
}

impl<'a> KvSlots<'a> {
    /// K and V rows (`[n_kv_head][capacity][head_dim]` elements each) and the positions of
    /// the used slots.
    pub fn new<K: KvElem, V: KvElem>(k: &'a [K], v: &'a [V], pos: &'a [usize]) -> KvSlots<'a> {
        KvSlots { k: K::wrap(k), v: V::wrap(v), pos }
    }

    /// The position held by each used slot.
    pub fn pos(&self) -> &'a [usize] {
        self.pos
    }
}

impl<'a, K: KvElem, V: KvElem> From<KvRows<'a, K, V>> for KvSlots<'a> {
    fn from(rows: KvRows<'a, K, V>) -> KvSlots<'a> {
        KvSlots::new(rows.k, rows.v, rows.pos)
    }
}
