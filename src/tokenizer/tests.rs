//! Hand-derived cases on toy vocabularies written as real GGUF files.

use std::collections::HashMap;

use ggml::gguf::{Array, GgufFile, GgufWriter, Value};

use super::fxhash::FxBuildHasher;
use super::*;

/// A vocabulary of NORMAL tokens (BYTE for `<0xXX>` texts), scores 0.
pub(crate) fn toy_vocab(texts: &[&str]) -> Vocab {
    toy_vocab_scored(&texts.iter().map(|&t| (t, 0.0)).collect::<Vec<_>>())
}

pub(crate) fn toy_vocab_scored(entries: &[(&str, f32)]) -> Vocab {
    let texts: Vec<String> = entries.iter().map(|(t, _)| t.to_string()).collect();
    let is_byte = |t: &str| t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
    let attrs = texts.iter().map(|t| if is_byte(t) { attr::BYTE } else { attr::NORMAL }).collect();
    let mut by_text = HashMap::with_hasher(FxBuildHasher::default());
    for (i, t) in texts.iter().enumerate() {
        by_text.insert(t.clone(), i as u32);
    }
    let mut byte_tokens = [None; 256];
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        *slot = by_text.get(format!("<0x{b:02X}>").as_str()).copied();
    }
    Vocab { texts, scores: entries.iter().map(|e| e.1).collect(), attrs, by_text, byte_tokens }
}

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER: i32 = 4;
const BYTE: i32 = 6;

/// Write a toy tokenizer GGUF and load it.
fn load(model: &str, tokens: &[(&str, i32)], merges: &[&str], extra: Vec<(&str, Value)>) -> Tokenizer {
    try_load(model, tokens, merges, extra).expect("toy tokenizer loads")
}

fn try_load(
    model: &str,
    tokens: &[(&str, i32)],
    merges: &[&str],
    extra: Vec<(&str, Value)>,
) -> Result<Tokenizer, TokenizerError> {
    let strings = |v: &[&str]| Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()));
    let mut metadata: Vec<(String, Value)> = vec![
        (keys::MODEL.into(), Value::String(model.into())),
        (keys::TOKENS.into(), strings(&tokens.iter().map(|t| t.0).collect::<Vec<_>>())),
        (keys::TOKEN_TYPE.into(), Value::Array(Array::I32(tokens.iter().map(|t| t.1).collect()))),
        (keys::SCORES.into(), Value::Array(Array::F32(vec![0.0; tokens.len()]))),
    ];
    if model == "gemma4" {
        metadata.push((keys::MERGES.into(), strings(merges)));
    }
    for (k, v) in extra {
        metadata.retain(|(key, _)| key != k);
        metadata.push((k.into(), v));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("toy.gguf");
    GgufWriter::create(&path, 3, &metadata, &[]).unwrap().finish().unwrap();
    Tokenizer::from_gguf(&GgufFile::open(&path).unwrap().header)
}

/// A Gemma-4-shaped toy: ids 0..=3 special, some user-defined markers, byte tokens, text.
fn toy_gemma4() -> Tokenizer {
    let mut tokens = vec![
        ("<pad>", CONTROL),
        ("<eos>", CONTROL),
        ("<bos>", CONTROL),
        ("<unk>", 2),
        ("<|turn>", CONTROL),
        ("<turn|>", CONTROL),
        ("<|channel>", USER),
        ("<|tool_response>", USER),
        ("</s>", NORMAL),
        ("\n", NORMAL),
        ("\n\n", NORMAL),
        ("▁", NORMAL),
        ("h", NORMAL),
        ("i", NORMAL),
        ("hi", NORMAL),
        ("▁hi", NORMAL),
        ("<", NORMAL),
        ("|", NORMAL),
    ];
    let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
    tokens.extend(bytes.iter().map(|b| (b.as_str(), BYTE)));
    let extra = vec![(keys::BOS_ID, Value::U32(2)), (keys::EOS_ID, Value::U32(1)), (keys::ADD_BOS, Value::Bool(false))];
    load("gemma4", &tokens, &["h i", "▁ hi"], extra)
}

