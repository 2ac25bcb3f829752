//! Small AVX2 building blocks shared by the x86 kernels.

use std::arch::x86_64::*;

/// Split a signed-by-signed byte product into the unsigned-by-signed form `maddubs` and
/// `vpdpbusd` take: `(|w|, a * sign(w))`, so that `|w| * (a * sign(w)) = w * a`.
#[inline]
#[target_feature(enable = "avx2")]
pub fn sign_split(w: __m256i, a: __m256i) -> (__m256i, __m256i) {
    (_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub fn hsum_f32x8(v: __m256) -> f32 {
    let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    let single = _mm_add_ss(pair, _mm_movehdup_ps(pair));
    _mm_cvtss_f32(single)
}

/// Every f16 bit pattern widened to f32 (256 KiB, computed at compile time), as ggml's
/// `ggml_table_f32_f16`. For a block's scale product a table look-up is two loads and a
/// `vmulss`; the F16C route (`vmovd`, `vcvtph2ps`, shuffles) costs several port-5 µops per
/// block, which measured ~10% of a Q8_0 matvec. The scales of a row's blocks take few distinct
/// values, so the lines used stay in L1/L2.
static F16_TO_F32: [f32; 1 << 16] = f16_table();

const fn f16_table() -> [f32; 1 << 16] {
    let mut table = [0f32; 1 << 16];
    let mut bits = 0;
    while bits < table.len() {
        table[bits] = half::f16::from_bits(bits as u16).to_f32_const();
        bits += 1;
    }
    table
}

/// `x` widened to f32 through [`F16_TO_F32`] (exact, like every f16 → f32 conversion).
#[inline]
pub fn f16_lookup(x: half::f16) -> f32 {
    F16_TO_F32[x.to_bits() as usize]
}

/// Lane 0: the product of two f16 values, each widened exactly, so equal to
/// `x.to_f32() * y.to_f32()` (one f32 rounding).
#[inline]
#[target_feature(enable = "avx2")]
pub fn f16_product(x: half::f16, y: half::f16) -> __m128 {
    _mm_set_ss(f16_lookup(x) * f16_lookup(y))
}

/// [`f16_product`] in all eight lanes: the combined scale of a weight block and an
/// activation block.
#[inline]
#[target_feature(enable = "avx2")]
pub fn f16_product_x8(x: half::f16, y: half::f16) -> __m256 {
    _mm256_set1_ps(f16_lookup(x) * f16_lookup(y))
}

/// One f16 value widened with F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub fn f16_to_f32(x: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
}

/// One f16 value widened with F16C, in all eight lanes. (Inside a loop prefer this to
/// broadcasting [`f16_to_f32`]: for a one-lane conversion LLVM may load the value with a
/// `pinsrw` merging into an unrelated register — such as the loop's accumulator, which then
/// chains every iteration through the conversion.)
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub fn f16_to_f32_x8(x: half::f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(x.to_bits() as i16))
}

/// The 32 four-bit fields of 16 packed bytes, one per byte (0..=15), in element order: byte
/// `j`'s low nibble goes to lane `j`, its high nibble to lane `j + 16` — the layout shared by
/// Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and MXFP4.
#[inline]
#[target_feature(enable = "avx2")]
pub fn nibbles_32(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes; loadu has no alignment requirement.
    let packed = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let halves = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(packed), _mm_srli_epi16::<4>(packed));
    _mm256_and_si256(halves, _mm256_set1_epi8(0x0f))
}

/// Byte `i` is 0xff where bit `i` of `bits` (a little-endian u32) is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
pub fn bits_to_bytes_32(bits: [u8; 4]) -> __m256i {
    let word = _mm256_set1_epi32(i32::from_le_bytes(bits));
    // Lane i takes source byte i / 8, then keeps only its bit i % 8.
    let which_byte = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0);
    let spread = _mm256_shuffle_epi8(word, which_byte);
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// The 16-entry signed byte table `t` in both 128-bit halves, for `_mm256_shuffle_epi8`
/// look-ups of 4-bit indices.
#[inline]
#[target_feature(enable = "avx2")]
pub fn table_16x2(t: &[i8; 16]) -> __m256i {
    // SAFETY: `t` is 16 readable bytes; loadu has no alignment requirement.
    let half = unsafe { _mm_loadu_si128(t.as_ptr().cast()) };
    _mm256_broadcastsi128_si256(half)
}

