//! Every shader against its CPU twin on lavapipe (or the device `GEMMA_TEST_VK_DEVICE` names),
//! on random data, with each error bound stated and asserted. A machine without a Vulkan
//! device fails these tests: `scripts/setup.sh` installs lavapipe (`mesa-vulkan-drivers`).

use std::sync::{Arc, OnceLock};

use super::weights::{Stack, TYPES};
use super::*;
use crate::attention::KvElem;
use crate::ops;
use crate::ops::rope::RopeCache;
use crate::quants::{dequantize_row, quantize_row};
use crate::GgmlType;

/// The device the tests run on: `GEMMA_TEST_VK_DEVICE=N`, else the first CPU device (lavapipe).
fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let vk = Arc::new(Vulkan::load().expect("the GPU tests need a Vulkan loader: run scripts/setup.sh"));
        let devices = vk.devices().expect("listing Vulkan devices");
        let index =
            match std::env::var("GEMMA_TEST_VK_DEVICE") {
                Ok(i) => i.parse().expect("GEMMA_TEST_VK_DEVICE is a device index"),
                Err(_) => devices.iter().find(|d| d.kind == DeviceKind::Cpu).map(|d| d.index).unwrap_or_else(|| {
                    panic!("no CPU Vulkan device (lavapipe) among {devices:?}: run scripts/setup.sh")
                }),
            };
        Gpu::open(vk, index).expect("opening the test device")
    })
}

/// Deterministic values in [-3, 3).
fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    crate::ops::testing::random(n, seed, -3.0, 3.0)
}

/// `n_out` random rows of `n_in` elements of `ty` (quantized by our reference quantizers), as
/// raw bytes.
fn random_matrix(ty: GgmlType, n_in: usize, n_out: usize, seed: u64) -> Vec<u8> {
    let x = random_f32(n_in * n_out, seed);
    let row_bytes = ty.row_bytes(n_in as u64).unwrap() as usize;
    let mut out = vec![0u8; row_bytes * n_out];
    for (src, dst) in x.chunks_exact(n_in).zip(out.chunks_exact_mut(row_bytes)) {
        quantize_row(ty, src, dst).unwrap();
    }
    out
}

/// Panics at the first element where `got` and `want` differ, naming it.
#[track_caller]
fn assert_same(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i} is {} where the CPU gives {}", got[i], want[i]);
    }
}

fn dequantized(ty: GgmlType, bytes: &[u8], n_in: usize) -> Vec<f32> {
    let row_bytes = ty.row_bytes(n_in as u64).unwrap() as usize;
    let mut out = vec![0f32; bytes.len() / row_bytes * n_in];
    for (src, dst) in bytes.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n_in)) {
        dequantize_row(ty, src, dst).unwrap();
    }
    out
}

fn read(gpu: &Gpu, b: &Buffer, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    gpu.read_f32(b, &mut out).unwrap();
    out
}

/// `n` f32s of zeros on the device.
fn zeros(gpu: &Gpu, n: usize) -> Buffer {
    gpu.buffer_from(&vec![0f32; n], "test output").unwrap()
}

/// The matvec's error bound. Each lane sums n/128 dot products of 4 (4 roundings each), then
/// the 32 lanes meet in a tree of 5 additions: a term passes through at most
/// k = n/128 + 4 + 5 roundings, so |got - exact| <= k · eps · Σ|w x| (first order).
fn matvec_bound(n_in: usize, magnitude: f64) -> f64 {
    let k = (n_in / 128 + 9) as f64;
    k * f32::EPSILON as f64 * magnitude
}

