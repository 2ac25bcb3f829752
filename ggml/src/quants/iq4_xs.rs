//! IQ4_XS: super-blocks of 256 weights in eight groups of 32, `x = d * (ls - 32) * K[q]` with an
//! f16 super-block scale, a 6-bit scale `ls` per group and IQ4_NL's 4-bit grid indices `q`.
//!
//! Layout (136 bytes): `d: f16`, `scales_h: u16`, `scales_l: [u8; 4]`, `qs: [u8; 128]`. Group
//! `g`'s scale has its low four bits in nibble `g % 2` of `scales_l[g / 2]` (low nibble first)
//! and its top two bits at bits `2g..2g+2` of `scales_h`. Each group's 16 bytes of `qs` are packed
//! as an IQ4_NL block: byte `j` holds element `j` low and element `j + 16` high.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::iq4_nl::{best_group_scale, dequantize_group, pack_group};
use super::rounding::nearest_int;
use crate::types::QK_K;

const GROUPS: usize = QK_K / 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    /// super-block scale
    pub d: f16,
    /// top two bits of each group's 6-bit scale, group `g` at bits `2g..2g+2`
    pub scales_h: u16,
    /// low four bits of each group's 6-bit scale, two groups a byte, even groups low
    pub scales_l: [u8; QK_K / 64],
    /// grid indices, 16 bytes per group packed as in IQ4_NL
    pub qs: [u8; QK_K / 2],
}

impl BlockIQ4XS {
    /// Group `g`'s 6-bit scale, biased by 32.
    fn group_scale(&self, g: usize) -> i32 {
        let low = (self.scales_l[g / 2] >> (4 * (g % 2))) & 0x0f;
        let high = (self.scales_h >> (2 * g)) & 3;
        (low as u16 | high << 4) as i32
    }
}

pub fn dequantize(blocks: &[BlockIQ4XS], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (g, (y, qs)) in y.chunks_exact_mut(32).zip(b.qs.chunks_exact(16)).enumerate() {
            dequantize_group(d * (b.group_scale(g) - 32) as f32, qs, y);
        }
    }
}

/// ggml's quantizer without an importance matrix (`quantize_iq4_xs`): each group's best scale
/// from IQ4_NL's search; the super-block scale maps the group scale of largest magnitude to -32
/// in 6 bits; each group's scale is rounded to those steps (ties to even, clamped to -32..=31)
/// and its indices are chosen again against the rounded scale.
pub fn quantize(x: &[f32], blocks: &mut [BlockIQ4XS]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK_K)) {
        let mut scales = [0.0f32; GROUPS];
        let (mut amax_scale, mut max_scale) = (0.0f32, 0.0f32);
        for (s, x) in scales.iter_mut().zip(x.chunks_exact(32)) {
            *s = best_group_scale(x);
            if s.abs() > amax_scale {
                (amax_scale, max_scale) = (s.abs(), *s);
            }
        }
        // An all-zero super-block stores -0.0 here, as ggml does.
        let d = -max_scale / 32.0;
        b.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.scales_h = 0;
        for (g, (x, qs)) in x.chunks_exact(32).zip(b.qs.chunks_exact_mut(16)).enumerate() {
            let l = nearest_int(id * scales[g]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            pack_group(x, idl, qs);
            let l = (l + 32) as u8;
            if g % 2 == 0 {
                b.scales_l[g / 2] = l & 0x0f;
            } else {
                b.scales_l[g / 2] |= (l & 0x0f) << 4;
            }
            b.scales_h |= ((l >> 4) as u16) << (2 * g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quants::iq4_nl::KVALUES_IQ4NL;

    #[test]
    fn six_bit_group_scales_unpack() {
        let mut b = BlockIQ4XS::zeroed();
        b.d = f16::from_f32(0.5);
        // group 0: 0b10_0001 = 33 -> 1; group 1: 0b00_0100 = 4 -> -28; group 7: 0b11_1111 -> 31
        b.scales_l = [0x41, 0, 0, 0xf0];
        b.scales_h = 0b10 | 0b11 << 14;
        b.qs = [0x88; QK_K / 2]; // every element K[8] = 1
        b.qs[16] = 0x0f; // group 1, element 0: K[15] = 113, element 16: K[0] = -127
        let mut y = [0.0f32; QK_K];
        dequantize(&[b], &mut y);
        assert_eq!((y[0], y[31]), (0.5, 0.5));
        assert_eq!((y[32], y[48], y[33]), (0.5 * -28.0 * 113.0, 0.5 * -28.0 * -127.0, -14.0));
        assert_eq!(y[255], 15.5);
        // groups 2..=6 have scale bits 0 -> -32
        assert_eq!(y[64], -16.0);
    }

    #[test]
    fn grid_values_round_trip() {
        // Every group the grid times the same power of two: the group scales agree, the group
        // with the largest |K| sets d, and everything decodes exactly.
        let x: Vec<f32> = (0..QK_K).map(|i| KVALUES_IQ4NL[i % 16] as f32 * 0.125).collect();
        let mut b = [BlockIQ4XS::zeroed()];
        quantize(&x, &mut b);
        let mut y = [0.0f32; QK_K];
        dequantize(&b, &mut y);
        assert_eq!(y.to_vec(), x);
    }

    #[test]
    fn zero_super_block_stores_negative_zero() {
        let mut b = [BlockIQ4XS::zeroed()];
        quantize(&[0.0; QK_K], &mut b);
        assert_eq!(b[0].d.to_bits(), 0x8000);
        // every scale nearest_int(0) + 32 = 32: low bits 0, high bits 0b10
        assert_eq!((b[0].scales_l, b[0].scales_h), ([0; 4], 0xaaaa));
        assert_eq!(b[0].qs, [0x88; QK_K / 2]);
    }
}
