//! Q6_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x = d * sc * (q - 32)` with an f16
//! `d`, signed 8-bit sub-block scales `sc` and 6-bit q. Each half of the block (128 values) uses
//! 64 bytes of `ql` and 32 of `qh`: value `32*k + i` of a half keeps its low 4 bits in byte
//! `i + 32*(k%2)` of the half's `ql` (low nibble for k < 2, high for k >= 2) and its top 2 bits
//! in bits `2k..2k+2` of byte `i` of the half's `qh`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::kquants::{make_qx_quants, GROUP_MAX_EPS};
use super::rounding::nearest_int;
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// low 4 bits of each quant
    pub ql: [u8; QK_K / 2],
    /// top 2 bits of each quant
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: f16,
}

pub fn dequantize(blocks: &[BlockQ6K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (half, y) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[64 * half..64 * half + 64];
            let qh = &b.qh[32 * half..32 * half + 32];
            for (k, y) in y.chunks_exact_mut(32).enumerate() {
                let ql = &ql[32 * (k % 2)..32 * (k % 2) + 32];
                let shift = 4 * (k / 2);
                for (i, y) in y.iter_mut().enumerate() {
                    let q = ((ql[i] >> shift) & 0xF) | ((qh[i] >> (2 * k)) & 3) << 4;
                    let sc = b.scales[8 * half + 2 * k + i / 16];
                    *y = d * sc as f32 * (q as i32 - 32) as f32;
                }
            }
        }
    }
}

/// ggml's reference quantizer: fit a scale per sub-block (x²-weighted), quantize the scales to
/// 8 bits against the one of largest magnitude, then requantize every value against the
/// rounded scale it will actually be decoded with.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ6K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        for (s, (x, l)) in scales.iter_mut().zip(x.chunks_exact(16).zip(l.chunks_exact_mut(16))) {
            *s = make_qx_quants(32, x, l);
        }
        let mut max_scale = 0.0f32;
        for &s in &scales {
            if s.abs() > max_scale.abs() {
                max_scale = s;
            }
        }
        if max_scale.abs() < GROUP_MAX_EPS {
            *b = BlockQ6K::zeroed();
            continue;
        }

        // The scale of largest magnitude maps to -128, the one i8 level without a positive twin.
        let iscale = -128.0 / max_scale;
        b.d = f32_to_f16(1.0 / iscale);
        for (q, &s) in b.scales.iter_mut().zip(&scales) {
            *q = nearest_int(iscale * s).min(127) as i8;
        }

        let d = b.d.to_f32();
        for ((&sc, x), l) in b.scales.iter().zip(x.chunks_exact(16)).zip(l.chunks_exact_mut(16)) {
            let dl = d * sc as f32;
            // A zero scale keeps the quants of the search; they decode to zero either way.
            if dl == 0.0 {
                continue;
            }
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (nearest_int(v / dl).clamp(-32, 31) + 32) as i8;
            }
        }

        for (half, l) in l.chunks_exact(128).enumerate() {
            let ql = &mut b.ql[64 * half..64 * half + 64];
            let qh = &mut b.qh[32 * half..32 * half + 32];
            for i in 0..32 {
                let q: [u8; 4] = std::array::from_fn(|k| l[i + 32 * k] as u8);
                ql[i] = (q[0] & 0xF) | (q[2] & 0xF) << 4;
                ql[i + 32] = (q[1] & 0xF) | (q[3] & 0xF) << 4;
                qh[i] = q[0] >> 4 | (q[1] >> 4) << 2 | (q[2] >> 4) << 4 | (q[3] >> 4) << 6;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantizes_a_hand_built_block() {
        let mut b = BlockQ6K::zeroed();
        b.d = f16::from_f32(0.5);
        b.scales[0] = 3;
        b.scales[5] = -128;
        b.scales[15] = 127;
        // Value 0: low bits 0x5 (low nibble of ql[0]), top bits 2 (qh[0] bits 0-1): 37.
        b.ql[0] = 0x05;
        b.qh[0] = 0b10;
        // Value 64 + 16 = 80 (sub-block 5): high nibble of ql[16], qh[16] bits 4-5: 0x3F = 63.
        b.ql[16] = 0xF0;
        b.qh[16] = 0b11_0000;
        // Value 128 + 96 + 31 = 255 (sub-block 15): high nibble of ql[64 + 63], qh[32 + 31] bits 6-7.
        b.ql[127] = 0x10;
        b.qh[63] = 0b0100_0000;
        let mut y = [1.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 3.0 * (37.0 - 32.0));
        assert_eq!(y[1], 0.5 * 3.0 * -32.0);
        assert_eq!(y[80], 0.5 * -128.0 * (63.0 - 32.0));
        assert_eq!(y[255], 0.5 * 127.0 * (0x11 as f32 - 32.0));
    }

    #[test]
    fn quantize_round_trips_close_and_zeros_stay_zero() {
        let mut x: Vec<f32> = (0..QK_K).map(|i| ((i * 29 % 67) as f32 - 30.0) / 9.0).collect();
        x[16..32].fill(0.0);
        let mut b = [BlockQ6K::zeroed()];
        quantize(&x, &mut b);
        let mut y = vec![0.0f32; QK_K];
        dequantize(&b, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 0.06, "{a} vs {b}");
        }
        assert!(y[16..32].iter().all(|&v| v == 0.0));
    }
}
