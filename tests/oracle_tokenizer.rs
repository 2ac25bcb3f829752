//! Our tokenizers against llama.cpp's (through `llama-cpp-sys-2`, the vocabulary loaded alone):
//! token ids for a generated corpus with add_special and parse_special on and off, and
//! `token_to_piece` for every id, for the Gemma 4 vocabulary (`gemma4` BPE) and Gemma 3's
//! (`llama` SentencePiece).
//!
//! Run with `cargo test --features oracle --test oracle_tokenizer -- --nocapture`.
#![cfg(feature = "oracle")]

use std::ffi::{c_char, c_void, CString};
use std::path::PathBuf;
use std::sync::Once;

use gemma::tokenizer::Tokenizer;
use ggml::gguf::GgufFile;
use llama_cpp_sys_2 as sys;

fn model_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

unsafe extern "C" fn quiet(_level: sys::ggml_log_level, _text: *const c_char, _user: *mut c_void) {}

/// A vocabulary loaded by llama.cpp (no weights).
struct LlamaVocab {
    model: *mut sys::llama_model,
    vocab: *const sys::llama_vocab,
}

impl LlamaVocab {
    fn load(name: &str) -> LlamaVocab {
        static INIT: Once = Once::new();
        INIT.call_once(|| {
            // SAFETY: process-wide initialisation with a callback that ignores its arguments.
            unsafe {
                sys::llama_log_set(Some(quiet), std::ptr::null_mut());
                sys::llama_backend_init();
            }
        });
        let path = CString::new(model_path(name).to_str().unwrap()).unwrap();
        // SAFETY: default params are plain data; the path is a valid C string for the call.
        let model = unsafe {
            let mut params = sys::llama_model_default_params();
            params.vocab_only = true;
            sys::llama_model_load_from_file(path.as_ptr(), params)
        };
        assert!(!model.is_null(), "llama.cpp could not load {name}");
        // SAFETY: `model` is a loaded model; its vocab lives as long as it does.
        let vocab = unsafe { sys::llama_model_get_vocab(model) };
        LlamaVocab { model, vocab }
    }

    fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut buf = vec![0i32; text.len() + 8];
        loop {
            // SAFETY: text and buf are valid for the lengths passed.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab,
                    text.as_ptr().cast(),
                    text.len() as i32,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                return buf[..n as usize].iter().map(|&t| t as u32).collect();
            }
            buf.resize((-n) as usize, 0);
        }
    }

    fn piece(&self, id: u32, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                sys::llama_token_to_piece(self.vocab, id as i32, buf.as_mut_ptr().cast(), buf.len() as i32, 0, special)
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    fn is_eog(&self, id: u32) -> bool {
        // SAFETY: a loaded vocab and an id within it.
        unsafe { sys::llama_vocab_is_eog(self.vocab, id as i32) }
    }

    fn attr(&self, id: u32) -> u32 {
        // SAFETY: a loaded vocab and an id within it.
        unsafe { sys::llama_vocab_get_attr(self.vocab, id as i32) as u32 }
    }

    fn n_tokens(&self) -> usize {
        // SAFETY: a loaded vocab.
        unsafe { sys::llama_vocab_n_tokens(self.vocab) as usize }
    }
}

impl Drop for LlamaVocab {
    fn drop(&mut self) {
        // SAFETY: the model was loaded by llama_model_load_from_file and is freed once.
        unsafe { sys::llama_model_free(self.model) };
    }
}

/// xorshift64*: a fixed corpus without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const PIECES: &[&str] = &[
    "Hello world",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "I've been 'told' he's there, 'RE you sure?",
    "Äpfel",
    "! Café",
    "façade naïve résumé",
    "e\u{301}",
    "Straße",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "東京の天気は晴れです。",
    "我爱北京天安门",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "ሰላም",
    "🦙",
    "🚀🔥👍🏽",
    "👨‍👩‍👧‍👦",
    "🇩🇪🇯🇵",
    "\u{200b}\u{200d}",
    "\u{a0}",
    "\u{3000}",
    "▁",
    "▁▁ ▁",
    "fn main() {\n    println!(\"{}\", x + 1);\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] * 2; }",
    "<div class=\"x\">&amp;</div>",
    "SELECT * FROM t WHERE id = 42;",
    "{\"key\": [1, 2.5, null, true]}",
    "https://example.com/path?q=1&r=2#frag",
    "1234567890",
    "3.14159265358979",
    "1,000,000.00",
    "...!!!???",
    "--==++**",
    "supercalifragilisticexpialidocious",
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "ababababababababababababababababab",
    " ",
    "  ",
    "     ",
    "\t",
    "\t\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\n\n\n\n\n\n\n\n\n\n\n\n",
    "\r\n",
    " \n ",
    "\n \n\t\n",
    "<|turn>",
    "<turn|>",
    "<|turn>user\n",
    "<|turn>model\n",
    "<|channel>",
    "<channel|>",
    "<|channel>thought\n<channel|>",
    "<|tool_call>",
    "<tool_call|>",
    "<|tool_response>",
    "<|\"|>",
    "<|think|>",
    "<|image|>",
    "<|image>",
    "<bos>",
    "<eos>",
    "<pad>",
    "<unk>",
    "<mask>",
    "</s>",
    "<s>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_turn>user\n",
    "<start_of_image>",
    "<unused0>",
    "<unused42>",
    "<0x41>",
    "<|",
    "|>",
    "<<>>",
    "[multimodal]",
];

