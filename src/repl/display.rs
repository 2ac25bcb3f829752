//! How a streamed reply looks in the terminal: the answer in the model's color, Gemma 4's
//! thinking (between `<|channel>` and `<channel|>`, GEMMA4.md 7.3) dimmed or collapsed to a
//! marker, the markers themselves never shown. Without color every part is plain text.

use std::io::{self, Write};

use crossterm::style::Stylize;

use crate::chat::reply::{Section, Sections, THOUGHT_CLOSE, THOUGHT_OPEN};

/// Which part of a reply a piece of text belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Answer,
    Thought,
}

/// Splits streamed text at the thought markers ([`Sections`] of them).
#[derive(Debug)]
pub struct ThoughtSplitter(Sections);

impl Default for ThoughtSplitter {
    fn default() -> Self {
        ThoughtSplitter(Sections::new(THOUGHT_OPEN, THOUGHT_CLOSE))
    }
}

impl ThoughtSplitter {
    /// The parts of `piece` (with what was held back before it) that are now certain.
    pub fn push(&mut self, piece: &str) -> Vec<(Part, String)> {
        (self.0.push(piece).into_iter())
            .filter_map(|s| match s {
                Section::Text { inside, text } => Some((if inside { Part::Thought } else { Part::Answer }, text)),
                Section::Closed => None,
            })
            .collect()
    }

    /// What is still held back: it was not a marker after all.
    pub fn finish(&mut self) -> Option<(Part, String)> {
        self.0.finish().map(|(inside, text)| (if inside { Part::Thought } else { Part::Answer }, text))
    }
}

/// Writes one reply to the terminal as it streams.
pub struct ReplyWriter {
    color: bool,
    show_thoughts: bool,
    splitter: ThoughtSplitter,
    /// The last character written ends a line (or nothing was written yet).
    at_line_start: bool,
    /// A collapsed thought's marker is on screen and its line still open.
    collapsed: bool,
}

impl ReplyWriter {
    pub fn new(color: bool, show_thoughts: bool) -> ReplyWriter {
        ReplyWriter {
            color,
            show_thoughts,
            splitter: ThoughtSplitter::default(),
            at_line_start: true,
            collapsed: false,
        }
    }

    pub fn write(&mut self, out: &mut dyn Write, piece: &str) -> io::Result<()> {
        for (part, text) in self.splitter.push(piece) {
            self.part(out, part, &text)?;
        }
        out.flush()
    }

    /// Writes what was held back and ends the line.
    pub fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if let Some((part, text)) = self.splitter.finish() {
            self.part(out, part, &text)?;
        }
        if !self.at_line_start {
            out.write_all(b"\n")?;
            self.at_line_start = true;
        }
        out.flush()
    }

    fn part(&mut self, out: &mut dyn Write, part: Part, text: &str) -> io::Result<()> {
        match part {
            Part::Thought if !self.show_thoughts => {
                if !self.collapsed {
                    self.collapsed = true;
                    self.styled(out, "[thinking...]", Part::Thought)?;
                }
                Ok(())
            }
            Part::Thought => self.styled(out, text, part),
            Part::Answer => {
                if self.collapsed {
                    self.collapsed = false;
                    self.styled(out, "\n", part)?;
                }
                // The answer starts on its own line after a shown thought.
                let text = if self.at_line_start { text.trim_start_matches('\n') } else { text };
                self.styled(out, text, part)
            }
        }
    }

    fn styled(&mut self, out: &mut dyn Write, text: &str, part: Part) -> io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        match (self.color, part) {
            (false, _) => write!(out, "{text}")?,
            (true, Part::Answer) => write!(out, "{}", text.cyan())?,
            (true, Part::Thought) => write!(out, "{}", text.dim())?,
        }
        self.at_line_start = text.ends_with('\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(pieces: &[&str]) -> Vec<(Part, String)> {
        let mut s = ThoughtSplitter::default();
        let mut out: Vec<(Part, String)> = Vec::new();
        for p in pieces {
            out.extend(s.push(p));
        }
        out.extend(s.finish());
        // Merge neighbours of the same part: how text was cut does not matter.
        let mut merged: Vec<(Part, String)> = Vec::new();
        for (part, text) in out {
            match merged.last_mut() {
                Some((p, t)) if *p == part => t.push_str(&text),
                _ => merged.push((part, text)),
            }
        }
        merged
    }

    #[test]
    fn thoughts_are_split_from_the_answer() {
        use Part::*;
        let expected = vec![(Thought, "thought\nhmm".to_string()), (Answer, "Hi!".to_string())];
        assert_eq!(split(&["<|channel>", "thought\nhmm", "<channel|>", "Hi!"]), expected);
        // Markers cut anywhere are still found.
        assert_eq!(split(&["<|chan", "nel>thought\nh", "mm<chan", "nel|>Hi", "!"]), expected);
        assert_eq!(split(&["plain <|ch", "at"]), vec![(Answer, "plain <|chat".to_string())]);
    }

    #[test]
    fn a_held_back_prefix_is_released_when_it_is_not_a_marker() {
        let mut s = ThoughtSplitter::default();
        assert_eq!(s.push("a <|"), vec![(Part::Answer, "a ".to_string())]);
        assert_eq!(s.push("x"), vec![(Part::Answer, "<|x".to_string())]);
    }

    fn render(show: bool, pieces: &[&str]) -> String {
        let mut w = ReplyWriter::new(false, show);
        let mut out = Vec::new();
        for p in pieces {
            w.write(&mut out, p).unwrap();
        }
        w.finish(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn thoughts_show_or_collapse() {
        let pieces = ["<|channel>", "thought\nLet me see.\n", "<channel|>", "Four."];
        assert_eq!(render(true, &pieces), "thought\nLet me see.\nFour.\n");
        assert_eq!(render(false, &pieces), "[thinking...]\nFour.\n");
        assert_eq!(render(false, &["Just text"]), "Just text\n");
        assert_eq!(render(false, &["Ends\n"]), "Ends\n");
    }
}
