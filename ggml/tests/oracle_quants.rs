//! Our block formats against ggml's own, through llama.cpp's ggml built by `llama-cpp-sys-2`:
//! for every supported type, many random rows of many lengths and distributions must quantize
//! to the same bytes as `ggml_quantize_chunk` (for the activation types, which it does not
//! take: Q8_1's `from_float_ref` and `quantize_row_q8_K_ref`), and those bytes must dequantize
//! to the same f32 bits as ggml's `to_float` (Q8_K: `dequantize_row_q8_K`; ggml has no Q8_1
//! dequantizer, so Q8_1 is checked on quantization only).
//!
//! Run with `cargo test -p ggml --features oracle --test oracle_quants -- --nocapture` to see
//! how many rows each type was checked on.
#![cfg(feature = "oracle")]

use ggml::quants::{dequantize_row, quantize_row, supports};
use ggml::GgmlType;
use llama_cpp_sys_2 as sys;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, StandardNormal, Uniform};

/// The formats the foundation issue requires, all of which must be bit-exact.
const REQUIRED: [GgmlType; 18] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// How test rows are drawn.
#[derive(Clone, Copy, Debug)]
enum Dist {
    Normal,
    Uniform,
    /// Normal with about 1 value in 50 multiplied by 100..1000.
    Outliers,
    Zeros,
    /// Normal scaled to 1e-6 (scales land in f16 subnormals), 1e-20 (scales underflow in
    /// f16) and 1e-39 (f32 subnormal inputs: inverse scales overflow to infinity).
    Tiny(f32),
    /// Uniform in +-30000: large but with every block scale finite in f16.
    Extreme,
    /// Constant rows, and rows where one value dominates the block.
    Constant,
    Spike,
    /// Normal with a per-row offset, so blocks are all-positive or all-negative.
    Shifted,
    /// Small integers: exact ties between quantization levels.
    Integers,
}

const DISTS: [Dist; 12] = [
    Dist::Normal,
    Dist::Uniform,
    Dist::Outliers,
    Dist::Zeros,
    Dist::Tiny(1e-6),
    Dist::Tiny(1e-20),
    Dist::Tiny(1e-39),
    Dist::Extreme,
    Dist::Constant,
    Dist::Spike,
    Dist::Shifted,
    Dist::Integers,
];

fn row(rng: &mut StdRng, dist: Dist, n: usize) -> Vec<f32> {
    let normal = |rng: &mut StdRng| -> f32 { StandardNormal.sample(rng) };
    match dist {
        Dist::Normal => (0..n).map(|_| normal(rng)).collect(),
        Dist::Uniform => {
            let u = Uniform::new_inclusive(-1.0f32, 1.0);
            (0..n).map(|_| u.sample(rng)).collect()
        }
        Dist::Outliers => (0..n)
            .map(|_| {
                let x = normal(rng);
                if rng.gen_ratio(1, 50) {
                    x * rng.gen_range(100.0..1000.0)
                } else {
                    x
                }
            })
            .collect(),
        Dist::Zeros => vec![0.0; n],
        Dist::Tiny(scale) => (0..n).map(|_| normal(rng) * scale).collect(),
        Dist::Extreme => {
            let u = Uniform::new_inclusive(-30000.0f32, 30000.0);
            (0..n).map(|_| u.sample(rng)).collect()
        }
        Dist::Constant => vec![rng.gen_range(-3.0f32..3.0); n],
        Dist::Spike => {
            let mut x: Vec<f32> = (0..n).map(|_| normal(rng) * 0.01).collect();
            for i in (0..n).step_by(32) {
                x[i + rng.gen_range(0..32usize.min(n - i))] = rng.gen_range(-50.0..50.0);
            }
            x
        }
        Dist::Shifted => {
            let shift = Normal::new(0.0f32, 4.0).unwrap().sample(rng);
            (0..n).map(|_| normal(rng) * 0.5 + shift).collect()
        }
        Dist::Integers => (0..n).map(|_| rng.gen_range(-8i32..=8) as f32).collect(),
    }
}

// Q8_K's reference functions are exported by ggml-base but not in its type-traits table.
extern "C" {
    fn quantize_row_q8_K_ref(x: *const f32, y: *mut std::ffi::c_void, k: i64);
    fn dequantize_row_q8_K(x: *const std::ffi::c_void, y: *mut f32, k: i64);
}

fn traits(ty: GgmlType) -> &'static sys::ggml_type_traits {
    // SAFETY: ggml returns a pointer into its static type table for every valid type id.
    unsafe { &*sys::ggml_get_type_traits(ty.id() as sys::ggml_type) }
}

