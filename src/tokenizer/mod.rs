//! Tokenizers read from GGUF metadata, matching llama.cpp's `llama-vocab.cpp` token for token.
//!
//! Two schemes are supported:
//! - `gemma4` (Gemma 4): BPE by merge rank over raw UTF-8 with spaces escaped to `▁`
//!   ([`bpe`], GEMMA4.md 7.2);
//! - `llama` (Gemma 3 and other SentencePiece vocabularies): bigram merges by token score
//!   ([`spm`]).
//!
//! Both first cut special tokens out of the text ([`special`]), both fall back to `<0xXX>`
//! byte tokens, and both decode through the same per-token piece table.

pub mod bpe;
mod fxhash;
pub mod special;
pub mod spm;

use std::collections::HashMap;

use ggml::gguf::{Array, GgufHeader, MetadataError, Value};
use thiserror::Error;

use self::bpe::BpeMerges;
use self::fxhash::FxBuildHasher;
use self::special::{Fragment, SpecialTokens};

/// `▁` (U+2581), SentencePiece's stand-in for a space.
pub const SPACE_MARK: &str = "\u{2581}";

/// Token attributes as bit flags, with llama.cpp's values (`llama_token_attr`); a token may gain
/// flags when it is recognised by its text (an end-of-turn marker stored as NORMAL becomes CONTROL).
pub mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;

    /// The attribute for a GGUF `tokenizer.ggml.token_type` value.
    pub fn from_token_type(t: i64) -> u16 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// Metadata keys read here, each spelled once.
mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
}

