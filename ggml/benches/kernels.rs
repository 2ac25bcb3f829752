//! Dot-product kernel throughput, ours next to ggml's, on Gemma 4 26B-A4B's matrix shapes.
//!
//! Two comparisons, each run alternately with ours on the same data and thread count:
//! - **Kernels** (same harness, same quantized activations): ours through `kernels::matmul`,
//!   ggml's by calling its CPU `vec_dot` for every (row, token) pair in the same rayon loop, so
//!   this compares the dot kernels, not the thread pools.
//! - **Whole matmul, f32 in and out:** ours (`QuantizedActs::new` then `matmul`) against a
//!   ggml graph of one `ggml_mul_mat` run by `ggml_graph_compute` on a ggml threadpool: ggml
//!   quantizes the activations itself and takes its own fastest path, llamafile's tinyBLAS
//!   where it handles the type. (llama.cpp's repacked "extra buffer" layouts are set up by
//!   its model loader, not by a bare graph, so they are not in this column.)
//!
//! Build ggml with this CPU's SIMD for a fair comparison: `scripts/bench-kernels.sh` does
//! (`RUSTFLAGS=-Ctarget-cpu=native`, its own target dir).
//!
//! `GEMMA_BENCH_TYPES=q8_0,q5_0` limits the run to those weight types.
//!
//! Prints, per shape and weight type, GB/s of weights streamed for matvec (1 token) and
//! GFLOP/s for matmul (`GEMMA_BENCH_TOKENS`, default 512 tokens), each with ggml's figure and
//! the ratio ours / ggml.

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

