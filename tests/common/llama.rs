//! What the llama.cpp oracle tests share: a model run by llama.cpp through `llama-cpp-sys-2`
//! (CPU only), llama.cpp's own quantizer, and the measures of agreement between two sets of
//! logits.

use std::ffi::{c_char, c_void, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

unsafe extern "C" fn quiet(_level: sys::ggml_log_level, _text: *const c_char, _user: *mut c_void) {}

/// A model and context loaded by llama.cpp, CPU only, two threads.
pub struct Llama {
    model: *mut sys::llama_model,
    ctx: *mut sys::llama_context,
    pub n_vocab: usize,
}

impl Llama {
    /// With `flash_attn` off llama.cpp rounds differently (f32 scores and V sums instead of
    /// f16): the two settings against each other measure its own noise floor.
    pub fn load(path: &Path, flash_attn: bool, context: usize) -> Llama {
        Llama::load_with(path, flash_attn, context, sys::GGML_TYPE_F16)
    }

    /// With K and V cached as `kv_type` (`GGML_TYPE_F16`, llama.cpp's default, or `_F32`).
    pub fn load_with(path: &Path, flash_attn: bool, context: usize, kv_type: sys::ggml_type) -> Llama {
        Llama::load_kv(path, flash_attn, context, kv_type, kv_type)
    }

    /// With K cached as `type_k` and V as `type_v` (a quantized V needs `flash_attn`).
    pub fn load_kv(
        path: &Path,
        flash_attn: bool,
        context: usize,
        type_k: sys::ggml_type,
        type_v: sys::ggml_type,
    ) -> Llama {
        let name = path.display().to_string();
        let path = CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: process-wide initialisation, default params are plain data, the path is a
        // valid C string for the call, and the model outlives the context (freed in Drop).
        unsafe {
            sys::llama_log_set(Some(quiet), std::ptr::null_mut());
            sys::llama_backend_init();
            let mut params = sys::llama_model_default_params();
            params.n_gpu_layers = 0;
            let model = sys::llama_model_load_from_file(path.as_ptr(), params);
            assert!(!model.is_null(), "llama.cpp could not load {name}");
            let mut cparams = sys::llama_context_default_params();
            cparams.n_ctx = context as u32;
            cparams.n_batch = context as u32;
            cparams.n_ubatch = context as u32;
            cparams.n_threads = 2;
            cparams.n_threads_batch = 2;
            cparams.type_k = type_k;
            cparams.type_v = type_v;
            cparams.flash_attn_type =
                if flash_attn { sys::LLAMA_FLASH_ATTN_TYPE_ENABLED } else { sys::LLAMA_FLASH_ATTN_TYPE_DISABLED };
            let ctx = sys::llama_init_from_model(model, cparams);
            assert!(!ctx.is_null(), "llama.cpp could not create a context");
            let n_vocab = sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(model)) as usize;
            Llama { model, ctx, n_vocab }
        }
    }

    /// Decodes `tokens` at positions `pos ..` and returns the logits of every one of them:
    /// `[n_tokens][n_vocab]`.
    pub fn decode(&mut self, tokens: &[u32], pos: usize) -> Vec<f32> {
        // SAFETY: the batch holds `tokens.len()` tokens; `run` fills the rest within bounds.
        unsafe {
            let batch = sys::llama_batch_init(tokens.len() as i32, 0, 1);
            for (i, &t) in tokens.iter().enumerate() {
                *batch.token.add(i) = t as i32;
            }
            self.run(batch, tokens.len(), pos)
        }
    }

    /// The model, for mtmd (which encodes images for it).
    pub fn model(&self) -> *mut sys::llama_model {
        self.model
    }

    /// Decodes the input embeddings `embd` (`[n][n_embd]`: an image's soft tokens as mtmd gives
    /// them) at positions `pos ..`, with causal attention or not, as mtmd's helper decodes an
    /// image, and returns the logits of every row.
    pub fn decode_embd(&mut self, embd: &[f32], n_embd: usize, pos: usize, causal: bool) -> Vec<f32> {
        let n = embd.len() / n_embd;
        // SAFETY: the batch holds `n` rows of `n_embd` floats; `run` fills the rest within
        // bounds. The attention mode is restored after the call.
        unsafe {
            let batch = sys::llama_batch_init(n as i32, n_embd as i32, 1);
            std::ptr::copy_nonoverlapping(embd.as_ptr(), batch.embd, n * n_embd);
            sys::llama_set_causal_attn(self.ctx, causal);
            let logits = self.run(batch, n, pos);
            sys::llama_set_causal_attn(self.ctx, true);
            logits
        }
    }

    /// Runs `batch` (its first `n` tokens or embeddings set) at positions `pos ..` in sequence
    /// 0 with every row's logits, frees it, and returns the logits: `[n][n_vocab]`.
    ///
    /// # Safety
    /// `batch` must come from `llama_batch_init` for at least `n` rows of one sequence.
    unsafe fn run(&mut self, mut batch: sys::llama_batch, n: usize, pos: usize) -> Vec<f32> {
        let mut logits = Vec::with_capacity(n * self.n_vocab);
        // SAFETY: the caller's: the batch has room for `n` rows; each logits row llama.cpp
        // returns holds n_vocab floats.
        unsafe {
            for i in 0..n {
                *batch.pos.add(i) = (pos + i) as i32;
                *batch.n_seq_id.add(i) = 1;
                *(*batch.seq_id.add(i)) = 0;
                *batch.logits.add(i) = 1;
            }
            batch.n_tokens = n as i32;
            assert_eq!(sys::llama_decode(self.ctx, batch), 0, "llama_decode failed");
            for i in 0..n {
                let row = sys::llama_get_logits_ith(self.ctx, i as i32);
                assert!(!row.is_null(), "no logits for row {i}");
                logits.extend_from_slice(std::slice::from_raw_parts(row, self.n_vocab));
            }
            sys::llama_batch_free(batch);
        }
        logits
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        // SAFETY: both were created in `load` and are freed once, the context first.
        unsafe {
            sys::llama_free(self.ctx);
            sys::llama_model_free(self.model);
        }
    }
}