#[test]
fn matvec_matches_the_dequantized_f64_product_for_every_type_and_shape() {
    let gpu = gpu();
    // Row widths of 26B-A4B: the hidden size (2816), the expert FFN (704), the dense FFN
    // (2112), a full layer's attention output (8192); the k-quants only where 256 divides them.
    for &ty in TYPES {
        for (n_in, n_out, n_tokens) in [(2816, 37, 1), (704, 64, 3), (2112, 21, 2), (8192, 9, 2)] {
            if ty.row_bytes(n_in as u64).is_none() {
                continue;
            }
            let seed = ty as u64 * 7 + n_in as u64;
            let bytes = random_matrix(ty, n_in, n_out, seed);
            let w = GpuMatrix::upload(gpu, "w", ty, n_in, n_out, &bytes, None).unwrap();
            let x = random_f32(n_tokens * n_in, seed + 1);
            let (xb, yb) = (gpu.buffer_from(&x, "x").unwrap(), zeros(gpu, n_tokens * n_out));
            let mut c = gpu.commands().unwrap();
            c.matvec(&w, &xb, n_in, &yb, n_out, n_tokens).unwrap();
            c.finish().unwrap();
            let got = read(gpu, &yb, n_tokens * n_out);
            let wf = dequantized(ty, &bytes, n_in);
            let mut worst = 0f64;
            for t in 0..n_tokens {
                for r in 0..n_out {
                    let (row, xt) = (&wf[r * n_in..][..n_in], &x[t * n_in..][..n_in]);
                    let exact: f64 = row.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let magnitude: f64 = row.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                    let err = (got[t * n_out + r] as f64 - exact).abs();
                    let bound = matvec_bound(n_in, magnitude);
                    assert!(err <= bound, "{ty:?} {n_out}x{n_in} token {t} row {r}: error {err:e} > bound {bound:e}");
                    worst = worst.max(err / bound);
                }
            }
            assert!(worst > 0.0 || ty == GgmlType::F32, "{ty:?}: an exact match everywhere is suspicious");
        }
    }
}

#[test]
fn a_matrix_split_across_buffers_gives_the_same_bits() {
    let gpu = gpu();
    for ty in [GgmlType::Q6_K, GgmlType::Q8_0] {
        let (n_in, n_out) = (512, 50);
        let bytes = random_matrix(ty, n_in, n_out, 5);
        let whole = GpuMatrix::upload(gpu, "whole", ty, n_in, n_out, &bytes, None).unwrap();
        let row_bytes = ty.row_bytes(n_in as u64).unwrap();
        // 7 rows per part: 8 parts, the last of 1 row, and parts starting at odd byte offsets
        // of the tensor (Q6_K rows are 420 bytes, Q8_0 rows 544).
        let split = GpuMatrix::upload(gpu, "split", ty, n_in, n_out, &bytes, Some(7 * row_bytes)).unwrap();
        assert_eq!((whole.parts.len(), split.parts.len()), (1, 8));
        let x = random_f32(2 * n_in, 9);
        let xb = gpu.buffer_from(&x, "x").unwrap();
        let (a, b) = (zeros(gpu, 2 * n_out), zeros(gpu, 2 * n_out));
        let mut c = gpu.commands().unwrap();
        c.matvec(&whole, &xb, n_in, &a, n_out, 2).unwrap();
        c.matvec(&split, &xb, n_in, &b, n_out, 2).unwrap();
        c.finish().unwrap();
        let (a, b) = (read(gpu, &a, 2 * n_out), read(gpu, &b, 2 * n_out));
        assert!(a.iter().all(|v| *v != 0.0));
        assert_same(&b, &a, &format!("{ty:?} split"));
        // The embedding lookup reads each id from whichever part holds it.
        let ids: Vec<u32> = vec![0, 6, 7, 49, 13, 42];
        let idb = gpu.buffer_from(&ids, "ids").unwrap();
        let out = zeros(gpu, ids.len() * n_in);
        let mut c = gpu.commands().unwrap();
        c.get_rows(&split, &idb, ids.len(), &out, 1.0).unwrap();
        c.finish().unwrap();
        let got = read(gpu, &out, ids.len() * n_in);
        let wf = dequantized(ty, &bytes, n_in);
        for (t, &id) in ids.iter().enumerate() {
            assert_same(&got[t * n_in..][..n_in], &wf[id as usize * n_in..][..n_in], &format!("{ty:?} id {id}"));
        }
    }
}

