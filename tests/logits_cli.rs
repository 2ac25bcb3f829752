//! `gemma run --ids` and `--logits-out` end to end on the tiny Gemma 4 models: the prompt as
//! token ids, and the logits of every prompt position written to a file, checked against
//! transformers' reference logits (`tests/fixtures/`, see `gemma4_transformers.rs`).

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::tiny::{fixture, MODELS};

fn run(model: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).arg("run").arg("-m").arg(model).args(args).output().unwrap()
}

fn argmax(x: &[f32]) -> usize {
    (0..x.len()).fold(0, |best, i| if x[i] > x[best] { i } else { best })
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % 4, 0);
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn join(ids: &[u32], sep: &str) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(sep)
}

/// Teacher-forced scoring of the fixture's 48 tokens in batches of 7 (the sliding rings wrap
/// inside a batch): transformers' logits, within the bound `gemma4_transformers.rs` uses.
#[test]
fn logits_out_matches_transformers() {
    for name in MODELS {
        let f = fixture(name);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logits.f32");
        let ids = join(&f.tokens, " ");
        let out = run(
            &f.gguf,
            &["--ids", &ids, "--logits-out", path.to_str().unwrap(), "-n", "0", "--kv-type", "f32", "-b", "7"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: -n 0 generates nothing");
        assert!(stderr.contains(&format!("logits of {} prompt positions written", f.tokens.len())), "{stderr}");

        let ours = read_f32(&path);
        assert_eq!(ours.len(), f.tokens.len() * f.n_vocab, "{name}: [n_tokens][n_vocab]");
        let (mut max_abs, mut top1) = (0f32, 0);
        for (a, b) in ours.chunks_exact(f.n_vocab).zip(f.logits.chunks_exact(f.n_vocab)) {
            max_abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(max_abs, f32::max);
            top1 += (argmax(a) == argmax(b)) as usize;
        }
        println!("{name}: top-1 {top1}/{}, max |logit diff| {max_abs:.2e}", f.tokens.len());
        assert_eq!(top1, f.tokens.len(), "{name}");
        assert!(max_abs < 5e-4, "{name}: max |logit diff| {max_abs}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "{name}: temporary file left behind");
    }
}

/// Ids that do not parse are a usage error (exit 2); ids past the vocabulary are named with
/// its size (exit 1). Neither leaves a file behind, nor touches one already there.
#[test]
fn bad_ids_are_clear_errors_and_write_nothing() {
    let f = fixture("tiny-gemma4-moe");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logits.f32");
    let cases: [(&str, i32, &str); 4] = [
        ("2 105 x", 2, "\"x\" is not a token id"),
        ("2, -1", 2, "\"-1\" is not a token id"),
        (" , ", 2, "no token ids"),
        ("2 105 1024", 1, "token id 1024 is out of range: the vocabulary has 1024 tokens"),
    ];
    for (ids, code, expected) in cases {
        let out = run(&f.gguf, &["--ids", ids, "--logits-out", path.to_str().unwrap(), "-n", "0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{ids:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{ids:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{ids:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{ids:?}: a file was left behind");
    }

    std::fs::write(&path, b"earlier").unwrap();
    let out = run(&f.gguf, &["--ids", "2 4096", "--logits-out", path.to_str().unwrap(), "-n", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&path).unwrap(), b"earlier");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let out = run(&f.gguf, &["--ids", "2 105", "-p", "hi"]);
    assert_eq!(out.status.code(), Some(2), "--ids conflicts with -p");
}

/// A prompt's ids given to `--ids` generate what the text does (greedy); with `--logits-out`
/// and `-b` the completion is the same, the file has a row per prompt token, and the first
/// completion token is the last row's top logit.
#[test]
fn ids_generate_as_the_text_does() {
    let f = fixture("tiny-gemma4-moe");
    let json = |out: Output| -> serde_json::Value {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let text = json(run(&f.gguf, &["-p", "Hello world, how are you", "-n", "8", "--temp", "0", "--json", "-q"]));
    let prompt: Vec<u32> = text["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(prompt[0], 2, "BOS first");
    let completion = &text["completion_ids"];
    assert_eq!(completion.as_array().unwrap().len(), 8);

    let ids = json(run(&f.gguf, &["--ids", &join(&prompt, ", "), "-n", "8", "--temp", "0", "--json", "-q"]));
    assert_eq!(ids["prompt_ids"], text["prompt_ids"], "no BOS added");
    assert_eq!(ids["completion_ids"], *completion);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logits.f32");
    let args = ["--ids", &join(&prompt, " "), "-n", "8", "--temp", "0", "--json", "-q", "-b", "3", "--logits-out"];
    let scored = json(run(&f.gguf, &[&args[..], &[path.to_str().unwrap()]].concat()));
    assert_eq!(scored["completion_ids"], *completion);
    let logits = read_f32(&path);
    assert_eq!(logits.len(), prompt.len() * f.n_vocab);
    assert_eq!(argmax(&logits[logits.len() - f.n_vocab..]) as u64, completion[0].as_u64().unwrap());
}
