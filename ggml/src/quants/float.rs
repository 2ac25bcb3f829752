//! Plain float types: F32, F16, BF16 (one element per "block"), with ggml's exact rounding.

use half::{bf16, f16};

/// f32 -> f16 as ggml rounds it: to nearest even, overflow to infinity, every NaN to the
/// canonical quiet NaN `0x7e00` (sign kept).
#[inline]
pub fn f32_to_f16(x: f32) -> f16 {
    if x.is_nan() {
        return f16::from_bits(0x7e00 | ((x.to_bits() >> 16) as u16 & 0x8000));
    }
    f16::from_f32(x)
}

/// f32 -> bf16 as ggml rounds it: to nearest even; a NaN keeps its top bits and is made quiet.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits((bits >> 16) as u16 | 0x40);
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    bf16::from_bits((bits.wrapping_add(rounding) >> 16) as u16)
}

pub fn dequantize_f16(x: &[f16], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = x.to_f32();
    }
}

/// [`f32_to_f16`] of every value: sixteen at a time on AVX-512 (the hardware's round to
/// nearest even, then NaNs made canonical), the rest one by one.
pub fn quantize_f16(x: &[f32], y: &mut [f16]) {
    let n = x.len().min(y.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::cpu::detected().avx512 {
        // SAFETY: the CPU has AVX-512 F/BW/VL and F16C (checked).
        done = unsafe { x86::quantize_f16_avx512(&x[..n], &mut y[..n]) };
    }
    for (y, &x) in y[done..n].iter_mut().zip(&x[done..n]) {
        *y = f32_to_f16(x);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// The whole sixteens of `x` into `y` (same length), as [`super::f32_to_f16`] rounds:
    /// `vcvtps2ph` to nearest even (overflow to infinity), then each NaN lane `0x7e00` with
    /// its sign. Returns how many it wrote.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub(super) fn quantize_f16_avx512(x: &[f32], y: &mut [f16]) -> usize {
        let whole = x.len() / 16 * 16;
        for (x, y) in x[..whole].chunks_exact(16).zip(y[..whole].chunks_exact_mut(16)) {
            // SAFETY: 16 f32 in, 16 f16 (32 bytes) out; unaligned loads and stores.
            unsafe {
                let v = _mm512_loadu_ps(x.as_ptr());
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                let sign = _mm256_and_si256(h, _mm256_set1_epi16(i16::MIN));
                let canonical = _mm256_or_si256(sign, _mm256_set1_epi16(0x7e00));
                _mm256_storeu_si256(y.as_mut_ptr().cast(), _mm256_mask_mov_epi16(h, nan, canonical));
            }
        }
        whole
    }
}

pub fn dequantize_bf16(x: &[bf16], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = f32::from_bits((x.to_bits() as u32) << 16);
    }
}

pub fn quantize_bf16(x: &[f32], y: &mut [bf16]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f32_to_bf16(x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounds_to_nearest_even_and_canonicalizes_nan() {
        // 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): ties go to even (1.0).
        assert_eq!(f32_to_f16(1.0 + f32::powi(2.0, -11)).to_bits(), 0x3c00);
        // 1 + 3 * 2^-11 is halfway between 1 + 2^-10 (odd) and 1 + 2^-9 (even).
        assert_eq!(f32_to_f16(1.0 + 3.0 * f32::powi(2.0, -11)).to_bits(), 0x3c02);
        assert_eq!(f32_to_f16(65520.0).to_bits(), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16(f32::from_bits(0xffc0_0123)).to_bits(), 0xfe00);
    }

    /// The SIMD path of `quantize_f16` gives `f32_to_f16`'s bits for ties, overflow,
    /// subnormals, zeros, infinities and NaNs of both signs, and random values.
    #[test]
    fn quantize_f16_is_f32_to_f16_on_every_path() {
        let mut x: Vec<f32> = [
            1.0 + f32::powi(2.0, -11),
            1.0 + 3.0 * f32::powi(2.0, -11),
            65520.0,
            -65520.0,
            65519.0,
            6.0e-8,
            2.9e-8,
            3.0e-8,
            -1.0e-6,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xffc0_0123),
            f32::from_bits(0x7f80_0001),
            1.0e10,
        ]
        .to_vec();
        let mut seed = 7u32;
        x.extend((0..1000).map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f32::from_bits(seed) // every exponent and mantissa, NaNs included
        }));
        let mut got = vec![f16::ZERO; x.len()];
        quantize_f16(&x, &mut got);
        for (v, g) in x.iter().zip(&got) {
            assert_eq!(g.to_bits(), f32_to_f16(*v).to_bits(), "{v:e} ({:#x})", v.to_bits());
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80); // tie, even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82); // tie, odd
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0); // sNaN quieted
    }
}
