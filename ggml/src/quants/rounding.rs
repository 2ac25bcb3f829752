//! The rounding helpers ggml's quantizers share. Matching them exactly is what makes our
//! quantized bytes identical to ggml's.

/// Round to the nearest integer, ties to even, as ggml's `nearest_int` does: adding 1.5 * 2^23
/// leaves the integer in the low mantissa bits. Valid for |x| <= 2^22 - 1 (ggml asserts this).
#[inline]
pub fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// A C float-to-integer conversion as x86 performs it (`cvttss2si`): truncate toward zero, and
/// turn NaN or anything outside `i32` into `i32::MIN`. ggml's reference quantizers then narrow
/// the result with `(int8_t)` / `(uint8_t)` casts, which keep the low byte; callers do the same
/// with `as i8` / `as u8`. Rust's saturating `as` would differ when a block's scale is so small
/// that its inverse overflows to infinity.
#[inline]
pub fn trunc_to_i32(x: f32) -> i32 {
    if x.abs() < 2_147_483_648.0 {
        x as i32
    } else {
        i32::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_ties_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.6), -3);
        assert_eq!(nearest_int(4_194_303.0), 4_194_303);
        assert_eq!(nearest_int(-4_194_303.0), -4_194_303);
    }

    #[test]
    fn out_of_range_conversions_become_i32_min() {
        assert_eq!(trunc_to_i32(-2.9), -2);
        assert_eq!(trunc_to_i32(f32::INFINITY), i32::MIN);
        assert_eq!(trunc_to_i32(f32::NAN), i32::MIN);
        assert_eq!(trunc_to_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(trunc_to_i32(2_147_483_648.0), i32::MIN);
    }
}