pub fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

/// The softmax of a logit row, in f64.
fn softmax(x: &[f32]) -> Vec<f64> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// KL(p || q).
fn kl(p: &[f64], q: &[f64]) -> f64 {
    p.iter().zip(q).filter(|(&p, _)| p > 0.0).map(|(&p, &q)| p * (p / q.max(1e-300)).ln()).sum()
}

/// How close two `[n_tokens][n_vocab]` logit arrays are.
pub struct Agreement {
    pub n: usize,
    /// Positions whose argmax is the same.
    pub top1: usize,
    pub max_abs: f32,
    /// Largest probability difference.
    pub max_prob: f64,
    /// KL(b || a) of the softmaxes, averaged over positions, and its largest.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// The positions whose argmax differs.
    pub differ: Vec<usize>,
}

impl Agreement {
    pub fn of(a: &[f32], b: &[f32], n_vocab: usize) -> Agreement {
        let mut m = Agreement { n: 0, top1: 0, max_abs: 0.0, max_prob: 0.0, mean_kl: 0.0, max_kl: 0.0, differ: vec![] };
        for (t, (a, b)) in a.chunks_exact(n_vocab).zip(b.chunks_exact(n_vocab)).enumerate() {
            m.n += 1;
            if argmax(a) == argmax(b) {
                m.top1 += 1;
            } else {
                m.differ.push(t);
            }
            m.max_abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(m.max_abs, f32::max);
            let (p, q) = (softmax(b), softmax(a));
            m.max_prob = p.iter().zip(&q).map(|(x, y)| (x - y).abs()).fold(m.max_prob, f64::max);
            let d = kl(&p, &q);
            m.mean_kl += d;
            m.max_kl = m.max_kl.max(d);
        }
        m.mean_kl /= m.n as f64;
        m
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "top-1 {}/{} (differ at {:?}), max |logit diff| {:.4}, max |prob diff| {:.2e}, KL mean {:.2e} max {:.2e}",
            self.top1, self.n, self.differ, self.max_abs, self.max_prob, self.mean_kl, self.max_kl
        )
    }
}

/// llama.cpp's `llama-quantize` on `src` into `dst`, as `ftype` (`LLAMA_FTYPE_MOSTLY_*`).
pub fn quantize(src: &Path, dst: &Path, ftype: sys::llama_ftype) {
    let (s, d) = (CString::new(src.to_str().unwrap()).unwrap(), CString::new(dst.to_str().unwrap()).unwrap());
    // SAFETY: default params are plain data; both paths are valid C strings for the call.
    let rc = unsafe {
        sys::llama_log_set(Some(quiet), std::ptr::null_mut());
        sys::llama_backend_init();
        let mut params = sys::llama_model_quantize_default_params();
        params.ftype = ftype;
        params.nthread = 2;
        sys::llama_model_quantize(s.as_ptr(), d.as_ptr(), &params)
    };
    assert_eq!(rc, 0, "llama_model_quantize {} -> {} failed", src.display(), dst.display());
}
