//! Helpers for the op tests: random rows and error in ulps.

/// `n` pseudo-random values uniform in [lo, hi) (deterministic for a seed).
pub fn random(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            // xorshift64*: good enough to fill test rows.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let unit = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * unit
        })
        .collect()
}

/// `|got - want|` in units of the f32 ulp at `want` (the spacing of f32 values at its
/// magnitude; subnormal spacing below the smallest normal).
pub fn ulps(got: f32, want: f64) -> f64 {
    if got as f64 == want {
        return 0.0;
    }
    let mag = want.abs().max(f32::MIN_POSITIVE as f64);
    let ulp = 2f64.powi(mag.log2().floor() as i32 - 23);
    (got as f64 - want).abs() / ulp
}

/// Asserts `got[i]` within `max_ulps` of `want[i]` or within `abs` absolutely.
#[track_caller]
pub fn assert_ulps(got: &[f32], want: &[f32], max_ulps: f64, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let u = ulps(g, w as f64);
        assert!(u <= max_ulps || (g - w).abs() <= abs, "{what}[{i}]: got {g}, want {w} ({u} ulp)");
    }
}
