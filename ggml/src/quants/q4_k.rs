//! Q4_K: super-blocks of 256 weights in 8 sub-blocks of 32, `x = d * sc * q - dmin * m` with
//! 4-bit q, f16 `d` and `dmin`, and per sub-block a 6-bit scale `sc` and 6-bit min `m`, packed
//! in 12 bytes (see [`pack_scale_min_k4`]). Sub-blocks `2k` and `2k+1` share bytes
//! `32k..32k+32` of `qs`: the first in the low nibbles, the second in the high.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::kquants::{make_qkx2_quants, pack_scale_min_k4, scale_min_k4, ScaleSearch};
use super::rounding::nearest_int;
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    /// scale of the sub-block scales
    pub d: f16,
    /// scale of the sub-block mins
    pub dmin: f16,
    /// eight 6-bit scales and eight 6-bit mins
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}

pub fn dequantize(blocks: &[BlockQ4K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let dmin = b.dmin.to_f32();
        for (sub, y) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = scale_min_k4(sub, &b.scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            let shift = 4 * (sub % 2);
            for (y, &q) in y.iter_mut().zip(&b.qs[32 * (sub / 2)..]) {
                *y = dl * ((q >> shift) & 0xF) as f32 - ml;
            }
        }
    }
}

const SEARCH: ScaleSearch = ScaleSearch { rmin: -1.0, rdelta: 0.1, steps: 20, mad: false };

/// ggml's reference quantizer: fit scale and min per sub-block (weights `rms(x) + |x|`, squared
/// error), quantize those to 6 bits against the largest of each, then requantize every value
/// against the rounded sub-block scale and min it will actually be decoded with.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ4K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0u8; QK_K];
        let (scales, mins) = fit_sub_blocks(15, x, &mut l, &SEARCH);
        (b.d, b.dmin, b.scales) = pack_scales(&scales, &mins);
        requantize(15, x, b.d, b.dmin, &b.scales, &mut l);
        for (k, qs) in b.qs.chunks_exact_mut(32).enumerate() {
            let l = &l[64 * k..64 * k + 64];
            for (i, q) in qs.iter_mut().enumerate() {
                *q = l[i] | l[i + 32] << 4;
            }
        }
    }
}

/// The per-sub-block (scale, min) search Q4_K and Q5_K share, leaving the searched quants in `l`.
pub(crate) fn fit_sub_blocks(nmax: i32, x: &[f32], l: &mut [u8; QK_K], search: &ScaleSearch) -> ([f32; 8], [f32; 8]) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for (j, (x, l)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + x[i].abs());
        (scales[j], mins[j]) = make_qkx2_quants(nmax, x, &weights, l, search);
    }
    (scales, mins)
}

/// Quantizes the sub-block scales and mins to 6 bits against the largest of each: returns
/// `d`, `dmin` and the packed 12 bytes.
pub(crate) fn pack_scales(scales: &[f32; 8], mins: &[f32; 8]) -> (f16, f16, [u8; 12]) {
    let max_scale = scales.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0.0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml narrows to u8 before taking the minimum.
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    (f32_to_f16(max_scale / 63.0), f32_to_f16(max_min / 63.0), pack_scale_min_k4(&ls, &lm))
}

/// Requantizes every value to `0..=nmax` against the rounded scale and min of its sub-block;
/// sub-blocks whose scale rounded to zero keep the searched quants.
pub(crate) fn requantize(nmax: i32, x: &[f32], d: f16, dmin: f16, packed: &[u8; 12], l: &mut [u8; QK_K]) {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    for (j, (x, l)) in x.chunks_exact(32).zip(l.chunks_exact_mut(32)).enumerate() {
        let (sc, m) = scale_min_k4(j, packed);
        let dl = d * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin * m as f32;
        for (q, &v) in l.iter_mut().zip(x) {
            *q = nearest_int((v + ml) / dl).clamp(0, nmax) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_a_hand_built_block() {
        let mut b = BlockQ4K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        let mut sc = [0u8; 8];
        let mut m = [0u8; 8];
        (sc[0], m[0]) = (2, 1);
        (sc[1], m[1]) = (3, 0);
        (sc[7], m[7]) = (63, 40);
        b.scales = pack_scale_min_k4(&sc, &m);
        b.qs[0] = 0x5A; // value 0 (sub-block 0): 10, value 32 (sub-block 1): 5
        b.qs[127] = 0xF0; // value 223 (sub-block 6): 0, value 255 (sub-block 7): 15
        let mut y = [1.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * 10.0 - 0.25);
        assert_eq!(y[1], -0.25);
        assert_eq!(y[32], 0.5 * 3.0 * 5.0);
        assert_eq!(y[223], 0.0);
        assert_eq!(y[255], 0.5 * 63.0 * 15.0 - 0.25 * 40.0);
    }

    #[test]
    fn quantize_round_trips_close() {
        let x: Vec<f32> = (0..2 * QK_K).map(|i| ((i * 29 % 67) as f32 - 30.0) / 9.0).collect();
        let mut b = [BlockQ4K::zeroed(); 2];
        quantize(&x, &mut b);
        let mut y = vec![0.0f32; 2 * QK_K];
        dequantize(&b, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.25, "{a} vs {b}");
        }
    }
}
