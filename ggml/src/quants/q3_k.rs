//! Q3_K: super-blocks of 256 weights in 16 sub-blocks of 16, `x = d * (sc - 32) * (q - 4)` with
//! an f16 `d`, 6-bit sub-block scales `sc` and 3-bit q. The low 2 bits of q are packed as in
//! Q2_K (each half of the block in 32 bytes, value `32*k + i` of a half in bits `2k..2k+2` of
//! byte `i`); the third bit of value `v` is bit `v / 32` of `hmask[v % 32]`. The scales use 12
//! bytes: low nibbles of scales 0..8 and 8..16 in the low and high halves of bytes 0..8, their
//! top 2 bits in bytes 8..12, scale `j` at bits `2*(j/4)` of byte `8 + j%4`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::kquants::{bytes_2bit, make_q3_quants, pack_2bit};
use super::rounding::nearest_int;
use crate::types::QK_K;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// third bit of each quant
    pub hmask: [u8; QK_K / 8],
    /// low 2 bits of each quant
    pub qs: [u8; QK_K / 4],
    /// sixteen 6-bit sub-block scales, offset by 32
    pub scales: [u8; 12],
    pub d: f16,
}

/// Packs sixteen 6-bit values (0..64) as Q3_K's `scales`.
pub fn pack_scales(sc: &[u8; 16]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for (j, &s) in sc.iter().enumerate() {
        q[j % 8] |= (s & 0xF) << (4 * (j / 8));
        q[8 + j % 4] |= (s >> 4) << (2 * (j / 4));
    }
    q
}

/// The sixteen 6-bit values packed by [`pack_scales`].
pub fn unpack_scales(q: &[u8; 12]) -> [u8; 16] {
    std::array::from_fn(|j| {
        let low = (q[j % 8] >> (4 * (j / 8))) & 0xF;
        let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
        low | high << 4
    })
}

pub fn dequantize(blocks: &[BlockQ3K], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let scales = unpack_scales(&b.scales);
        for (sub, y) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * (scales[sub] as i32 - 32) as f32;
            let (qs, shift) = bytes_2bit(&b.qs, sub);
            let hmask = &b.hmask[16 * (sub % 2)..16 * (sub % 2) + 16];
            let hbit = sub / 2;
            for ((y, &q), &h) in y.iter_mut().zip(qs).zip(hmask) {
                // A clear high bit means the value is 4 lower.
                let q = ((q >> shift) & 3) as i32 - if (h >> hbit) & 1 != 0 { 0 } else { 4 };
                *y = dl * q as f32;
            }
        }
    }
}

/// ggml's reference quantizer: fit a scale per sub-block, quantize the scales to 6 bits
/// against the one of largest magnitude, then requantize every value against the rounded scale
/// it will actually be decoded with.
pub fn quantize(x: &[f32], blocks: &mut [BlockQ3K]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; QK_K / 16];
        for (s, (x, l)) in scales.iter_mut().zip(x.chunks_exact(16).zip(l.chunks_exact_mut(16))) {
            *s = make_q3_quants(4, x, l);
        }
        let mut max_scale = 0.0f32;
        for &s in &scales {
            if s.abs() > max_scale.abs() {
                max_scale = s;
            }
        }

        b.scales = [0; 12];
        b.d = f16::ZERO;
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            let q: [u8; 16] = std::array::from_fn(|j| {
                // ggml narrows to i8 before clamping.
                let s = nearest_int(iscale * scales[j]) as i8 as i32;
                (s.clamp(-32, 31) + 32) as u8
            });
            b.scales = pack_scales(&q);
            b.d = f32_to_f16(1.0 / iscale);
        }

        let d = b.d.to_f32();
        let packed = unpack_scales(&b.scales);
        for ((&sc, x), l) in packed.iter().zip(x.chunks_exact(16)).zip(l.chunks_exact_mut(16)) {
            let dl = d * (sc as i32 - 32) as f32;
            // A zero scale keeps the quants of the search; they decode to zero either way.
            if dl == 0.0 {
                continue;
            }
            for (q, &v) in l.iter_mut().zip(x) {
                *q = (nearest_int(v / dl).clamp(-4, 3) + 4) as i8;
            }
        }

        b.hmask = [0; QK_K / 8];
        let mut low = [0u8; QK_K];
        for (v, (&q, low)) in l.iter().zip(&mut low).enumerate() {
            let q = q as u8;
            if q > 3 {
                b.hmask[v % 32] |= 1 << (v / 32);
            }
            *low = q & 3;
        }
        pack_2bit(&low, &mut b.qs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_packing_round_trips() {
        for base in 0..64u8 {
            let sc: [u8; 16] = std::array::from_fn(|j| ((base as usize + 13 * j) % 64) as u8);
            assert_eq!(unpack_scales(&pack_scales(&sc)), sc);
        }
        // Scale 9 = 0b10_0101: low nibble in the high half of byte 1, top bits at 4-5 of byte 9.
        let mut sc = [0u8; 16];
        sc[9] = 0b10_0101;
        let q = pack_scales(&sc);
        assert_eq!(q, [0, 0x50, 0, 0, 0, 0, 0, 0, 0, 0b10_0000, 0, 0]);
    }

    #[test]
    fn dequantizes_a_hand_built_block() {
        let mut b = BlockQ3K::zeroed();
        b.d = f16::from_f32(0.5);
        let mut sc = [32u8; 16]; // scale 0
        sc[0] = 34; // +2
        sc[2] = 29; // -3
        sc[15] = 63; // +31
        b.scales = pack_scales(&sc);
        b.qs[0] = 0b00_00_01_11; // value 0: 3, value 32: 1
        b.hmask[0] = 0b0000_0001; // value 0 has its high bit, value 32 does not
        b.hmask[31] = 0b1000_0000; // value 7*32 + 31 = 255 has its high bit, low bits 0
        let mut y = [1.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!(y[0], 0.5 * 2.0 * 3.0);
        assert_eq!(y[1], 0.5 * 2.0 * -4.0);
        assert_eq!(y[32], 0.5 * -3.0 * (1.0 - 4.0));
        assert_eq!(y[255], 0.0);
        assert_eq!(y[254], 0.5 * 31.0 * -4.0);
    }
}
