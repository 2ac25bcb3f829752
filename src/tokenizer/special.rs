//! Cutting special tokens out of raw text before any merging, as llama.cpp's
//! `tokenizer_st_partition` does.
//!
//! llama.cpp takes the special tokens (CONTROL, USER_DEFINED, UNKNOWN) longest first and, for
//! each one, replaces its non-overlapping occurrences in whatever text is still raw, left to
//! right. So priority is by length, not by position: with tokens `bXc` and `ab`, the text
//! `abXc` becomes `a`, `bXc`. Doing that token by token costs (number of special tokens) x
//! (text length); here one trie walk finds every occurrence, and the occurrences are then
//! accepted in llama.cpp's order (token priority, then position) when none of their bytes is
//! taken yet. Ties between different tokens of equal length are broken by lower id (llama.cpp's
//! order there is that of an unstable sort; it only matters when two such tokens overlap).

use std::collections::HashMap;
use std::ops::Range;

use super::fxhash::FxBuildHasher;
use super::{attr, Vocab};

/// A piece of the input: raw text (a byte range of it) or a special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

const NONE: u32 = u32::MAX;

/// The special tokens of a vocabulary, in a byte trie.
#[derive(Debug)]
pub struct SpecialTokens {
    /// Child of (node, byte); node 0 is the root.
    edges: HashMap<(u32, u8), u32, FxBuildHasher>,
    /// Token ending at each node (the higher-priority one where texts repeat), or NONE.
    node_token: Vec<u32>,
    /// Bytes that start some special token.
    first_byte: [bool; 256],
    /// Priority of each special token id: 0 is tried first.
    priority: HashMap<u32, u32, FxBuildHasher>,
    /// Token id of each priority, and its text length and whether it is parsed only on request.
    by_priority: Vec<(u32, usize, bool)>,
}

impl SpecialTokens {
    pub fn new(vocab: &Vocab) -> SpecialTokens {
        let mut ids: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| vocab.attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
            .collect();
        ids.sort_by_key(|&id| (std::cmp::Reverse(vocab.texts[id as usize].len()), id));

        let mut trie = SpecialTokens {
            edges: HashMap::default(),
            node_token: vec![NONE],
            first_byte: [false; 256],
            priority: HashMap::default(),
            by_priority: Vec::with_capacity(ids.len()),
        };
        for (prio, &id) in ids.iter().enumerate() {
            let text = vocab.texts[id as usize].as_bytes();
            let on_request = vocab.attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0;
            trie.priority.insert(id, prio as u32);
            trie.by_priority.push((id, text.len(), on_request));
            trie.first_byte[text[0] as usize] = true;
            let mut node = 0u32;
            for &b in text {
                let next = trie.node_token.len() as u32;
                node = *trie.edges.entry((node, b)).or_insert_with(|| next);
                if node == next {
                    trie.node_token.push(NONE);
                }
            }
            if trie.node_token[node as usize] == NONE {
                trie.node_token[node as usize] = id;
            }
        }
        trie
    }

    /// Number of special tokens.
    pub fn len(&self) -> usize {
        self.by_priority.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_priority.is_empty()
    }

    /// Split `text` into raw pieces and special tokens. CONTROL and UNKNOWN tokens are matched
    /// only with `parse_special`; USER_DEFINED ones always.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let bytes = text.as_bytes();
        // Every occurrence of an eligible token, as (priority, start).
        let mut found: Vec<(u32, u32)> = Vec::new();
        for start in 0..bytes.len() {
            if !self.first_byte[bytes[start] as usize] {
                continue;
            }
            let mut node = 0u32;
            for &b in &bytes[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&next) => node = next,
                    None => break,
                }
                let id = self.node_token[node as usize];
                if id != NONE {
                    let prio = self.priority[&id];
                    if parse_special || !self.by_priority[prio as usize].2 {
                        found.push((prio, start as u32));
                    }
                }
            }
        }
        if found.is_empty() {
            return vec![Fragment::Text(0..bytes.len())];
        }

        found.sort_unstable();
        let mut taken = vec![false; bytes.len()];
        let mut accepted: Vec<(usize, usize, u32)> = Vec::new();
        for (prio, start) in found {
            let (id, len, _) = self.by_priority[prio as usize];
            let span = start as usize..start as usize + len;
            if taken[span.clone()].iter().any(|&t| t) {
                continue;
            }
            taken[span.clone()].fill(true);
            accepted.push((span.start, span.end, id));
        }
        accepted.sort_unstable();

        let mut fragments = Vec::with_capacity(2 * accepted.len() + 1);
        let mut pos = 0;
        for (start, end, id) in accepted {
            if start > pos {
                fragments.push(Fragment::Text(pos..start));
            }
            fragments.push(Fragment::Token(id));
            pos = end;
        }
        if pos < bytes.len() {
            fragments.push(Fragment::Text(pos..bytes.len()));
        }
        fragments
    }
}