fn ggml_quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    if ty == GgmlType::Q8_K {
        // SAFETY: `out` holds exactly the bytes for x.len() elements of Q8_K.
        unsafe { quantize_row_q8_K_ref(x.as_ptr(), out.as_mut_ptr().cast(), x.len() as i64) };
    } else if ty == GgmlType::Q8_1 {
        let f = traits(ty).from_float_ref.expect("q8_1 has a from_float_ref");
        // SAFETY: `out` holds exactly the bytes for x.len() elements of Q8_1.
        unsafe { f(x.as_ptr(), out.as_mut_ptr().cast(), x.len() as i64) };
    } else {
        // SAFETY: one row of x.len() elements into a buffer of exactly its quantized size.
        let written = unsafe {
            sys::ggml_quantize_chunk(
                ty.id() as sys::ggml_type,
                x.as_ptr(),
                out.as_mut_ptr().cast(),
                0,
                1,
                x.len() as i64,
                std::ptr::null(),
            )
        };
        assert_eq!(written, out.len(), "{ty}: ggml_quantize_chunk size");
    }
    out
}

fn ggml_dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let f = match ty {
        GgmlType::Q8_K => dequantize_row_q8_K,
        GgmlType::F32 => {
            return Some(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        }
        _ => traits(ty).to_float?,
    };
    let mut y = vec![0f32; n];
    // SAFETY: `bytes` holds n elements of `ty`; y has room for n floats.
    unsafe { f(bytes.as_ptr().cast(), y.as_mut_ptr(), n as i64) };
    Some(y)
}

/// Row lengths: 1..=12 blocks, plus Gemma 4 26B-A4B's real row lengths where they divide.
fn lengths(ty: GgmlType) -> Vec<usize> {
    let block = ty.block_size().max(32);
    let mut n: Vec<usize> = (1..=12).map(|k| k * block).collect();
    n.extend([704, 2112, 2816, 4096].into_iter().filter(|n| n % ty.block_size() == 0));
    n.sort();
    n.dedup();
    n
}

/// A u64-backed byte buffer, so every block struct is aligned when cast.
fn aligned_bytes(len: usize) -> Vec<u64> {
    vec![0u64; len.div_ceil(8)]
}

fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

#[test]
fn every_required_format_is_implemented() {
    let missing: Vec<_> = REQUIRED.iter().filter(|t| !supports(**t)).collect();
    assert!(missing.is_empty(), "not implemented: {missing:?}");
}

#[test]
fn quantize_and_dequantize_match_ggml_bit_for_bit() {
    let mut rng = StdRng::seed_from_u64(0x9e3779b97f4a7c15);
    let rows_per_case = 6;
    let mut failures = Vec::new();
    for &ty in GgmlType::ALL.iter().filter(|t| supports(**t)) {
        let (mut rows, mut elements) = (0usize, 0usize);
        for n in lengths(ty) {
            for dist in DISTS {
                for _ in 0..rows_per_case {
                    let x = row(&mut rng, dist, n);
                    let want = ggml_quantize(ty, &x);
                    let mut buf = aligned_bytes(want.len());
                    let got = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut buf)[..want.len()];
                    quantize_row(ty, &x, got).unwrap();
                    if let Some(i) = first_diff(&want, got) {
                        let block = i / ty.type_size();
                        failures.push(format!(
                            "{ty} quantize {dist:?} n={n}: first byte difference at {i} (block {block}, \
                             byte {} of it): ggml {} ours {}",
                            i % ty.type_size(),
                            want[i],
                            got[i]
                        ));
                        break;
                    }
                    if let Some(want_y) = ggml_dequantize(ty, &want, n) {
                        got.copy_from_slice(&want);
                        let mut y = vec![0f32; n];
                        dequantize_row(ty, got, &mut y).unwrap();
                        let (wb, yb): (Vec<u32>, Vec<u32>) =
                            (want_y.iter().map(|v| v.to_bits()).collect(), y.iter().map(|v| v.to_bits()).collect());
                        if let Some(i) = first_diff(&wb, &yb) {
                            failures.push(format!(
                                "{ty} dequantize {dist:?} n={n}: element {i}: ggml {} ours {}",
                                want_y[i], y[i]
                            ));
                            break;
                        }
                    }
                    rows += 1;
                    elements += n;
                }
            }
        }
        println!("{ty:>7}: {rows} rows ({elements} values), lengths {:?}, {} distributions", lengths(ty), DISTS.len());
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
