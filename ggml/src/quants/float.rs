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

pub fn quantize_f16(x: &[f32], y: &mut [f16]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = f32_to_f16(x);
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

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)).to_bits(), 0x3f80); // tie, even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)).to_bits(), 0x3f82); // tie, odd
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0); // sNaN quieted
    }
}
