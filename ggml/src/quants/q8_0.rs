//! Q8_0: blocks of 32 weights, `x = d * q` with an f16 scale and signed 8-bit q.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;
use super::rounding::trunc_to_i32;

pub const QK8_0: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// scale
    pub d: f16,
    /// quants, -127..=127 from the quantizer (-128 is legal and decodes)
    pub qs: [i8; QK8_0],
}

pub fn dequantize(blocks: &[BlockQ8_0], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = q as f32 * d;
        }
    }
}

/// ggml's reference quantizer: the scale maps the block's largest |x| to 127, and each value
/// rounds half away from zero (`roundf`) and narrows as C does (see [`trunc_to_i32`]).
pub fn quantize(x: &[f32], blocks: &mut [BlockQ8_0]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK8_0)) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f32_to_f16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = trunc_to_i32((v * id).round()) as i8;
        }
    }
}
