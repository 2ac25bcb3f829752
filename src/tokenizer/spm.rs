//! The `llama` (SentencePiece) tokenizer used by Gemma 3, as llama.cpp's `llm_tokenizer_spm`.
//!
//! Input is one raw fragment with spaces escaped to `▁` (and, where the model asks for
//! `add_space_prefix`, a leading `▁`). There is no pre-splitting: the whole fragment starts as
//! one symbol per UTF-8 character, and the adjacent pair whose concatenation is a token with the
//! highest score is merged (leftmost first on ties) until no concatenation is a token. A final
//! symbol that is not a token becomes `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Vocab;

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    /// 0 once merged into its left neighbour.
    len: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge: the max-heap pops the highest score, then the leftmost pair.
struct Candidate {
    score: f32,
    left: u32,
    right: u32,
    /// Bytes the pair covered when queued; differs once either side has changed.
    len: u32,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// Append the tokens of `text` (a raw fragment, spaces already `▁`) to `out`.
pub fn encode(vocab: &Vocab, text: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = text
        .char_indices()
        .enumerate()
        .map(|(i, (start, c))| Symbol {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: (i as u32).wrapping_sub(1),
            next: i as u32 + 1,
        })
        .collect();
    let n = symbols.len() as u32;
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }

    let span = |s: &Symbol| &text[s.start as usize..(s.start + s.len) as usize];
    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Candidate>, symbols: &[Symbol], left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        let joined = &text[l.start as usize..(l.start + l.len + r.len) as usize];
        if let Some(id) = vocab.id(joined) {
            heap.push(Candidate { score: vocab.scores[id as usize], left, right, len: l.len + r.len });
        }
    };
    for i in 1..n {
        push(&mut heap, &symbols, i - 1, i);
    }

    while let Some(c) = heap.pop() {
        let (l, r) = (symbols[c.left as usize], symbols[c.right as usize]);
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len {
            continue;
        }
        let left = &mut symbols[c.left as usize];
        left.len += r.len;
        left.next = r.next;
        symbols[c.right as usize].len = 0;
        if r.next != NONE {
            symbols[r.next as usize].prev = c.left;
        }
        push(&mut heap, &symbols, l.prev, c.left);
        push(&mut heap, &symbols, c.left, r.next);
    }

    let mut i = if n == 0 { NONE } else { 0 };
    while i != NONE {
        let s = symbols[i as usize];
        let piece = span(&s);
        match vocab.id(piece) {
            Some(id) => out.push(id),
            // llama.cpp falls back to a token spelled as the bare byte when there is no
            // `<0xXX>` token; for a valid UTF-8 piece that can only be an ASCII byte.
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_token(b).or_else(|| ascii_token(vocab, b)))),
        }
        i = s.next;
    }
}

fn ascii_token(vocab: &Vocab, b: u8) -> Option<u32> {
    if b.is_ascii() {
        vocab.id(std::str::from_utf8(&[b]).ok()?)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::toy_vocab_scored;
    use super::*;

    #[test]
    fn merges_by_score() {
        // "bc" scores higher than "ab": a + bc.
        let v = toy_vocab_scored(&[("a", 0.0), ("b", 0.0), ("c", 0.0), ("ab", -2.0), ("bc", -1.0)]);
        let mut out = Vec::new();
        encode(&v, "abc", &mut out);
        assert_eq!(out, vec![v.id("a").unwrap(), v.id("bc").unwrap()]);
    }

    #[test]
    fn merges_through_intermediate_tokens() {
        let v = toy_vocab_scored(&[("▁", 0.0), ("h", 0.0), ("i", 0.0), ("hi", -1.0), ("▁hi", -0.5)]);
        let mut out = Vec::new();
        encode(&v, "▁hi▁", &mut out);
        assert_eq!(out, vec![v.id("▁hi").unwrap(), v.id("▁").unwrap()]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        let v = toy_vocab_scored(&[("a", 0.0), ("aa", -1.0)]);
        let mut out = Vec::new();
        encode(&v, "aaa", &mut out);
        assert_eq!(out, vec![v.id("aa").unwrap(), v.id("a").unwrap()]);
    }

    #[test]
    fn byte_fallback() {
        let v = toy_vocab_scored(&[("x", 0.0), ("<0xE2>", 0.0), ("<0x82>", 0.0), ("<0xAC>", 0.0)]);
        let mut out = Vec::new();
        encode(&v, "x€", &mut out);
        let ids: Vec<u32> = ["x", "<0xE2>", "<0x82>", "<0xAC>"].iter().map(|t| v.id(t).unwrap()).collect();
        assert_eq!(out, ids);
    }
}
