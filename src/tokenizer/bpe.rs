//! The `gemma4` BPE (GEMMA4.md 7.2), as llama.cpp runs it with the GEMMA4 pre-tokenizer.
//!
//! Input here is one raw fragment with spaces already escaped to `▁`. It is cut into runs of
//! newlines and runs of anything else (llama.cpp's `[^\n]+|[\n]+`, done by hand: a regex engine
//! recursing over a long line is what crashed llama.cpp, PR #21587). A newline run that is a
//! token of its own is emitted whole (PR #21343). Other runs start as one symbol per UTF-8
//! character; the adjacent pair with the lowest merge rank is merged (leftmost first on ties)
//! until no pair has a merge. A final symbol that is not a token becomes `<0xXX>` byte tokens.
//!
//! Symbols are a linked list over the run and candidate pairs sit in a min-heap, so a run of n
//! characters costs O(n log n); pairs made stale by an earlier merge are skipped when popped.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::fxhash::FxBuildHasher;
use super::Vocab;

/// No symbol: the end of the linked list.
const NONE: u32 = u32::MAX;

/// The merge table: each merge line `"left right"` with its rank (its index; a line listed
/// twice keeps its first rank). Symbols are spans of the input text, which never holds a
/// plain space (spaces arrive escaped to `▁`), so `left + " " + right` of two adjacent symbols
/// names at most one line, and only the line that splits there. Keyed by the line itself,
/// loading is one hash insert per merge (half a million for Gemma 4, no vocabulary look-ups);
/// the merged symbols' token ids are looked up once, when a run is done.
#[derive(Debug)]
pub struct BpeMerges {
    ranks: HashMap<Box<str>, u32, FxBuildHasher>,
}

impl BpeMerges {
    pub fn new(merges: &[String]) -> BpeMerges {
        let mut ranks = HashMap::with_capacity_and_hasher(merges.len(), FxBuildHasher::default());
        for (rank, merge) in merges.iter().enumerate() {
            ranks.entry(merge.as_str().into()).or_insert(rank as u32);
        }
        BpeMerges { ranks }
    }

    /// The rank of merging `left` and `right`, if a line names them (`key` is scratch space).
    fn rank(&self, key: &mut String, left: &str, right: &str) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }

    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }
}

/// Append the tokens of `text` (a raw fragment, spaces already `▁`) to `out`.
pub fn encode(vocab: &Vocab, merges: &BpeMerges, text: &str, out: &mut Vec<u32>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        let newline = bytes[start] == b'\n';
        let len = bytes[start..].iter().position(|&b| (b == b'\n') != newline).unwrap_or(bytes.len() - start);
        let run = &text[start..start + len];
        match vocab.id(run) {
            Some(id) if newline => out.push(id),
            _ => encode_run(vocab, merges, run, out),
        }
        start += len;
    }
}

/// One symbol of a run being merged: a byte span of the run, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    /// 0 once merged into its left neighbour.
    len: u32,
    prev: u32,
    next: u32,
}

impl Symbol {
    fn text(self, run: &str) -> &str {
        &run[self.start as usize..(self.start + self.len) as usize]
    }
}

/// A candidate merge: ordered by rank, then by position of the left symbol.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: u32,
    right: u32,
    /// Bytes the pair covered when queued; differs once either side has changed.
    len: u32,
}

