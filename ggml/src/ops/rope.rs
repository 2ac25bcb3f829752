//! RoPE, NeoX style ("rotate half", GEMMA4.md 1.2): in each head, dimension `i` is paired with
//! `i + n_rot/2` for `i < n_rot/2` and the pair rotated by the angle `theta_i`; dimensions from
//! `n_rot` on are left as they are.
//!
//! The angles follow ggml's rope cache (`ggml_rope_cache_init`, no YaRN: `freq_scale = 1`,
//! `ext_factor = 0`, `attn_factor = 1`): `theta_scale = powf(base, -2.0f / n_rot)`, `theta_0 =
//! (float) pos`, `theta_{i+1} = theta_i * theta_scale` rounded to f32 at every step, then
//! `cos/sinf(theta_i / freq_factor_i)`. The same libm calls in the same order, so on the same
//! platform the cache equals ggml's bit for bit (Rust's f32 `powf`/`sin`/`cos` call the C
//! library's). The rotation is `x0 cos - x1 sin`, `x0 sin + x1 cos` with each product rounded
//! (no FMA), on every path: SIMD and reference agree exactly.
//!
//! Gemma 4 global layers: head_dim 512, `n_rot = 512`, base 1e6, freq factors
//! `[1.0]*64 + [1e30]*192`: angles of pairs 64.. are ~1e-30 pos, so cos = 1, sin ~ 0 and
//! those dims come out unchanged (to well below an ulp).

use crate::kernels::Isa;

/// cos and sin of the `n_rot / 2` angles at one position; shared by every head and by q and k.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RopeCache {
    /// `[n_rot / 2]`
    pub cos: Vec<f32>,
    /// `[n_rot / 2]`
    pub sin: Vec<f32>,
}

impl RopeCache {
    /// The angles for position `pos`: `theta_i = pos * base^(-2i / n_rot) / freq_factors[i]`
    /// for `i < n_rot / 2`, rounded as ggml rounds them. `freq_factors`: `[>= n_rot / 2]`.
    pub fn new(pos: usize, base: f32, n_rot: usize, freq_factors: Option<&[f32]>) -> RopeCache {
        let mut cache = RopeCache::default();
        cache.fill(pos, base, n_rot, freq_factors);
        cache
    }

    /// [`RopeCache::new`] into this cache's buffers.
    pub fn fill(&mut self, pos: usize, base: f32, n_rot: usize, freq_factors: Option<&[f32]>) {
        assert!(n_rot.is_multiple_of(2), "rope: n_rot {n_rot} is odd");
        let half = n_rot / 2;
        if let Some(ff) = freq_factors {
            assert!(ff.len() >= half, "rope: {} freq factors for {half} pairs", ff.len());
        }
        let theta_scale = base.powf(-2.0 / n_rot as f32);
        let mut theta = pos as f32;
        self.cos.clear();
        self.sin.clear();
        for i in 0..half {
            let angle = theta / freq_factors.map_or(1.0, |ff| ff[i]);
            self.cos.push(angle.cos());
            self.sin.push(angle.sin());
            theta *= theta_scale;
        }
    }

    /// The number of rotated dimensions per head.
    pub fn n_rot(&self) -> usize {
        2 * self.cos.len()
    }
}

/// Rotates every head of `x: [n_heads, head_dim]` in place at position `pos` (see the module
/// docs for the other arguments). Builds the cache: for several tensors at one position, build
/// a [`RopeCache`] once and call [`rope_neox_cached`].
pub fn rope_neox(x: &mut [f32], head_dim: usize, pos: usize, base: f32, n_rot: usize, freq_factors: Option<&[f32]>) {
    rope_neox_cached(x, head_dim, &RopeCache::new(pos, base, n_rot, freq_factors));
}

/// Rotates every head of `x: [n_heads, head_dim]` in place by the angles in `cache`.
pub fn rope_neox_cached(x: &mut [f32], head_dim: usize, cache: &RopeCache) {
    rope_neox_with(Isa::best(), x, head_dim, cache)
}

