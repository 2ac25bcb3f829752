//! A synthetic full-size Gemma 4 26B-A4B GGUF for speed and memory measurements: the metadata,
//! tokenizer and chat template of `ggml-vocab-gemma-4.gguf` (llama.cpp's test vocabulary,
//! converted from the real checkpoint), the real tensor shapes, and random weights with the
//! tensor types llama.cpp's own `llama-quantize` picks for a Q4_K_M.
//!
//! ```text
//! cargo run --release --features oracle --example synth_gemma4 -- OUT.gguf [--layers N]
//! cargo run --release --features oracle --example synth_gemma4 -- --table OUT.json
//! ```
//!
//! `--table` stops after step 2 and writes the quantized file's tensor table (name, type,
//! dims; JSON, one tensor per line) instead of a model: the fixture the placement planner's
//! tests read (`tests/fixtures/gemma4-26b-a4b-q4_k_m.tensors.json`).
//!
//! How, without a 50 GB intermediate:
//! 1. an F32 skeleton with every tensor of the model is written with its data left as zeros
//!    (a sparse file: it takes no disk space);
//! 2. llama.cpp quantizes the skeleton to Q4_K_M, which decides every tensor's type as it would
//!    for the real checkpoint (Q4_K, Q6_K, Q5_0/Q8_0 where rows are not multiples of 256, F32);
//! 3. every tensor is then overwritten in place with random valid blocks of its type, scaled so
//!    that a row's weights have a standard deviation of `1/sqrt(row length)` (norm weights 1,
//!    `rope_freqs` as the converter writes it), so activations stay finite.
//!
//! Test tooling (it calls llama.cpp), not part of the runtime.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ggml::gguf::write::assign_offsets;
use ggml::gguf::{Array, GgufFile, GgufWriter, TensorInfo, Value};
use ggml::quants::dequantize_row;
use ggml::GgmlType;
use half::f16;
use llama_cpp_sys_2 as sys;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const VOCAB: &str = "models/ggml-vocab-gemma-4.gguf";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut out, mut layers, mut table) = (None, None, false);
    let usage = "usage: synth_gemma4 OUT.gguf [--layers N] | synth_gemma4 --table OUT.json";
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--layers" => layers = Some(it.next().context("--layers needs a number")?.parse::<usize>()?),
            "--table" => table = true,
            _ if out.is_none() => out = Some(PathBuf::from(a)),
            _ => bail!("{usage}"),
        }
    }
    let out = out.context(usage)?;
    let vocab = GgufFile::open(VOCAB).with_context(|| format!("{VOCAB} (run scripts/fetch-test-models.sh)"))?;

    let skeleton = out.with_extension("f32-skeleton.gguf");
    let started = std::time::Instant::now();
    write_skeleton(&vocab, layers, &skeleton)?;
    eprintln!("skeleton written ({:.1} s)", started.elapsed().as_secs_f64());
    let quantized = out.with_extension("q4_k_m.tmp");
    llama_quantize(&skeleton, &quantized)?;
    std::fs::remove_file(&skeleton)?;
    eprintln!("quantized by llama.cpp ({:.1} s)", started.elapsed().as_secs_f64());
    if table {
        write_table(&quantized, &out)?;
        std::fs::remove_file(&quantized)?;
        eprintln!("{} written ({:.1} s)", out.display(), started.elapsed().as_secs_f64());
        return Ok(());
    }
    fill_random(&quantized)?;
    std::fs::rename(&quantized, &out)?;
    eprintln!("{} written ({:.1} s)", out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// The metadata of the vocabulary file (26B-A4B hyperparameters) cut to `layers`, as an F32
/// model, and every tensor of that model with zero data.
fn write_skeleton(vocab: &GgufFile, layers: Option<usize>, path: &Path) -> Result<()> {
    let h = &vocab.header;
    let n_layer_all = h.get_u64("gemma4.block_count")? as usize;
    let n_layer = layers.unwrap_or(n_layer_all).min(n_layer_all);
    let u = |k: &str| -> Result<u64> { Ok(h.get_u64(&format!("gemma4.{k}"))?) };
    let (n_embd, n_ff, n_head) = (u("embedding_length")?, u("feed_forward_length")?, u("attention.head_count")?);
    let (hd, hd_swa) = (u("attention.key_length")?, u("attention.key_length_swa")?);
    let (n_expert, n_ff_exp) = (u("expert_count")?, u("expert_feed_forward_length")?);
    let kv_heads = h.get_array("gemma4.attention.head_count_kv")?;
    let pattern = h.get_array("gemma4.attention.sliding_window_pattern")?;
    let n_vocab = h.get_array("tokenizer.ggml.tokens")?.len() as u64;

    // The first n_layer layers of the real pattern, the last one made global (as transformers
    // forces): a cut model still has both layer types.
    let is_sliding = |il: usize| il + 1 < n_layer && pattern.get_i64(il).unwrap_or(0) != 0;
    let first_global = (0..n_layer_all).find(|&il| pattern.get_i64(il) == Some(0)).context("a global layer")?;
    let kv_of = |il: usize| kv_heads.get_i64(if is_sliding(il) { il } else { first_global }).unwrap_or(0) as i32;
    let mut metadata = Vec::new();
    for (k, v) in &h.metadata {
        let v = match k.as_str() {
            "gemma4.block_count" => Value::U32(n_layer as u32),
            "general.file_type" => Value::U32(0),
            "general.name" => Value::String(format!("synthetic Gemma 4 26B-A4B, {n_layer} layers")),
            "gemma4.attention.head_count_kv" => Value::Array(Array::I32((0..n_layer).map(kv_of).collect())),
            "gemma4.attention.sliding_window_pattern" => {
                Value::Array(Array::Bool((0..n_layer).map(is_sliding).collect()))
            }
            _ => v.clone(),
        };
        metadata.push((k.clone(), v));
    }

    let mut tensors = vec![("token_embd.weight".to_string(), vec![n_embd, n_vocab])];
    tensors.push(("output_norm.weight".to_string(), vec![n_embd]));
    tensors.push(("rope_freqs.weight".to_string(), vec![hd / 2]));
    for il in 0..n_layer {
        let sliding = is_sliding(il);
        let d = if sliding { hd_swa } else { hd };
        let n_kv = kv_of(il) as u64;
        let mut t = |role: &str, dims: &[u64]| tensors.push((format!("blk.{il}.{role}"), dims.to_vec()));
        t("attn_norm.weight", &[n_embd]);
        t("attn_q.weight", &[n_embd, n_head * d]);
        t("attn_k.weight", &[n_embd, n_kv * d]);
        if sliding {
            t("attn_v.weight", &[n_embd, n_kv * d]); // full layers: k_eq_v
        }
        t("attn_q_norm.weight", &[d]);
        t("attn_k_norm.weight", &[d]);
        t("attn_output.weight", &[n_head * d, n_embd]);
        t("post_attention_norm.weight", &[n_embd]);
        t("ffn_norm.weight", &[n_embd]);
        t("ffn_gate.weight", &[n_embd, n_ff]);
        t("ffn_up.weight", &[n_embd, n_ff]);
        t("ffn_down.weight", &[n_ff, n_embd]);
        t("post_ffw_norm.weight", &[n_embd]);
        t("ffn_gate_inp.weight", &[n_embd, n_expert]);
        t("ffn_gate_inp.scale", &[n_embd]);
        t("pre_ffw_norm_2.weight", &[n_embd]);
        t("post_ffw_norm_1.weight", &[n_embd]);
        t("post_ffw_norm_2.weight", &[n_embd]);
        t("ffn_gate_up_exps.weight", &[n_embd, 2 * n_ff_exp, n_expert]);
        t("ffn_down_exps.weight", &[n_ff_exp, n_embd, n_expert]);
        t("ffn_down_exps.scale", &[n_expert]);
        t("layer_output_scale.weight", &[1]);
    }
    let mut infos: Vec<TensorInfo> =
        tensors.into_iter().map(|(name, dims)| TensorInfo { name, ty: GgmlType::F32, dims, offset: 0 }).collect();
    assign_offsets(&mut infos, 32);
    GgufWriter::create(path, 3, &metadata, &infos)?.finish_zeroed()?;
    Ok(())
}

unsafe extern "C" fn quiet(_level: sys::ggml_log_level, _text: *const std::ffi::c_char, _user: *mut std::ffi::c_void) {}

fn llama_quantize(src: &Path, dst: &Path) -> Result<()> {
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let (s, d) = (c(src), c(dst));
    // SAFETY: default params are plain data; both paths are valid C strings for the call.
    let rc = unsafe {
        sys::llama_log_set(Some(quiet), std::ptr::null_mut());
        sys::llama_backend_init();
        let mut params = sys::llama_model_quantize_default_params();
        params.ftype = sys::LLAMA_FTYPE_MOSTLY_Q4_K_M;
        params.nthread = num_cpus::get() as i32;
        sys::llama_model_quantize(s.as_ptr(), d.as_ptr(), &params)
    };
    if rc != 0 {
        bail!("llama_model_quantize {} -> {} failed ({rc})", src.display(), dst.display());
    }
    Ok(())
}

/// The tensor table of the GGUF at `src` as JSON at `dst`: `[{"name", "type", "dims"}, ...]`,
/// one tensor per line.
fn write_table(src: &Path, dst: &Path) -> Result<()> {
    let gguf = GgufFile::open(src)?;
    let rows: Vec<String> = (gguf.header.tensors.iter())
        .map(|t| serde_json::json!({ "name": t.name, "type": t.ty.name(), "dims": t.dims }).to_string())
        .collect();
    std::fs::write(dst, format!("[\n{}\n]\n", rows.join(",\n")))?;
    Ok(())
}

/// Overwrites every tensor of the file at `path` with random data of its type.
fn fill_random(path: &Path) -> Result<()> {
    let gguf = GgufFile::open(path)?;
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let base = gguf.header.data_offset;
    for (i, t) in gguf.header.tensors.iter().enumerate() {
        let n_in = t.dims[0] as usize;
        let row_bytes = t.ty.row_bytes(n_in as u64).context("whole blocks")? as usize;
        let n_rows = (t.n_elements() as usize) / n_in;
        let std = 1.0 / (n_in as f32).sqrt();
        let role = t.name.rsplit_once('.').map_or("", |(head, _)| head.rsplit('.').next().unwrap_or(""));
        if t.ty == GgmlType::F32 {
            let values: Vec<f32> = match role {
                "rope_freqs" => {
                    // Proportional RoPE: a quarter of the frequency pairs turn.
                    let n = n_in / 4;
                    (0..n_in).map(|j| if j < n { 1.0 } else { 1e30 }).collect()
                }
                // Router and norms: random weights for the router, near-one scales elsewhere.
                "ffn_gate_inp" if t.name.ends_with(".weight") => random_f32(i, t.n_elements() as usize, 0.0, std),
                "attn_q_norm" | "attn_k_norm" => random_f32(i, n_in, (n_in as f32).powf(-0.25), 0.01),
                _ => random_f32(i, t.n_elements() as usize, 1.0, 0.05),
            };
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            file.write_all_at(&bytes, base + t.offset)?;
            continue;
        }
        let unit = unit_std(t.ty)?;
        let d = f16::from_f32(std / unit);
        // Rows in parallel chunks of ~16 MiB, each from its own seeded stream.
        let rows_per_chunk = ((16 << 20) / row_bytes).max(1);
        (0..n_rows.div_ceil(rows_per_chunk)).into_par_iter().try_for_each(|c| -> Result<()> {
            let rows = (c * rows_per_chunk)..((c + 1) * rows_per_chunk).min(n_rows);
            let mut buf = vec![0u8; rows.len() * row_bytes];
            let mut rng = ChaCha8Rng::seed_from_u64(((i as u64) << 32) | c as u64);
            random_blocks(t.ty, d, &mut rng, &mut buf);
            file.write_all_at(&buf, base + t.offset + (rows.start * row_bytes) as u64)?;
            Ok(())
        })?;
    }
    file.sync_all()?;
    Ok(())
}

fn random_f32(seed: usize, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
    (0..n).map(|_| mean + std * (rng.gen::<f32>() * 2.0 - 1.0) * 3f32.sqrt()).collect()
}

/// Byte offsets of the f16 scale fields in one block: `(d, optional min)`. The min is set so
/// that the block's values are centred near zero.
fn scale_fields(ty: GgmlType) -> Result<(usize, Option<(usize, f32)>)> {
    use GgmlType::*;
    let size = ty.type_size();
    Ok(match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => (0, None),
        // Q4_1/Q5_1: value = d q + m with q in 0..16 / 0..32.
        Q4_1 => (0, Some((2, -7.5))),
        Q5_1 => (0, Some((2, -15.5))),
        // K-quants with a min: value = d sc q - dmin m, sc and m 6-bit.
        Q4_K => (0, Some((2, 7.5))),
        Q5_K => (0, Some((2, 15.5))),
        Q2_K => (size - 4, Some((size - 2, 1.5))),
        Q3_K | Q6_K => (size - 2, None),
        other => bail!("no random blocks for {}", other.name()),
    })
}

