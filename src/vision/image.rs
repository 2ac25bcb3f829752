//! From an image file to the encoder's input, as transformers' Gemma 4 image processor makes it
//! (`Gemma4ImageProcessorPil`, given `ImageOps.exif_transpose(Image.open(path))`):
//!
//! 1. decode (PNG, JPEG, WebP, GIF's first frame, BMP; the format is read from the bytes, not
//!    the name; JPEG by libjpeg-turbo, Pillow's decoder) and apply the EXIF orientation;
//! 2. to 8-bit RGB: grayscale is repeated, transparency is composited on white with Pillow's
//!    integer arithmetic (`Image.alpha_composite` over an opaque white background);
//! 3. resize, keeping the aspect ratio, to the largest size whose sides are multiples of
//!    `pool · patch` (48 px) with at most `budget · pool²` patches, by Pillow's bicubic
//!    resampling ([`resample`]), which rounds to 8 bits after each pass;
//! 4. scale to `[0, 1]` (`/ 255`) and cut into `patch × patch` squares, row by row.

use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use super::resample::resize_bicubic;
use super::VisionError;

/// The soft token budgets Gemma 4 was trained with (`--image-tokens`).
pub const BUDGETS: [usize; 5] = [70, 140, 280, 560, 1120];

/// The largest image we decode, in pixels (Pillow refuses twice its 89.5M-pixel bomb limit; a
/// 30000 × 30000 image is past this).
const MAX_PIXELS: u64 = 1 << 28;

/// An image ready for the encoder: `[3][height][width]` values in `[0, 1]`, its sides multiples
/// of `patch_size · pool`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub patch_size: usize,
    /// `[3][height][width]`
    pub chw: Vec<f32>,
}

impl Pixels {
    /// The patches in row-major order, each flattened channel by channel, then row by row
    /// (`[n][3][p][p]`: the layout of the converter's conv kernel `v.patch_embd`).
    pub fn patches_cyx(&self) -> Vec<f32> {
        self.patches(|c, y, x, p| (c * p + y) * p + x)
    }

    /// The patches as transformers lays them out: `[n][p][p][3]` (row, column, channel).
    pub fn patches_yxc(&self) -> Vec<f32> {
        self.patches(|c, y, x, p| (y * p + x) * 3 + c)
    }

    fn patches(&self, index: impl Fn(usize, usize, usize, usize) -> usize) -> Vec<f32> {
        let p = self.patch_size;
        let (pw, ph) = (self.width / p, self.height / p);
        let per = 3 * p * p;
        let mut out = vec![0.0; pw * ph * per];
        for (i, patch) in out.chunks_exact_mut(per).enumerate() {
            let (x0, y0) = ((i % pw) * p, (i / pw) * p);
            for c in 0..3 {
                for y in 0..p {
                    let row = (c * self.height + y0 + y) * self.width + x0;
                    for x in 0..p {
                        patch[index(c, y, x, p)] = self.chw[row + x];
                    }
                }
            }
        }
        out
    }

    /// Soft tokens this image becomes.
    pub fn n_soft(&self, pool: usize) -> usize {
        (self.width / self.patch_size / pool) * (self.height / self.patch_size / pool)
    }
}

/// Decodes `bytes` (the file `name`, for messages) into 8-bit RGB, EXIF orientation applied,
/// transparency composited on white.
pub fn decode(name: &str, bytes: &[u8]) -> Result<RgbImage, VisionError> {
    let bad = |problem: String| VisionError::Image { file: name.to_string(), problem };
    let mut reader =
        ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let format = reader.format();
    if format.is_none() {
        return Err(bad("not an image in a known format (PNG, JPEG, WebP, GIF, BMP)".into()));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(4 * MAX_PIXELS);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(bad(format!("the image is {w}x{h}")));
    }
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(bad(format!("the image is {w}x{h}, more than {MAX_PIXELS} pixels")));
    }
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    // A JPEG's pixels come from libjpeg-turbo, as in Pillow (a CMYK one, which it cannot turn
    // into RGB, from the image crate).
    let turbo = (format == Some(ImageFormat::Jpeg))
        .then(|| turbojpeg::decompress(bytes, turbojpeg::PixelFormat::RGB).ok())
        .flatten()
        .filter(|t| (t.width, t.height, t.pitch) == (w as usize, h as usize, 3 * w as usize))
        .and_then(|t| RgbImage::from_raw(w, h, t.pixels));
    let mut img = match turbo {
        Some(rgb) => DynamicImage::ImageRgb8(rgb),
        None => DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?,
    };
    img.apply_orientation(orientation);
    Ok(to_rgb(img))
}

/// Reads and decodes the image file `path`.
pub fn load(path: &Path) -> Result<RgbImage, VisionError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| VisionError::Image { file: name.clone(), problem: e.to_string() })?;
    decode(&name, &bytes)
}