#[test]
fn get_rows_dequantizes_exactly_as_the_cpu_for_every_type() {
    let gpu = gpu();
    for &ty in TYPES {
        let (n_in, n_out) = (768, 12);
        let bytes = random_matrix(ty, n_in, n_out, 3 + ty as u64);
        let w = GpuMatrix::upload(gpu, "embd", ty, n_in, n_out, &bytes, None).unwrap();
        let ids: Vec<u32> = vec![3, 0, 11, 3, 7];
        let idb = gpu.buffer_from(&ids, "ids").unwrap();
        let out = zeros(gpu, ids.len() * n_in);
        let scale = 53.066;
        let mut c = gpu.commands().unwrap();
        c.get_rows(&w, &idb, ids.len(), &out, scale).unwrap();
        c.finish().unwrap();
        let got = read(gpu, &out, ids.len() * n_in);
        let wf = dequantized(ty, &bytes, n_in);
        for (t, &id) in ids.iter().enumerate() {
            let want: Vec<f32> = wf[id as usize * n_in..][..n_in].iter().map(|v| v * scale).collect();
            assert_same(&got[t * n_in..][..n_in], &want, &format!("{ty:?} token {t}"));
        }
    }
}

#[test]
fn rms_norm_matches_the_cpu_within_a_few_ulp() {
    let gpu = gpu();
    // Whole hidden states (2816, with a weight) and heads of 256 and 512 (q/k norm; v norm
    // without a weight), in place and not.
    for (n, n_rows, weighted) in [(2816, 3, true), (256, 16, true), (512, 4, false)] {
        let x = random_f32(n * n_rows, n as u64);
        let w = random_f32(n, 77);
        let eps = 1e-6;
        let xb = gpu.buffer_from(&x, "x").unwrap();
        let wb = gpu.buffer_from(&w, "w").unwrap();
        let yb = zeros(gpu, n * n_rows);
        let mut c = gpu.commands().unwrap();
        c.rms_norm(&xb, &yb, weighted.then_some(&wb), n, n_rows, eps).unwrap();
        c.rms_norm(&xb, &xb, weighted.then_some(&wb), n, n_rows, eps).unwrap();
        c.finish().unwrap();
        let (got, in_place) = (read(gpu, &yb, n * n_rows), read(gpu, &xb, n * n_rows));
        assert_eq!(got, in_place);
        let mut want = x.clone();
        for row in want.chunks_exact_mut(n) {
            ops::norm::rms_norm_inplace(row, weighted.then_some(&w[..]), eps);
        }
        // The sum of squares in f32 (a tree of n/128 + 7 roundings) against the CPU's f64, then
        // a division, a square root and two products: 16 ulp of each value.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let bound = 16.0 * f32::EPSILON * w.abs();
            assert!((g - w).abs() <= bound, "n {n} value {i}: {g} vs {w}");
        }
    }
}

#[test]
fn rope_equals_the_cpu_bit_for_bit() {
    let gpu = gpu();
    // Sliding layers: heads of 256, all rotated; full layers: heads of 512 with proportional
    // RoPE (freq factors 1 for the first 64 pairs, 1e30 for the rest).
    let freqs: Vec<f32> = (0..256).map(|i| if i < 64 { 1.0 } else { 1e30 }).collect();
    for (head_dim, n_heads, base, ff) in [(256, 8, 1e4, None), (512, 2, 1e6, Some(&freqs[..]))] {
        let n_tokens = 5;
        let positions = [0, 1, 17, 1023, 40000];
        let caches: Vec<RopeCache> = positions.iter().map(|&p| RopeCache::new(p, base, head_dim, ff)).collect();
        let table: Vec<f32> = caches.iter().flat_map(|c| c.cos.iter().chain(&c.sin).copied()).collect();
        let x = random_f32(n_tokens * n_heads * head_dim, head_dim as u64);
        let (xb, tb) = (gpu.buffer_from(&x, "x").unwrap(), gpu.buffer_from(&table, "cos/sin").unwrap());
        let mut c = gpu.commands().unwrap();
        c.rope_neox(&xb, &tb, head_dim, n_heads, head_dim, n_tokens).unwrap();
        c.finish().unwrap();
        let got = read(gpu, &xb, x.len());
        let mut want = x.clone();
        for (row, cache) in want.chunks_exact_mut(n_heads * head_dim).zip(&caches) {
            ops::rope::rope_neox_cached(row, head_dim, cache);
        }
        assert_ne!(got, x);
        assert_same(&got, &want, &format!("head dim {head_dim}"));
    }
}

