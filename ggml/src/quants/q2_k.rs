//! Q2_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x = d * sc * q - dmin * m` with
//! 2-bit q and, per sub-block, a 4-bit scale `sc` (low nibble of `scales[j]`) and 4-bit min `m`
//! (high nibble); `d` and `dmin` are f16. The quants are packed four to a byte, each half of
//! the block in 32 bytes: value `32*k + i` of a half in bits `2k..2k+2` of byte `i`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::kquants::{bytes_2bit, make_qkx2_quants, pack_2bit, ScaleSearch};
use super::rounding::nearest_int;
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// per sub-block: scale in the low nibble, min in the high nibble
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    /// scale of the sub-block scales
    pub d: f16,
    /// scale of the sub-block mins
    pub dmin: f16,
}

pub fn dequantize(blocks: &[BlockQ2K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (sub, y) in y.chunks_exact_mut(16).enumerate() {
            let sc = b.scales[sub];
            let dl = d * (sc & 0xF) as f32;
            let ml = dmin * (sc >> 4) as f32;
            let (qs, shift) = bytes_2bit(&b.qs, sub);
            for (y, &q) in y.iter_mut().zip(qs) {
                *y = dl * ((q >> shift) & 3) as f32 - ml;
            }
        }
    }
}

const SEARCH: ScaleSearch = ScaleSearch { rmin: -0.5, rdelta: 0.1, steps: 15, mad: true };

/// ggml's reference quantizer: fit scale and min per sub-block (weights |x|, absolute error),
/// quantize those to 4 bits against the largest of each, then requantize every value against
/// the rounded sub-block scale and min it will actually be decoded with.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ2K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        for (j, (x, l)) in x.chunks_exact(16).zip(l.chunks_exact_mut(16)).enumerate() {
            let weights: [f32; 16] = std::array::from_fn(|i| x[i].abs());
            (scales[j], mins[j]) = make_qkx2_quants(3, x, &weights, l, &SEARCH);
        }
        let max_scale = scales.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
        let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });

        b.scales = [0; QK_K / 16];
        b.d = f16::ZERO;
        if max_scale > 0.0 {
            let iscale = 15.0 / max_scale;
            for (q, &s) in b.scales.iter_mut().zip(&scales) {
                *q = nearest_int(iscale * s) as u8;
            }
            b.d = f32_to_f16(max_scale / 15.0);
        }
        b.dmin = f16::ZERO;
        if max_min > 0.0 {
            let iscale = 15.0 / max_min;
            for (q, &m) in b.scales.iter_mut().zip(&mins) {
                *q |= (nearest_int(iscale * m) << 4) as u8;
            }
            b.dmin = f32_to_f16(max_min / 15.0);
        }

        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for ((&sc, x), l) in b.scales.iter().zip(x.chunks_exact(16)).zip(l.chunks_exact_mut(16)) {
            let dl = d * (sc & 0xF) as f32;
            // A zero scale keeps the quants of the search; they decode to -min either way.
            if dl == 0.0 {
                continue;
            }
            let ml = dmin * (sc >> 4) as f32;
            for (q, &v) in l.iter_mut().zip(x) {
                *q = nearest_int((v + ml) / dl).clamp(0, 3) as u8;
            }
        }
        pack_2bit(&l, &mut b.qs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_a_hand_built_block() {
        let mut b = BlockQ2K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        // Byte 0 holds value 0 (bits 0-1), 32 (2-3), 64 (4-5) and 96 (6-7): sub-blocks 0, 2, 4, 6.
        b.qs[0] = 0b11_10_01_00;
        // Byte 32 + 17 holds value 128 + 17 (sub-block 9) in its low bits.
        b.qs[49] = 0b00_00_00_11;
        b.scales[0] = 0x12; // scale 2, min 1
        b.scales[2] = 0x03; // scale 3, min 0
        b.scales[4] = 0x41; // scale 1, min 4
        b.scales[6] = 0xF0; // scale 0, min 15
        b.scales[9] = 0x0F; // scale 15
        let mut y = [1.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * 0.0 - 0.25 * 1.0);
        assert_eq!(y[1], -0.25); // q = 0 in the same sub-block
        assert_eq!(y[32], 0.5 * 3.0 * 1.0);
        assert_eq!(y[64], 0.5 * 1.0 * 2.0 - 0.25 * 4.0);
        assert_eq!(y[96], -0.25 * 15.0);
        assert_eq!(y[145], 0.5 * 15.0 * 3.0);
        assert_eq!(y[144], 0.0);
    }

    #[test]
    fn quantize_fits_a_four_level_ramp() {
        // Four levels per sub-block, the same in each: representable up to f16 rounding.
        let x: Vec<f32> = (0..QK_K).map(|i| (i % 4) as f32 * 0.5 - 0.5).collect();
        let mut b = [BlockQ2K::zeroed()];
        quantize(&x, &mut b);
        let mut y = vec![0.0f32; QK_K];
        dequantize(&b, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-2, "{a} vs {b}");
        }
    }
}
