//! The tiny random Gemma 4 models of `scripts/tiny-gemma4.py` and transformers' logits for them
//! (`tests/fixtures/NAME.{json,logits.f32}`); the GGUF's sha256 ties them to the weights
//! `setup.sh` generates.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The two models: 26B-A4B's family (MoE beside the dense MLP) and 31B's (dense).
pub const MODELS: [&str; 2] = ["tiny-gemma4-moe", "tiny-gemma4-dense"];

/// transformers' `[n_tokens][n_vocab]` logits for `tokens`, and the GGUF they came from.
pub struct Fixture {
    pub tokens: Vec<u32>,
    pub n_vocab: usize,
    /// `[n_tokens][n_vocab]`
    pub logits: Vec<f32>,
    pub gguf: PathBuf,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> Fixture {
    let dir = root().join("tests/fixtures");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let gguf = root().join("models").join(meta["gguf"].as_str().unwrap());
    assert!(gguf.exists(), "{} is missing: run scripts/setup.sh", gguf.display());
    let digest = format!("{:x}", Sha256::digest(std::fs::read(&gguf).unwrap()));
    assert_eq!(
        digest,
        meta["gguf_sha256"].as_str().unwrap(),
        "{} is not the file the fixture was made from",
        gguf.display()
    );
    let bytes = std::fs::read(dir.join(format!("{name}.logits.f32"))).unwrap();
    let logits = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    Fixture {
        tokens: meta["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect(),
        n_vocab: meta["n_vocab"].as_u64().unwrap() as usize,
        logits,
        gguf,
    }
}

/// A copy of the GGUF at `src` written to `dst` with metadata `set` (added or replaced),
/// the keys and tensors named in `drop` left out: the malformed and unsupported variants
/// the loader must refuse with a clear error.
pub fn rewrite(src: &Path, dst: &Path, set: &[(&str, ggml::gguf::Value)], drop: &[&str]) {
    use ggml::gguf::write::assign_offsets;
    use ggml::gguf::{GgufFile, GgufWriter};

    let file = GgufFile::open(src).unwrap();
    let header = &file.header;
    let mut metadata: Vec<_> = header
        .metadata
        .iter()
        .filter(|(k, _)| !drop.contains(&k.as_str()) && !set.iter().any(|(s, _)| s == k))
        .cloned()
        .collect();
    metadata.extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let kept: Vec<_> = header.tensors.iter().filter(|t| !drop.contains(&t.name.as_str())).cloned().collect();
    let mut tensors = kept.clone();
    assign_offsets(&mut tensors, header.alignment);
    let mut w = GgufWriter::create(dst, header.version, &metadata, &tensors).unwrap();
    for t in &kept {
        w.write_tensor_data(header.tensor_data(file.bytes(), t)).unwrap();
    }
    w.finish().unwrap();
}