#[test]
fn gelu_mul_matches_the_cpu_within_its_exp_bound() {
    let gpu = gpu();
    // gate and up as the two halves of one [n_tokens][2 n_ff] buffer (the fused gate_up).
    let (n, n_rows) = (704, 3);
    let gu = random_f32(2 * n * n_rows, 11);
    let b = gpu.buffer_from(&gu, "gate_up").unwrap();
    let mut c = gpu.commands().unwrap();
    c.gelu_mul(&b, &b, n, n_rows, 2 * n, 2 * n, n).unwrap();
    c.finish().unwrap();
    let got = read(gpu, &b, gu.len());
    for t in 0..n_rows {
        let mut want = gu[t * 2 * n..][..n].to_vec();
        ops::gelu::gelu_mul_scalar(&mut want, &gu[t * 2 * n + n..][..n]);
        for (i, (g, w)) in got[t * 2 * n..][..n].iter().zip(&want).enumerate() {
            // exp within (3 + 2|2u|) ulp (the Vulkan bound), then a division and a product;
            // |u| < 10 for these inputs: 64 ulp.
            let bound = 64.0 * f32::EPSILON * w.abs() + 1e-30;
            assert!((g - w).abs() <= bound, "row {t} value {i}: {g} vs {w}");
        }
        assert_eq!(got[t * 2 * n + n..][..n], gu[t * 2 * n + n..][..n], "up is left alone");
    }
}

#[test]
fn element_wise_ops_equal_the_cpu() {
    let gpu = gpu();
    let n = 2816 * 2;
    let (y, x, w) = (random_f32(n, 1), random_f32(n, 2), random_f32(2816, 3));
    let run = |op: &dyn Fn(&mut Commands, &Buffer, &Buffer, &Buffer)| {
        let (yb, xb, wb) =
            (gpu.buffer_from(&y, "y").unwrap(), gpu.buffer_from(&x, "x").unwrap(), gpu.buffer_from(&w, "w").unwrap());
        let mut c = gpu.commands().unwrap();
        op(&mut c, &yb, &xb, &wb);
        c.finish().unwrap();
        read(gpu, &yb, n)
    };
    let mut want = y.clone();
    ops::elementwise::add(&mut want, &x);
    assert_same(&run(&|c, y, x, _| c.add(y, x, n).unwrap()), &want, "add");
    let mut want = y.clone();
    for row in want.chunks_exact_mut(2816) {
        ops::elementwise::mul(row, &w);
    }
    assert_same(&run(&|c, y, _, w| c.mul(y, w, n, 2816).unwrap()), &want, "mul by a row");
    let mut want = y.clone();
    ops::elementwise::scale(&mut want, 1.5);
    assert_same(&run(&|c, y, _, _| c.scale(y, 1.5, n).unwrap()), &want, "scale");

    // The softcap goes through the device's tanh: within 8 ulp of c.
    let logits: Vec<f32> = random_f32(4096, 4).iter().map(|v| v * 20.0).collect();
    let lb = gpu.buffer_from(&logits, "logits").unwrap();
    let mut c = gpu.commands().unwrap();
    c.softcap(&lb, 30.0, logits.len()).unwrap();
    c.finish().unwrap();
    let got = read(gpu, &lb, logits.len());
    let mut want = logits.clone();
    ops::elementwise::softcap(&mut want, 30.0);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 8.0 * f32::EPSILON * 30.0, "{g} vs {w}");
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    let gpu = gpu();
    let bytes = random_matrix(GgmlType::Q4_K, 256, 4, 1);
    let w = GpuMatrix::upload(gpu, "w", GgmlType::Q4_K, 256, 4, &bytes, None).unwrap();
    let small = zeros(gpu, 100);
    let mut c = gpu.commands().unwrap();
    let e = c.matvec(&w, &small, 256, &small, 4, 1).unwrap_err();
    assert!(e.to_string().contains("matvec input"), "{e}");
    drop(c);
    let e = GpuMatrix::upload(gpu, "blk.0.x", GgmlType::Q2_K, 256, 4, &[0; 84 * 4], None).err().unwrap();
    assert!(e.to_string().contains("blk.0.x: q2_K weights have no GPU kernel"), "{e}");
    let e = GpuMatrix::upload(gpu, "blk.0.y", GgmlType::Q4_K, 256, 4, &bytes[1..], None).err().unwrap();
    assert!(e.to_string().contains("blk.0.y"), "{e}");
    // The device is still usable after an abandoned recording.
    let mut c = gpu.commands().unwrap();
    c.scale(&small, 2.0, 100).unwrap();
    c.finish().unwrap();
}

