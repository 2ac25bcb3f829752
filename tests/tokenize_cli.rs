//! `gemma tokenize` end to end, on llama.cpp's own test vectors for the Gemma 4 vocabulary
//! (`.out` was made with add_special = false, parse_special = false: `--no-bos --no-special`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

fn tokenize(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .arg("tokenize")
        .arg("-m")
        .arg(model("ggml-vocab-gemma-4.gguf"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn prints_llama_cpp_ids_for_its_test_strings() {
    let inp = std::fs::read_to_string(model("ggml-vocab-gemma-4.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(model("ggml-vocab-gemma-4.gguf.out")).unwrap();
    let cases: Vec<(&str, &str)> = inp.split("\n__ggml_vocab_test__\n").zip(out.lines()).collect();
    assert!(cases.len() >= 40);
    // Every eighth string through the binary, text from stdin (some strings are empty or
    // start with '-', which would not survive as an argument).
    for (text, want) in cases.iter().step_by(8) {
        let got = tokenize(&["--no-bos", "--no-special"], text);
        assert_eq!(got.trim(), want.trim(), "text {text:?}");
    }
}

#[test]
fn bos_special_tokens_and_json() {
    assert_eq!(tokenize(&[], "<|turn>user").trim().split(' ').take(2).collect::<Vec<_>>(), ["2", "105"]);
    let json: serde_json::Value = serde_json::from_str(&tokenize(&["--json", "--no-special"], "<|turn>")).unwrap();
    assert_eq!(json["ids"][0], 2);
    assert_eq!(json["pieces"][0], "<bos>");
    assert!(json["ids"].as_array().unwrap().len() > 2, "plain text '<|turn>' splits into pieces");
}
