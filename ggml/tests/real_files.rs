//! The real test GGUFs (scripts/fetch-test-models.sh): read them, write them back with our
//! writer, and get the same bytes; dequantize every tensor of a supported type.

use std::path::PathBuf;

use ggml::gguf::{GgufFile, GgufWriter};
use ggml::quants::{dequantize_row, supports};

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

fn assert_round_trip(name: &str) {
    let file = GgufFile::open(model(name)).unwrap();
    let h = &file.header;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let mut w = GgufWriter::create(&out, h.version, &h.metadata, &h.tensors).unwrap();
    let mut order: Vec<_> = h.tensors.iter().collect();
    order.sort_by_key(|t| t.offset);
    for t in order {
        w.write_tensor_data(file.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    let written = std::fs::read(&out).unwrap();
    assert_eq!(written.len(), file.bytes().len(), "{name}: size");
    let first_diff = written.iter().zip(file.bytes()).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "{name}: first differing byte");
}

#[test]
fn gemma3_270m_q4_k_m_round_trips_byte_for_byte() {
    assert_round_trip("gemma-3-270m-q4_k_m.gguf");
}

#[test]
fn gemma4_vocab_round_trips_byte_for_byte() {
    assert_round_trip("ggml-vocab-gemma-4.gguf");
}

#[test]
fn gemma4_vocab_has_the_26b_a4b_metadata() {
    let file = GgufFile::open(model("ggml-vocab-gemma-4.gguf")).unwrap();
    let h = &file.header;
    assert_eq!(h.architecture(), Some("gemma4"));
    assert_eq!(h.get_u64("gemma4.block_count").unwrap(), 30);
    assert_eq!(h.get_u64("gemma4.embedding_length").unwrap(), 2816);
    assert_eq!(h.get_u64("gemma4.expert_count").unwrap(), 128);
    assert_eq!(h.get_str("tokenizer.ggml.model").unwrap(), "gemma4");
    assert_eq!(h.get_array("tokenizer.ggml.tokens").unwrap().len(), 262_144);
    assert_eq!(h.get_array("tokenizer.ggml.merges").unwrap().len(), 514_906);
    assert!(h.get_str("tokenizer.chat_template").unwrap().contains("<|turn>"));
}

#[test]
fn every_gemma3_tensor_dequantizes_to_finite_values() {
    let file = GgufFile::open(model("gemma-3-270m-q4_k_m.gguf")).unwrap();
    let mut checked = 0;
    for t in &file.header.tensors {
        assert!(supports(t.ty), "{}: type {} unsupported", t.name, t.ty);
        let data = file.tensor_data(t);
        let mut out = vec![0f32; t.n_elements() as usize];
        dequantize_row(t.ty, data, &mut out).unwrap();
        let bad = out.iter().position(|v| !v.is_finite());
        assert_eq!(bad, None, "{}: non-finite value", t.name);
        checked += 1;
    }
    assert_eq!(checked, file.header.tensors.len());
}
