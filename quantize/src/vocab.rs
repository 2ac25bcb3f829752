//! The tokenizer of a Hugging Face checkpoint as llama.cpp's converter writes it into a GGUF.
//!
//! Gemma 4 (`tokenizer.ggml.model = "gemma4"`) is the converter's `LlamaHfVocab` path: the
//! tokens of `tokenizer.json`'s BPE model in id order, then the added tokens past its end;
//! every score -1000; types BYTE for `<0xXX>`, CONTROL for the tokenizer's special tokens
//! (transformers' `all_special_ids`: the named `*_token` entries of `tokenizer_config.json` and
//! its `extra_special_tokens`), USER_DEFINED for added tokens that are not special, NORMAL for
//! the rest; and, for Gemma 4, seven tool/channel markers forced to USER_DEFINED so that
//! llama.cpp prints them. gguf-py's `SpecialVocab` adds the merges, the special token ids, the
//! add-BOS/EOS flags and the chat template.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ggml::gguf::Array;
use serde::Deserialize;
use serde_json::Value;

use crate::checkpoint::{read_json, CheckpointError, Config};
use crate::meta::Metadata;

pub const NORMAL: i32 = 1;
pub const CONTROL: i32 = 3;
pub const USER_DEFINED: i32 = 4;
pub const BYTE: i32 = 6;

/// Tokens Gemma 4's converter always marks USER_DEFINED (rendered as text for the chat parser).
const GEMMA4_VISIBLE: [&str; 7] =
    ["<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", "<|\"|>"];

/// The named special tokens of transformers' tokenizers, in the order gguf-py's `SpecialVocab`
/// visits them, with the GGUF key of their id where llama.cpp has one.
const SPECIAL_TYPES: [(&str, Option<&str>); 7] = [
    ("bos", Some("tokenizer.ggml.bos_token_id")),
    ("eos", Some("tokenizer.ggml.eos_token_id")),
    ("unk", Some("tokenizer.ggml.unknown_token_id")),
    ("sep", Some("tokenizer.ggml.seperator_token_id")),
    ("pad", Some("tokenizer.ggml.padding_token_id")),
    ("cls", None),
    ("mask", Some("tokenizer.ggml.mask_token_id")),
];

#[derive(Default, Deserialize)]
struct TokenizerJson {
    model: Value,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
    #[serde(default)]
    decoder: Value,
    #[serde(default)]
    post_processor: Value,
    #[serde(default)]
    normalizer: Value,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u64,
    content: String,
}

