//! Against llama.cpp itself (feature `oracle`): for every type quantize writes, llama.cpp's
//! `llama_model_quantize` of our F32 file (which is its converter's F32, see tests/convert.rs)
//! gives the same file as ours, from the checkpoint or from that F32 GGUF — metadata, tensor
//! order, types and bytes — and llama.cpp loads our files and computes the same logits from
//! them as from its own.
#![cfg(feature = "oracle")]

mod common;
#[allow(dead_code)]
#[path = "../../tests/common/llama.rs"]
mod llama;

use common::*;
use llama_cpp_sys_2 as sys;

const TYPES: [(&str, sys::llama_ftype); 17] = [
    ("Q8_0", sys::LLAMA_FTYPE_MOSTLY_Q8_0),
    ("Q4_K_M", sys::LLAMA_FTYPE_MOSTLY_Q4_K_M),
    ("Q4_K_S", sys::LLAMA_FTYPE_MOSTLY_Q4_K_S),
    ("Q5_K_M", sys::LLAMA_FTYPE_MOSTLY_Q5_K_M),
    ("Q5_K_S", sys::LLAMA_FTYPE_MOSTLY_Q5_K_S),
    ("Q6_K", sys::LLAMA_FTYPE_MOSTLY_Q6_K),
    ("Q3_K_S", sys::LLAMA_FTYPE_MOSTLY_Q3_K_S),
    ("Q3_K_M", sys::LLAMA_FTYPE_MOSTLY_Q3_K_M),
    ("Q3_K_L", sys::LLAMA_FTYPE_MOSTLY_Q3_K_L),
    ("Q2_K", sys::LLAMA_FTYPE_MOSTLY_Q2_K),
    ("Q4_0", sys::LLAMA_FTYPE_MOSTLY_Q4_0),
    ("Q4_1", sys::LLAMA_FTYPE_MOSTLY_Q4_1),
    ("Q5_0", sys::LLAMA_FTYPE_MOSTLY_Q5_0),
    ("Q5_1", sys::LLAMA_FTYPE_MOSTLY_Q5_1),
    ("IQ4_NL", sys::LLAMA_FTYPE_MOSTLY_IQ4_NL),
    ("IQ4_XS", sys::LLAMA_FTYPE_MOSTLY_IQ4_XS),
    ("MXFP4_MOE", sys::LLAMA_FTYPE_MOSTLY_MXFP4_MOE),
];

#[test]
fn same_file_as_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let f32 = dir.path().join(format!("{name}-F32.gguf"));
        convert(&checkpoint(name), &f32, "F32");
        for (ty, ftype) in TYPES {
            let ours = dir.path().join(format!("{name}-{ty}.gguf"));
            let theirs = dir.path().join(format!("{name}-{ty}-llama.gguf"));
            convert(&checkpoint(name), &ours, ty);
            llama::quantize(&f32, &theirs, ftype);
            let (a, b) = (read(&ours), read(&theirs));
            assert_eq!(a.metadata, b.metadata, "{name} {ty}: metadata");
            for (x, y) in a.tensors.iter().zip(&b.tensors) {
                assert_eq!((&x.name, &x.ty, &x.dims), (&y.name, &y.ty, &y.dims), "{name} {ty}: tensor table");
                assert_eq!(x.sha256, y.sha256, "{name} {ty}: bytes of {}", x.name);
            }
            assert_eq!(a.tensors.len(), b.tensors.len(), "{name} {ty}");
            assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "{name} {ty}: files differ");
            // The same from the F32 GGUF: requantizing.
            convert(&f32, &ours, ty);
            assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "{name} {ty} from GGUF");
        }
        for (ty, ftype) in [("F16", sys::LLAMA_FTYPE_MOSTLY_F16), ("BF16", sys::LLAMA_FTYPE_MOSTLY_BF16)] {
            let ours = dir.path().join(format!("{name}-{ty}.gguf"));
            let theirs = dir.path().join(format!("{name}-{ty}-llama.gguf"));
            convert(&f32, &ours, ty);
            llama::quantize(&f32, &theirs, ftype);
            assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "{name} {ty} from GGUF");
        }
    }
}

/// llama.cpp runs our files: the F32 one gives exactly the logits of scripts/tiny-gemma4.py's
/// GGUF (the same weights as written by gguf-py), and every other type loads and runs.
#[test]
fn llama_cpp_runs_our_files() {
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<u32> = vec![2, 818, 5279, 529, 7001, 563, 496, 236743, 107, 108];
    let tokens: Vec<u32> = tokens.into_iter().map(|t| t % 1024).collect();
    let name = "tiny-gemma4-moe";
    let ours = dir.path().join("moe-F32.gguf");
    convert(&checkpoint(name), &ours, "F32");
    let reference = root().join(format!("models/{name}.gguf"));
    let a = llama::Llama::load(&ours, false, 64).decode(&tokens, 0);
    let b = llama::Llama::load(&reference, false, 64).decode(&tokens, 0);
    assert_eq!(a, b, "F32 logits differ from llama.cpp's on the same weights");
    for ty in ["F16", "BF16", "Q8_0", "Q4_K_M"] {
        for name in MODELS {
            let path = dir.path().join(format!("{name}-{ty}.gguf"));
            convert(&checkpoint(name), &path, ty);
            let mut m = llama::Llama::load(&path, false, 64);
            let logits = m.decode(&tokens, 0);
            assert_eq!(logits.len(), tokens.len() * m.n_vocab);
            assert!(logits.iter().all(|x| x.is_finite()), "{name} {ty}");
        }
    }
}

/// llama-quantize's speed and memory on a big input, to compare with ours (run by hand):
/// `QUANTIZE_BENCH_IN=in.gguf QUANTIZE_BENCH_OUT=out.gguf cargo test -p quantize --features oracle
/// --test oracle -- --ignored --nocapture llama_quantize_speed`, `in.gguf` being our BF16 output
/// of the same checkpoint.
#[test]
#[ignore]
fn llama_quantize_speed() {
    let input = std::path::PathBuf::from(std::env::var("QUANTIZE_BENCH_IN").unwrap());
    let output = std::path::PathBuf::from(std::env::var("QUANTIZE_BENCH_OUT").unwrap());
    let start = std::time::Instant::now();
    llama::quantize(&input, &output, sys::LLAMA_FTYPE_MOSTLY_Q4_K_M);
    let secs = start.elapsed().as_secs_f64();
    let size = std::fs::metadata(&input).unwrap().len() as f64;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: ?");
    println!("llama_model_quantize Q4_K_M: {secs:.1} s, {:.3} GB/s of input, {hwm}", size / secs / 1e9);
}
