//! Dot-product kernel throughput, ours next to ggml's, on Gemma 4 26B-A4B's matrix shapes.
//!
//! Both sides run in the same harness (same threads, same rows, same quantized activations):
//! ours through `kernels::matmul`, ggml's by calling its CPU `vec_dot` for every (row, token)
//! pair in the same rayon loop — so this compares the kernels, not the thread pools. Build
//! ggml with this CPU's SIMD for a fair comparison: `scripts/bench-kernels.sh` does
//! (`RUSTFLAGS=-Ctarget-cpu=native`, its own target dir).
//!
//! `GEMMA_BENCH_TYPES=q8_0,q5_0` limits the run to those weight types.
//!
//! Prints, per shape and weight type, GB/s of weights streamed and GFLOP/s for matvec (1 token)
//! and matmul (`GEMMA_BENCH_TOKENS`, default 64 tokens), and the ratio ours / ggml.

use std::time::{Duration, Instant};

use ggml::kernels::matmul::{matmul, QuantizedActs};
use ggml::kernels::{has_kernels, Isa};
use ggml::quants::quantize_row;
use ggml::GgmlType;
use llama_cpp_sys_2 as sys;
use rayon::prelude::*;

mod support;

use support::pseudo_random;

/// (name, input width n, output rows) of the 26B-A4B matrices.
const SHAPES: [(&str, usize, usize); 7] = [
    ("attn_q (sliding)", 2816, 4096),
    ("attn_output (sliding)", 4096, 2816),
    ("ffn_gate/up (dense)", 2816, 2112),
    ("ffn_down (dense)", 2112, 2816),
    ("ffn_gate_up_exps (1 expert)", 2816, 1408),
    ("ffn_down_exps (1 expert)", 704, 2816),
    ("output head (1/8 of it)", 2816, 32768),
];

const TYPES: [GgmlType; 4] = [GgmlType::Q4_K, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q6_K];

/// Median wall times of `ours` and `theirs`, run alternately (so that load from other processes
/// on this shared machine hits both alike) for about `budget`.
fn compare(budget: Duration, mut ours: impl FnMut(), mut theirs: impl FnMut()) -> (Duration, Duration) {
    ours(); // warm up: page in, fill caches
    theirs();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while a.len() < 5 || (start.elapsed() < budget && a.len() < 200) {
        let t = Instant::now();
        ours();
        a.push(t.elapsed());
        let t = Instant::now();
        theirs();
        b.push(t.elapsed());
    }
    a.sort();
    b.sort();
    (a[a.len() / 2], b[b.len() / 2])
}

fn ggml_matmul(ty: GgmlType, w: &[u8], rows: usize, acts: &QuantizedActs, out: &mut [f32]) {
    // SAFETY: static type table lookup for a valid type id.
    let f = unsafe { &*sys::ggml_get_type_traits_cpu(ty.id() as sys::ggml_type) }.vec_dot.unwrap();
    let row_bytes = w.len() / rows;
    let n = acts.n;
    out.par_chunks_mut(acts.n_rows).enumerate().for_each(|(r, per_token)| {
        let w_row = &w[r * row_bytes..(r + 1) * row_bytes];
        for (t, y) in per_token.iter_mut().enumerate() {
            // SAFETY: one row of n elements of each operand.
            unsafe { f(n as i32, y, 0, w_row.as_ptr().cast(), 0, acts.row(t).as_ptr().cast(), 0, 1) };
        }
    });
}

fn main() {
    // SAFETY: fills ggml's lookup tables.
    unsafe { sys::ggml_cpu_init() };
    let tokens: usize = std::env::var("GEMMA_BENCH_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let isa = Isa::best();
    println!(
        "kernels: ours at {isa:?}, ggml vec_dot; {} threads; matmul with {tokens} tokens",
        rayon::current_num_threads()
    );
    println!(
        "{:<28} {:<6} {:>10} {:>10} {:>7} {:>10} {:>10} {:>7}",
        "shape", "type", "mv GB/s", "ggml", "ratio", "mm GFLOP/s", "ggml", "ratio"
    );
    // GEMMA_BENCH_TYPES=q8_0,q5_0 limits the run to some types.
    let only: Option<Vec<String>> =
        std::env::var("GEMMA_BENCH_TYPES").ok().map(|v| v.split(',').map(String::from).collect());
    for (name, n, rows) in SHAPES {
        for ty in TYPES {
            if only.as_ref().is_some_and(|o| !o.iter().any(|t| t.eq_ignore_ascii_case(ty.name()))) {
                continue;
            }
            if !has_kernels(ty) || n % ty.block_size() != 0 {
                continue;
            }
            let w_bytes = rows * ty.row_bytes(n as u64).unwrap() as usize;
            let mut w = vec![0u8; w_bytes];
            quantize_row(ty, &pseudo_random(rows * n, 1), &mut w).unwrap();
            let mut line = format!("{name:<28} {:<6}", ty.name());
            for n_tokens in [1, tokens] {
                let acts = QuantizedActs::new(ty, &pseudo_random(n_tokens * n, 2), n).unwrap();
                let mut out = vec![0f32; rows * n_tokens];
                let mut out2 = out.clone();
                let (ours, theirs) = compare(
                    Duration::from_millis(1200),
                    || matmul(ty, isa, &w, rows, &acts, &mut out).unwrap(),
                    || ggml_matmul(ty, &w, rows, &acts, &mut out2),
                );
                let (a, b) = if n_tokens == 1 {
                    let gbs = |d: Duration| w_bytes as f64 / d.as_secs_f64() / 1e9;
                    (gbs(ours), gbs(theirs))
                } else {
                    let gflops = |d: Duration| 2.0 * (rows * n * n_tokens) as f64 / d.as_secs_f64() / 1e9;
                    (gflops(ours), gflops(theirs))
                };
                line += &format!(" {a:>10.2} {b:>10.2} {:>6.2}x", a / b);
            }
            println!("{line}");
        }
    }
}