fn ids(t: &Tokenizer, texts: &[&str]) -> Vec<u32> {
    texts.iter().map(|s| t.vocab.id(s).unwrap_or_else(|| panic!("{s:?} in toy vocab"))).collect()
}

#[test]
fn gemma4_forces_bos_and_escapes_spaces() {
    let t = toy_gemma4();
    assert!(t.adds_bos(), "add_bos_token=false is overridden for gemma4");
    assert_eq!(t.encode("hi hi", true, false), ids(&t, &["<bos>", "hi", "▁hi"]));
    assert_eq!(t.encode("", true, false), ids(&t, &["<bos>"]));
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
}

#[test]
fn gemma4_newline_runs_and_byte_fallback() {
    let t = toy_gemma4();
    // "\n\n\n" is no token: it is merged from characters (no newline merges here: 3 x "\n").
    assert_eq!(t.encode("hi\n\nhi\n\n\n", false, false), ids(&t, &["hi", "\n\n", "hi", "\n", "\n", "\n"]));
    // "é" is not in the toy vocabulary.
    assert_eq!(t.encode("hé", false, false), ids(&t, &["h", "<0xC3>", "<0xA9>"]));
}

#[test]
fn special_tokens_split_only_when_asked_user_defined_always() {
    let t = toy_gemma4();
    let text = "hi<|turn>hi<|channel>";
    assert_eq!(t.encode(text, false, true), ids(&t, &["hi", "<|turn>", "hi", "<|channel>"]));
    // Without parse_special the control token is plain text (bytes for the letters the toy
    // vocabulary lacks); the user-defined one is still matched.
    let plain = t.encode(text, false, false);
    assert_eq!(plain[..3], ids(&t, &["hi", "<", "|"])[..]);
    assert!(!plain.contains(&t.vocab.id("<|turn>").unwrap()));
    assert_eq!(plain.last(), t.vocab.id("<|channel>").as_ref());
}

#[test]
fn longer_special_tokens_win_over_earlier_shorter_ones() {
    let tokens = [("a", NORMAL), ("ab", USER), ("bXc", USER), ("X", NORMAL), ("c", NORMAL)];
    let t = load("gemma4", &tokens, &[], vec![]);
    assert_eq!(t.special.partition("abXc", false), vec![Fragment::Text(0..1), Fragment::Token(2)]);
    assert_eq!(t.encode("abXcab", false, false), vec![0, 2, 1]);
}

#[test]
fn eog_set_and_attributes_by_text() {
    let t = toy_gemma4();
    assert_eq!(t.eog(), &ids(&t, &["<eos>", "<turn|>", "<|tool_response>"])[..]);
    // `</s>` is an ordinary token in a vocabulary with `<|tool_response>`.
    assert_eq!(t.attr(t.vocab.id("</s>").unwrap()), attr::NORMAL);
    assert_eq!(t.decode(t.vocab.id("</s>").unwrap(), false), b"</s>");
    // `<|tool_response>` is USER_DEFINED in the file and gains CONTROL as an end marker.
    let tr = t.vocab.id("<|tool_response>").unwrap();
    assert_eq!(t.attr(tr), attr::USER_DEFINED | attr::CONTROL);
    assert_eq!((t.bos(), t.eos()), (Some(2), Some(1)));
}

#[test]
fn gemma3_style_eog() {
    let tokens = [
        ("<pad>", CONTROL),
        ("<eos>", CONTROL),
        ("<bos>", CONTROL),
        ("<unk>", 2),
        ("<end_of_turn>", CONTROL),
        ("</s>", NORMAL),
    ];
    let extra = vec![(keys::EOS_ID, Value::U32(1)), (keys::BOS_ID, Value::U32(2)), (keys::UNK_ID, Value::U32(3))];
    let t = load("llama", &tokens, &[], extra);
    assert_eq!(t.eot(), Some(4));
    // No `<|tool_response>`: `</s>` stays an end marker, as in llama.cpp.
    assert_eq!(t.eog(), &[1, 4, 5]);
}

