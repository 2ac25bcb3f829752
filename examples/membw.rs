//! The machine's memory read bandwidth: every thread sums its share of a buffer much larger
//! than the caches, several times; the best pass counts (GB/s, 1 GB = 1e9 bytes).
//!
//! ```text
//! cargo run --release --example membw -- [GiB] [threads]
//! ```

use std::time::Instant;

use rayon::prelude::*;

fn main() {
    let mut args = std::env::args().skip(1);
    let gib: usize = args.next().map_or(4, |a| a.parse().expect("GiB"));
    let threads: usize = args.next().map_or_else(num_cpus::get_physical, |a| a.parse().expect("threads"));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let n = gib << 27; // u64 words
    let data: Vec<u64> = (0..n as u64).into_par_iter().map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        // Eight independent sums per chunk, so the adds do not limit the loads.
        let sum: u64 = pool.install(|| {
            data.par_chunks(1 << 16)
                .map(|c| {
                    let mut acc = [0u64; 8];
                    for w in c.chunks_exact(8) {
                        for j in 0..8 {
                            acc[j] = acc[j].wrapping_add(w[j]);
                        }
                    }
                    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                })
                .reduce(|| 0, u64::wrapping_add)
        });
        let gbs = (n * 8) as f64 / start.elapsed().as_secs_f64() / 1e9;
        best = best.max(gbs);
        std::hint::black_box(sum);
    }
    println!("{best:.2}");
}
