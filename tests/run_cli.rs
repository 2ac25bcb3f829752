//! `gemma run` end to end on the real Gemma 3 270M: the completion alone on stdout, stats on
//! stderr, seeds reproduce, and bad input is a one-line error.

use std::path::PathBuf;
use std::process::{Command, Output};

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

fn run(model_name: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gemma")).arg("run").arg("-m").arg(model(model_name)).args(args).output().unwrap()
}

const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";
const PROMPT: &str = "The history of the printing press begins in the fifteenth century, when Johannes \
                      Gutenberg combined movable metal type with an oil-based ink and a wooden press, and \
                      within fifty years printers across Europe";

#[test]
fn greedy_completion_matches_llama_cpp_and_goes_alone_to_stdout() {
    let out = run(GEMMA3, &["-p", PROMPT, "-n", "10", "--temp", "0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // llama.cpp's greedy continuation of this prompt on the same file (tests/oracle_gemma3.rs
    // prints it): its first 10 tokens, which ours matches token for token.
    assert_eq!(String::from_utf8(out.stdout).unwrap(), " were producing copies of books, manuscripts, and other");
    assert!(stderr.contains("generated 10 tokens"), "{stderr}");
}

#[test]
fn the_same_seed_gives_the_same_sample() {
    let args = ["-p", "Once upon a time", "-n", "12", "--temp", "1.0", "-s", "42"];
    let (a, b) = (run(GEMMA3, &args), run(GEMMA3, &args));
    assert!(a.status.success() && b.status.success());
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn bad_input_is_a_one_line_error() {
    let cases: [(&str, &[&str], &str); 3] = [
        ("ggml-vocab-gemma-4.gguf", &["-p", "hi"], "cannot find tensor token_embd.weight"),
        (GEMMA3, &["-p", "hello there", "-c", "4", "-n", "8"], "but the context is 4"),
        (GEMMA3, &["-p", "hi", "--top-p", "1.5"], "top_p"),
    ];
    for (model_name, args, expected) in cases {
        let out = run(model_name, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `--json`: one object on stdout whose text is the greedy completion (the same llama.cpp
/// oracle as above) and whose ids decode to it; `--stop` ends at a stop string, unprinted.
#[test]
fn json_output_and_stop_strings() {
    let out = run(GEMMA3, &["-p", PROMPT, "-n", "10", "--temp", "0", "--json", "-q"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "-q leaves stderr empty");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["text"], " were producing copies of books, manuscripts, and other");
    assert_eq!(v["completion_ids"].as_array().unwrap().len(), 10);
    assert_eq!(v["stop_reason"], "length");
    assert_eq!(v["prompt_ids"][0], 2, "BOS first");
    assert!(v["timings"]["generation_tokens_per_s"].as_f64().unwrap() > 0.0);

    let out = run(GEMMA3, &["-p", PROMPT, "-n", "10", "--temp", "0", "--stop", "books,", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["text"], " were producing copies of ");
    assert_eq!(v["stop_reason"], "stop_string");
}

/// A Gemma 4 file runs end to end (the tiny random MoE model: the output is noise, but it is
/// the greedy choice of a forward pass checked against transformers and llama.cpp).
#[test]
fn gemma4_runs() {
    let out = run("tiny-gemma4-moe.gguf", &["-p", "Hello", "-n", "6", "--temp", "0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["completion_ids"].as_array().unwrap().len(), 6);
}

/// `--chat` wraps the prompt in the Gemma 3 turn format (the 270M file has no template, so the
/// built-in one) with a single BOS: the prompt ids are those of the hand-written turn text.
#[test]
fn chat_prompts_use_the_turn_format_with_one_bos() {
    let out = run(GEMMA3, &["-p", "Hi there", "--chat", "--system", "Be brief.", "-n", "1", "--temp", "0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let turn = "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n";
    let expected = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["tokenize", "--no-bos", "--json", "-m"])
        .arg(model(GEMMA3))
        .arg(turn)
        .output()
        .unwrap();
    let expected: serde_json::Value = serde_json::from_slice(&expected.stdout).unwrap();
    assert_eq!(v["prompt_ids"], expected["ids"]);
    assert_eq!(v["prompt_ids"][0], 2);
    assert_ne!(v["prompt_ids"][1], 2);
}

/// Quantized caches by llama.cpp's flags run end to end (their accuracy is the oracle tests'),
/// and an unknown type is a usage error naming the choices.
#[test]
fn cache_types_by_llama_cpp_flags() {
    for args in [&["-ctk", "q8_0", "-ctv", "q4_0"][..], &["--kv-type", "bf16"], &["--cache-type-k", "q4_0"]] {
        let out = run(GEMMA3, &[&["-p", PROMPT, "-n", "4", "--temp", "0"], args].concat());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
    let out = run(GEMMA3, &["-p", "hi", "-ctk", "q9_0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown KV cache type \"q9_0\": expected f32, f16, bf16, q8_0 or q4_0"), "{stderr}");
}
