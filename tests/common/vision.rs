//! The tiny Gemma 4 with a vision tower of `scripts/tiny-gemma4-vision.py`: its files, its
//! fixture (`tests/fixtures/tiny-gemma4-vision.*`) and our logits for a prompt case of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gemma::kv_cache::KvType;
use gemma::model::{ImageRows, Logits, Model};
use gemma::vision::image::{decode, preprocess};
use gemma::vision::{PromptImage, VisionTower};
use ggml::gguf::GgufFile;

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn models() -> PathBuf {
    root().join("models")
}

pub fn json(path: &Path) -> serde_json::Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn fixture() -> serde_json::Value {
    json(&root().join("tests/fixtures/tiny-gemma4-vision.json"))
}

pub fn tower(name: &str) -> VisionTower {
    let path = models().join(name);
    VisionTower::load(GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The image token's id in the tiny model's vocabulary.
pub const IMAGE: u32 = 7;

/// The soft tokens' runs in `ids`.
pub fn image_runs(ids: &[u32]) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == IMAGE {
            let start = i;
            while i < ids.len() && ids[i] == IMAGE {
                i += 1;
            }
            runs.push(start..i);
        } else {
            i += 1;
        }
    }
    runs
}

/// The expanded `input_ids` of a `logits` case of the fixture.
pub fn case_ids(case: &serde_json::Value) -> Vec<u32> {
    case["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// Our logits (`[n][n_vocab]`, and `n_vocab`) for a two-image `logits` case of the fixture, as
/// `gemma run` computes them: each image encoded by the mmproj `mmproj` at the case's budget,
/// the text model (f32 KV) in passes of text, then each image whole beside text.
pub fn prompt_logits(case: &serde_json::Value, mmproj: &str) -> (Vec<f32>, usize) {
    let ids = case_ids(case);
    let vision = tower(mmproj);
    let budget = case["budget"].as_u64().unwrap() as usize;
    let images: Vec<Arc<PromptImage>> = (case["images"].as_array().unwrap().iter())
        .map(|file| {
            let file = file.as_str().unwrap();
            let bytes = std::fs::read(models().join("vision-images").join(file)).unwrap();
            let embd = vision.encode(&preprocess(&decode(file, &bytes).unwrap(), 16, 3, budget)).unwrap();
            Arc::new(PromptImage { n_soft: embd.len() / 256, embd, hash: 0, size: (0, 0), resized: (0, 0) })
        })
        .collect();
    let runs = image_runs(&ids);
    assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), images.iter().map(|i| i.n_soft).collect::<Vec<_>>());

    let gguf = GgufFile::open(models().join("tiny-gemma4-vision.gguf")).unwrap();
    let mut model = Model::load(gguf).unwrap();
    let n_vocab = model.n_vocab();
    let mut cache = model.new_cache_of(256, KvType::F32).unwrap();
    // Passes: text up to the first image's boi, then from there past the image, and so on.
    let cuts = [0, runs[0].start - 3, runs[0].end + 4, runs[1].end + 1, ids.len()];
    let mut ours = Vec::new();
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let rows: Vec<ImageRows> = (runs.iter().zip(&images))
            .filter(|(r, _)| r.start >= a && r.end <= b)
            .map(|(r, img)| ImageRows { rows: r.start - a..r.end - a, embd: &img.embd })
            .collect();
        let never = std::sync::atomic::AtomicBool::new(false);
        ours.extend(model.forward_images(&ids[a..b], &rows, a, &mut cache, Logits::All, &never).unwrap());
    }
    (ours, n_vocab)
}
