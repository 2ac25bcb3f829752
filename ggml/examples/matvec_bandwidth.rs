//! Matvec throughput of our kernels alone, in GB/s of weights: one token against a weight
//! matrix of each Gemma 4 26B-A4B quantized type, either small enough to stay in L2 (the
//! kernel's compute rate) or much larger than the caches (its streaming rate, the bound on
//! generation speed). For comparisons with ggml's kernels see `benches/kernels.rs`.
//!
//! ```text
//! cargo run --release -p ggml --example matvec_bandwidth -- [MB] [TYPE]
//! RAYON_NUM_THREADS=1 cargo run --release -p ggml --example matvec_bandwidth -- 1
//! ```
//!
//! The thread count is rayon's (`RAYON_NUM_THREADS`, default: every CPU). The best of several
//! passes is printed.

use std::time::Instant;

use ggml::kernels::matmul::{matmul, QuantizedActs};
use ggml::kernels::Isa;
use ggml::quants::quantize_row;
use ggml::GgmlType;

#[path = "../benches/support/mod.rs"]
mod support;

use support::pseudo_random;

/// (type, row width) as the 26B-A4B uses them: expert and attention rows of 2816, the 704-wide
/// rows of the experts' down projection.
const CASES: [(GgmlType, usize); 5] = [
    (GgmlType::Q4_K, 2816),
    (GgmlType::Q6_K, 2816),
    (GgmlType::Q8_0, 704),
    (GgmlType::Q5_0, 704),
    (GgmlType::Q8_0, 2816),
];

fn main() {
    let mut args = std::env::args().skip(1);
    let mb: usize = args.next().map_or(512, |a| a.parse().expect("MB: a whole number of megabytes"));
    let only = args.next();
    for (ty, n) in CASES {
        if only.as_ref().is_some_and(|o| !format!("{ty:?}").eq_ignore_ascii_case(o)) {
            continue;
        }
        let row_bytes = ty.row_bytes(n as u64).expect("whole blocks") as usize;
        let rows = (mb * 1_000_000 / row_bytes).max(1);
        // Quantize up to 1024 real rows, then repeat them: valid blocks without quantizing
        // hundreds of megabytes.
        let unique = rows.min(1024);
        let mut seed_rows = vec![0u8; unique * row_bytes];
        quantize_row(ty, &pseudo_random(unique * n, 1), &mut seed_rows).expect("quantizable");
        let w: Vec<u8> = seed_rows.iter().copied().cycle().take(rows * row_bytes).collect();
        let acts = QuantizedActs::new(ty, &pseudo_random(n, 2), n).expect("quantizable");
        let mut out = vec![0f32; rows];
        let passes = (3000 / mb).clamp(6, 3000);
        let mut best = 0f64;
        for _ in 0..passes {
            let start = Instant::now();
            matmul(ty, Isa::best(), &w, rows, &acts, &mut out).expect("shapes match");
            best = best.max(w.len() as f64 / start.elapsed().as_secs_f64() / 1e9);
        }
        std::hint::black_box(&out);
        println!("{ty:?} {rows}x{n} ({:.1} MB): {best:.2} GB/s", w.len() as f64 / 1e6);
    }
}