#[test]
fn expert_matvec_reads_each_tokens_experts_from_a_stack_of_128() {
    let gpu = gpu();
    // 128 experts of 24 rows (26B-A4B's stacks have 1408 or 2816; fewer keep the test fast),
    // 3 tokens with 8 experts each, once whole and once split into parts of 5 experts.
    let (n_expert, rows, n_in, k, n_tokens) = (128, 24, 2816, 8, 3);
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0] {
        let bytes = random_matrix(ty, n_in, n_expert * rows, 31);
        let row_bytes = ty.row_bytes(n_in as u64).unwrap();
        let shape = Stack { ty, n_in, rows, n_expert };
        let whole = GpuMatrix::upload_stack(gpu, "exps", shape, &bytes, None).unwrap();
        let split = GpuMatrix::upload_stack(gpu, "exps", shape, &bytes, Some(5 * 24 * row_bytes + 100)).unwrap();
        assert_eq!(split.parts.len(), 26, "parts of 5 whole experts");
        // And laid over buffers of its parts' sizes, its bytes copied in from a host buffer
        // (at an offset) in the same submission as the product: how experts kept in RAM
        // cross for a prompt.
        let sizes = GpuMatrix::stack_parts(gpu, "exps", shape).unwrap();
        let buffers: Vec<Arc<Buffer>> = sizes.iter().map(|&b| Arc::new(gpu.buffer(b, "slot").unwrap())).collect();
        let over = GpuMatrix::stack_over(gpu, "exps", shape, &buffers).unwrap();
        let mut host = gpu.host_buffer(bytes.len() as u64 + 64, "staging").unwrap();
        host.write(64, &bytes).unwrap();
        let ids: Vec<u32> = (0..n_tokens * k).map(|i| ((i * 37 + 5) % n_expert) as u32).collect();
        let x = random_f32(n_tokens * n_in, 32);
        let (idb, xb) = (gpu.buffer_from(&ids, "ids").unwrap(), gpu.buffer_from(&x, "x").unwrap());
        let (a, b) = (zeros(gpu, n_tokens * k * rows), zeros(gpu, n_tokens * k * rows));
        let streamed = zeros(gpu, n_tokens * k * rows);
        let mut c = gpu.commands().unwrap();
        c.matvec_id(&whole, &idb, k, n_tokens, &xb, n_in, false, &a, rows).unwrap();
        c.matvec_id(&split, &idb, k, n_tokens, &xb, n_in, false, &b, rows).unwrap();
        over.copy_from(&mut c, &host, 64).unwrap();
        c.matvec_id(&over, &idb, k, n_tokens, &xb, n_in, false, &streamed, rows).unwrap();
        c.finish().unwrap();
        let (a, b) = (read(gpu, &a, n_tokens * k * rows), read(gpu, &b, n_tokens * k * rows));
        assert_same(&b, &a, &format!("{ty:?} split stack"));
        assert_same(&read(gpu, &streamed, n_tokens * k * rows), &a, &format!("{ty:?} stack copied in"));
        let wf = dequantized(ty, &bytes, n_in);
        for (z, &e) in ids.iter().enumerate() {
            let xt = &x[z / k * n_in..][..n_in];
            for r in 0..rows {
                let row = &wf[(e as usize * rows + r) * n_in..][..n_in];
                let exact: f64 = row.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = row.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let err = (a[z * rows + r] as f64 - exact).abs();
                assert!(err <= matvec_bound(n_in, magnitude), "{ty:?} slot {z} expert {e} row {r}: {err:e}");
            }
        }
    }
}

