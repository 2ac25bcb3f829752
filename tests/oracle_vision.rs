//! Image input against llama.cpp's own (its `mtmd` library through `llama-cpp-sys-2`, CPU
//! only) on the same files: the tiny Gemma 4 with a vision tower of
//! `scripts/tiny-gemma4-vision.py` (text GGUF in F32) and its mmproj in F16 and Q8_0 (the
//! converter's bytes). Both runtimes are measured against transformers' float32 logits for a
//! prompt with two images, the fixture's `squares` case: square images, which llama.cpp resizes
//! to the same 64 soft tokens as the HF processor, so that the sequences line up.
//!
//! llama.cpp's vision path departs from transformers in known ways (GEMMA4.md section 8: it
//! runs the ViT's MLP with a quick GELU instead of the tanh one, and resizes with its own
//! filter), so transformers is the reference and llama.cpp the bar: our mean KL to
//! transformers must be no worse than 1.25x llama.cpp's, and our top-1 agreement no lower. (The
//! tiny model is touchy: with f16 or q8_0 weights in its tower both runtimes move away from the
//! f32 model at some soft-token positions, where nothing is predicted in practice.)
//!
//! Run with `cargo test --release --features oracle --test oracle_vision -- --nocapture`.
#![cfg(feature = "oracle")]

use std::ffi::CString;

use llama_cpp_sys_2 as sys;

mod common;
use common::llama::{Agreement, Llama};
use common::vision::{case_ids, f32s, fixture, image_runs, models, prompt_logits, root};

/// llama.cpp's mtmd context for an mmproj, encoding images for a loaded text model.
struct Mtmd {
    ctx: *mut sys::mtmd_context,
    /// The text model's input width, what an encoded soft token holds.
    n_embd: usize,
}

impl Mtmd {
    /// Loads `mmproj` for `llama`'s model, resizing every image to `n_soft` soft tokens (as
    /// `--image-min-tokens`/`--image-max-tokens` do), two threads, as llama-mtmd-cli runs it
    /// otherwise (flash attention as it decides, no GPU).
    fn load(mmproj: &std::path::Path, llama: &Llama, n_soft: usize) -> Mtmd {
        let path = CString::new(mmproj.to_str().unwrap()).unwrap();
        // SAFETY: default params are plain data; the path is a valid C string for the call and
        // the model outlives the context (the test holds both until the end).
        unsafe {
            let mut params = sys::mtmd_context_params_default();
            params.use_gpu = false;
            params.print_timings = false;
            params.n_threads = 2;
            params.warmup = false;
            params.image_min_tokens = n_soft as i32;
            params.image_max_tokens = n_soft as i32;
            let ctx = sys::mtmd_init_from_file(path.as_ptr(), llama.model(), params);
            assert!(!ctx.is_null(), "mtmd could not load {}", mmproj.display());
            let n_embd = sys::llama_model_n_embd_inp(llama.model()) as usize;
            Mtmd { ctx, n_embd }
        }
    }

    /// The image `file` of the test images (decoded to RGB, as mtmd's own loader would for a
    /// PNG) as mtmd tokenizes and encodes it: its soft tokens `[n][n_embd]`, and whether
    /// llama.cpp decodes them without the causal mask.
    fn encode(&self, file: &str) -> (Vec<f32>, bool) {
        let bytes = std::fs::read(models().join("vision-images").join(file)).unwrap();
        let rgb = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let marker = CString::new("<__media__>").unwrap();
        // SAFETY: the bitmap copies the w·h·3 bytes given; the chunks, bitmap and text live
        // across the calls that use them and are freed once; the output embeddings hold
        // n_tokens · n_embd floats after a successful encode.
        unsafe {
            let bitmap = sys::mtmd_bitmap_init(rgb.width(), rgb.height(), rgb.as_raw().as_ptr());
            assert!(!bitmap.is_null());
            let chunks = sys::mtmd_input_chunks_init();
            let text = sys::mtmd_input_text {
                text: marker.as_ptr(),
                text_len: marker.as_bytes().len(),
                add_special: false,
                parse_special: true,
            };
            let bitmaps = [bitmap as *const sys::mtmd_bitmap];
            assert_eq!(sys::mtmd_tokenize(self.ctx, chunks, &text, bitmaps.as_ptr(), 1), 0, "mtmd_tokenize");
            let chunk = (0..sys::mtmd_input_chunks_size(chunks))
                .map(|i| sys::mtmd_input_chunks_get(chunks, i))
                .find(|&c| sys::mtmd_input_chunk_get_type(c) == sys::MTMD_INPUT_CHUNK_TYPE_IMAGE)
                .expect("an image chunk");
            let n = sys::mtmd_input_chunk_get_n_tokens(chunk);
            assert_eq!(sys::mtmd_encode_chunk(self.ctx, chunk), 0, "mtmd_encode_chunk");
            let embd = std::slice::from_raw_parts(sys::mtmd_get_output_embd(self.ctx), n * self.n_embd).to_vec();
            let non_causal = sys::mtmd_decode_use_non_causal(self.ctx, chunk);
            sys::mtmd_input_chunks_free(chunks);
            sys::mtmd_bitmap_free(bitmap);
            (embd, non_causal)
        }
    }
}