/// What can be wrong with a GGUF's tokenizer metadata. Every variant names the key.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("metadata {key} is an array of {found}, expected an array of {expected}")]
    ArrayType { key: &'static str, expected: &'static str, found: String },
    #[error("metadata {key} has {len} entries for {n_tokens} tokens")]
    Length { key: &'static str, len: usize, n_tokens: usize },
    #[error("metadata {key} = {value} is not a boolean")]
    NotBool { key: &'static str, value: String },
    #[error("metadata {key} = {id} is outside the vocabulary of {n_tokens} tokens")]
    TokenId { key: &'static str, id: u64, n_tokens: usize },
    #[error("metadata {key} = {model:?}: unsupported tokenizer (expected \"gemma4\" or \"llama\")")]
    UnsupportedModel { key: &'static str, model: String },
    #[error("metadata {key}: the vocabulary is empty")]
    Empty { key: &'static str },
}

/// Which merge algorithm runs on raw text.
#[derive(Debug)]
enum Scheme {
    /// `gemma4`: merges by rank.
    Bpe(BpeMerges),
    /// `llama`: merges by score.
    Spm,
}

/// The vocabulary shared by both schemes.
#[derive(Debug)]
pub struct Vocab {
    /// Token texts by id (an empty text is renamed `[EMPTY_<id>]`, as llama.cpp does).
    pub texts: Vec<String>,
    /// SentencePiece scores (0 where the GGUF has none).
    pub scores: Vec<f32>,
    /// [`attr`] flags by id.
    pub attrs: Vec<u16>,
    /// Text to id; where texts repeat, the last id wins.
    by_text: HashMap<String, u32, FxBuildHasher>,
    /// The `<0xXX>` token of each byte, where the vocabulary has one.
    byte_tokens: [Option<u32>; 256],
}

impl Vocab {
    /// The id whose text is exactly `text`.
    pub fn id(&self, text: &str) -> Option<u32> {
        self.by_text.get(text).copied()
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The `<0xXX>` token for `byte`.
    pub fn byte_token(&self, byte: u8) -> Option<u32> {
        self.byte_tokens[byte as usize]
    }
}

/// A loaded tokenizer: vocabulary, special ids and the encoding scheme.
#[derive(Debug)]
pub struct Tokenizer {
    pub vocab: Vocab,
    scheme: Scheme,
    special: SpecialTokens,
    /// Decoded bytes of each token with special rendering on.
    pieces: Vec<Box<[u8]>>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    /// Sorted ids that end generation.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SPM only: put a space before text that starts the input or follows a special token.
    add_space_prefix: bool,
}

/// Tokens llama.cpp recognises by text as end-of-turn markers (`special_eot_id`).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
/// Fill-in-the-middle markers; llama.cpp makes them CONTROL, and the pad/repo/sep ones end
/// generation.
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Tokens llama.cpp adds to the end-of-generation set by text (Gemma 4's are `<eos>`, `<turn|>`,
/// `<|tool_response>`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// gpt-oss markers that llama.cpp always renders (forced USER_DEFINED).
const ALWAYS_RENDERED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

impl Tokenizer {
    /// Read the tokenizer from GGUF metadata.
    pub fn from_gguf(header: &GgufHeader) -> Result<Tokenizer, TokenizerError> {
        let model = header.get_str(keys::MODEL)?;
        let is_bpe = match model {
            "gemma4" => true,
            "llama" => false,
            other => return Err(TokenizerError::UnsupportedModel { key: keys::MODEL, model: other.to_string() }),
        };

        let mut vocab = read_vocab(header)?;
        let n = vocab.len();

        let scheme = if is_bpe {
            let merges = string_array(header, keys::MERGES)?;
            Scheme::Bpe(BpeMerges::new(merges))
        } else {
            Scheme::Spm
        };

        // Defaults before the GGUF's own ids: SentencePiece vocabularies put <unk>, <s>, </s>
        // first; gemma4 has no defaults.
        let in_range = |id: u32| ((id as usize) < n).then_some(id);
        let (mut bos, mut eos, mut unk) =
            if is_bpe { (None, None, None) } else { (in_range(1), in_range(2), in_range(0)) };
        let mut eot = None;
        for (key, slot) in
            [(keys::BOS_ID, &mut bos), (keys::EOS_ID, &mut eos), (keys::EOT_ID, &mut eot), (keys::UNK_ID, &mut unk)]
        {
            if header.get(key).is_some() {
                let id = header.get_u64(key)?;
                if id as usize >= n {
                    return Err(TokenizerError::TokenId { key, id, n_tokens: n });
                }
                *slot = Some(id as u32);
            }
        }

        // gemma4 is forced to add BOS (llama.cpp PR #21500: some exports say false and the
        // model degrades without it).
        let add_bos = is_bpe || get_bool(header, keys::ADD_BOS)?.unwrap_or(true);
        let add_eos = get_bool(header, keys::ADD_EOS)?.unwrap_or(false);
        let add_space_prefix = get_bool(header, keys::ADD_SPACE_PREFIX)?.unwrap_or(!is_bpe);

        let eog = mark_by_text(&mut vocab, eos, &mut eot);
        let special = SpecialTokens::new(&vocab);
        let pieces = (0..n as u32).map(|id| render_piece(&vocab, id)).collect();

        Ok(Tokenizer { vocab, scheme, special, pieces, bos, eos, eot, unk, eog, add_bos, add_eos, add_space_prefix })
    }

    /// Token ids for `text`. `add_bos` adds the model's BOS (and EOS where the model asks for
    /// it); `parse_special` lets control tokens written in the text (`<|turn>`) become their
    /// ids. User-defined tokens (`<|channel>`) are always matched.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            if let Some(bos) = self.bos {
                out.push(bos);
            }
        }
        let fragments = if text.is_empty() { Vec::new() } else { self.special.partition(text, parse_special) };
        match &self.scheme {
            Scheme::Bpe(merges) => {
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(range) => {
                            escaped.clear();
                            escape_spaces(&text[range], &mut escaped);
                            bpe::encode(&self.vocab, merges, &escaped, &mut out);
                        }
                    }
                }
            }
            Scheme::Spm => {
                let mut prev_special = true;
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                        Fragment::Text(range) => {
                            escaped.clear();
                            if self.add_space_prefix && prev_special {
                                escaped.push_str(SPACE_MARK);
                            }
                            escape_spaces(&text[range], &mut escaped);
                            spm::encode(&self.vocab, &escaped, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
        }
        if add_bos && self.add_eos {
            if let Some(eos) = self.eos {
                out.push(eos);
            }
        }
        out
    }

    /// The bytes token `id` stands for (llama.cpp's `token_to_piece` without lstrip): NORMAL
    /// tokens with `▁` as a space, BYTE tokens as their byte, USER_DEFINED verbatim, CONTROL and
    /// UNKNOWN verbatim only when `special`, otherwise empty. Out-of-range ids are empty.
    pub fn decode(&self, id: u32, special: bool) -> &[u8] {
        let Some(piece) = self.pieces.get(id as usize) else { return &[] };
        if !special && self.vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        piece
    }

    /// The text of `ids`, invalid UTF-8 replaced by U+FFFD.
    pub fn decode_all(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.decode(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A streaming decoder for generated tokens.
    pub fn detokenizer(&self, special: bool) -> Detokenizer<'_> {
        Detokenizer { tokenizer: self, special, pending: Vec::new() }
    }

    pub fn n_tokens(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The end-of-turn token (`<end_of_turn>` for Gemma 3).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Ids that end generation, sorted (Gemma 4: `<eos>`, `<|tool_response>`, `<turn|>`).
    pub fn eog(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// Whether `encode(.., add_bos = true, ..)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// The token's [`attr`] flags.
    pub fn attr(&self, id: u32) -> u16 {
        self.vocab.attrs.get(id as usize).copied().unwrap_or(0)
    }
}

/// Decodes tokens one at a time, holding back the bytes of a UTF-8 character until all of them
/// have arrived, so that a character split over two tokens is never emitted in halves.
pub struct Detokenizer<'a> {
    tokenizer: &'a Tokenizer,
    special: bool,
    /// Bytes of an incomplete character (at most 3).
    pending: Vec<u8>,
}

impl Detokenizer<'_> {
    /// The text that token `id` completes; empty while a character is still incomplete.
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.decode(id, self.special));
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // A character cut off at the end: wait for the next token.
                        None => {
                            rest = after;
                            break;
                        }
                        // An invalid sequence, which no later byte can complete.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        self.pending.drain(..self.pending.len() - keep);
        out
    }

    /// Whatever is still held back, with an incomplete character as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// Replace every space with `▁`.
fn escape_spaces(text: &str, out: &mut String) {
    let mut rest = text;
    while let Some(i) = rest.find(' ') {
        out.push_str(&rest[..i]);
        out.push_str(SPACE_MARK);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

/// The decoded bytes of token `id` with special rendering on.
fn render_piece(vocab: &Vocab, id: u32) -> Box<[u8]> {
    let text = &vocab.texts[id as usize];
    let a = vocab.attrs[id as usize];
    if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        text.as_bytes().into()
    } else if a & attr::NORMAL != 0 {
        text.replace(SPACE_MARK, " ").into_bytes().into()
    } else if a & attr::BYTE != 0 {
        // `<0xXX>`: the two characters after `<0x`, read like strtol (0 when not hex).
        let hex = text.as_bytes().get(3..5).unwrap_or_default();
        let digits: Vec<u8> = hex.iter().copied().take_while(u8::is_ascii_hexdigit).collect();
        let byte = std::str::from_utf8(&digits).ok().and_then(|s| u8::from_str_radix(s, 16).ok()).unwrap_or(0);
        Box::new([byte])
    } else {
        Box::new([])
    }
}

fn string_array<'h>(header: &'h GgufHeader, key: &'static str) -> Result<&'h [String], TokenizerError> {
    match header.get_array(key)? {
        Array::String(v) => Ok(v),
        other => Err(TokenizerError::ArrayType { key, expected: "string", found: other.elem_type().to_string() }),
    }
}

fn get_bool(header: &GgufHeader, key: &'static str) -> Result<Option<bool>, TokenizerError> {
    match header.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(TokenizerError::NotBool { key, value: other.to_string() }),
    }
}

fn read_vocab(header: &GgufHeader) -> Result<Vocab, TokenizerError> {
    let tokens = string_array(header, keys::TOKENS)?;
    let n = tokens.len();
    if n == 0 {
        return Err(TokenizerError::Empty { key: keys::TOKENS });
    }

    let scores = match header.get(keys::SCORES) {
        None => vec![0.0; n],
        Some(_) => {
            let scores: Vec<f32> = match header.get_array(keys::SCORES)? {
                Array::F32(v) => v.clone(),
                Array::I32(v) => v.iter().map(|&s| s as f32).collect(),
                other => {
                    return Err(TokenizerError::ArrayType {
                        key: keys::SCORES,
                        expected: "f32",
                        found: other.elem_type().to_string(),
                    })
                }
            };
            if scores.len() < n {
                return Err(TokenizerError::Length { key: keys::SCORES, len: scores.len(), n_tokens: n });
            }
            scores
        }
    };

    let attrs: Vec<u16> = match header.get(keys::TOKEN_TYPE) {
        None => vec![attr::NORMAL; n],
        Some(_) => {
            let types = header.get_array(keys::TOKEN_TYPE)?;
            if !matches!(types, Array::I32(_)) {
                return Err(TokenizerError::ArrayType {
                    key: keys::TOKEN_TYPE,
                    expected: "i32",
                    found: types.elem_type().to_string(),
                });
            }
            if types.len() < n {
                return Err(TokenizerError::Length { key: keys::TOKEN_TYPE, len: types.len(), n_tokens: n });
            }
            (0..n).map(|i| attr::from_token_type(types.get_i64(i).unwrap_or(0))).collect()
        }
    };

    let mut texts = Vec::with_capacity(n);
    let mut by_text = HashMap::with_capacity_and_hasher(n, FxBuildHasher::default());
    for (i, t) in tokens.iter().enumerate() {
        let text = if t.is_empty() { format!("[EMPTY_{i}]") } else { t.clone() };
        by_text.insert(text.clone(), i as u32);
        texts.push(text);
    }
    let mut byte_tokens = [None; 256];
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        *slot = by_text.get(format!("<0x{b:02X}>").as_str()).copied();
    }
    Ok(Vocab { texts, scores, attrs, by_text, byte_tokens })
}

/// llama.cpp's recognition of special tokens by their text: end-of-turn, fill-in-the-middle and
/// end-of-generation markers become CONTROL, and the end-of-generation set is collected.
/// Returns the sorted end-of-generation ids.
fn mark_by_text(vocab: &mut Vocab, eos: Option<u32>, eot: &mut Option<u32>) -> Vec<u32> {
    // Where several texts of one role exist, the lowest id is taken (llama.cpp takes whichever
    // its hash map yields first; real vocabularies have at most one).
    let find = |vocab: &Vocab, texts: &[&str]| texts.iter().filter_map(|t| vocab.id(t)).min();
    let make_control = |vocab: &mut Vocab, id: u32| vocab.attrs[id as usize] |= attr::CONTROL;

    if eot.is_none() {
        *eot = find(vocab, EOT_TEXTS);
        if let Some(id) = *eot {
            make_control(vocab, id);
        }
    }
    let eom = find(vocab, EOM_TEXTS);
    let mut eog = Vec::new();
    for (texts, ends_generation) in [
        (FIM_PRE_TEXTS, false),
        (FIM_SUF_TEXTS, false),
        (FIM_MID_TEXTS, false),
        (FIM_PAD_TEXTS, true),
        (FIM_REP_TEXTS, true),
        (FIM_SEP_TEXTS, true),
        (EOM_TEXTS, false),
    ] {
        if let Some(id) = find(vocab, texts) {
            make_control(vocab, id);
            if ends_generation {
                eog.push(id);
            }
        }
    }
    // Control tokens named "unused" (no effect on encoding or decoding; kept so that the flags
    // equal llama.cpp's).
    for (a, text) in vocab.attrs.iter_mut().zip(&vocab.texts) {
        if *a & attr::CONTROL != 0 && text.contains("unused") {
            *a |= attr::UNUSED;
        }
    }
    for text in EOG_TEXTS {
        if let Some(id) = vocab.id(text) {
            eog.push(id);
            make_control(vocab, id);
        }
    }
    for text in ALWAYS_RENDERED_TEXTS {
        if let Some(id) = vocab.id(text) {
            vocab.attrs[id as usize] = attr::USER_DEFINED;
        }
    }
    eog.extend(eos);
    eog.extend(*eot);
    eog.extend(eom);
    eog.sort_unstable();
    eog.dedup();

    let with_text =
        |vocab: &Vocab, eog: &[u32], text: &str| eog.iter().copied().find(|&id| vocab.texts[id as usize] == text);
    // gpt-oss / solar-open: `<|end|>` ends a message, not generation.
    let has = |vocab: &Vocab, eog: &[u32], text: &str| with_text(vocab, eog, text).is_some();
    if let Some(end) = with_text(vocab, &eog, "<|end|>") {
        let calls = has(vocab, &eog, "<|call|>") || has(vocab, &eog, "<|calls|>");
        if calls && (has(vocab, &eog, "<|return|>") || has(vocab, &eog, "<|flush|>")) {
            eog.retain(|&id| id != end);
            vocab.attrs[end as usize] = attr::USER_DEFINED;
        }
    }
    // Gemma 4 has an ordinary `</s>` (id 212); `<|tool_response>` marks such vocabularies.
    if has(vocab, &eog, "<|tool_response>") || has(vocab, &eog, "<|plamo:eos|>") {
        if let Some(s) = with_text(vocab, &eog, "</s>") {
            eog.retain(|&id| id != s);
            vocab.attrs[s as usize] = attr::NORMAL;
        }
    }
    eog
}

#[cfg(test)]
mod tests;
