//! MXFP4 (OCP microscaling FP4): blocks of 32 weights, `x = 2^(e - 127) * v` with a shared E8M0
//! exponent `e` and 4-bit E2M1 values `v` in {0, 0.5, 1, 1.5, 2, 3, 4, 6} with a sign bit.
//!
//! Layout (17 bytes, byte-aligned): `e: u8`, then `qs: [u8; 16]`. Byte `j` holds element `j` in
//! its low nibble and element `j + 16` in its high nibble. Like ggml we work with the E2M1 values
//! doubled (so they are integers) and the scale halved.

use bytemuck::{Pod, Zeroable};

use super::rounding::trunc_to_i32;

pub const QK_MXFP4: usize = 32;

/// E2M1 values, doubled; index bit 3 is the sign.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMXFP4 {
    /// E8M0 shared exponent: the block scale is `2^(e - 127)`
    pub e: u8,
    /// element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble
    pub qs: [u8; QK_MXFP4 / 2],
}

/// Half the E8M0 scale, `2^(e - 128)`, built from its bits; `e` 0 and 1 give f32 subnormals.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 { 0x0020_0000u32 << e } else { ((e - 1) as u32) << 23 };
    f32::from_bits(bits)
}

pub fn dequantize(blocks: &[BlockMXFP4], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_MXFP4)) {
        let d = e8m0_to_f32_half(b.e);
        let (lo, hi) = y.split_at_mut(QK_MXFP4 / 2);
        for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *lo = KVALUES_MXFP4[(q & 0x0f) as usize] as f32 * d;
            *hi = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the exponent puts the block's largest |x| in the top binade of
/// E2M1 (`floor(log2(amax)) - 2`), then each value takes the nearest representable value, the
/// lowest index winning ties (so +0 beats -0).
pub fn quantize(x: &[f32], blocks: &mut [BlockMXFP4]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_MXFP4)) {
        let amax = x.iter().fold(0.0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        // ggml narrows with an `(uint8_t)` cast, so an amax below 2^-125 wraps rather than clamps.
        let e = if amax > 0.0 { trunc_to_i32(amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
        let d = e8m0_to_f32_half(e);
        b.e = e;
        let (lo, hi) = x.split_at(QK_MXFP4 / 2);
        for ((q, &lo), &hi) in b.qs.iter_mut().zip(lo).zip(hi) {
            *q = nearest_index(lo, d) | nearest_index(hi, d) << 4;
        }
    }
}

fn nearest_index(x: f32, d: f32) -> u8 {
    let mut best = (0u8, (KVALUES_MXFP4[0] as f32 * d - x).abs());
    for (i, &v) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (v as f32 * d - x).abs();
        if err < best.1 {
            best = (i as u8, err);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_scale_covers_subnormals() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(1), f32::powi(2.0, -127));
        assert_eq!(e8m0_to_f32_half(0), f32::powi(2.0, -128));
        assert_eq!(e8m0_to_f32_half(255), f32::powi(2.0, 127));
    }

    #[test]
    fn nibbles_index_signed_e2m1() {
        let mut qs = [0u8; 16];
        qs[0] = 0xd7; // element 0: index 7 (+6), element 16: index 13 (-3)
        let b = BlockMXFP4 { e: 128, qs }; // scale 2
        let mut y = [1.0f32; 32];
        dequantize(&[b], &mut y);
        assert_eq!((y[0], y[16], y[1]), (12.0, -6.0, 0.0));
    }

    #[test]
    fn largest_value_lands_in_the_top_binade() {
        let mut x = [0.0f32; 32];
        x[3] = 6.0; // log2 -> 2, e = 127: scale 1, so 6.0 is index 7
        x[20] = -0.7; // nearest is -0.5 (index 9)
        x[4] = 0.25; // halfway between 0 and 0.5: index 0 wins the tie
        let mut b = [BlockMXFP4::zeroed()];
        quantize(&x, &mut b);
        assert_eq!(b[0].e, 127);
        assert_eq!((b[0].qs[3] & 0x0f, b[0].qs[4] >> 4, b[0].qs[4] & 0x0f), (7, 9, 0));
    }
}
