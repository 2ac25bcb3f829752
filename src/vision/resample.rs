//! Bicubic resizing as Pillow's `Image.resize(size, Image.BICUBIC)` computes it (libImaging
//! Resample.c), to the bit: transformers' Gemma 4 processor resizes with it, so the pixels the
//! encoder sees equal the reference's only if the resampler is the same.
//!
//! Two separable passes, horizontal first, each rounding to 8 bits:
//! - for every output column `x`, the input columns within `support · scale` of its centre
//!   `(x + 0.5) · scale` (scale = in / out, at least 1 for the filter's width: downscaling
//!   widens the kernel, which is the antialiasing) with weights `cubic((i - centre + 0.5) /
//!   filter_scale)` (Keys' kernel with a = -0.5), normalized to sum 1;
//! - the weights as 22-bit fixed point (`round half away from zero`), the sum started at
//!   one half, clipped to 0..=255 after the shift.
//!
//! (Pillow's horizontal pass computes only the rows the vertical weights touch; the others do
//! not change the result.)

use image::RgbImage;

const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Keys' cubic convolution kernel, a = -0.5, support 2.
const SUPPORT: f64 = 2.0;

fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output position's source range and fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// The taps of every output position for `n_in → n_out` (Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    let scale = n_in as f64 / n_out as f64;
    let filter_scale = scale.max(1.0);
    let support = SUPPORT * filter_scale;
    (0..n_out)
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            // Pillow truncates toward zero (a C cast) after adding 0.5.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let w: Vec<f64> = (lo..hi).map(|i| cubic((i as f64 - center + 0.5) * ss)).collect();
            let sum: f64 = w.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let weights = w
                .iter()
                .map(|&k| {
                    let k = if sum != 0.0 { k / sum } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i32
                    } else {
                        (0.5 + k * one) as i32
                    }
                })
                .collect();
            Taps { first: lo, weights }
        })
        .collect()
}

/// The fixed-point sum back to a byte: rounded (the sum starts at one half), clipped.
fn clip8(sum: i64) -> u8 {
    let v = sum >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

/// `img` resized to `width × height` as Pillow's bicubic filter does it: horizontally then
/// vertically, except when the width grows and the height shrinks, where Pillow 13 runs the
/// vertical pass first (the order changes the 8-bit rounding between the passes; found by
/// comparing both orders with `Image.resize` on random images).
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw().clone();
    let out = if width > w && height < h {
        horizontal(&vertical(&src, w, h, height), w, height, width)
    } else {
        vertical(&horizontal(&src, w, h, width), width, h, height)
    };
    RgbImage::from_raw(width as u32, height as u32, out).expect("sizes")
}

/// The horizontal pass over `src: [h][w][3]` to `[h][width][3]` (none when the width stays).
fn horizontal(src: &[u8], w: usize, h: usize, width: usize) -> Vec<u8> {
    if width == w {
        return src.to_vec();
    }
    let tx = taps(w, width);
    let mut out = vec![0u8; h * width * 3];
    for (row, out) in src.chunks_exact(w * 3).zip(out.chunks_exact_mut(width * 3)) {
        for (x, t) in tx.iter().enumerate() {
            for c in 0..3 {
                let mut sum = HALF;
                for (i, &k) in t.weights.iter().enumerate() {
                    sum += i64::from(row[(t.first + i) * 3 + c]) * i64::from(k);
                }
                out[x * 3 + c] = clip8(sum);
            }
        }
    }
    out
}

/// The vertical pass over `src: [h][w][3]` to `[height][w][3]` (none when the height stays).
fn vertical(src: &[u8], w: usize, h: usize, height: usize) -> Vec<u8> {
    if height == h {
        return src.to_vec();
    }
    let ty = taps(h, height);
    let mut out = vec![0u8; height * w * 3];
    for (t, out) in ty.iter().zip(out.chunks_exact_mut(w * 3)) {
        for (x, o) in out.iter_mut().enumerate() {
            let mut sum = HALF;
            for (i, &k) in t.weights.iter().enumerate() {
                sum += i64::from(src[(t.first + i) * w * 3 + x]) * i64::from(k);
            }
            *o = clip8(sum);
        }
    }
    out
}

/// The rounding half every sum starts at.
const HALF: i64 = 1 << (PRECISION_BITS - 1);

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant image stays constant (the weights are normalized; fixed point loses nothing
    /// at 8 bits), up and down.
    #[test]
    fn constant_images_stay_constant() {
        let img = RgbImage::from_pixel(37, 11, image::Rgb([200, 3, 128]));
        for (w, h) in [(96, 48), (5, 3), (37, 48), (96, 11)] {
            let out = resize_bicubic(&img, w, h);
            assert_eq!((out.width(), out.height()), (w as u32, h as u32));
            assert!(out.pixels().all(|p| p.0 == [200, 3, 128]), "{w}x{h}");
        }
    }

    /// Keys' kernel: 1 at 0, 0 at the integers, and the a = -0.5 values at the half points.
    #[test]
    fn cubic_kernel_values() {
        assert_eq!(cubic(0.0), 1.0);
        assert_eq!(cubic(1.0), 0.0);
        assert_eq!(cubic(2.0), 0.0);
        assert_eq!(cubic(0.5), 0.5625);
        assert_eq!(cubic(1.5), -0.0625);
    }
}
