//! User stop strings over streamed text: text that may be the start of a stop string is held
//! back until the next pieces show whether it is, so the stop string itself is never printed
//! and nothing before it is lost.

#[derive(Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    /// All the text pushed so far.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stopped: bool,
}

impl StopStrings {
    /// Empty strings are ignored (they would match everywhere).
    pub fn new(stops: &[String]) -> StopStrings {
        StopStrings { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), ..Default::default() }
    }

    /// Appends `piece` and returns the text that is now safe to print. After a stop string
    /// appears, [`StopStrings::stopped`] is true and everything from it on is dropped.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.text.push_str(piece);
        let pending = &self.text[self.emitted..];
        let first_match = self.stops.iter().filter_map(|s| pending.find(s.as_str())).min();
        let end = match first_match {
            Some(i) => {
                self.stopped = true;
                self.emitted + i
            }
            None => self.text.len() - self.held_suffix(),
        };
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }

    /// The text still held back (at the end of generation it is printed after all).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Bytes at the end of the pending text that begin some stop string: the longest suffix
    /// (starting on a character boundary) that is a proper prefix of a stop string.
    fn held_suffix(&self) -> usize {
        let pending = &self.text[self.emitted..];
        (pending.char_indices())
            .map(|(i, _)| &pending[i..])
            .find(|suffix| self.stops.iter().any(|s| s.starts_with(suffix)))
            .map_or(0, str::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns what was printed and whether it stopped.
    fn feed(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut s = StopStrings::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            out += &s.push(p);
            if s.stopped() {
                break;
            }
        }
        out += &s.finish();
        (out, s.stopped())
    }

    #[test]
    fn a_stop_split_across_pieces_is_not_printed() {
        assert_eq!(
            feed(&["\n\nUser:"], &["Hello", " there.\n", "\nUs", "er:", " more"]),
            ("Hello there.".into(), true)
        );
    }

    #[test]
    fn a_false_start_is_released() {
        assert_eq!(feed(&["STOP"], &["a ST", "ART b"]), ("a START b".into(), false));
        // Held back while it could still be a stop, then printed at the end.
        let mut s = StopStrings::new(&["STOP".to_string()]);
        assert_eq!(s.push("x ST"), "x ");
        assert_eq!(s.finish(), "ST");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(feed(&["bb", "a"], &["xxbba"]), ("xx".into(), true));
        assert_eq!(feed(&["bb", "a"], &["xxabb"]), ("xx".into(), true));
    }

    #[test]
    fn multi_byte_text_is_held_on_character_boundaries() {
        assert_eq!(feed(&["é!"], &["café", "!"]), ("caf".into(), true));
        assert_eq!(feed(&["éa"], &["cé", "b"]), ("céb".into(), false));
    }

    #[test]
    fn no_stops_passes_everything_through() {
        assert_eq!(feed(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(feed(&[""], &["a", "b"]), ("ab".into(), false));
    }
}