const SEPARATORS: &[&str] = &["", "", " ", "  ", "\n", "\n\n", "\t", " \n"];

fn corpus() -> Vec<String> {
    let mut texts: Vec<String> = PIECES.iter().map(|s| s.to_string()).collect();
    let inp = std::fs::read_to_string(model_path("ggml-vocab-gemma-4.gguf.inp")).unwrap();
    texts.extend(inp.split("\n__ggml_vocab_test__\n").map(str::to_string));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    while texts.len() < 1200 {
        let mut s = String::new();
        for _ in 0..1 + rng.below(8) {
            s.push_str(rng.pick(SEPARATORS));
            s.push_str(rng.pick(PIECES));
        }
        if rng.below(4) == 0 {
            s.push_str(rng.pick(SEPARATORS));
        }
        texts.push(s);
    }
    // A few long inputs.
    let long: String = PIECES.concat();
    texts.push(long.repeat(4));
    texts.push(long.replace('\n', " ").repeat(4));
    texts.push("x".repeat(5000));
    texts.push("\n".repeat(300));
    texts
}

fn compare(gguf: &str) {
    let ours = Tokenizer::from_gguf(&GgufFile::open(model_path(gguf)).unwrap().header).unwrap();
    let theirs = LlamaVocab::load(gguf);
    assert_eq!(ours.n_tokens(), theirs.n_tokens());

    let n = ours.n_tokens() as u32;
    let eog: Vec<u32> = (0..n).filter(|&id| theirs.is_eog(id)).collect();
    assert_eq!(ours.eog(), eog.as_slice(), "{gguf}: end-of-generation ids");
    let attr_mismatches: Vec<u32> = (0..n).filter(|&id| u32::from(ours.attr(id)) != theirs.attr(id)).collect();
    println!("{gguf}: EOG {eog:?}; token attributes {}/{n} match", n as usize - attr_mismatches.len());
    assert!(attr_mismatches.is_empty(), "{gguf}: attributes differ for ids {attr_mismatches:?}");

    let texts = corpus();
    let mut cases = 0;
    let mut failures = Vec::new();
    let mut special_differs = 0;
    for (i, text) in texts.iter().enumerate() {
        let add_special = i % 2 == 0;
        if theirs.tokenize(text, add_special, false) != theirs.tokenize(text, add_special, true) {
            special_differs += 1;
        }
        for parse_special in [false, true] {
            cases += 1;
            let want = theirs.tokenize(text, add_special, parse_special);
            let got = ours.encode(text, add_special, parse_special);
            if got != want {
                failures.push(format!(
                    "{text:?} (add_special {add_special}, parse_special {parse_special})\n   llama.cpp {want:?}\n   ours      {got:?}"
                ));
            }
        }
    }
    println!(
        "{gguf}: encode {}/{} cases match ({} strings, {special_differs} of them tokenized differently with parse_special)",
        cases - failures.len(),
        cases,
        texts.len()
    );
    assert!(special_differs > 100, "the corpus should exercise special-token parsing");

    let mut piece_failures = Vec::new();
    for id in 0..n {
        for special in [false, true] {
            let want = theirs.piece(id, special);
            let got = ours.decode(id, special);
            if got != want.as_slice() {
                piece_failures.push(format!(
                    "id {id} special {special}: llama.cpp {:?}, ours {:?}",
                    String::from_utf8_lossy(&want),
                    String::from_utf8_lossy(got)
                ));
            }
        }
    }
    println!("{gguf}: token_to_piece {}/{} match", 2 * n as usize - piece_failures.len(), 2 * n);

    let show = |v: &[String]| v.iter().take(10).cloned().collect::<Vec<_>>().join("\n");
    assert!(failures.is_empty(), "{gguf}: {} encode mismatches, first ones:\n{}", failures.len(), show(&failures));
    assert!(
        piece_failures.is_empty(),
        "{gguf}: {} token_to_piece mismatches, first ones:\n{}",
        piece_failures.len(),
        show(&piece_failures)
    );
}

#[test]
fn gemma4_vocab_matches_llama_cpp() {
    compare("ggml-vocab-gemma-4.gguf");
}

#[test]
fn gemma3_vocab_matches_llama_cpp() {
    compare("gemma-3-270m-q4_k_m.gguf");
}
