//! Q5_K: super-blocks of 256 weights in 8 sub-blocks of 32, `x = d * sc * q - dmin * m` with
//! 5-bit q, f16 `d` and `dmin`, and per sub-block a 6-bit scale and min packed exactly as in
//! Q4_K. The low 4 bits of q are laid out as Q4_K's quants (sub-blocks `2k`, `2k+1` in the low
//! and high nibbles of `qs[32k..32k+32]`); the fifth bit of value `32*j + i` is bit `j` of
//! `qh[i]`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::kquants::{scale_min_k4, ScaleSearch};
use super::q4_k::{fit_sub_blocks, pack_scales, requantize};
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    /// scale of the sub-block scales
    pub d: f16,
    /// scale of the sub-block mins
    pub dmin: f16,
    /// eight 6-bit scales and eight 6-bit mins
    pub scales: [u8; 12],
    /// fifth bit of each quant
    pub qh: [u8; QK_K / 8],
    /// low 4 bits of each quant
    pub qs: [u8; QK_K / 2],
}

pub fn dequantize(blocks: &[BlockQ5K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (sub, y) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(sub, &b.scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let shift = 4 * (sub % 2);
            for ((y, &q), &h) in y.iter_mut().zip(&b.qs[32 * (sub / 2)..]).zip(&b.qh) {
                let q = ((q >> shift) & 0xF) | ((h >> sub) & 1) << 4;
                *y = dl * q as f32 - ml;
            }
        }
    }
}

const SEARCH: ScaleSearch = ScaleSearch { rmin: -0.5, rdelta: 0.1, steps: 15, mad: false };

/// ggml's reference quantizer: Q4_K's, with 31 levels and a narrower scale search.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ5K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = fit_sub_blocks(31, x, &mut l, &SEARCH);
        (b.d, b.dmin, b.scales) = pack_scales(&scales, &mins);
        requantize(31, x, b.d, b.dmin, &b.scales, &mut l);
        b.qh = [0; QK_K / 8];
        for (k, qs) in b.qs.chunks_exact_mut(32).enumerate() {
            let l = &l[64 * k..64 * k + 64];
            for (i, q) in qs.iter_mut().enumerate() {
                let (lo, hi) = (l[i], l[i + 32]);
                *q = (lo & 0xF) | (hi & 0xF) << 4;
                b.qh[i] |= (lo >> 4) << (2 * k) | (hi >> 4) << (2 * k + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::kquants::pack_scale_min_k4;

    #[test]
    fn dequantizes_a_hand_built_block() {
        let mut b = BlockQ5K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        let mut sc = [0u8; 8];
        let mut m = [0u8; 8];
        (sc[0], m[0]) = (2, 1);
        (sc[5], m[5]) = (40, 33);
        b.scales = pack_scale_min_k4(&sc, &m);
        b.qs[0] = 0x0A; // value 0: low bits 10
        b.qh[0] = 0b0000_0001; // value 0: fifth bit set
        b.qs[64 + 3] = 0x70; // value 5*32 + 3 = 163 (sub-block 5, high nibbles): low bits 7
        b.qh[3] = 0b0010_0000; // value 163: fifth bit set
        let mut y = [1.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * 26.0 - 0.25);
        assert_eq!(y[1], -0.25);
        assert_eq!(y[163], 0.5 * 40.0 * 23.0 - 0.25 * 33.0);
        assert_eq!(y[131], 0.0); // sub-block 4 shares byte 67's low nibble and has no scale
    }

    #[test]
    fn quantize_round_trips_close() {
        let x: Vec<f32> = (0..QK_K).map(|i| ((i * 29 % 67) as f32 - 30.0) / 9.0).collect();
        let mut b = [BlockQ5K::zeroed()];
        quantize(&x, &mut b);
        let mut y = vec![0.0f32; QK_K];
        dequantize(&b, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.12, "{a} vs {b}");
        }
    }
}
