//! What the K-quant formats (Q2_K..Q6_K) share: the per-sub-block scale searches of ggml's
//! reference quantizers, the 12-byte packing of eight 6-bit (scale, min) pairs used by Q4_K and
//! Q5_K, and the 2-bit quant layout of Q2_K and Q3_K.
//!
//! The searches must perform the same f32 operations in the same order as ggml's: one ulp of
//! difference in a sub-block scale can move a rounded quant, and then the bytes differ.

use super::rounding::nearest_int;

/// A group whose largest |x| is below this is quantized as all zeros.
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude in `x`, with its sign; the first one on ties.
pub fn largest_magnitude(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Symmetric quantization to `-nmax..nmax`, weighting each value by x²: the level that maps the
/// largest |x| to -nmax, then 18 nearby levels, keeping the one with the best weighted
/// least-squares fit. Writes the quants offset by `nmax` (so `0..2*nmax`) and returns the scale.
pub fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let max = largest_magnitude(x);
    if max.abs() < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let fit = |iscale: f32| {
        x.iter().fold((0.0f32, 0.0f32), |(sumlx, suml2), &v| {
            let q = level(iscale, v) as f32;
            let w = v * v;
            (sumlx + w * v * q, suml2 + w * q * q)
        })
    };
    let assign = |l: &mut [i8], iscale: f32| {
        for (q, &v) in l.iter_mut().zip(x) {
            *q = (nmax + level(iscale, v)) as i8;
        }
    };

    // The sign of the largest value picks the direction, so it lands on -nmax, the level that
    // has no positive counterpart.
    let iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = fit(iscale);
    assign(l, iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = fit(iscale);
        // Maximizing sumlx²/suml2 minimizes the weighted squared error at the optimal scale.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            assign(l, iscale);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q3_K's symmetric search: start from the level mapping the largest |x| to -nmax, then up to
/// five passes that move single quants whenever that improves the x²-weighted fit. Writes the
/// quants offset by `nmax` and returns the least-squares scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let max = largest_magnitude(x);
    if max.abs() < GROUP_MAX_EPS {
        // ggml leaves these at 0 rather than at the offset zero level; they decode through a
        // zero scale either way.
        l.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (q, &v) in l.iter_mut().zip(x) {
        let lv = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *q = lv as i8;
        let w = v * v;
        sumlx += w * v * lv as f32;
        suml2 += w * lv as f32 * lv as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (q, &v) in l.iter_mut().zip(x) {
            let w = v * v;
            let old = *q as f32;
            let mut slx = sumlx - w * v * old;
            if slx <= 0.0 {
                continue;
            }
            let mut sl2 = suml2 - w * old * old;
            let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
            if new == *q as i32 {
                continue;
            }
            slx += w * v * new as f32;
            sl2 += w * new as f32 * new as f32;
            // Compare sumlx²/suml2 without dividing.
            if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                *q = new as i8;
                sumlx = slx;
                suml2 = sl2;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for q in l.iter_mut() {
        *q += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// How [`make_qkx2_quants`] scans candidate scales: `steps + 1` levels
/// `(nmax + rmin + rdelta * i) / (max - min)`, scoring each by weighted absolute (`mad`) or
/// squared error.
pub struct ScaleSearch {
    pub rmin: f32,
    pub rdelta: f32,
    pub steps: i32,
    pub mad: bool,
}

/// Asymmetric quantization `x ≈ scale * q - min` with `q` in `0..=nmax` and `min >= 0`: for each
/// candidate level, round, then solve the weighted least-squares scale and offset for those
/// quants, and keep the one with the smallest weighted error. Returns `(scale, min)`.
pub fn make_qkx2_quants(nmax: i32, x: &[f32], weights: &[f32], l: &mut [u8], search: &ScaleSearch) -> (f32, f32) {
    let n = x.len();
    assert!(n <= 32 && weights.len() == n && l.len() == n);
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    // The offset only ever shifts values down, so zero must stay representable.
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let error = |scale: f32, min: f32, q: &[u8]| {
        let mut err = 0.0f32;
        for ((&q, &v), &w) in q.iter().zip(x).zip(weights) {
            let diff = scale * q as f32 + min - v;
            err += w * if search.mad { diff.abs() } else { diff * diff };
        }
        err
    };

    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for (q, &v) in l.iter_mut().zip(x) {
        *q = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
    }
    let mut best_error = error(scale, min, l);

    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for step in 0..=search.steps {
        let iscale = (search.rmin + search.rdelta * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((q, &v), &w) in aux.iter_mut().zip(x).zip(weights) {
            let lv = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *q = lv as u8;
            let lv = lv as f32;
            sum_l += w * lv;
            sum_l2 += w * lv * lv;
            sum_xl += w * lv * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let cur_error = error(this_scale, this_min, aux);
        if cur_error < best_error {
            l.copy_from_slice(aux);
            best_error = cur_error;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Packs eight 6-bit scales and eight 6-bit mins into 12 bytes: bytes 0..4 hold scales 0..4 and
/// bytes 4..8 mins 0..4 in their low 6 bits; bytes 8..12 hold the low nibbles of scales 4..8
/// (low half) and mins 4..8 (high half), whose top 2 bits go in the spare top bits of bytes
/// 0..4 and 4..8.
pub fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = scales[j] | (scales[j + 4] >> 4) << 6;
        q[j + 4] = mins[j] | (mins[j + 4] >> 4) << 6;
        q[j + 8] = (scales[j + 4] & 0xF) | (mins[j + 4] & 0xF) << 4;
    }
    q
}

/// Sub-block `j`'s (scale, min) from the packing of [`pack_scale_min_k4`].
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | (q[j - 4] >> 6) << 4, (q[j + 4] >> 4) | (q[j] >> 6) << 4)
    }
}

/// Packs 256 2-bit quants as Q2_K and Q3_K store them: each half of the block (128 values)
/// uses 32 bytes, and value `32*k + i` of a half sits in bits `2k..2k+2` of byte `i`.
pub fn pack_2bit(l: &[u8; 256], qs: &mut [u8; 64]) {
    for (half, qs) in qs.chunks_exact_mut(32).enumerate() {
        let l = &l[128 * half..128 * (half + 1)];
        for (i, q) in qs.iter_mut().enumerate() {
            *q = l[i] | l[i + 32] << 2 | l[i + 64] << 4 | l[i + 96] << 6;
        }
    }
}

/// Where the 16 values of sub-block `sub` (values `16*sub..16*sub + 16`) sit in
/// [`pack_2bit`]'s layout: 16 consecutive bytes, and the shift of their 2-bit field.
#[inline]
pub fn bytes_2bit(qs: &[u8; 64], sub: usize) -> (&[u8], u32) {
    let start = 32 * (sub / 8) + 16 * (sub % 2);
    (&qs[start..start + 16], 2 * ((sub % 8) / 2) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips_every_6bit_value() {
        for base in 0..64u8 {
            let scales: [u8; 8] = std::array::from_fn(|j| ((base as usize + 7 * j) % 64) as u8);
            let mins: [u8; 8] = std::array::from_fn(|j| ((3 * base as usize + 11 * j) % 64) as u8);
            let q = pack_scale_min_k4(&scales, &mins);
            for j in 0..8 {
                assert_eq!(scale_min_k4(j, &q), (scales[j], mins[j]), "base {base} j {j}");
            }
        }
    }

    #[test]
    fn two_bit_layout_finds_every_value() {
        let l: [u8; 256] = std::array::from_fn(|i| (i * 7 / 3 % 4) as u8);
        let mut qs = [0u8; 64];
        pack_2bit(&l, &mut qs);
        for sub in 0..16 {
            let (bytes, shift) = bytes_2bit(&qs, sub);
            for (i, &b) in bytes.iter().enumerate() {
                assert_eq!((b >> shift) & 3, l[16 * sub + i], "value {}", 16 * sub + i);
            }
        }
    }

    #[test]
    fn qkx2_of_a_negative_constant_is_all_offset() {
        let x = [-0.75f32; 16];
        let w = [1.0f32; 16];
        let mut l = [9u8; 16];
        let search = ScaleSearch { rmin: -0.5, rdelta: 0.1, steps: 15, mad: true };
        assert_eq!(make_qkx2_quants(3, &x, &w, &mut l, &search), (0.0, 0.75));
        assert_eq!(l, [0; 16]);
    }

    #[test]
    fn qx_recovers_values_on_a_grid() {
        // -16..=-1: the first level puts -16 on -32, a scale of exactly 0.5 fitting every value.
        let x: [f32; 16] = std::array::from_fn(|i| i as f32 - 16.0);
        let mut l = [0i8; 16];
        let scale = make_qx_quants(32, &x, &mut l);
        for (&q, &v) in l.iter().zip(&x) {
            assert_eq!((q as i32 - 32) as f32 * scale, v);
        }
    }
}