/// Median wall times of `ours` and `theirs`, over about `budget`. They run in alternating
/// blocks of back-to-back runs, as a model runs its matmuls: within a block each side's thread
/// pool stays awake, its data stays cached and the cores run at full clock (the first runs
/// after a pause, warm-up, are not timed), and load from other processes on this shared
/// machine hits both alike. Thread pools spin a while after a job before they sleep:
/// `theirs_idle` sends ggml's threadpool to sleep after its block (its workers would otherwise
/// spin for a long time, on the cores ours needs), `theirs_wake` wakes it before the next, and
/// a pause before each block lets the other side's threads go idle.
fn compare(
    budget: Duration,
    mut ours: impl FnMut(),
    mut theirs: impl FnMut(),
    mut theirs_wake: impl FnMut(),
    mut theirs_idle: impl FnMut(),
) -> (Duration, Duration) {
    // Each block: warm-up runs for at least WARM_UP (one at least), then timed runs for at
    // least TIMED (three at least).
    const WARM_UP: Duration = Duration::from_millis(20);
    const TIMED: Duration = Duration::from_millis(40);
    let block = |f: &mut dyn FnMut(), times: &mut Vec<Duration>| {
        std::thread::sleep(Duration::from_millis(5));
        let start = Instant::now();
        f();
        while start.elapsed() < WARM_UP {
            f();
        }
        let (start, first) = (Instant::now(), times.len());
        while times.len() < first + 3 || start.elapsed() < TIMED {
            let t = Instant::now();
            f();
            times.push(t.elapsed());
        }
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while a.len() < 6 || (start.elapsed() < budget && a.len() < 400) {
        block(&mut ours, &mut a);
        theirs_wake();
        block(&mut theirs, &mut b);
        theirs_idle();
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

/// One `ggml_mul_mat` of a weight matrix by f32 activations as a ggml graph, computed on a
/// ggml threadpool of `threads` threads (set up once, reused by every run).
struct GgmlMulMat {
    ctx: *mut sys::ggml_context,
    graph: *mut sys::ggml_cgraph,
    result: *mut sys::ggml_tensor,
    pool: *mut sys::ggml_threadpool,
    plan: sys::ggml_cplan,
    _work: Vec<u8>,
}

impl GgmlMulMat {
    fn new(ty: GgmlType, w: &[u8], rows: usize, x: &[f32], n: usize, threads: usize) -> GgmlMulMat {
        let n_tokens = x.len() / n;
        let overhead = 4 * unsafe { sys::ggml_tensor_overhead() } + unsafe { sys::ggml_graph_overhead() };
        let mem_size = w.len() + 4 * (x.len() + rows * n_tokens) + overhead + (1 << 20);
        let params = sys::ggml_init_params { mem_size, mem_buffer: std::ptr::null_mut(), no_alloc: false };
        // SAFETY: the context owns every tensor created below; the data copies fit their
        // tensors (`ggml_nbytes` equals our row bytes for the same type and shape); the plan's
        // work buffer outlives every compute.
        unsafe {
            let ctx = sys::ggml_init(params);
            assert!(!ctx.is_null(), "ggml_init failed");
            let wt = sys::ggml_new_tensor_2d(ctx, ty.id() as sys::ggml_type, n as i64, rows as i64);
            let xt = sys::ggml_new_tensor_2d(ctx, sys::GGML_TYPE_F32, n as i64, n_tokens as i64);
            assert_eq!(sys::ggml_nbytes(wt), w.len());
            std::ptr::copy_nonoverlapping(w.as_ptr(), (*wt).data.cast::<u8>(), w.len());
            std::ptr::copy_nonoverlapping(x.as_ptr(), (*xt).data.cast::<f32>(), x.len());
            let result = sys::ggml_mul_mat(ctx, wt, xt);
            let graph = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(graph, result);
            let mut pool_params = sys::ggml_threadpool_params_default(threads as i32);
            let pool = sys::ggml_threadpool_new(&mut pool_params);
            let mut plan = sys::ggml_graph_plan(graph, threads as i32, pool);
            let mut work = vec![0u8; plan.work_size.max(1)];
            plan.work_data = work.as_mut_ptr();
            GgmlMulMat { ctx, graph, result, pool, plan, _work: work }
        }
    }

    /// Sends the threadpool's workers to sleep (ggml_threadpool_pause).
    fn idle(&self) {
        // SAFETY: the pool lives as long as `self`.
        unsafe { sys::ggml_threadpool_pause(self.pool) };
    }

    /// Wakes the workers again.
    fn wake(&self) {
        // SAFETY: the pool lives as long as `self`.
        unsafe { sys::ggml_threadpool_resume(self.pool) };
    }

    fn compute(&self) {
        let mut plan = self.plan;
        // SAFETY: the graph, plan and work buffer were set up together in `new`.
        let status = unsafe { sys::ggml_graph_compute(self.graph, &mut plan) };
        assert_eq!(status, sys::GGML_STATUS_SUCCESS);
    }

    /// The result, `[n_tokens][rows]`.
    fn result(&self) -> &[f32] {
        // SAFETY: the result tensor is f32 and contiguous, owned by the context.
        unsafe {
            let t = &*self.result;
            std::slice::from_raw_parts(t.data.cast::<f32>(), (t.ne[0] * t.ne[1]) as usize)
        }
    }
}

impl Drop for GgmlMulMat {
    fn drop(&mut self) {
        // SAFETY: created in `new`, freed once.
        unsafe {
            sys::ggml_threadpool_free(self.pool);
            sys::ggml_free(self.ctx);
        }
    }
}

fn main() {
    // SAFETY: fills ggml's lookup tables.
    unsafe { sys::ggml_cpu_init() };
    let tokens: usize = std::env::var("GEMMA_BENCH_TOKENS").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    let isa = Isa::best();
    let threads = rayon::current_num_threads();
    println!("ours at {isa:?}; {threads} threads; matmul with {tokens} tokens");
    println!("kernels: GB/s (matvec) and GFLOP/s (matmul) of ours and of ggml's vec_dot in the same loop");
    println!("mul_mat: f32 activations in, f32 out: ours (quantize + matmul) and a ggml graph (ggml_mul_mat)");
    println!(
        "{:<28} {:<5} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}",
        "", "", "kernels", "", "", "", "", "", "mul_mat", "", "", "", "", ""
    );
    println!(
        "{:<28} {:<5} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6} | {:>7} {:>7} {:>6}",
        "shape",
        "type",
        "mv GB/s",
        "ggml",
        "ratio",
        "mm GF/s",
        "ggml",
        "ratio",
        "mv GB/s",
        "ggml",
        "ratio",
        "mm GF/s",
        "ggml",
        "ratio"
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
            let mut line = format!("{name:<28} {:<5}", ty.name());
            let rate = |n_tokens: usize, d: Duration| {
                if n_tokens == 1 {
                    w_bytes as f64 / d.as_secs_f64() / 1e9
                } else {
                    2.0 * (rows * n * n_tokens) as f64 / d.as_secs_f64() / 1e9
                }
            };
            let mut column = |n_tokens: usize, (ours, theirs): (Duration, Duration)| {
                let (a, b) = (rate(n_tokens, ours), rate(n_tokens, theirs));
                line += &format!(" | {a:>7.1} {b:>7.1} {:>5.2}x", a / b);
            };
            let budget = Duration::from_millis(1200);
            for n_tokens in [1, tokens] {
                let acts = QuantizedActs::new(ty, &pseudo_random(n_tokens * n, 2), n).unwrap();
                let mut out = vec![0f32; rows * n_tokens];
                let mut out2 = out.clone();
                column(
                    n_tokens,
                    compare(
                        budget,
                        || matmul(ty, isa, &w, rows, &acts, &mut out).unwrap(),
                        || ggml_matmul(ty, &w, rows, &acts, &mut out2),
                        || {},
                        || {},
                    ),
                );
            }
            for n_tokens in [1, tokens] {
                let x = pseudo_random(n_tokens * n, 2);
                let graph = GgmlMulMat::new(ty, &w, rows, &x, n, threads);
                graph.idle();
                let mut out = vec![0f32; rows * n_tokens];
                let times = compare(
                    budget,
                    || matmul(ty, isa, &w, rows, &QuantizedActs::new(ty, &x, n).unwrap(), &mut out).unwrap(),
                    || graph.compute(),
                    || graph.wake(),
                    || graph.idle(),
                );
                // Same product: ggml's result within rounding of ours.
                let scale = out.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
                let diff = out.iter().zip(graph.result()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff <= 1e-2 * scale,
                    "{name} {ty:?}: ours and ggml_mul_mat differ by {diff} (max |out| {scale})"
                );
                column(n_tokens, times);
            }
            println!("{line}");
        }
    }
}