#[test]
fn decode_by_token_type() {
    let t = toy_gemma4();
    let id = |s: &str| t.vocab.id(s).unwrap();
    assert_eq!(t.decode(id("▁hi"), false), b" hi");
    assert_eq!(t.decode(id("<0x0A>"), false), b"\n");
    assert_eq!(t.decode(id("<0xE2>"), false), &[0xE2]);
    assert_eq!(t.decode(id("<|turn>"), false), b"");
    assert_eq!(t.decode(id("<|turn>"), true), b"<|turn>");
    assert_eq!(t.decode(id("<unk>"), false), b"");
    assert_eq!(t.decode(id("<|channel>"), false), b"<|channel>");
    assert_eq!(t.decode(u32::MAX, true), b"");
}

#[test]
fn detokenizer_holds_back_split_characters() {
    let t = toy_gemma4();
    let id = |s: &str| t.vocab.id(s).unwrap();
    let mut d = t.detokenizer(false);
    // "€" is E2 82 AC.
    assert_eq!(d.push(id("h")), "h");
    assert_eq!(d.push(id("<0xE2>")), "");
    assert_eq!(d.push(id("<0x82>")), "");
    assert_eq!(d.push(id("<0xAC>")), "€");
    assert_eq!(d.push(id("▁hi")), " hi");
    // "é" (C3 A9) split over two tokens.
    assert_eq!(d.push(id("<0xC3>")), "");
    assert_eq!(d.push(id("<0xA9>")), "é");
    // A byte that can never start a character is replaced, not held.
    assert_eq!(d.push(id("<0xFF>")), "\u{FFFD}");
    assert_eq!(d.push(id("<0xF0>")), "");
    assert_eq!(d.finish(), "\u{FFFD}");
    assert_eq!(d.finish(), "");
}

#[test]
fn detokenizer_emits_text_before_an_incomplete_character() {
    let t = toy_gemma4();
    let id = |s: &str| t.vocab.id(s).unwrap();
    let mut d = t.detokenizer(true);
    assert_eq!(d.push(id("<|turn>")), "<|turn>");
    assert_eq!(d.push(id("<0xE2>")), "");
    assert_eq!(d.push(id("<0x82>")), "");
    assert_eq!(d.push(id("<0xAC>")), "€");
}

#[test]
fn spm_space_prefix_and_special_tokens() {
    let tokens = [
        ("<unk>", 2),
        ("<bos>", CONTROL),
        ("<eos>", CONTROL),
        ("<start_of_turn>", CONTROL),
        ("▁", NORMAL),
        ("h", NORMAL),
        ("i", NORMAL),
        ("hi", NORMAL),
        ("▁hi", NORMAL),
    ];
    let with_prefix = load("llama", &tokens, &[], vec![(keys::BOS_ID, Value::U32(1))]);
    assert_eq!(with_prefix.encode("hi", true, false), vec![1, 8]);
    assert_eq!(with_prefix.encode("hi<start_of_turn>hi", false, true), vec![8, 3, 8]);
    let without = load("llama", &tokens, &[], vec![(keys::ADD_SPACE_PREFIX, Value::Bool(false))]);
    assert_eq!(without.encode("hi hi", true, false), vec![1, 7, 8]);
}

#[test]
fn errors_name_the_key() {
    let err = try_load("gemma4", &[("a", NORMAL)], &[], vec![(keys::MERGES, Value::U32(3))]).unwrap_err();
    assert!(err.to_string().contains(keys::MERGES), "{err}");
    let err = try_load("bert", &[("a", NORMAL)], &[], vec![]).unwrap_err();
    assert!(err.to_string().contains(keys::MODEL), "{err}");
    let err = try_load("llama", &[("a", NORMAL)], &[], vec![(keys::EOS_ID, Value::U32(9))]).unwrap_err();
    assert!(err.to_string().contains(keys::EOS_ID), "{err}");
    let err = try_load("llama", &[("a", NORMAL)], &[], vec![(keys::TOKEN_TYPE, Value::Array(Array::I32(vec![])))])
        .unwrap_err();
    assert!(err.to_string().contains(keys::TOKEN_TYPE), "{err}");
}
