//! `gemma perplexity` on the tiny Gemma 4 MoE and Alice's Adventures in Wonderland
//! (`models/alice.txt`, which `scripts/fetch-test-models.sh` fetches):
//!
//! - its perplexity equals one computed here, independently, from the logits `gemma run
//!   --logits-out` gives for each chunk (BOS first, scored on the second half);
//! - the base file it writes is llama-perplexity's format (header fields and size derived by
//!   hand), and the model against its own base diverges by no more than the base's 16-bit
//!   rounding, with the same top token everywhere; another KV cache type diverges measurably;
//! - bad input (a text too short, a base file of another vocabulary, a truncated one) is a
//!   one-line error, exit 1, with nothing written;
//! - Ctrl-C (SIGINT) while a base file is written ends the run within a chunk, exit 130, with
//!   nothing left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn path(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(p.exists(), "{} is missing: run scripts/fetch-test-models.sh", p.display());
    p
}

fn gemma(args: &[&str], files: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.args(args);
    for f in files {
        cmd.arg(f);
    }
    cmd.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

const N_VOCAB: usize = 1024;

#[test]
fn perplexity_equals_a_direct_computation_from_the_logits() {
    let (model, text) = (path("tiny-gemma4-moe.gguf"), path("alice.txt"));
    let (n_ctx, n_chunk) = (64, 3);
    let report = json(&gemma(
        &["perplexity", "-c", "64", "--chunks", "3", "-o", "json", "-m"],
        &[&model, Path::new("-f"), &text],
    ));
    // The text's tokens as `gemma tokenize` gives them (BOS first; special-token text as text).
    let tokenize = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["tokenize", "--no-special", "--json", "-m"])
        .arg(&model)
        .stdin(std::fs::File::open(&text).unwrap())
        .output()
        .unwrap();
    let tokenized = json(&tokenize);
    let ids: Vec<u64> = tokenized["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let bos = ids[0];
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let dir = tempfile::tempdir().unwrap();
    for c in 0..n_chunk {
        let mut chunk = ids[c * n_ctx..(c + 1) * n_ctx].to_vec();
        chunk[0] = bos;
        let ids_arg = chunk.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        let out = dir.path().join("logits.f32");
        let run = gemma(&["run", "-n", "0", "-q", "--ids", &ids_arg, "--logits-out"], &[&out, Path::new("-m"), &model]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let logits: Vec<f32> = bytemuck::cast_slice(&std::fs::read(&out).unwrap()).to_vec();
        for j in n_ctx / 2..n_ctx - 1 {
            let row = &logits[j * N_VOCAB..(j + 1) * N_VOCAB];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
            let nll = lse - row[ids[c * n_ctx + j + 1] as usize] as f64;
            sum += nll;
            sum2 += nll * nll;
            count += 1;
        }
    }
    let mean = sum / count as f64;
    let want = mean.exp();
    let want_err = want * ((sum2 / count as f64 - mean * mean) / (count - 1) as f64).sqrt();
    assert_eq!(report["scored"].as_u64(), Some(count as u64));
    let (ppl, err) = (report["ppl"].as_f64().unwrap(), report["ppl_error"].as_f64().unwrap());
    eprintln!("perplexity {ppl} ± {err}; from the logits {want} ± {want_err}");
    assert!((ppl - want).abs() <= 1e-9 * want, "{ppl} vs {want}");
    assert!((err - want_err).abs() <= 1e-6 * want_err, "{err} vs {want_err}");
}

#[test]
fn kl_divergence_against_a_base_file() {
    let (model, text) = (path("tiny-gemma4-moe.gguf"), path("alice.txt"));
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    let written = gemma(
        &["perplexity", "-c", "64", "--chunks", "2", "-o", "json", "--kl-divergence-base"],
        &[&base, Path::new("-m"), &model, Path::new("-f"), &text],
    );
    let ppl = json(&written)["ppl"].as_f64().unwrap();
    // llama-perplexity's layout: "_logits_", n_ctx, n_vocab, n_chunk, 2·64 tokens, then 2·31
    // rows of 2·512 + 4 u16s.
    let bytes = std::fs::read(&base).unwrap();
    assert_eq!(&bytes[..8], b"_logits_");
    let word = |i: usize| u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap());
    assert_eq!((word(0), word(1), word(2)), (64, N_VOCAB as u32, 2));
    assert_eq!(bytes.len(), 20 + 2 * 64 * 4 + 2 * 31 * (2 * 512 + 4) * 2);

    let compare = |extra: &[&str]| {
        let mut args = vec!["perplexity", "--kl-divergence", "-o", "json"];
        args.extend_from_slice(extra);
        args.push("--kl-divergence-base");
        json(&gemma(&args, &[&base, Path::new("-m"), &model]))
    };
    // Against itself: the base's rounding only (log-probabilities in steps of 16/65535 nats).
    let same = compare(&[]);
    let k = &same["kl_divergence"];
    assert!(k["kld_mean"].as_f64().unwrap().abs() < 1e-5, "{k}");
    assert!(k["kld_max"].as_f64().unwrap() < 1e-4, "{k}");
    assert_eq!(k["same_top"].as_f64(), Some(1.0), "{k}");
    assert_eq!(k["count"].as_u64(), Some(62));
    assert!((same["ppl"].as_f64().unwrap() - ppl).abs() <= 1e-9 * ppl);
    // The base keeps 16 nats below each row's top: the random tiny model gives many correct
    // tokens less than that, so the base's perplexity is lower, never higher.
    assert!(k["ppl_base"].as_f64().unwrap() <= ppl * (1.0 + 1e-6), "{k}");
    // An f32 KV cache against the f16 base: a real, small divergence.
    let f32_cache = compare(&["--kv-type", "f32"]);
    let kld = f32_cache["kl_divergence"]["kld_mean"].as_f64().unwrap();
    assert!(kld > 1e-9 && kld < 1e-2, "{kld}");
}

/// A base file's header with `n_chunk` chunks of `n_ctx` zero tokens, and no rows.
fn base_header(n_ctx: u32, n_vocab: u32, n_chunk: u32) -> Vec<u8> {
    let mut header = b"_logits_".to_vec();
    for v in [n_ctx, n_vocab, n_chunk] {
        header.extend(v.to_le_bytes());
    }
    header.extend(vec![0u8; 4 * (n_ctx * n_chunk) as usize]);
    header
}

#[test]
fn bad_input_is_a_one_line_error_and_writes_nothing() {
    let model = path("tiny-gemma4-moe.gguf");
    let dir = tempfile::tempdir().unwrap();
    let fail = |out: Output, wanted: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(wanted), "{wanted:?} not in: {stderr}");
    };
    // A text of a few tokens: two chunks of 64 need 128.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Alice was beginning to get very tired.").unwrap();
    let base = dir.path().join("never.kld");
    fail(
        gemma(
            &["perplexity", "-c", "64", "--kl-divergence-base"],
            &[&base, Path::new("-m"), &model, Path::new("-f"), &short],
        ),
        "a context of 64 needs at least 128 (two chunks)",
    );
    assert!(!base.exists(), "a failed run left a base file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "a temporary file was left behind");

    // A base written by the 270M (a 262144-token vocabulary), read with the tiny model.
    let other = dir.path().join("other.kld");
    std::fs::write(&other, base_header(8, 262144, 1)).unwrap();
    fail(
        gemma(&["perplexity", "--kl-divergence", "--kl-divergence-base"], &[&other, Path::new("-m"), &model]),
        "a base file from another model or vocabulary",
    );
    // The tiny model's own header, but no rows.
    let truncated = dir.path().join("truncated.kld");
    std::fs::write(&truncated, base_header(8, N_VOCAB as u32, 1)).unwrap();
    fail(
        gemma(&["perplexity", "--kl-divergence", "--kl-divergence-base"], &[&truncated, Path::new("-m"), &model]),
        "truncated in chunk 1 of 1",
    );
    fail(
        gemma(&["perplexity", "--kl-divergence", "--kl-divergence-base"], &[&short, Path::new("-m"), &model]),
        "not a base file",
    );
}

