//! Images in a prompt: each becomes `<|image>`, one `<|image|>` soft token per embedding row,
//! then `<image|>` (transformers' `Gemma4Processor`), and the soft tokens' rows take the
//! image's embeddings.
//!
//! A prompt marks where its images go with the model's own placeholder `<|image|>` (what the
//! chat template writes for an image part), one per image, in order; a prompt with no marker
//! gets its images before the text (after `<bos>`).

use std::sync::Arc;

use crate::tokenizer::Tokenizer;

use super::VisionError;

/// The ids of a vocabulary's image tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageTokens {
    /// `<|image>`: opens an image.
    pub boi: u32,
    /// `<|image|>`: a soft token (and, in a prompt's text, where an image goes).
    pub soft: u32,
    /// `<image|>`: closes it.
    pub eoi: u32,
}

impl ImageTokens {
    /// Gemma 4's image tokens in `tokenizer`'s vocabulary.
    pub fn find(tokenizer: &Tokenizer) -> Result<ImageTokens, VisionError> {
        let id = |text: &'static str| tokenizer.vocab.id(text).ok_or(VisionError::NoImageToken(text));
        Ok(ImageTokens { boi: id("<|image>")?, soft: id("<|image|>")?, eoi: id("<image|>")? })
    }
}

/// An encoded image: its soft tokens' embeddings and what identifies its content.
#[derive(Debug, PartialEq)]
pub struct PromptImage {
    /// `[n_soft][n_embd]`
    pub embd: Vec<f32>,
    pub n_soft: usize,
    /// A hash of the file's bytes and the token budget: equal images reuse their cache.
    pub hash: u64,
    /// The image's size as decoded (EXIF orientation applied), and as the encoder saw it.
    pub size: (usize, usize),
    pub resized: (usize, usize),
}

/// Where an image's soft tokens are in a prompt's ids.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageChunk {
    /// Index of its first soft token.
    pub start: usize,
    pub image: Arc<PromptImage>,
}

impl ImageChunk {
    pub fn rows(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.image.n_soft
    }
}

/// `tokens` with each `<|image|>` marker replaced by the next image's tokens (or, with no
/// marker at all, the images first, after a leading `<bos>`), and where each image's soft
/// tokens ended up. The markers must match the images one for one.
pub fn expand(
    tokens: &[u32],
    images: &[Arc<PromptImage>],
    ids: ImageTokens,
    bos: Option<u32>,
) -> Result<(Vec<u32>, Vec<ImageChunk>), String> {
    let markers = tokens.iter().filter(|&&t| t == ids.soft).count();
    let mut out = Vec::with_capacity(tokens.len() + images.iter().map(|i| i.n_soft + 2).sum::<usize>());
    let mut chunks = Vec::with_capacity(images.len());
    let mut put = |out: &mut Vec<u32>, image: &Arc<PromptImage>| {
        out.push(ids.boi);
        chunks.push(ImageChunk { start: out.len(), image: image.clone() });
        out.extend(std::iter::repeat_n(ids.soft, image.n_soft));
        out.push(ids.eoi);
    };
    if markers == 0 {
        let skip = usize::from(bos.is_some() && tokens.first() == bos.as_ref());
        out.extend_from_slice(&tokens[..skip]);
        images.iter().for_each(|image| put(&mut out, image));
        out.extend_from_slice(&tokens[skip..]);
    } else if markers != images.len() {
        return Err(format!(
            "the prompt has {markers} <|image|> marker{} for {} image{}",
            if markers == 1 { "" } else { "s" },
            images.len(),
            if images.len() == 1 { "" } else { "s" }
        ));
    } else {
        let mut next = images.iter();
        for &t in tokens {
            if t == ids.soft {
                put(&mut out, next.next().expect("counted"));
            } else {
                out.push(t);
            }
        }
    }
    Ok((out, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: ImageTokens = ImageTokens { boi: 6, soft: 7, eoi: 8 };

    fn image(n_soft: usize) -> Arc<PromptImage> {
        Arc::new(PromptImage {
            embd: vec![0.0; n_soft * 4],
            n_soft,
            hash: n_soft as u64,
            size: (1, 1),
            resized: (48, 48),
        })
    }

    #[test]
    fn markers_become_images_in_order() {
        let (a, b) = (image(2), image(3));
        let (ids, chunks) = expand(&[2, 50, 7, 51, 7], &[a.clone(), b.clone()], IDS, Some(2)).unwrap();
        assert_eq!(ids, [2, 50, 6, 7, 7, 8, 51, 6, 7, 7, 7, 8]);
        assert_eq!(chunks, [ImageChunk { start: 3, image: a }, ImageChunk { start: 8, image: b }]);
    }

    #[test]
    fn no_marker_puts_the_images_after_bos() {
        let (ids, chunks) = expand(&[2, 50, 51], &[image(1)], IDS, Some(2)).unwrap();
        assert_eq!(ids, [2, 6, 7, 8, 50, 51]);
        assert_eq!(chunks[0].rows(), 2..3);
    }

    #[test]
    fn marker_count_must_match() {
        let err = expand(&[2, 7, 7], &[image(1)], IDS, Some(2)).unwrap_err();
        assert_eq!(err, "the prompt has 2 <|image|> markers for 1 image");
    }
}
