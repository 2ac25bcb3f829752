//! Image input: an mmproj GGUF's vision encoder ([`tower`]), the preprocessing that turns an
//! image file into its input ([`image`], [`resample`]), and how the soft tokens go into a
//! prompt ([`prompt`]).

pub mod image;
pub mod prompt;
pub mod resample;
pub mod tower;

pub use image::{Pixels, BUDGETS};
pub use prompt::{ImageChunk, PromptImage};
pub use tower::{VisionShape, VisionTower};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::chat::Part;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("not an mmproj file: it has no clip.vision.projector_type")]
    NotMmproj,
    #[error("clip.vision.projector_type is {0:?}; gemma.rs reads Gemma 4's \"gemma4v\"")]
    Projector(String),
    #[error("{file}: {problem}")]
    Image { file: String, problem: String },
    #[error("an image of {width}x{height} pixels is not whole {pool}x{pool} squares of {patch}-pixel patches")]
    Grid { width: usize, height: usize, patch: usize, pool: usize },
    #[error("an image {patches} patches long is past the encoder's position table of {table}")]
    TooLarge { patches: usize, table: usize },
    #[error(
        "the mmproj projects to {mmproj} dimensions but the model's hidden size is {model}: it is for another model"
    )]
    Mismatch { mmproj: usize, model: usize },
    #[error("--image-tokens {0}: Gemma 4 takes 70, 140, 280, 560 or 1120")]
    Budget(usize),
    #[error("the model's vocabulary has no {0} token: it cannot take images")]
    NoImageToken(&'static str),
}

/// The vision encoder of a session: its token budget, and the images encoded so far by content
/// (a chat re-renders every turn; an image is encoded once).
pub struct Images {
    pub tower: VisionTower,
    pub budget: usize,
    encoded: HashMap<u64, Arc<PromptImage>>,
}

impl Images {
    /// `tower` for a text model of hidden size `n_embd`, at `budget` soft tokens per image.
    pub fn new(tower: VisionTower, n_embd: usize, budget: usize) -> Result<Images, VisionError> {
        if !BUDGETS.contains(&budget) {
            return Err(VisionError::Budget(budget));
        }
        if tower.shape.n_embd_text != n_embd {
            return Err(VisionError::Mismatch { mmproj: tower.shape.n_embd_text, model: n_embd });
        }
        Ok(Images { tower, budget, encoded: HashMap::new() })
    }

    /// The image in `bytes` (`name` for messages), encoded, or as encoded before.
    pub fn encode(&mut self, name: &str, bytes: &[u8]) -> Result<Arc<PromptImage>, VisionError> {
        let hash = content_hash(bytes, self.budget);
        if let Some(done) = self.encoded.get(&hash) {
            return Ok(done.clone());
        }
        let img = image::decode(name, bytes)?;
        let s = self.tower.shape;
        let pixels = image::preprocess(&img, s.patch_size, s.pool, self.budget);
        let embd = self.tower.encode(&pixels)?;
        let n_soft = embd.len() / s.n_embd_text;
        let size = (img.width() as usize, img.height() as usize);
        let encoded = Arc::new(PromptImage { embd, n_soft, hash, size, resized: (pixels.width, pixels.height) });
        self.encoded.insert(hash, encoded.clone());
        Ok(encoded)
    }

    /// The image of a message part (a file, relative to `dir`, or a data URL), encoded.
    pub fn encode_part(&mut self, part: &Part, dir: &Path) -> Result<Arc<PromptImage>, VisionError> {
        let (name, bytes) = part_bytes(part, dir)?;
        self.encode(&name, &bytes)
    }
}

/// A hash of an image file's bytes and its budget: what tells cached images apart.
pub fn content_hash(bytes: &[u8], budget: usize) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    budget.hash(&mut h);
    h.finish()
}

/// The bytes of an image part, and a name for messages: a file (`path`, or a `file://` URL),
/// relative to `dir`, or a `data:` URL with base64 content. Remote URLs are refused: nothing is
/// fetched from the network.
pub fn part_bytes(part: &Part, dir: &Path) -> Result<(String, Vec<u8>), VisionError> {
    let read = |path: &str| {
        let full = dir.join(path);
        let bytes = std::fs::read(&full)
            .map_err(|e| VisionError::Image { file: full.display().to_string(), problem: e.to_string() })?;
        Ok((full.display().to_string(), bytes))
    };
    match part {
        Part::Image { path } => read(path),
        Part::ImageUrl { image_url } => {
            let url = image_url.url.as_str();
            let bad = |problem: &str| VisionError::Image { file: short(url), problem: problem.to_string() };
            if let Some(rest) = url.strip_prefix("data:") {
                let (meta, data) = rest.split_once(',').ok_or_else(|| bad("a data URL has a comma before its data"))?;
                if !meta.ends_with(";base64") {
                    return Err(bad("only base64 data URLs are read (data:image/png;base64,...)"));
                }
                use base64::Engine;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| bad(&format!("bad base64: {e}")))?;
                Ok(("a data URL image".to_string(), bytes))
            } else if let Some(path) = url.strip_prefix("file://") {
                read(path)
            } else {
                Err(bad("remote images are not fetched: give a data: URL or a file"))
            }
        }
        Part::Text { .. } => unreachable!("text parts have no image"),
    }
}

/// The first characters of a long URL, for a message.
fn short(url: &str) -> String {
    match url.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &url[..i]),
        None => url.to_string(),
    }
}
