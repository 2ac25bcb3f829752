//! IQ4_NL: blocks of 32 weights, `x = d * K[q]` with an f16 scale and 4-bit indices `q` into a
//! fixed non-linear grid `K` of 16 signed 8-bit values (denser near zero).
//!
//! Layout (18 bytes): `d: f16`, then `qs: [u8; 16]`. Byte `j` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble.
//!
//! The scale search for one 32-value group lives here and is shared with IQ4_XS.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::float::f32_to_f16;

pub const QK4_NL: usize = 32;

/// The non-linear grid shared by IQ4_NL and IQ4_XS.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Scales tried on each side of the initial guess, as ggml's `quantize_iq4_nl` / `_xs` do.
const NTRY: i32 = 7;

/// Groups whose largest |x| is below this get a zero scale.
const GROUP_MAX_EPS: f32 = 1e-15;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    /// scale
    pub d: f16,
    /// grid indices: element `j` in the low nibble of byte `j`, element `j + 16` in the high
    pub qs: [u8; QK4_NL / 2],
}

pub fn dequantize(blocks: &[BlockIQ4NL], y: &mut [f32]) {
    for (b, y) in blocks.iter().zip(y.chunks_exact_mut(QK4_NL)) {
        dequantize_group(b.d.to_f32(), &b.qs, y);
    }
}

/// Decode one 32-value group of grid indices with scale `d`.
pub(crate) fn dequantize_group(d: f32, qs: &[u8], y: &mut [f32]) {
    let (lo, hi) = y.split_at_mut(16);
    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
        *lo = d * KVALUES_IQ4NL[(q & 0x0f) as usize] as f32;
        *hi = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

/// ggml's quantizer without an importance matrix (`quantize_iq4_nl`): the best scale for the
/// block from [`best_group_scale`], stored in f16, with indices chosen against the f32 scale.
pub fn quantize(x: &[f32], blocks: &mut [BlockIQ4NL]) {
    for (b, x) in blocks.iter_mut().zip(x.chunks_exact(QK4_NL)) {
        let d = best_group_scale(x);
        b.d = f32_to_f16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        pack_group(x, id, &mut b.qs);
    }
}

/// Grid indices of `x * id`, packed two to a byte (`j` low, `j + 16` high) into 16 bytes.
pub(crate) fn pack_group(x: &[f32], id: f32, qs: &mut [u8]) {
    let (lo, hi) = x.split_at(16);
    for ((q, &lo), &hi) in qs.iter_mut().zip(lo).zip(hi) {
        *q = nearest_index(id * lo) | nearest_index(id * hi) << 4;
    }
}

/// Index of the grid value nearest `x`, by ggml's bisection: it keeps `K[lo] <= x < K[hi]` and
/// then prefers `hi` unless `x` is strictly closer to `K[hi - 1]`. NaN ends at the top index.
pub(crate) fn nearest_index(x: f32) -> u8 {
    let k = |i: usize| KVALUES_IQ4NL[i] as f32;
    if x <= k(0) {
        return 0;
    }
    if x >= k(15) {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < k(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - k(hi - 1) < k(hi) - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

/// The scale ggml picks for one 32-value group without an importance matrix: start from the one
/// that maps the value of largest magnitude to the grid's end, take the least-squares scale (with
/// weights `x^2`) for the indices it gives, then try the 2 * NTRY + 1 scales that map that value
/// to `K[0] - NTRY ..= K[0] + NTRY` and keep whichever least-squares fit is best. Returns 0 for a
/// group that is (nearly) all zeros.
pub(crate) fn best_group_scale(x: &[f32]) -> f32 {
    // The first value of largest magnitude wins, sign included.
    let (amax, max) =
        x.iter().fold((0.0f32, 0.0f32), |(amax, max), &v| if v.abs() > amax { (v.abs(), v) } else { (amax, max) });
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let k0 = KVALUES_IQ4NL[0] as f32;
    // Least-squares sums for the indices that `id` gives, weighted by x^2.
    let fit = |id: f32| {
        x.iter().fold((0.0f32, 0.0f32), |(sumqx, sumq2), &v| {
            let q = KVALUES_IQ4NL[nearest_index(id * v) as usize] as f32;
            let w = v * v;
            (sumqx + w * q * v, sumq2 + w * q * q)
        })
    };
    let (sumqx, sumq2) = fit(1.0 / (-max / k0));
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = fit((itry + KVALUES_IQ4NL[0] as i32) as f32 / max);
        // Compares sumqx^2 / sumq2 against the best without dividing.
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_index_the_grid() {
        let mut qs = [0x88u8; 16];
        qs[7] = 0xf0; // element 7: K[0] = -127, element 23: K[15] = 113
        let b = BlockIQ4NL { d: f16::from_f32(0.5), qs };
        let mut y = [0.0f32; 32];
        dequantize(&[b], &mut y);
        assert_eq!((y[7], y[23], y[0]), (-63.5, 56.5, 0.5));
    }

    #[test]
    fn nearest_index_breaks_ties_upward() {
        assert_eq!(nearest_index(-200.0), 0);
        assert_eq!(nearest_index(200.0), 15);
        assert_eq!(nearest_index(0.0), 8); // between -10 and 1, closer to 1
        assert_eq!(nearest_index(-4.5), 8); // exactly halfway between -10 and 1
        assert_eq!(nearest_index(-4.6), 7);
        assert_eq!(nearest_index(100.0), 14);
        assert_eq!(nearest_index(f32::NAN), 15);
    }

    #[test]
    fn grid_values_round_trip() {
        // A block made of grid values times 0.25: the search must find that scale exactly.
        let x: Vec<f32> = (0..32).map(|i| KVALUES_IQ4NL[i % 16] as f32 * 0.25).collect();
        let mut b = [BlockIQ4NL::zeroed()];
        quantize(&x, &mut b);
        assert_eq!(b[0].d.to_f32(), 0.25);
        let mut y = [0.0f32; 32];
        dequantize(&b, &mut y);
        assert_eq!(y.to_vec(), x);
    }

    #[test]
    fn zero_block_uses_index_of_one() {
        let mut b = [BlockIQ4NL::zeroed()];
        quantize(&[0.0; 32], &mut b);
        assert_eq!(b[0].d.to_bits(), 0);
        assert_eq!(b[0].qs, [0x88; 16]);
    }
}