impl Drop for Mtmd {
    fn drop(&mut self) {
        // SAFETY: created in `load`, freed once.
        unsafe { sys::mtmd_free(self.ctx) }
    }
}

/// llama.cpp's logits for the case's sequence: text tokens (with the images' begin and end
/// tokens) through `llama_decode`, each image's soft tokens as mtmd encodes them, decoded as
/// its helper does (one batch, causal mask as mtmd says), every position's logits. f32 KV, no
/// flash attention in the text model: its closest to exact.
fn llama_logits(case: &serde_json::Value, mmproj: &str) -> Vec<f32> {
    let ids = case_ids(case);
    let runs = image_runs(&ids);
    let mut llama = Llama::load_with(&models().join("tiny-gemma4-vision.gguf"), false, 256, sys::GGML_TYPE_F32);
    let mtmd = Mtmd::load(&models().join(mmproj), &llama, runs[0].len());
    let files: Vec<&str> = case["images"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    let mut logits = Vec::new();
    let mut pos = 0;
    for (run, file) in runs.iter().zip(&files) {
        logits.extend(llama.decode(&ids[pos..run.start], pos));
        let (embd, non_causal) = mtmd.encode(file);
        assert_eq!(embd.len(), run.len() * mtmd.n_embd, "{file}: llama.cpp's soft tokens");
        logits.extend(llama.decode_embd(&embd, mtmd.n_embd, run.start, !non_causal));
        pos = run.end;
    }
    logits.extend(llama.decode(&ids[pos..], pos));
    logits
}

#[test]
fn image_prompt_kl_is_no_worse_than_llama_cpp() {
    let f = fixture();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == "squares").unwrap();
    let want = f32s(&root().join("tests/fixtures").join(case["logits"].as_str().unwrap()));
    let n_vocab = f["n_vocab"].as_u64().unwrap() as usize;
    for mmproj in ["tiny-gemma4-vision-mmproj-f16.gguf", "tiny-gemma4-vision-mmproj-q8_0.gguf"] {
        let (ours, _) = prompt_logits(case, mmproj);
        let theirs = llama_logits(case, mmproj);
        assert_eq!((ours.len(), theirs.len()), (want.len(), want.len()));
        let ours_vs_hf = Agreement::of(&ours, &want, n_vocab);
        let llama_vs_hf = Agreement::of(&theirs, &want, n_vocab);
        println!("{mmproj}, {} positions:", ours_vs_hf.n);
        println!("  ours vs transformers:       {ours_vs_hf}");
        println!("  llama.cpp vs transformers:  {llama_vs_hf}");
        println!("  ours vs llama.cpp:          {}", Agreement::of(&ours, &theirs, n_vocab));
        assert!(
            ours_vs_hf.mean_kl <= 1.25 * llama_vs_hf.mean_kl,
            "{mmproj}: mean KL to transformers {:.3e}, llama.cpp's {:.3e}",
            ours_vs_hf.mean_kl,
            llama_vs_hf.mean_kl
        );
        assert!(
            ours_vs_hf.top1 >= llama_vs_hf.top1,
            "{mmproj}: top-1 agreement with transformers {}, llama.cpp's {}",
            ours_vs_hf.top1,
            llama_vs_hf.top1
        );
    }
}
