//! The Gemma 4 tokenizer against llama.cpp's own test vectors (`models/ggml-vocab-gemma-4.gguf`
//! with its `.inp` strings and `.out` ids, from llama.cpp's `tests/test-tokenizer-0`), and a
//! speed check on a long input.
//!
//! `.inp` holds the strings separated by lines `__ggml_vocab_test__`; `.out` holds one line of
//! space-separated ids per string, made with add_special = false, parse_special = false.

use std::path::PathBuf;
use std::time::Instant;

use gemma::tokenizer::Tokenizer;
use ggml::gguf::GgufFile;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

fn model_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

fn load(name: &str) -> Tokenizer {
    let file = GgufFile::open(model_path(name)).unwrap();
    Tokenizer::from_gguf(&file.header).unwrap()
}

#[test]
fn gemma4_matches_llama_cpp_test_vectors() {
    let tok = load("ggml-vocab-gemma-4.gguf");
    let inp = std::fs::read_to_string(model_path("ggml-vocab-gemma-4.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(model_path("ggml-vocab-gemma-4.gguf.out")).unwrap();
    let strings: Vec<&str> = inp.split(SEPARATOR).collect();
    let expected: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|id| id.parse().unwrap()).collect()).collect();
    assert_eq!(strings.len(), expected.len(), ".inp and .out disagree on the number of cases");

    let mut failures = Vec::new();
    for (text, want) in strings.iter().zip(&expected) {
        let got = tok.encode(text, false, false);
        if &got != want {
            failures.push(format!("{text:?}\n   want {want:?}\n    got {got:?}"));
        }
    }
    println!("gemma-4 vocab test vectors: {}/{} match", strings.len() - failures.len(), strings.len());
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn gemma4_special_ids() {
    let tok = load("ggml-vocab-gemma-4.gguf");
    assert_eq!(tok.n_tokens(), 262_144);
    assert_eq!((tok.bos(), tok.eos(), tok.unk()), (Some(2), Some(1), Some(3)));
    assert_eq!(tok.eog(), &[1, 50, 106], "<eos>, <|tool_response>, <turn|>");
    assert!(!tok.is_eog(212), "</s> is an ordinary token in Gemma 4");
    assert_eq!(tok.encode("Hi", true, false)[0], 2);
    assert_eq!(tok.encode("<|turn>user\nHi<turn|>", false, true), {
        let mut v = vec![105];
        v.extend(tok.encode("user\nHi", false, false));
        v.push(106);
        v
    });
    assert_eq!(tok.decode(106, false), b"");
    assert_eq!(tok.decode(106, true), b"<turn|>");
    assert_eq!(tok.decode(100, false), b"<|channel>", "user-defined markers are visible");
}

#[test]
fn gemma3_special_ids() {
    let tok = load("gemma-3-270m-q4_k_m.gguf");
    let eot = tok.vocab.id("<end_of_turn>").unwrap();
    assert_eq!(tok.eot(), Some(eot));
    // As in llama.cpp: `</s>` (212) also ends generation here, since only a vocabulary with
    // `<|tool_response>` (Gemma 4) marks it as an ordinary token.
    assert_eq!(tok.eog(), &[1, 106, 212], "<eos>, <end_of_turn>, </s>");
    assert_eq!(tok.encode("Hi", true, false)[0], tok.bos().unwrap());
}

#[test]
fn long_input_is_fast() {
    let start = Instant::now();
    let file = GgufFile::open(model_path("ggml-vocab-gemma-4.gguf")).unwrap();
    let parsed = start.elapsed().as_secs_f64();
    let tok = Tokenizer::from_gguf(&file.header).unwrap();
    let built = start.elapsed().as_secs_f64() - parsed;
    println!("GGUF parse {:.0} ms, tokenizer build {:.0} ms", parsed * 1e3, built * 1e3);
    let paragraph = "The quick brown fox jumps over the lazy dog. Ünïcödé façade, 東京の天気は晴れです。 \
                     fn main() { println!(\"{}\", 42); }\n\n";
    let text: String = paragraph.repeat(100_000 / paragraph.len() + 1);
    // One long newline-free line too: the case that once made llama.cpp's regex split crash.
    let line: String = text.replace('\n', " ");
    for (name, input) in [("paragraphs", &text), ("one line", &line)] {
        let start = Instant::now();
        let ids = tok.encode(input, true, false);
        let secs = start.elapsed().as_secs_f64();
        println!("{name}: {} bytes -> {} tokens in {:.1} ms", input.len(), ids.len(), secs * 1e3);
        // Generous: debug-profile test builds are several times slower than release.
        assert!(secs < 5.0, "{name}: {secs:.2} s for {} bytes", input.len());
        let decoded = tok.decode_all(&ids, false);
        assert_eq!(&decoded, input, "{name}: round trip");
    }
}