#[test]
fn the_router_picks_the_cpus_experts_and_weights() {
    let gpu = gpu();
    let (n_expert, k, n_tokens) = (128, 8, 5);
    let logits = random_f32(n_tokens * n_expert, 41);
    let scale: Vec<f32> = random_f32(n_expert, 42).iter().map(|v| 1.0 + v / 10.0).collect();
    let (lb, sb) = (gpu.buffer_from(&logits, "logits").unwrap(), gpu.buffer_from(&scale, "scale").unwrap());
    let (idb, wb) = (zeros(gpu, n_tokens * k), zeros(gpu, n_tokens * k));
    let mut c = gpu.commands().unwrap();
    c.moe_route(&lb, n_expert, k, n_tokens, &sb, &idb, &wb).unwrap();
    c.finish().unwrap();
    let mut ids = vec![0u32; n_tokens * k];
    gpu.download(&idb, 0, bytemuck::cast_slice_mut(&mut ids)).unwrap();
    let weights = read(gpu, &wb, n_tokens * k);
    for t in 0..n_tokens {
        let (experts, w) = ops::softmax::softmax_top_k(&logits[t * n_expert..][..n_expert], k);
        for j in 0..k {
            assert_eq!(ids[t * k + j] as usize, experts[j], "token {t} choice {j}");
            // exp within a few ulp, a sum of 128 and of 8 terms, a division, a product.
            let want = w[j] * scale[experts[j]];
            assert!((weights[t * k + j] - want).abs() <= 64.0 * f32::EPSILON * want, "token {t} choice {j}");
        }
    }
}

#[test]
fn the_moe_sum_adds_in_the_cpus_order_to_the_same_bits() {
    let gpu = gpu();
    let (n, k, n_tokens) = (2816, 8, 2);
    let y = random_f32(n_tokens * k * n, 51);
    let ids: Vec<u32> = vec![9, 3, 120, 0, 77, 4, 5, 64, 1, 2, 3, 4, 100, 99, 98, 97];
    let weights: Vec<f32> = random_f32(n_tokens * k, 52).iter().map(|v| v.abs() / 8.0).collect();
    let (yb, idb, wb) = (
        gpu.buffer_from(&y, "y").unwrap(),
        gpu.buffer_from(&ids, "ids").unwrap(),
        gpu.buffer_from(&weights, "w").unwrap(),
    );
    let out = zeros(gpu, n_tokens * n);
    let mut c = gpu.commands().unwrap();
    c.moe_sum(&yb, &idb, &wb, n, k, n_tokens, &out).unwrap();
    c.finish().unwrap();
    let got = read(gpu, &out, n_tokens * n);
    // The CPU's moe_ffn: out += w · y per (token, expert), experts in ascending order.
    let mut want = vec![0f32; n_tokens * n];
    for t in 0..n_tokens {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by_key(|&j| ids[t * k + j]);
        for j in order {
            for i in 0..n {
                want[t * n + i] += weights[t * k + j] * y[(t * k + j) * n + i];
            }
        }
    }
    assert_same(&got, &want, "moe sum");
}

/// `rows` (whole rows of `d`) as a cache of `T` stores them: rotated by `rot` first (as a block
/// type's rows are), then rounded or quantized by the CPU's store.
fn stored<T: KvElem>(rows: &[f32], d: usize, rot: Option<usize>) -> Vec<T> {
    let mut x = rows.to_vec();
    if let Some(n) = rot {
        crate::attention::rotation::rotate(&mut x, n);
    }
    let mut out = vec![T::ZERO; x.len() / T::BLOCK];
    for (x, out) in x.chunks_exact(d).zip(out.chunks_exact_mut(d / T::BLOCK)) {
        T::store_row(x, out);
    }
    out
}