/// [`rope_neox_cached`] at level `isa` (the reference if this CPU lacks it).
pub fn rope_neox_with(isa: Isa, x: &mut [f32], head_dim: usize, cache: &RopeCache) {
    assert!(cache.n_rot() <= head_dim, "rope: n_rot {} > head_dim {head_dim}", cache.n_rot());
    assert!(head_dim > 0 && x.len().is_multiple_of(head_dim), "rope: {} values, head_dim {head_dim}", x.len());
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head[..cache.n_rot()].split_at_mut(cache.cos.len());
        dispatch!(isa, rotate_scalar, rotate_avx2, rotate_avx512, (lo, hi, &cache.cos, &cache.sin))
    }
}

/// The reference: `(lo[i], hi[i])` rotated by the angle with `cos[i]`, `sin[i]`, over the
/// shortest of the four lengths.
pub fn rotate_scalar(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
    for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
        let (a, b) = (*x0, *x1);
        *x0 = a * c - b * s;
        *x1 = a * s + b * c;
    }
}

#[cfg(target_arch = "x86_64")]
pub use x86::{rotate_avx2, rotate_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::ops::lanes::{avx2, avx512};

    /// AVX2: eight pairs at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub fn rotate_avx2(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
        let n = lo.len().min(hi.len()).min(cos.len()).min(sin.len());
        let (lo, hi, cos, sin) = (&mut lo[..n], &mut hi[..n], &cos[..n], &sin[..n]);
        for (((x0, x1), c), s) in lo.chunks_mut(8).zip(hi.chunks_mut(8)).zip(cos.chunks(8)).zip(sin.chunks(8)) {
            let (a, b, c, s) = (avx2::load(x0), avx2::load(x1), avx2::load(c), avx2::load(s));
            avx2::store(x0, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            avx2::store(x1, _mm256_add_ps(_mm256_mul_ps(a, s), _mm256_mul_ps(b, c)));
        }
    }

    /// AVX-512: sixteen pairs at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-512F.
    #[target_feature(enable = "avx2,fma,avx512f")]
    pub fn rotate_avx512(lo: &mut [f32], hi: &mut [f32], cos: &[f32], sin: &[f32]) {
        let n = lo.len().min(hi.len()).min(cos.len()).min(sin.len());
        let (lo, hi, cos, sin) = (&mut lo[..n], &mut hi[..n], &cos[..n], &sin[..n]);
        for (((x0, x1), c), s) in lo.chunks_mut(16).zip(hi.chunks_mut(16)).zip(cos.chunks(16)).zip(sin.chunks(16)) {
            let (a, b, c, s) = (avx512::load(x0), avx512::load(x1), avx512::load(c), avx512::load(s));
            avx512::store(x0, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
            avx512::store(x1, _mm512_add_ps(_mm512_mul_ps(a, s), _mm512_mul_ps(b, c)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::random;

    /// Gemma 4's global-layer freq factors.
    fn proportional() -> Vec<f32> {
        let mut ff = vec![1.0f32; 64];
        ff.resize(256, 1e30);
        ff
    }

    #[test]
    fn simd_paths_equal_the_scalar_reference() {
        // (head_dim, n_rot, base, freq factors): Gemma 4 sliding and global, and odd widths.
        let ff = proportional();
        let cases: [(usize, usize, f32, Option<&[f32]>); 6] = [
            (256, 256, 1e4, None),
            (512, 512, 1e6, Some(&ff)),
            (2, 2, 1e4, None),
            (14, 14, 1e4, None),
            (62, 62, 1e4, None),
            (80, 32, 1e4, None),
        ];
        for (k, (head_dim, n_rot, base, ff)) in cases.into_iter().enumerate() {
            let x = random(3 * head_dim, k as u64, -2.0, 2.0);
            for pos in [0, 1, 17, 4095, 131_071] {
                let cache = RopeCache::new(pos, base, n_rot, ff);
                let mut want = x.clone();
                rope_neox_with(Isa::Scalar, &mut want, head_dim, &cache);
                for isa in Isa::available() {
                    let mut got = x.clone();
                    rope_neox_with(isa, &mut got, head_dim, &cache);
                    assert_eq!(got, want, "{isa:?} head_dim={head_dim} n_rot={n_rot} pos={pos}");
                }
            }
        }
    }

    /// The cache's angles against f64 `pos * base^(-2i/n_rot)`: the iterated product gains
    /// about one rounding per step, so angle `i` is within `(i + 2)` f32 epsilons relative
    /// (the cos/sin then inherit `angle * that` absolutely).
    #[test]
    fn cache_angles_match_f64_math() {
        for (base, n_rot) in [(1e4f32, 256usize), (1e6, 512)] {
            for pos in [1usize, 100, 8191] {
                let cache = RopeCache::new(pos, base, n_rot, None);
                for i in 0..n_rot / 2 {
                    let angle = pos as f64 * (base as f64).powf(-2.0 * i as f64 / n_rot as f64);
                    let tol = angle * (i as f64 + 2.0) * f32::EPSILON as f64 + 2e-7;
                    assert!((cache.cos[i] as f64 - angle.cos()).abs() <= tol, "cos base={base} pos={pos} i={i}");
                    assert!((cache.sin[i] as f64 - angle.sin()).abs() <= tol, "sin base={base} pos={pos} i={i}");
                }
            }
        }
    }

    #[test]
    fn hand_checked_values() {
        // Position 0: identity.
        let x = random(512, 1, -2.0, 2.0);
        let mut y = x.clone();
        rope_neox(&mut y, 256, 0, 1e4, 256, None);
        assert_eq!(x, y);
        // Pair 0 turns by exactly `pos` radians: (1, 0) at pos 1 -> (cos 1, sin 1).
        let mut y = vec![0.0f32; 8];
        y[0] = 1.0;
        rope_neox(&mut y, 8, 1, 1e4, 8, None);
        assert_eq!((y[0], y[4]), (1f32.cos(), 1f32.sin()));
        // Pair 1 of a 4-dim rotation turns by pos * base^(-2/4) = 100 / 100 = 1 radian.
        let mut y = [0.0f32, 1.0, 0.0, 0.0];
        rope_neox(&mut y, 4, 100, 1e4, 4, None);
        assert!((y[1] - 1f32.cos()).abs() < 1e-5 && (y[3] - 1f32.sin()).abs() < 1e-5, "{y:?}");
    }

    #[test]
    fn proportional_rope_leaves_factor_1e30_dims_alone() {
        let ff = proportional();
        let x = random(2 * 512, 3, 0.5, 2.0);
        for pos in [1, 1000, 131_071] {
            let mut y = x.clone();
            rope_neox(&mut y, 512, pos, 1e6, 512, Some(&ff));
            for h in 0..2 {
                let (xh, yh) = (&x[h * 512..(h + 1) * 512], &y[h * 512..(h + 1) * 512]);
                // Rotated: dims 0..64 and 256..320; unchanged: 64..256 and 320..512.
                assert_eq!(xh[64..256], yh[64..256], "pos {pos}");
                assert_eq!(xh[320..], yh[320..], "pos {pos}");
                assert!(pos < 2 || xh[..64] != yh[..64]);
                // A rotation keeps each pair's length.
                for i in 0..64 {
                    let (r0, r1) = (xh[i].hypot(xh[i + 256]), yh[i].hypot(yh[i + 256]));
                    assert!((r0 - r1).abs() <= 4.0 * f32::EPSILON * r0, "pair {i} pos {pos}");
                }
            }
        }
    }

    #[test]
    fn partial_rotation_leaves_the_tail() {
        let x = random(80, 4, -1.0, 1.0);
        let mut y = x.clone();
        rope_neox(&mut y, 80, 5, 1e4, 32, None);
        assert_eq!(x[32..], y[32..]);
        assert_ne!(x[..32], y[..32]);
    }
}