/// To 8-bit RGB as transformers' `convert_to_rgb` does with Pillow: an image with an alpha
/// channel is composited over opaque white (`Image.alpha_composite`), others converted.
fn to_rgb(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = p.0;
        o.0 = [over_white(r, a), over_white(g, a), over_white(b, a)];
    }
    out
}

/// One channel of Pillow's `alpha_composite(white, src)` (libImaging/AlphaComposite.c): the
/// source weighted by `a / 255` in 7-bit fixed point, divided by 255 with its shift trick.
fn over_white(c: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    const PRECISION_BITS: u32 = 7;
    let div255 = |x: u32| ((x >> 8) + x) >> 8;
    let (c, a) = (u32::from(c), u32::from(a));
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let tmp = c * coef1 + 255 * coef2;
    (div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
}

/// The size transformers resizes a `width × height` image to: the largest with sides multiple
/// of `pool · patch` and at most `budget · pool²` patches, keeping the aspect ratio; a side that
/// rounds to nothing gets one multiple and the other side the ratio's whole part in multiples
/// (at most the longest side the budget allows). `(width, height)`.
pub fn target_size(width: usize, height: usize, patch: usize, pool: usize, budget: usize) -> (usize, usize) {
    let max_patches = budget * pool * pool;
    let target_px = (max_patches * patch * patch) as f64;
    let factor = (target_px / (width * height) as f64).sqrt();
    let side = pool * patch;
    let mut th = ((factor * height as f64) / side as f64).floor() as usize * side;
    let mut tw = ((factor * width as f64) / side as f64).floor() as usize * side;
    let max_side = (max_patches / (pool * pool)) * side;
    if th == 0 && tw == 0 {
        // transformers raises here; it cannot happen for a budget of at least one token
        // (the factor makes the area the budget's), so keep one square.
        (th, tw) = (side, side);
    } else if th == 0 {
        th = side;
        tw = ((width / height) * side).min(max_side);
    } else if tw == 0 {
        tw = side;
        th = ((height / width) * side).min(max_side);
    }
    (tw, th)
}

/// The encoder's input for `img` at `budget` soft tokens.
pub fn preprocess(img: &RgbImage, patch: usize, pool: usize, budget: usize) -> Pixels {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (tw, th) = target_size(w, h, patch, pool, budget);
    let resized = if (tw, th) == (w, h) { img.clone() } else { resize_bicubic(img, tw, th) };
    let mut chw = vec![0.0f32; 3 * tw * th];
    for (i, p) in resized.pixels().enumerate() {
        for c in 0..3 {
            // transformers multiplies by the float32 of 1/255.
            chw[c * tw * th + i] = f32::from(p.0[c]) * (1.0f32 / 255.0);
        }
    }
    Pixels { width: tw, height: th, patch_size: patch, chw }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes transformers' `get_aspect_ratio_preserving_size` gives (worked by hand from
    /// its formula): a square, a wide strip, a 1×1, and an image too thin for one row.
    #[test]
    fn target_sizes_follow_transformers() {
        // 640×640 at 280: sqrt(2520·256) = 803.2 px a side, 16 multiples of 48 = 768.
        assert_eq!(target_size(640, 640, 16, 3, 280), (768, 768));
        // 4000×300 at 70: factor sqrt(630·256 / 1.2e6) = 0.3666; 1466.3 → 1440, 110 → 96.
        assert_eq!(target_size(4000, 300, 16, 3, 70), (1440, 96));
        // 1×1 at 70: factor 401.6; both sides 384.
        assert_eq!(target_size(1, 1, 16, 3, 70), (384, 384));
        // 10000×10 at 70: height rounds to 0 → 48, width 1000 multiples capped at 70·48.
        assert_eq!(target_size(10000, 10, 16, 3, 70), (3360, 48));
    }

    /// Pillow's alpha_composite over white at its corners: opaque keeps the colour, fully
    /// transparent is white, and half-transparent black is 127 (checked against Pillow 13.0
    /// over all 65,536 colour-alpha pairs while writing this).
    #[test]
    fn alpha_over_white_matches_pillow_corners() {
        assert_eq!(over_white(17, 255), 17);
        assert_eq!(over_white(17, 0), 255);
        assert_eq!(over_white(0, 128), 127);
        assert_eq!(over_white(255, 1), 255);
    }

    #[test]
    fn patch_layouts_are_transposes() {
        let (w, h, p) = (4, 2, 2);
        let chw: Vec<f32> = (0..3 * w * h).map(|i| i as f32).collect();
        let px = Pixels { width: w, height: h, patch_size: p, chw };
        let (a, b) = (px.patches_cyx(), px.patches_yxc());
        // patch 1 (x 2..4, y 0..2), channel 2, row 1, column 0: chw[(2·2 + 1)·4 + 2] = 22, at
        // (c·p + y)·p + x = (2·2 + 1)·2 in c-y-x order and (y·p + x)·3 + c = 2·3 + 2 in y-x-c order.
        assert_eq!(a[12 + (2 * 2 + 1) * 2], 22.0);
        assert_eq!(b[12 + 2 * 3 + 2], 22.0);
    }
}