/// Attention through `kv_store` and `attention` on a cache with K of type `K` and V of type `V`:
/// the rows the GPU stores (rotated and quantized where the types are) equal the CPU's store of
/// the same values byte for byte, and the output equals the f64 reference over the stored cache
/// (with the queries rotated as K and the output rotated back as V, as `LayerCache::attend`
/// does). On a sliding layer the new tokens 1..4 are an image's soft tokens, which see each
/// other both ways (`q_last`).
fn check_attention<K: KvElem + bytemuck::Pod, V: KvElem + bytemuck::Pod>(
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    window: Option<usize>,
) {
    use crate::attention::rotation::{k_rotation, rotate, v_rotation};
    let gpu = gpu();
    let what = format!("K {} V {} hd {head_dim} window {window:?}", K::TYPE, V::TYPE);
    // A ring of 40 slots that wrapped: slot s holds position 100 + (s + 13) % 40 ... so the
    // slots are out of position order; the batch of 5 new tokens (positions 140..145) is
    // written into the 5 oldest slots, as the host's ring bookkeeping would.
    let (capacity, n_old, n_new) = (40usize, 40usize, 5usize);
    let mut pos: Vec<usize> = (0..capacity).map(|s| 100 + (s + 13) % capacity).collect();
    let new_slots: Vec<u32> = (0..n_new).map(|t| pos.iter().position(|&p| p == 100 + t).unwrap() as u32).collect();
    for (t, &s) in new_slots.iter().enumerate() {
        pos[s as usize] = 140 + t;
    }
    let row = n_kv_head * head_dim;
    let (rot_k, rot_v) = (k_rotation(K::TYPE, head_dim), v_rotation(V::TYPE, head_dim));
    // The old keys and values, [n_kv_head][capacity][head_dim], and the new ones,
    // [n_new][n_kv_head][head_dim].
    let old_k = random_f32(n_kv_head * capacity * head_dim, 61);
    let old_v = random_f32(n_kv_head * capacity * head_dim, 62);
    let (new_k, new_v) = (random_f32(n_new * row, 63), random_f32(n_new * row, 64));
    let q: Vec<f32> = random_f32(n_new * n_head * head_dim, 65).iter().map(|v| v / 4.0).collect();
    // The cache as the CPU stores it: the old rows, then the new ones in their slots.
    let (mut k_all, mut v_all) = (old_k.clone(), old_v.clone());
    for (t, &s) in new_slots.iter().enumerate() {
        for h in 0..n_kv_head {
            let (dst, src) = ((h * capacity + s as usize) * head_dim, t * row + h * head_dim);
            k_all[dst..dst + head_dim].copy_from_slice(&new_k[src..src + head_dim]);
            v_all[dst..dst + head_dim].copy_from_slice(&new_v[src..src + head_dim]);
        }
    }
    let (k_want, v_want) = (stored::<K>(&k_all, head_dim, rot_k), stored::<V>(&v_all, head_dim, rot_v));
    let cache = KvBuffers::new(gpu, n_kv_head, head_dim, capacity, K::TYPE, V::TYPE, "layer").unwrap();
    assert_eq!((cache.rot_k, cache.rot_v), (rot_k, rot_v));
    gpu.upload(&cache.k, 0, bytemuck::cast_slice(&stored::<K>(&old_k, head_dim, rot_k))).unwrap();
    gpu.upload(&cache.v, 0, bytemuck::cast_slice(&stored::<V>(&old_v, head_dim, rot_v))).unwrap();
    let q_pos: Vec<usize> = (140..140 + n_new).collect();
    let kpos: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
    let qpos: Vec<i32> = q_pos.iter().map(|&p| p as i32).collect();
    let q_last: Vec<usize> = match window {
        Some(_) => q_pos.iter().enumerate().map(|(t, &p)| if (1..4).contains(&t) { q_pos[3] } else { p }).collect(),
        None => q_pos.clone(),
    };
    let qlast: Vec<i32> = q_last.iter().map(|&p| p as i32).collect();
    let b = |x: &[f32]| gpu.buffer_from(x, "t").unwrap();
    let (kb, vb, qb) = (b(&new_k), b(&new_v), b(&q));
    let slots = gpu.buffer_from(&new_slots, "slots").unwrap();
    let (kposb, qposb) = (gpu.buffer_from(&kpos, "kpos").unwrap(), gpu.buffer_from(&qpos, "qpos").unwrap());
    let qlastb = gpu.buffer_from(&qlast, "qlast").unwrap();
    let out = zeros(gpu, q.len());
    let shape = crate::attention::AttnShape { n_head, n_kv_head, head_dim, scale: 1.0, window };
    let mut c = gpu.commands().unwrap();
    c.kv_store(&cache, &kb, &vb, &slots, n_new).unwrap();
    c.attention(&shape, &qb, &qposb, &qlastb, &cache, &kposb, n_old, n_new, &out).unwrap();
    c.finish().unwrap();
    // The stored cache equals the CPU's store of the same values, bit for bit.
    fn download<T: KvElem + bytemuck::Pod>(gpu: &Gpu, x: &Buffer, n: usize) -> Vec<T> {
        let mut bytes = vec![0u8; x.size as usize];
        gpu.download(x, 0, &mut bytes).unwrap();
        let mut units = vec![T::ZERO; n];
        bytemuck::cast_slice_mut::<T, u8>(&mut units).copy_from_slice(&bytes[..n * std::mem::size_of::<T>()]);
        units
    }
    let k_got: Vec<K> = download(gpu, &cache.k, k_want.len());
    let v_got: Vec<V> = download(gpu, &cache.v, v_want.len());
    assert!(bytemuck::cast_slice::<K, u8>(&k_got) == bytemuck::cast_slice::<K, u8>(&k_want), "stored keys, {what}");
    assert!(bytemuck::cast_slice::<V, u8>(&v_got) == bytemuck::cast_slice::<V, u8>(&v_want), "stored values, {what}");
    let got = read(gpu, &out, q.len());
    let mut q_rot = q.clone();
    if let Some(n) = rot_k {
        rotate(&mut q_rot, n);
    }
    let mut want = vec![0f32; q.len()];
    let slots_ref = crate::attention::KvSlots::new(&k_got, &v_got, &pos);
    crate::attention::attention_reference_to(&shape, &q_rot, &q_pos, &q_last, slots_ref, &mut want);
    if let Some(n) = rot_v {
        rotate(&mut want, n);
    }
    // The CPU's own bound against this reference (attention/tests.rs): 1e-5 of max |v|; the
    // device's exp is looser (3 + 2|x| ulp): 4e-5.
    let vmax = crate::attention::KvData::new(&v_got).to_f32().iter().fold(0f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 4e-5 * vmax, "{what}, value {i}: {g} vs {w}");
    }
}

