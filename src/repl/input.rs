//! Multi-line input for the chat: a line ending in `\` continues on the next line, and a line
//! starting with `"""` opens a block that runs to a line ending with `"""`.

const FENCE: &str = "\"\"\"";

/// Lines typed so far of one input.
#[derive(Debug, Default)]
pub struct MultiLine {
    lines: Vec<String>,
    /// Inside a `"""` block.
    block: bool,
}

impl MultiLine {
    /// Takes one typed line; returns the whole input once it is complete.
    pub fn push(&mut self, line: &str) -> Option<String> {
        if self.block {
            if let Some(last) = line.trim_end().strip_suffix(FENCE) {
                self.lines.push(last.to_string());
                return Some(self.take());
            }
            self.lines.push(line.to_string());
            return None;
        }
        if self.lines.is_empty() {
            if let Some(rest) = line.trim_start().strip_prefix(FENCE) {
                // `"""one line"""` opens and closes at once.
                if let Some(inner) = rest.trim_end().strip_suffix(FENCE) {
                    return Some(inner.to_string());
                }
                self.block = true;
                if !rest.trim().is_empty() {
                    self.lines.push(rest.to_string());
                }
                return None;
            }
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                self.lines.push(head.to_string());
                None
            }
            None => {
                self.lines.push(line.to_string());
                Some(self.take())
            }
        }
    }

    /// Whether an input has begun and is not complete (the prompt shows a continuation).
    pub fn continuing(&self) -> bool {
        self.block || !self.lines.is_empty()
    }

    /// Drops the lines of an unfinished input.
    pub fn clear(&mut self) {
        self.lines.clear();
        self.block = false;
    }

    fn take(&mut self) -> String {
        let text = self.lines.join("\n");
        self.clear();
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Vec<String> {
        let mut m = MultiLine::default();
        lines.iter().filter_map(|l| m.push(l)).collect()
    }

    #[test]
    fn a_plain_line_is_complete() {
        assert_eq!(feed(&["hello"]), ["hello"]);
    }

    #[test]
    fn a_trailing_backslash_continues() {
        assert_eq!(feed(&["one \\", "two\\", "three", "four"]), ["one \ntwo\nthree", "four"]);
    }

    #[test]
    fn triple_quotes_make_a_block() {
        assert_eq!(feed(&["\"\"\"", "a \\", "", "b", "c\"\"\"", "next"]), ["a \\\n\nb\nc", "next"]);
        assert_eq!(feed(&["\"\"\"first", "last\"\"\""]), ["first\nlast"]);
        assert_eq!(feed(&["\"\"\"all in one\"\"\""]), ["all in one"]);
    }

    #[test]
    fn continuing_and_clear() {
        let mut m = MultiLine::default();
        assert!(!m.continuing());
        assert_eq!(m.push("\"\"\""), None);
        assert!(m.continuing());
        m.clear();
        assert!(!m.continuing());
        assert_eq!(m.push("x"), Some("x".into()));
    }
}