/// BPE over one newline-free run (or a newline run that is not a token).
fn encode_run(vocab: &Vocab, merges: &BpeMerges, run: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(run.len());
    for (i, (start, c)) in run.char_indices().enumerate() {
        symbols.push(Symbol {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: (i as u32).wrapping_sub(1),
            next: i as u32 + 1,
        });
    }
    let n = symbols.len() as u32;
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }

    let mut heap = BinaryHeap::new();
    let mut key = String::new();
    let mut push = |heap: &mut BinaryHeap<Reverse<Candidate>>, symbols: &[Symbol], left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        if let Some(rank) = merges.rank(&mut key, l.text(run), r.text(run)) {
            heap.push(Reverse(Candidate { rank, left, right, len: l.len + r.len }));
        }
    };
    for i in 1..n {
        push(&mut heap, &symbols, i - 1, i);
    }

    while let Some(Reverse(c)) = heap.pop() {
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

    // Each final symbol is its token, or (a character or merge result outside the
    // vocabulary) its bytes' `<0xXX>` tokens.
    let mut i = if n == 0 { NONE } else { 0 };
    while i != NONE {
        let s = symbols[i as usize];
        match vocab.id(s.text(run)) {
            Some(id) => out.push(id),
            None => out.extend(s.text(run).bytes().filter_map(|b| vocab.byte_token(b))),
        }
        i = s.next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::toy_vocab;
    use super::*;

    fn run(vocab: &Vocab, merges: &[&str], text: &str) -> Vec<u32> {
        let merges: Vec<String> = merges.iter().map(|s| s.to_string()).collect();
        let table = BpeMerges::new(&merges);
        let mut out = Vec::new();
        encode(vocab, &table, text, &mut out);
        out
    }

    #[test]
    fn merges_by_rank_not_position() {
        // a b c: "b c" has the lower rank, so "a" stays alone.
        let v = toy_vocab(&["a", "b", "c", "ab", "bc"]);
        let ids = run(&v, &["b c", "a b"], "abc");
        assert_eq!(ids, vec![v.id("a").unwrap(), v.id("bc").unwrap()]);
        let ids = run(&v, &["a b", "b c"], "abc");
        assert_eq!(ids, vec![v.id("ab").unwrap(), v.id("c").unwrap()]);
    }

    #[test]
    fn equal_pairs_merge_leftmost_first() {
        let v = toy_vocab(&["a", "aa"]);
        let aa = v.id("aa").unwrap();
        let a = v.id("a").unwrap();
        assert_eq!(run(&v, &["a a"], "aaa"), vec![aa, a]);
        assert_eq!(run(&v, &["a a"], "aaaa"), vec![aa, aa]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        // "é" (c3 a9) is not a token; "x" is.
        let v = toy_vocab(&["x", "<0xC3>", "<0xA9>"]);
        let ids = run(&v, &[], "xé");
        assert_eq!(ids, vec![v.id("x").unwrap(), v.id("<0xC3>").unwrap(), v.id("<0xA9>").unwrap()]);
    }

    #[test]
    fn merged_string_that_is_not_a_token_falls_back_to_bytes() {
        // "ab" is reachable by a merge but is not in the vocabulary.
        let v = toy_vocab(&["a", "b", "<0x61>", "<0x62>"]);
        let ids = run(&v, &["a b"], "ab");
        assert_eq!(ids, vec![v.id("<0x61>").unwrap(), v.id("<0x62>").unwrap()]);
    }

    #[test]
    fn newline_runs_are_split_and_taken_whole() {
        let v = toy_vocab(&["a", "\n", "\n\n", "\n\n\n", "aa"]);
        let (a, nl, nl2, nl3) =
            (v.id("a").unwrap(), v.id("\n").unwrap(), v.id("\n\n").unwrap(), v.id("\n\n\n").unwrap());
        // No merges at all: whole newline runs still become single tokens.
        assert_eq!(run(&v, &[], "a\n\n\na\na"), vec![a, nl3, a, nl, a]);
        // A merge across the newline boundary never applies.
        assert_eq!(run(&v, &["a \n", "a a"], "a\n\na"), vec![a, nl2, a]);
    }

    #[test]
    fn newline_run_without_a_token_is_merged_from_characters() {
        let v = toy_vocab(&["\n", "\n\n"]);
        let (nl, nl2) = (v.id("\n").unwrap(), v.id("\n\n").unwrap());
        assert_eq!(run(&v, &["\n \n"], "\n\n\n\n\n"), vec![nl2, nl2, nl]);
    }

    #[test]
    fn long_run_is_fast_and_complete() {
        let v = toy_vocab(&["a", "aa", "aaaa"]);
        let text = "a".repeat(100_001);
        let ids = run(&v, &["a a", "aa aa"], &text);
        let aaaa = v.id("aaaa").unwrap();
        assert_eq!(ids.len(), 25_001);
        assert!(ids[..25_000].iter().all(|&id| id == aaaa));
        assert_eq!(ids[25_000], v.id("a").unwrap());
    }
}