#[test]
fn ctrl_c_stops_within_a_chunk_and_leaves_nothing_behind() {
    use std::io::Read;
    let (model, text) = (path("tiny-gemma4-moe.gguf"), path("alice.txt"));
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.kld");
    // Every chunk of 64 in the book (hundreds): far more than run before the signal.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["perplexity", "-c", "64", "-t", "1", "--kl-divergence-base"])
        .args([&base, Path::new("-m"), &model, Path::new("-f"), &text])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Off a terminal, each chunk's running value goes to stderr as `[c]ppl,`: signal once the
    // second chunk is in (the temporary base file exists by then).
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("[2]") {
        assert_eq!(stderr.read(&mut byte).unwrap(), 1, "ended early: {}", String::from_utf8_lossy(&seen));
        seen.push(byte[0]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary base file while running");
    let killed = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    stderr.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    let said = String::from_utf8_lossy(&seen);
    assert_eq!(status.code(), Some(130), "{said}");
    let last = said.lines().last().unwrap();
    assert!(last.starts_with("error: interrupted after ") && last.contains(" chunks"), "{last}");
    let done: usize = last["error: interrupted after ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!((2..100).contains(&done), "{last}");
    assert!(!base.exists(), "an interrupted run wrote the base file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the temporary base file was left behind");
}

/// On lavapipe, every layer on the GPU and every layer with its experts in RAM (in batches of
/// 16), the perplexity is the CPU's within the two paths' rounding (measured: 5e-5 relative).
#[test]
fn perplexity_on_the_gpu_equals_the_cpus() {
    let (model, text) = (path("tiny-gemma4-moe.gguf"), path("alice.txt"));
    let ppl = |extra: &[&str]| {
        let mut args = vec!["perplexity", "-c", "64", "--chunks", "3", "-o", "json"];
        args.extend_from_slice(extra);
        args.push("-m");
        let out = gemma(&args, &[&model, Path::new("-f"), &text]);
        if !extra.is_empty() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("gemma: GPU 0: llvmpipe"));
        }
        json(&out)["ppl"].as_f64().unwrap()
    };
    let cpu = ppl(&[]);
    for extra in [&["-ngl", "99", "--device", "0"][..], &["--cpu-moe", "--device", "0", "-b", "16"]] {
        let gpu = ppl(extra);
        assert!((gpu - cpu).abs() <= 1e-3 * cpu, "{extra:?}: {gpu} against the CPU's {cpu}");
    }
}