/// What a tokenizer contributes to the GGUF.
#[derive(Debug)]
pub struct Vocab {
    pub model: &'static str,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    pub merges: Vec<String>,
    /// `(gguf key, id)` in the order the converter writes them.
    pub special_ids: Vec<(&'static str, u32)>,
    /// `(gguf key, flag)`: add-BOS/EOS/SEP as the tokenizer files say.
    pub add_special: Vec<(&'static str, bool)>,
    pub chat_template: Option<ChatTemplate>,
    pub normalizer_lowercase: Option<bool>,
    pub normalizer_strip_accents: Option<bool>,
    /// Rows of the token embedding the Gemma 3/4 converter keeps: the BPE vocabulary's size plus
    /// the number of `added_tokens` entries (counting those inside the vocabulary too, as the
    /// converter does).
    pub embedding_rows: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChatTemplate {
    One(String),
    /// `(name, template)`: `default` and the named alternatives.
    Named(Vec<(String, String)>),
}

fn err(path: &Path, what: impl Into<String>) -> CheckpointError {
    CheckpointError::Config { path: path.to_path_buf(), what: what.into() }
}

/// A token given in `tokenizer_config.json` as a string or as an `AddedToken` object.
fn token_text(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))
}

impl Vocab {
    /// Gemma 4's tokenizer from `dir` (`tokenizer.json`, `tokenizer_config.json`, chat template
    /// files) and `config` (special token ids).
    pub fn gemma4(dir: &Path, config: &Config) -> Result<Vocab, CheckpointError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(err(dir, "no tokenizer.json (Gemma 4's tokenizer is converted from it)"));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| CheckpointError::Io { path: path.clone(), err: e })?;
        let tj: TokenizerJson =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Json { path: path.clone(), err: e })?;
        drop(text);
        let model = &tj.model;
        let is_bpe = model.get("type").and_then(|t| t.as_str()) == Some("BPE")
            && model.get("byte_fallback").and_then(|b| b.as_bool()) == Some(true)
            && tj.decoder.get("type").and_then(|t| t.as_str()) == Some("Sequence");
        if !is_bpe {
            return Err(err(&path, "not a BPE tokenizer with byte fallback and a Sequence decoder, as Gemma 4's is"));
        }
        let vocab =
            model.get("vocab").and_then(|v| v.as_object()).ok_or_else(|| err(&path, "model.vocab is not an object"))?;
        let base = vocab.len() as u64;

        // id -> text: the model's vocabulary, with added tokens over it (transformers' get_vocab()).
        let mut by_id: HashMap<u64, &str> = HashMap::with_capacity(vocab.len() + tj.added_tokens.len());
        let mut ids: HashMap<&str, u64> = HashMap::with_capacity(vocab.len() + tj.added_tokens.len());
        for (tok, id) in vocab {
            let id = id.as_u64().ok_or_else(|| err(&path, format!("model.vocab[{tok:?}] is not an id")))?;
            by_id.insert(id, tok);
            ids.insert(tok, id);
        }
        for a in &tj.added_tokens {
            by_id.insert(a.id, &a.content);
            ids.insert(&a.content, a.id);
        }

        let config_path = dir.join("tokenizer_config.json");
        let tok_config = if config_path.is_file() { read_json(&config_path)? } else { Value::Null };
        let tok_config = tok_config.as_object().cloned().unwrap_or_default();

        // transformers' all_special_tokens: the named special tokens (GemmaTokenizer's defaults
        // where tokenizer_config.json has none), every other `*_token` string entry, and the
        // extra (formerly additional) special tokens.
        let mut special_texts: Vec<String> = Vec::new();
        for (name, default) in
            [("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>"), ("mask", "<mask>")]
        {
            let key = format!("{name}_token");
            match tok_config.get(&key) {
                Some(Value::Null) => {}
                Some(v) => special_texts.extend(token_text(v).map(str::to_string)),
                None => special_texts.push(default.to_string()),
            }
        }
        for (key, v) in &tok_config {
            let named = ["bos_token", "eos_token", "unk_token", "pad_token", "mask_token"];
            if key.ends_with("_token") && !named.contains(&key.as_str()) {
                // sep/cls and model-specific names (sot_token, image_token, ...).
                special_texts.extend(token_text(v).map(str::to_string));
            }
        }
        let extra = tok_config.get("extra_special_tokens").or_else(|| tok_config.get("additional_special_tokens"));
        match extra {
            Some(Value::Array(list)) => special_texts.extend(list.iter().filter_map(token_text).map(str::to_string)),
            Some(Value::Object(named)) => {
                special_texts.extend(named.values().filter_map(token_text).map(str::to_string))
            }
            _ => {}
        }
        let special_ids: std::collections::HashSet<u64> =
            special_texts.iter().filter_map(|t| ids.get(t.as_str()).copied()).collect();

        let n_added_past = tj.added_tokens.iter().filter(|a| a.id >= base).count();
        let n = base as usize + n_added_past;
        let mut tokens = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for id in 0..base {
            let tok = *by_id.get(&id).ok_or_else(|| err(&path, format!("no token has id {id}")))?;
            tokens.push(tok.to_string());
            types.push(if is_byte_token(tok) {
                BYTE
            } else if special_ids.contains(&id) {
                CONTROL
            } else {
                NORMAL
            });
        }
        let mut past: Vec<&AddedToken> = tj.added_tokens.iter().filter(|a| a.id >= base).collect();
        past.sort_by_key(|a| a.id);
        for (i, a) in past.iter().enumerate() {
            if a.id != base + i as u64 {
                return Err(err(
                    &path,
                    format!("added token {:?} has id {}, expected {}", a.content, a.id, base + i as u64),
                ));
            }
            tokens.push(a.content.clone());
            types.push(if special_texts.contains(&a.content) { CONTROL } else { USER_DEFINED });
        }
        for (tok, ty) in tokens.iter().zip(types.iter_mut()) {
            if GEMMA4_VISIBLE.contains(&tok.as_str()) {
                *ty = USER_DEFINED;
            }
        }

        let mut v = Vocab {
            model: "gemma4",
            scores: vec![-1000.0; tokens.len()],
            tokens,
            types,
            merges: Vec::new(),
            special_ids: Vec::new(),
            add_special: Vec::new(),
            chat_template: None,
            normalizer_lowercase: None,
            normalizer_strip_accents: None,
            embedding_rows: base + tj.added_tokens.len() as u64,
        };
        v.merges = merges(&path, model)?;
        v.load_special(dir, &tj, &tok_config, config, None)?;
        Ok(v)
    }

    /// Gemma 3's tokenizer, from the SentencePiece `tokenizer.model` (the converter's
    /// `_set_vocab_sentencepiece`): `vocab_size` entries (the config's), the pieces' scores,
    /// types from the piece types (a USER_DEFINED piece counts as NORMAL), `added_tokens.json`
    /// and `tokenizer_config.json`'s `added_tokens_decoder` over them, `[PADn]` fillers past the
    /// model's pieces.
    pub fn sentencepiece(dir: &Path, config: &Config, vocab_size: Option<u64>) -> Result<Vocab, CheckpointError> {
        use crate::spm;
        let path = dir.join("tokenizer.model");
        if !path.is_file() {
            return Err(err(dir, "no tokenizer.model (Gemma 3's tokenizer is converted from it)"));
        }
        let pieces = spm::read(&path).map_err(|e| err(&path, e))?;
        let n = vocab_size.unwrap_or(pieces.len() as u64) as usize;
        let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
        let mut scores = vec![-10000.0f32; n];
        let mut types = vec![spm::UNUSED; n];
        for (id, p) in pieces.iter().enumerate().take(n) {
            tokens[id] = p.piece.clone();
            scores[id] = p.score;
            types[id] = match p.kind {
                spm::UNKNOWN | spm::CONTROL | spm::UNUSED | spm::BYTE => p.kind,
                _ => NORMAL,
            };
        }
        let added_path = dir.join("added_tokens.json");
        if added_path.is_file() {
            if let Value::Object(added) = read_json(&added_path)? {
                for (text, id) in added {
                    match id.as_u64() {
                        Some(id) if (id as usize) < n => {
                            tokens[id as usize] = text;
                            scores[id as usize] = -1000.0;
                            types[id as usize] = USER_DEFINED;
                        }
                        _ => {}
                    }
                }
            }
        }
        let config_path = dir.join("tokenizer_config.json");
        let tok_config = if config_path.is_file() { read_json(&config_path)? } else { Value::Null };
        let tok_config = tok_config.as_object().cloned().unwrap_or_default();
        if let Some(Value::Object(decoder)) = tok_config.get("added_tokens_decoder") {
            for (id, data) in decoder {
                let (Ok(id), Some(content)) = (id.parse::<usize>(), data.get("content").and_then(|c| c.as_str()))
                else {
                    continue;
                };
                if id >= n {
                    continue;
                }
                let special = data.get("special").and_then(|s| s.as_bool()).unwrap_or(false);
                if special || looks_special(content) {
                    types[id] = CONTROL;
                    tokens[id] = content.to_string();
                } else {
                    types[id] = USER_DEFINED;
                    tokens[id] = content.replace('\u{2581}', " ");
                }
                scores[id] = -1000.0;
            }
        }

        let tj_path = dir.join("tokenizer.json");
        let tj: TokenizerJson = if tj_path.is_file() {
            let text =
                std::fs::read_to_string(&tj_path).map_err(|e| CheckpointError::Io { path: tj_path.clone(), err: e })?;
            serde_json::from_str(&text).map_err(|e| CheckpointError::Json { path: tj_path.clone(), err: e })?
        } else {
            TokenizerJson::default()
        };
        let mut v = Vocab {
            model: "llama",
            embedding_rows: n as u64,
            tokens,
            scores,
            types,
            merges: Vec::new(),
            special_ids: Vec::new(),
            add_special: Vec::new(),
            chat_template: None,
            normalizer_lowercase: None,
            normalizer_strip_accents: None,
        };
        v.load_special(dir, &tj, &tok_config, config, Some(n as u64))?;
        Ok(v)
    }

    /// gguf-py's `SpecialVocab`: add-token flags from the post-processor and the tokenizer
    /// config, special ids from the config's token texts (matched against `added_tokens`) and
    /// then `config.json`'s `*_token_id`, and the chat template.
    fn load_special(
        &mut self,
        dir: &Path,
        tj: &TokenizerJson,
        tok_config: &serde_json::Map<String, Value>,
        config: &Config,
        n_vocab: Option<u64>,
    ) -> Result<(), CheckpointError> {
        if let Some(n) = tj.normalizer.as_object() {
            self.parse_normalizer(&Value::Object(n.clone()));
        }
        let text_of = |typ: &str| tok_config.get(&format!("{typ}_token")).and_then(token_text).map(str::to_string);
        let (bos, eos, cls) = (text_of("bos"), text_of("eos"), text_of("cls"));
        let mut add: Vec<(&str, bool)> = Vec::new();
        let set_add = |add: &mut Vec<(&str, bool)>, typ: &'static str, v: bool, overwrite: bool| match add
            .iter_mut()
            .find(|(t, _)| *t == typ)
        {
            Some((_, old)) if overwrite => *old = v,
            Some(_) => {}
            None => add.push((typ, v)),
        };
        if !tj.post_processor.is_null() {
            let list = match tj.post_processor.get("processors").and_then(|p| p.as_array()) {
                Some(list) => list.clone(),
                None => vec![tj.post_processor.clone()],
            };
            for p in &list {
                match p.get("type").and_then(|t| t.as_str()) {
                    Some("ByteLevel") => {
                        set_add(&mut add, "bos", false, false);
                        set_add(&mut add, "eos", false, false);
                    }
                    Some("RobertaProcessing") => {
                        for typ in ["bos", "eos", "sep"] {
                            set_add(&mut add, typ, true, true);
                        }
                    }
                    Some("TemplateProcessing") => {
                        let special_id = |e: &Value| {
                            e.get("SpecialToken").and_then(|s| s.get("id")).and_then(|i| i.as_str()).map(str::to_string)
                        };
                        let seq_id = |e: &Value| {
                            e.get("Sequence").and_then(|s| s.get("id")).and_then(|i| i.as_str()).map(str::to_string)
                        };
                        let single = p.get("single").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                        let pair = p.get("pair").and_then(|s| s.as_array()).cloned().unwrap_or_default();
                        let (mut first, mut last) = (None, None);
                        if single.len() > 1 {
                            first = single.first().and_then(special_id);
                            last = single.last().and_then(special_id);
                            if let Some(f) = &first {
                                // A leading special token becomes the BOS (or CLS) one unless the
                                // config names both as other tokens; a trailing one the EOS.
                                let named_other = bos.is_some()
                                    && cls.is_some()
                                    && bos.as_ref() != Some(f)
                                    && cls.as_ref() != Some(f);
                                set_add(&mut add, "bos", !named_other, true);
                            }
                            if last.is_some() {
                                set_add(&mut add, "eos", true, true);
                            }
                        }
                        if !pair.is_empty() {
                            let start = usize::from(first.is_some() && pair.first().and_then(special_id) == first);
                            let stop = if last.is_some() && pair.last().and_then(special_id) == last {
                                pair.len() - 1
                            } else {
                                pair.len()
                            };
                            let inner = if start < stop { &pair[start..stop] } else { &[][..] };
                            let ends_ab = inner.len() > 2
                                && inner.first().and_then(seq_id).as_deref() == Some("A")
                                && inner.last().and_then(seq_id).as_deref() == Some("B");
                            if ends_ab {
                                let middle = &inner[1..inner.len() - 1];
                                let sep = text_of("sep");
                                let is_sep = |id: &Option<String>| id.is_some() && (*id == sep || *id == eos);
                                let mut add_sep = is_sep(&middle.first().and_then(special_id)) && last.is_none();
                                if middle.len() == 2 && is_sep(&special_id(&middle[1])) {
                                    add_sep = true;
                                }
                                set_add(&mut add, "sep", add_sep, true);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if tok_config.is_empty() {
            self.finish_special(add, Vec::new(), config, n_vocab);
            return Ok(());
        }

        self.chat_template = match tok_config.get("chat_template") {
            Some(Value::String(s)) => Some(ChatTemplate::One(s.clone())),
            Some(Value::Array(list)) => Some(named_templates(list)),
            Some(Value::Null) | None => chat_template_files(dir)?,
            Some(_) => None,
        };

        let mut ids: Vec<(&'static str, u32)> = Vec::new();
        for (typ, _) in SPECIAL_TYPES {
            if let Some(flag) = tok_config.get(&format!("add_{typ}_token")).and_then(|v| v.as_bool()) {
                set_add(&mut add, typ, flag, false);
            }
            let Some(text) = text_of(typ) else { continue };
            if let Some(a) = tj.added_tokens.iter().find(|a| a.content == text) {
                set_id(&mut ids, typ, a.id, n_vocab);
            }
        }
        self.finish_special(add, ids, config, n_vocab);
        Ok(())
    }

    fn finish_special(
        &mut self,
        add: Vec<(&str, bool)>,
        mut ids: Vec<(&'static str, u32)>,
        config: &Config,
        n_vocab: Option<u64>,
    ) {
        for (typ, _) in SPECIAL_TYPES {
            let key = format!("{typ}_token_id");
            let id = config
                .raw
                .get(&key)
                .filter(|v| !v.is_null())
                .or_else(|| config.raw.get("text_config").and_then(|t| t.get(&key)).filter(|v| !v.is_null()));
            if let Some(id) = id.and_then(|v| v.as_u64()) {
                set_id(&mut ids, typ, id, n_vocab);
            }
        }
        self.special_ids = ids
            .into_iter()
            .filter_map(|(typ, id)| {
                SPECIAL_TYPES.iter().find(|(t, _)| *t == typ).and_then(|(_, key)| key.map(|k| (k, id)))
            })
            .collect();
        self.add_special = add
            .into_iter()
            .filter_map(|(typ, v)| match typ {
                "bos" => Some(("tokenizer.ggml.add_bos_token", v)),
                "eos" => Some(("tokenizer.ggml.add_eos_token", v)),
                "sep" => Some(("tokenizer.ggml.add_sep_token", v)),
                _ => None,
            })
            .collect();
    }

    fn parse_normalizer(&mut self, n: &Value) {
        match n.get("type").and_then(|t| t.as_str()) {
            Some("Lowercase") => self.normalizer_lowercase = Some(true),
            Some("StripAccents") => self.normalizer_strip_accents = Some(true),
            Some("BertNormalizer") => {
                if let Some(b) = n.get("lowercase").and_then(|v| v.as_bool()) {
                    self.normalizer_lowercase = Some(b);
                }
                if let Some(b) = n.get("strip_accents").and_then(|v| v.as_bool()) {
                    self.normalizer_strip_accents = Some(b);
                }
            }
            Some("Sequence") => {
                for m in n.get("normalizers").and_then(|l| l.as_array()).into_iter().flatten() {
                    self.parse_normalizer(m);
                }
            }
            _ => {}
        }
    }

    /// The tokenizer keys, in the converter's order (`add_space_prefix` and the forced
    /// `add_bos_token` are Gemma 4's `set_vocab`).
    pub fn write(&self, m: &mut Metadata) {
        m.string("tokenizer.ggml.model", self.model);
        m.array("tokenizer.ggml.tokens", Array::String(self.tokens.clone()));
        m.array("tokenizer.ggml.scores", Array::F32(self.scores.clone()));
        m.array("tokenizer.ggml.token_type", Array::I32(self.types.clone()));
        m.array("tokenizer.ggml.merges", Array::String(self.merges.clone()));
        for &(key, id) in &self.special_ids {
            m.u32(key, id as u64);
        }
        for &(key, v) in &self.add_special {
            m.bool(key, v);
        }
        match &self.chat_template {
            Some(ChatTemplate::One(t)) => m.string("tokenizer.chat_template", t.clone()),
            Some(ChatTemplate::Named(list)) => {
                let mut names = Vec::new();
                for (name, t) in list {
                    if name == "default" {
                        continue;
                    }
                    m.string(format!("tokenizer.chat_template.{name}"), t.clone());
                    names.push(name.clone());
                }
                m.array("tokenizer.chat_templates", Array::String(names));
                if let Some((_, t)) = list.iter().find(|(n, _)| n == "default") {
                    m.string("tokenizer.chat_template", t.clone());
                }
            }
            None => {}
        }
        if let Some(b) = self.normalizer_lowercase {
            m.bool("tokenizer.ggml.normalizer.lowercase", b);
        }
        if let Some(b) = self.normalizer_strip_accents {
            m.bool("tokenizer.ggml.normalizer.strip_accents", b);
        }
    }
}

/// gguf-py's `_set_special_token`: the first id found for a type wins; ids past the vocabulary
/// are left out.
fn set_id(ids: &mut Vec<(&'static str, u32)>, typ: &'static str, id: u64, n_vocab: Option<u64>) {
    if !ids.iter().any(|(t, _)| *t == typ) && id <= u32::MAX as u64 && n_vocab.is_none_or(|n| id < n) {
        ids.push((typ, id as u32));
    }
}

/// The converter's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

/// The merges as `"left right"` strings; the pair form of newer `tokenizer.json` files is
/// joined the same way, a space inside a part written as U+0120 (as gguf-py does).
fn merges(path: &Path, model: &Value) -> Result<Vec<String>, CheckpointError> {
    let Some(list) = model.get("merges").and_then(|m| m.as_array()) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        match m {
            Value::String(s) => out.push(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => out.push(format!("{a} {b}")),
                    _ => return Err(err(path, "a merge is not a pair of strings")),
                }
            }
            _ => return Err(err(path, "unknown merges format")),
        }
    }
    Ok(out)
}

fn named_templates(list: &[Value]) -> ChatTemplate {
    let mut out = Vec::new();
    for c in list {
        let name: String = c
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .chars()
            .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' })
            .collect();
        if let Some(t) = c.get("template").and_then(|t| t.as_str()) {
            if !name.is_empty() {
                out.push((name, t.to_string()));
            }
        }
    }
    ChatTemplate::Named(out)
}

/// `chat_template.jinja` (with `additional_chat_templates/*.jinja` as named alternatives) or
/// `chat_template.json`.
fn chat_template_files(dir: &Path) -> Result<Option<ChatTemplate>, CheckpointError> {
    let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(|err| CheckpointError::Io { path: p, err });
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let default = read(jinja)?;
        let extra_dir = dir.join("additional_chat_templates");
        let mut extra: Vec<PathBuf> = match std::fs::read_dir(&extra_dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
                .collect(),
            Err(_) => Vec::new(),
        };
        if extra.is_empty() {
            return Ok(Some(ChatTemplate::One(default)));
        }
        extra.sort();
        let mut list = vec![serde_json::json!({"name": "default", "template": default})];
        for p in extra {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            list.push(serde_json::json!({"name": name, "template": read(p)?}));
        }
        return Ok(Some(named_templates(&list)));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        return Ok(match read_json(&json)?.get("chat_template") {
            Some(Value::String(s)) => Some(ChatTemplate::One(s.clone())),
            Some(Value::Array(list)) => Some(named_templates(list)),
            _ => None,
        });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens() {
        assert!(is_byte_token("<0x0A>") && is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0x0G>") && !is_byte_token("<0x0A>>") && !is_byte_token("0x0A"));
    }
}