/// Unsigned-by-signed byte products `u * s`, summed in groups of four consecutive lanes into
/// eight i32 (the AVX2 stand-in for VNNI's `vpdpbusd`). `maddubs` saturates its i16 pair sums,
/// so every pair `u[2k] * s[2k] + u[2k+1] * s[2k+1]` must fit an i16: true when `u <= 127`.
#[inline]
#[target_feature(enable = "avx2")]
pub fn dot_u8i8_x4(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// For `_mm256_madd_epi16` against the sixteen i16 pair sums of one 32-byte `maddubs`: `s`
/// holds eight i16 scales (the same eight in both 128-bit halves); the result holds scale
/// `lo` in every i16 lane of the low half and scale `hi` in every lane of the high half.
#[inline]
#[target_feature(enable = "avx2")]
pub fn scale_halves(s: __m256i, lo: usize, hi: usize) -> __m256i {
    let pick = |k: usize| _mm_set1_epi16(i16::from_le_bytes([2 * k as u8, 2 * k as u8 + 1]));
    _mm256_shuffle_epi8(s, _mm256_setr_m128i(pick(lo), pick(hi)))
}

/// Bit `from` of every byte moved to bit `to`, every other bit cleared (`from`, `to` < 8).
#[inline]
#[target_feature(enable = "avx2")]
pub fn move_bit(v: __m256i, from: u32, to: u32) -> __m256i {
    let isolated = _mm256_and_si256(v, _mm256_set1_epi8((1u8 << from) as i8));
    // The bit is alone in its byte, so a shift of whole 64-bit lanes moves nothing across bytes.
    if from <= to {
        _mm256_sll_epi64(isolated, _mm_cvtsi32_si128((to - from) as i32))
    } else {
        _mm256_srl_epi64(isolated, _mm_cvtsi32_si128((from - to) as i32))
    }
}

/// 32 bytes from `p`, in both 256-bit halves of a 512-bit vector.
///
/// # Safety
/// `p` must point to 32 readable bytes.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn broadcast_32(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes; loadu has no alignment requirement.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// `acc + scales * dot` per i32 lane, where `dot` sums the four u8 × i8 products `u * s` of
/// the lane (`vpdpbusd`) and `vpdpwssd` applies the scale. Exact when every four-product sum
/// fits an i16 (true for weights up to 63 against Q8_K's -127..=127) and each `scales` lane
/// holds its scale as an i16 in the low half and zero in the high half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub fn scaled_dot_512(acc: __m512i, u: __m512i, s: __m512i, scales: __m512i) -> __m512i {
    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
    _mm512_dpwssd_epi32(acc, dot, scales)
}

/// The lane indices `s + l / 4` (lane `l`): with `_mm512_permutexvar_epi32`, entries `s..s + 4`
/// of a vector each spread over four consecutive lanes (a sub-block scale over the lanes of its
/// quants).
#[inline]
#[target_feature(enable = "avx512f")]
pub fn quad_index(s: i32) -> __m512i {
    _mm512_add_epi32(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_set1_epi32(s))
}

/// The sums of sixteen vectors at once: lane `i` of the result is the sum of the lanes of
/// `v[i]`, in the same order for every `i` whatever the other vectors hold (each 128-bit
/// quarter `(e0 + e2) + (e1 + e3)`, then `(q0 + q1) + (q2 + q3)`), so a group kernel's
/// results do not depend on how many of the sixteen it fills. 45 shuffles and adds, against
/// about eight per vector for separate horizontal sums.
#[inline]
#[target_feature(enable = "avx512f")]
pub fn sums_16(v: &[__m512; 16]) -> __m512 {
    // Per 128-bit quarter of a pair (a, b): [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let pairs: [__m512; 8] = std::array::from_fn(|i| {
        _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]))
    });
    // Per quarter of four vectors: each one's quarter sum, in order.
    let quads: [__m512; 4] = std::array::from_fn(|i| {
        let (s, t) = (pairs[2 * i], pairs[2 * i + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0b01_00_01_00>(s, t), _mm512_shuffle_ps::<0b11_10_11_10>(s, t))
    });
    // Quarters 0 + 1 and 2 + 3 of two quads side by side, then the two halves.
    let halves = |x: __m512, y: __m512| {
        _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(x, y), _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y))
    };
    halves(halves(quads[0], quads[1]), halves(quads[2], quads[3]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_16_sums_each_vector() {
        if !crate::kernels::cpu::detected().avx512 {
            return;
        }
        // Vector i holds i · 100 + lane: its sum is 1600 i + 120, exact in f32.
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let lanes: [f32; 16] = std::array::from_fn(|l| (i * 100 + l) as f32);
            // SAFETY: 16 f32; the CPU has AVX-512 (checked above).
            unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
        });
        let mut got = [0f32; 16];
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(got.as_mut_ptr(), sums_16(&v)) };
        let want: [f32; 16] = std::array::from_fn(|i| (1600 * i + 120) as f32);
        assert_eq!(got, want);
    }
}
