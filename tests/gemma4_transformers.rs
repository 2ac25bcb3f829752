//! Our Gemma 4 forward pass against transformers (float32, eager) on the tiny random models of
//! `scripts/tiny-gemma4.py`: a 26B-A4B-like MoE model and a 31B-like dense one, 48 tokens, three
//! times the sliding window, run in uneven batches so the sliding rings wrap inside a batch.
//! The reference logits were written by the same script's `reference` step and are committed
//! under `tests/fixtures/`.

use gemma::kv_cache::KvType;
use gemma::model::{Logits, Model};
use ggml::gguf::GgufFile;

mod common;
use common::tiny::fixture;

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

fn check(name: &str, kv_type: KvType, tolerance: f32) {
    let f = fixture(name);
    let mut model = Model::load(GgufFile::open(&f.gguf).unwrap()).unwrap();
    assert_eq!(model.n_vocab(), f.n_vocab);
    let mut cache = model.new_cache_of(64, kv_type).unwrap();
    let mut ours = Vec::new();
    let mut pos = 0;
    for batch in [7, 20, 1, 13, 7] {
        ours.extend(model.forward(&f.tokens[pos..pos + batch], pos, &mut cache, Logits::All));
        pos += batch;
    }
    assert_eq!(pos, f.tokens.len());
    let (mut max_abs, mut top1) = (0f32, 0);
    for (t, (a, b)) in ours.chunks_exact(f.n_vocab).zip(f.logits.chunks_exact(f.n_vocab)).enumerate() {
        if std::env::var("GEMMA_DEBUG").is_ok() {
            println!("{t}: {:.3e}", a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max));
        }
        max_abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(max_abs, f32::max);
        top1 += (argmax(a) == argmax(b)) as usize;
    }
    println!("{name}, {kv_type} KV cache: top-1 {top1}/{}, max |logit diff| {max_abs:.2e}", f.tokens.len());
    assert_eq!(top1, f.tokens.len());
    assert!(max_abs < tolerance, "max |logit diff| {max_abs}");
}

#[test]
fn moe_model_matches_transformers() {
    check("tiny-gemma4-moe", KvType::F32, 5e-4);
    // f16 K and V round to 11 bits: a float64 re-implementation that rounds K and V to f16
    // the same way lands where we do (1.5e-2 dense, 2.7e-2 MoE), so this is the cache.
    check("tiny-gemma4-moe", KvType::F16, 5e-2);
}

#[test]
fn dense_model_matches_transformers() {
    check("tiny-gemma4-dense", KvType::F32, 5e-4);
    check("tiny-gemma4-dense", KvType::F16, 5e-2);
}

/// What the loader refuses, and the message it gives.
#[test]
fn bad_or_unsupported_files_are_named_errors() {
    use ggml::gguf::Value;

    let f = fixture("tiny-gemma4-moe");
    let dir = tempfile::tempdir().unwrap();
    type Case<'a> = (&'a [(&'a str, Value)], &'a [&'a str], &'a str);
    let cases: [Case; 5] = [
        (
            &[("gemma4.embedding_length_per_layer_input", Value::U32(256))],
            &[],
            "Gemma 4 E2B/E4B (per-layer embeddings and KV sharing) are not supported yet; 26B-A4B and 31B are",
        ),
        (&[], &["gemma4.attention.key_length_swa"], "cannot find gemma4.attention.key_length_swa in metadata"),
        (&[], &["blk.5.ffn_down_exps.weight"], "cannot find tensor blk.5.ffn_down_exps.weight in the GGUF file"),
        (&[], &["rope_freqs.weight"], "cannot find tensor rope_freqs.weight in the GGUF file"),
        (
            &[("gemma4.attention.head_count_kv", Value::U32(3))],
            &[],
            "tensor blk.0.attn_k.weight has dims [256, 128], expected [256, 192]",
        ),
    ];
    for (i, (set, drop, expected)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.gguf"));
        common::tiny::rewrite(&f.gguf, &path, set, drop);
        let err = Model::load(GgufFile::open(&path).unwrap()).err().expect("the load must fail");
        assert_eq!(err.to_string(), *expected);
    }
}
