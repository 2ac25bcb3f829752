//! Shared by the kernel benchmark and the `matvec_bandwidth` example (which includes this
//! file by path).

/// `n` values in [-1, 1) from xorshift64 seeded by `seed`: benchmark data, the same every run.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
