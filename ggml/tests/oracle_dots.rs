//! Our dot products against ggml's `vec_dot` (llama.cpp's CPU backend through
//! `llama-cpp-sys-2`) on the same quantized weight and activation rows: for every weight type
//! with kernels, at every instruction-set level this CPU has.
//!
//! The integer parts are exact on both sides; the per-block float sums are added in different
//! orders (and ggml's build here is its portable C path), so results must agree within
//! `(blocks + 8)` f32 epsilons of Σ|w_i a_i|.
#![cfg(feature = "oracle")]

use ggml::kernels::{dot_type, has_kernels, vec_dot, Isa};
use ggml::quants::{dequantize_row, quantize_row};
use ggml::GgmlType;
use llama_cpp_sys_2 as sys;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

fn ggml_vec_dot(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    // SAFETY: ggml_cpu_init only fills lookup tables; it may be called more than once.
    unsafe { sys::ggml_cpu_init() };
    // SAFETY: ggml returns a pointer into its static CPU type table for every valid type.
    let traits = unsafe { &*sys::ggml_get_type_traits_cpu(ty.id() as sys::ggml_type) };
    let f = traits.vec_dot.expect("vec_dot");
    let mut s = 0f32;
    // SAFETY: one row of n elements of each operand, each buffer exactly its row size.
    unsafe { f(n as i32, &mut s, 0, w.as_ptr().cast(), 0, a.as_ptr().cast(), 0, 1) };
    s
}

/// A row of `n` values: normal, with an occasional outlier.
fn row(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x: f32 = StandardNormal.sample(rng);
            if rng.gen_ratio(1, 64) {
                x * 20.0
            } else {
                x
            }
        })
        .collect()
}

fn quantized(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let n_bytes = ty.row_bytes(x.len() as u64).unwrap() as usize;
    // A u64-backed buffer keeps every block struct aligned.
    let mut buf = vec![0u64; n_bytes.div_ceil(8)];
    let bytes = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..n_bytes];
    quantize_row(ty, x, bytes).unwrap();
    bytes.to_vec()
}

fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut buf = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..bytes.len()].copy_from_slice(bytes);
    buf
}

#[test]
fn dot_products_match_ggml_vec_dot() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut failures = Vec::new();
    for &ty in GgmlType::ALL.iter().filter(|t| has_kernels(**t)) {
        let a_ty = dot_type(ty).unwrap();
        let block = ty.block_size().max(a_ty.block_size());
        let mut checked = 0;
        for n in [block, 2 * block, 704, 2112, 2816, 4096].into_iter().filter(|n| n % block == 0) {
            for _ in 0..20 {
                let (w, a) = (quantized(ty, &row(&mut rng, n)), quantized(a_ty, &row(&mut rng, n)));
                let want = ggml_vec_dot(ty, n, &w, &a);
                let (wb, ab) = (aligned(&w), aligned(&a));
                let (wb, ab) = (
                    &bytemuck::cast_slice::<u64, u8>(&wb)[..w.len()],
                    &bytemuck::cast_slice::<u64, u8>(&ab)[..a.len()],
                );
                let (mut wf, mut af) = (vec![0f32; n], vec![0f32; n]);
                dequantize_row(ty, wb, &mut wf).unwrap();
                dequantize_row(a_ty, ab, &mut af).unwrap();
                let magnitude: f32 = wf.iter().zip(&af).map(|(x, y)| (x * y).abs()).sum();
                let bound = ((n / block) as f32 + 8.0) * f32::EPSILON * magnitude;
                for isa in Isa::available() {
                    let got = vec_dot(ty, isa, wb, ab).unwrap();
                    if (got - want).abs() > bound {
                        failures.push(format!("{ty} {isa:?} n={n}: ours {got}, ggml {want}, bound {bound}"));
                    }
                }
                checked += 1;
            }
        }
        println!("{ty:>7} · {a_ty}: {checked} rows at {:?}", Isa::available());
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures[..failures.len().min(20)].join("\n"));
}