#[test]
fn attention_matches_the_f64_reference_on_a_wrapped_ring() {
    use crate::quants::{q4_0::BlockQ4_0, q8_0::BlockQ8_0};
    use half::{bf16, f16};
    // Sliding layers of 26B-A4B (16 heads over 8 KV heads of 256, window 1024) with a window
    // of 30 that hides part of the ring, and full layers (16 over 2 KV heads of 512); every
    // type for K and V alike, and mixed pairs.
    fn both<K: KvElem + bytemuck::Pod, V: KvElem + bytemuck::Pod>() {
        check_attention::<K, V>(16, 8, 256, Some(30));
        check_attention::<K, V>(16, 2, 512, None);
    }
    both::<f32, f32>();
    both::<f16, f16>();
    both::<bf16, bf16>();
    both::<BlockQ8_0, BlockQ8_0>();
    both::<BlockQ4_0, BlockQ4_0>();
    both::<BlockQ8_0, f16>();
    both::<f16, BlockQ4_0>();
}

/// The rotation on the GPU is the CPU's, bit for bit (the same butterflies in the same order).
#[test]
fn hadamard_matches_the_cpu() {
    let gpu = gpu();
    for n in [64, 128, 256, 512] {
        let x = random_f32(3 * 512, 66);
        let buf = gpu.buffer_from(&x, "x").unwrap();
        let mut c = gpu.commands().unwrap();
        c.hadamard(&buf, x.len(), n).unwrap();
        c.finish().unwrap();
        let mut want = x.clone();
        crate::attention::rotation::rotate(&mut want, n);
        let got = read(gpu, &buf, x.len());
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "n = {n}");
    }
}

#[test]
fn updates_and_copies_run_in_order_with_the_ops() {
    let gpu = gpu();
    // 100,000 floats: 400 KB, seven vkCmdUpdateBuffer pieces of at most 64 KiB.
    let x = random_f32(100_000, 71);
    let (a, b) = (zeros(gpu, x.len()), zeros(gpu, x.len()));
    let mut c = gpu.commands().unwrap();
    c.update(&a, 0, bytemuck::cast_slice(&x)).unwrap();
    c.scale(&a, 2.0, x.len()).unwrap();
    c.copy(&a, 400, &b, 0, 4000).unwrap();
    c.scale(&b, 0.5, 1000).unwrap();
    c.finish().unwrap();
    let doubled: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    assert_same(&read(gpu, &a, x.len()), &doubled, "update then scale");
    assert_same(&read(gpu, &b, 1000), &x[100..1100], "copy then scale");
    let mut c = gpu.commands().unwrap();
    assert!(c.update(&a, 2, &[0; 4]).is_err(), "offsets are multiples of 4");
    assert!(c.update(&a, 0, &vec![0; 400_004]).is_err(), "past the end");
}
