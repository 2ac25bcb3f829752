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

use rayon::prelude::*;

use super::fxhash::FxBuildHasher;
use super::Vocab;

/// A merge `"left right"` split at the first space after the first byte; `None` for a line
/// without one or with nothing right of it.
fn split(merge: &str) -> Option<(&str, &str)> {
    let space = merge.as_bytes().iter().skip(1).position(|&b| b == b' ')?;
    let (left, right) = (&merge[..space + 1], &merge[space + 2..]);
    (!right.is_empty()).then_some((left, right))
}

/// No symbol id: a string that occurs in no merge.
const NONE: u32 = u32::MAX;

/// The merge table, on interned strings: an id below the vocabulary size is that token's id;
/// strings that are merge parts or results without being tokens get ids after the vocabulary.
#[derive(Debug)]
pub struct BpeMerges {
    n_vocab: u32,
    /// Interned strings that are not tokens.
    extra: HashMap<String, u32, FxBuildHasher>,
    /// (left id, right id) packed into a u64 -> (rank, id of the merged string). A pair listed
    /// twice keeps its first (lowest) rank.
    pairs: HashMap<u64, (u32, u32), FxBuildHasher>,
}

impl BpeMerges {
    /// Parse merges `"left right"`: split at the first space after the first byte; the rank is
    /// the index.
    pub fn new(vocab: &Vocab, merges: &[String]) -> BpeMerges {
        let mut table = BpeMerges {
            n_vocab: vocab.len() as u32,
            extra: HashMap::default(),
            pairs: HashMap::with_capacity_and_hasher(merges.len(), FxBuildHasher::default()),
        };
        // The vocabulary look-ups of the three strings of every merge (half a million for
        // Gemma 4, most of the time to load its tokenizer) run on all threads; the strings
        // that are not tokens are interned after, in rank order.
        let found: Vec<Option<[Option<u32>; 3]>> = merges
            .par_iter()
            .map(|merge| {
                let (left, right) = split(merge)?;
                let joined = [left, right].concat();
                Some([vocab.id(left), vocab.id(right), vocab.id(&joined)])
            })
            .collect();
        for (rank, (merge, ids)) in merges.iter().zip(found).enumerate() {
            let (Some((left, right)), Some([l, r, result])) = (split(merge), ids) else { continue };
            let l = l.unwrap_or_else(|| table.intern_extra(left));
            let r = r.unwrap_or_else(|| table.intern_extra(right));
            let result = result.unwrap_or_else(|| table.intern_extra(&[left, right].concat()));
            table.pairs.entry(pack(l, r)).or_insert((rank as u32, result));
        }
        table
    }

    /// The id of `s`, a string that is not a token.
    fn intern_extra(&mut self, s: &str) -> u32 {
        let next = self.n_vocab + self.extra.len() as u32;
        *self.extra.entry(s.to_string()).or_insert(next)
    }

    /// The symbol id of `s`, or NONE when no merge involves it and it is not a token.
    fn lookup(&self, vocab: &Vocab, s: &str) -> u32 {
        vocab.id(s).or_else(|| self.extra.get(s).copied()).unwrap_or(NONE)
    }

    /// (rank, merged id) of the pair.
    fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        if left == NONE || right == NONE {
            return None;
        }
        self.pairs.get(&pack(left, right)).copied()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

fn pack(left: u32, right: u32) -> u64 {
    (left as u64) << 32 | right as u64
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
    id: u32,
}

/// A candidate merge: ordered by rank, then by position of the left symbol.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    rank: u32,
    left: u32,
    right: u32,
    /// Bytes the pair covered when queued; differs once either side has changed.
    len: u32,
    result: u32,
}

/// BPE over one newline-free run (or a newline run that is not a token).
fn encode_run(vocab: &Vocab, merges: &BpeMerges, run: &str, out: &mut Vec<u32>) {
    let mut symbols: Vec<Symbol> = Vec::with_capacity(run.len());
    for (i, (start, c)) in run.char_indices().enumerate() {
        let len = c.len_utf8();
        let id = merges.lookup(vocab, &run[start..start + len]);
        symbols.push(Symbol {
            start: start as u32,
            len: len as u32,
            prev: (i as u32).wrapping_sub(1),
            next: i as u32 + 1,
            id,
        });
    }
    let n = symbols.len() as u32;
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }

    let mut heap = BinaryHeap::new();
    let push = |heap: &mut BinaryHeap<Reverse<Candidate>>, symbols: &[Symbol], left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        if let Some((rank, result)) = merges.merge(l.id, r.id) {
            heap.push(Reverse(Candidate { rank, left, right, len: l.len + r.len, result }));
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
        left.id = c.result;
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
        if s.id < merges.n_vocab {
            out.push(s.id);
        } else {
            let piece = &run.as_bytes()[s.start as usize..(s.start + s.len) as usize];
            out.extend(piece.iter().filter_map(|&b| vocab.byte_token(b)));
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
        let table = BpeMerges::new(vocab, &merges);
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