/// Random bytes with every block's scale set to `d` (and its min to centre the values).
fn random_blocks(ty: GgmlType, d: f16, rng: &mut ChaCha8Rng, buf: &mut [u8]) {
    rng.fill_bytes(buf);
    let (d_at, min) = scale_fields(ty).expect("checked by unit_std");
    for block in buf.chunks_exact_mut(ty.type_size()) {
        block[d_at..d_at + 2].copy_from_slice(&d.to_le_bytes());
        if let Some((at, k)) = min {
            block[at..at + 2].copy_from_slice(&f16::from_f32(d.to_f32() * k).to_le_bytes());
        }
    }
}

/// The standard deviation of the values of random blocks of `ty` with `d = 1`, measured with
/// our dequantizer over 64 blocks.
fn unit_std(ty: GgmlType) -> Result<f32> {
    scale_fields(ty)?;
    let n = 64 * ty.block_size();
    let mut buf = vec![0u8; ty.row_bytes(n as u64).context("whole blocks")? as usize];
    random_blocks(ty, f16::ONE, &mut ChaCha8Rng::seed_from_u64(7), &mut buf);
    let mut values = vec![0f32; n];
    dequantize_row(ty, &buf, &mut values)?;
    let mean = values.iter().sum::<f32>() / n as f32;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
    if !var.is_finite() || var == 0.0 {
        bail!("random {} blocks do not dequantize to finite, varied values", ty.name());
    }
    Ok(var.sqrt())
}
