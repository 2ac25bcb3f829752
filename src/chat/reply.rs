//! A Gemma 4 reply as it streams out of the model, taken apart (GEMMA4.md 7.3): the thinking
//! between `<|channel>` and `<channel|>` (its first line names the channel, `thought`), the
//! answer, and tool calls, `<|tool_call>call:NAME{key:value,...}<tool_call|>`, whose arguments
//! are written in the chat template's own syntax (`format_argument`: strings between `<|"|>`
//! delimiters, bare keys, Python's `True`/`None` never appear but `true`/`false` do).
//!
//! [`Sections`] finds one pair of markers in streamed text, holding back what may be the start
//! of a marker until the next piece shows whether it is; [`ReplyParser`] stacks two of them
//! (thinking, then tool calls inside the answer) for the server's `reasoning_content`,
//! `content` and `tool_calls`.

use serde_json::{Map, Number, Value};

/// Opens Gemma 4's thought channel (`<|channel>thought\n...`).
pub const THOUGHT_OPEN: &str = "<|channel>";
/// Closes it; the answer follows.
pub const THOUGHT_CLOSE: &str = "<channel|>";
/// Opens a tool call: `<|tool_call>call:NAME{...}<tool_call|>`.
pub const CALL_OPEN: &str = "<|tool_call>";
pub const CALL_CLOSE: &str = "<tool_call|>";
/// Delimits strings inside a tool call.
const QUOTE: &str = "<|\"|>";

/// What [`Sections::push`] found, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Section {
    /// Text outside (`inside: false`) or between the markers.
    Text { inside: bool, text: String },
    /// The close marker: a section between the markers ended here.
    Closed,
}

/// Splits streamed text at an open and a close marker.
#[derive(Debug)]
pub struct Sections {
    open: &'static str,
    close: &'static str,
    pending: String,
    inside: bool,
}

impl Sections {
    pub fn new(open: &'static str, close: &'static str) -> Sections {
        Sections { open, close, pending: String::new(), inside: false }
    }

    /// The sections of `piece` (with what was held back before it) that are now certain.
    pub fn push(&mut self, piece: &str) -> Vec<Section> {
        self.pending.push_str(piece);
        let mut out = Vec::new();
        loop {
            let marker = if self.inside { self.close } else { self.open };
            if let Some(i) = self.pending.find(marker) {
                if i > 0 {
                    out.push(Section::Text { inside: self.inside, text: self.pending[..i].to_string() });
                }
                self.pending.drain(..i + marker.len());
                if self.inside {
                    out.push(Section::Closed);
                }
                self.inside = !self.inside;
                continue;
            }
            let held = (self.pending.char_indices())
                .map(|(i, _)| i)
                .find(|&i| marker.starts_with(&self.pending[i..]))
                .unwrap_or(self.pending.len());
            if held > 0 {
                out.push(Section::Text { inside: self.inside, text: self.pending[..held].to_string() });
                self.pending.drain(..held);
            }
            return out;
        }
    }

    /// What is still held back (it was not a marker after all), and whether it is inside.
    pub fn finish(&mut self) -> Option<(bool, String)> {
        let inside = std::mem::take(&mut self.inside);
        (!self.pending.is_empty()).then(|| (inside, std::mem::take(&mut self.pending)))
    }
}

/// One tool call the model made: the function's name and its arguments as a JSON object.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// A piece of a reply, as the OpenAI API names them.
#[derive(Clone, Debug, PartialEq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
    ToolCall(ToolCall),
}

/// Takes a streamed Gemma 4 reply apart into [`Delta`]s.
#[derive(Debug)]
pub struct ReplyParser {
    thoughts: Sections,
    calls: Sections,
    /// Of the current thought, what may still be the channel's name line (`thought\n`);
    /// `None` before a thought and once the name line is behind.
    thought_head: Option<String>,
    /// In a thought, past its name line.
    past_head: bool,
    /// The text of the tool call being read.
    call: String,
}

impl Default for ReplyParser {
    fn default() -> Self {
        ReplyParser {
            thoughts: Sections::new(THOUGHT_OPEN, THOUGHT_CLOSE),
            calls: Sections::new(CALL_OPEN, CALL_CLOSE),
            thought_head: None,
            past_head: false,
            call: String::new(),
        }
    }
}

impl ReplyParser {
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        let mut out = Vec::new();
        for section in self.thoughts.push(piece) {
            match section {
                Section::Text { inside: true, text } => self.thought(&text, &mut out),
                Section::Text { inside: false, text } => self.answer(&text, &mut out),
                Section::Closed => {
                    // A thought shorter than its name line: what was held is the thought.
                    if let Some(head) = self.thought_head.take().filter(|h| !h.is_empty()) {
                        out.push(Delta::Reasoning(head));
                    }
                    self.past_head = false;
                }
            }
        }
        merge(out)
    }

    /// The end of the reply: what was held back, and a tool call left open (as content).
    pub fn finish(&mut self) -> Vec<Delta> {
        let mut out = Vec::new();
        match self.thoughts.finish() {
            Some((true, text)) => self.thought(&text, &mut out),
            Some((false, text)) => self.answer(&text, &mut out),
            None => {}
        }
        if let Some(head) = self.thought_head.take().filter(|h| !h.is_empty()) {
            out.push(Delta::Reasoning(head));
        }
        match self.calls.finish() {
            Some((true, text)) => self.call.push_str(&text),
            Some((false, text)) => out.push(Delta::Content(text)),
            None => {}
        }
        if !self.call.is_empty() {
            out.push(Delta::Content(format!("{CALL_OPEN}{}", std::mem::take(&mut self.call))));
        }
        merge(out)
    }

    fn thought(&mut self, text: &str, out: &mut Vec<Delta>) {
        if self.past_head {
            out.push(Delta::Reasoning(text.to_string()));
            return;
        }
        let head = self.thought_head.get_or_insert_with(String::new);
        head.push_str(text);
        const NAME: &str = "thought\n";
        if head.starts_with(NAME) || !NAME.starts_with(head.as_str()) {
            let rest = head.strip_prefix(NAME).unwrap_or(head).to_string();
            self.thought_head = None;
            self.past_head = true;
            if !rest.is_empty() {
                out.push(Delta::Reasoning(rest));
            }
        }
    }

    fn answer(&mut self, text: &str, out: &mut Vec<Delta>) {
        for section in self.calls.push(text) {
            match section {
                Section::Text { inside: false, text } => out.push(Delta::Content(text)),
                Section::Text { inside: true, text } => self.call.push_str(&text),
                Section::Closed => {
                    let call = std::mem::take(&mut self.call);
                    match parse_call(&call) {
                        Some(c) => out.push(Delta::ToolCall(c)),
                        // Not a call we can read: the text as the model wrote it.
                        None => out.push(Delta::Content(format!("{CALL_OPEN}{call}{CALL_CLOSE}"))),
                    }
                }
            }
        }
    }
}

/// Neighbouring pieces of the same kind joined.
fn merge(deltas: Vec<Delta>) -> Vec<Delta> {
    let mut out: Vec<Delta> = Vec::with_capacity(deltas.len());
    for d in deltas {
        match (out.last_mut(), d) {
            (Some(Delta::Reasoning(a)), Delta::Reasoning(b)) | (Some(Delta::Content(a)), Delta::Content(b)) => {
                a.push_str(&b)
            }
            (_, d) => out.push(d),
        }
    }
    out
}

/// `call:NAME{key:value,...}` (what is between the call markers) as a call, or `None` when it
/// is not written that way.
pub fn parse_call(text: &str) -> Option<ToolCall> {
    let rest = text.trim().strip_prefix("call:")?;
    let brace = rest.find('{')?;
    let name = rest[..brace].trim();
    if name.is_empty() {
        return None;
    }
    let mut p = Parser { s: &rest[brace..] };
    let arguments = p.object()?;
    p.s.trim().is_empty().then(|| ToolCall { name: name.to_string(), arguments })
}

/// A recursive-descent reader of `format_argument`'s output.
struct Parser<'a> {
    s: &'a str,
}

impl Parser<'_> {
    fn eat(&mut self, token: &str) -> bool {
        self.s = self.s.trim_start();
        match self.s.strip_prefix(token) {
            Some(rest) => {
                self.s = rest;
                true
            }
            None => false,
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.s = self.s.trim_start();
        if self.s.starts_with('{') {
            return self.object();
        }
        if self.eat("[") {
            let mut items = Vec::new();
            if self.eat("]") {
                return Some(Value::Array(items));
            }
            loop {
                items.push(self.value()?);
                if self.eat("]") {
                    return Some(Value::Array(items));
                }
                if !self.eat(",") {
                    return None;
                }
            }
        }
        if self.eat(QUOTE) {
            return self.string().map(Value::String);
        }
        // A bare scalar: up to the next delimiter.
        let end = self.s.find([',', '}', ']']).unwrap_or(self.s.len());
        let word = self.s[..end].trim();
        self.s = &self.s[end..];
        Some(match word {
            "true" | "True" => Value::Bool(true),
            "false" | "False" => Value::Bool(false),
            "null" | "None" => Value::Null,
            _ => match word.parse::<i64>() {
                Ok(i) => Value::Number(i.into()),
                Err(_) => match word.parse::<f64>().ok().and_then(Number::from_f64) {
                    Some(n) => Value::Number(n),
                    None => Value::String(word.to_string()),
                },
            },
        })
    }

    /// After an opening quote: the string up to the closing one.
    fn string(&mut self) -> Option<String> {
        let end = self.s.find(QUOTE)?;
        let text = self.s[..end].to_string();
        self.s = &self.s[end + QUOTE.len()..];
        Some(text)
    }

    fn object(&mut self) -> Option<Value> {
        if !self.eat("{") {
            return None;
        }
        let mut map = Map::new();
        if self.eat("}") {
            return Some(Value::Object(map));
        }
        loop {
            let key = if self.eat(QUOTE) {
                self.string()?
            } else {
                let colon = self.s.find(':')?;
                let key = self.s[..colon].trim().to_string();
                self.s = &self.s[colon..];
                key
            };
            if key.is_empty() || !self.eat(":") {
                return None;
            }
            let value = self.value()?;
            map.insert(key, value);
            if self.eat("}") {
                return Some(Value::Object(map));
            }
            if !self.eat(",") {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat::{ChatTemplate, Message, RenderOptions};

    fn parse_all(pieces: &[&str]) -> Vec<Delta> {
        let mut p = ReplyParser::default();
        let mut out: Vec<Delta> = pieces.iter().flat_map(|piece| p.push(piece)).collect();
        out.extend(p.finish());
        merge(out)
    }

    #[test]
    fn sections_split_at_markers_cut_anywhere() {
        let mut s = Sections::new(THOUGHT_OPEN, THOUGHT_CLOSE);
        let mut got = Vec::new();
        for piece in ["a <|chan", "nel>thought\nh", "mm<chan", "nel|>Hi", "!"] {
            got.extend(s.push(piece));
        }
        let text = |inside, t: &str| Section::Text { inside, text: t.to_string() };
        assert_eq!(
            got,
            [
                text(false, "a "),
                text(true, "thought\nh"),
                text(true, "mm"),
                Section::Closed,
                text(false, "Hi"),
                text(false, "!")
            ]
        );
        // A held-back prefix is released when the next piece shows it is no marker.
        let mut s = Sections::new(THOUGHT_OPEN, THOUGHT_CLOSE);
        assert_eq!(s.push("b <|"), [text(false, "b ")]);
        assert_eq!(s.push("x"), [text(false, "<|x")]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn thinking_answer_and_calls_come_apart() {
        let got = parse_all(&[
            "<|channel>",
            "thought",
            "\n",
            "Let me check.",
            "<channel|>",
            "Sure. ",
            "<|tool_call>",
            "call:get_weather{city:<|\"|>Paris<|\"|>,days:3}",
            "<tool_call|>",
        ]);
        assert_eq!(
            got,
            [
                Delta::Reasoning("Let me check.".into()),
                Delta::Content("Sure. ".into()),
                Delta::ToolCall(ToolCall {
                    name: "get_weather".into(),
                    arguments: json!({"city": "Paris", "days": 3})
                }),
            ]
        );
        // A thought without the name line is all reasoning; an unclosed call is content.
        assert_eq!(
            parse_all(&["<|channel>", "hm", "<channel|>", "ok"]),
            [Delta::Reasoning("hm".into()), Delta::Content("ok".into())]
        );
        assert_eq!(parse_all(&["x ", "<|tool_call>", "call:f{a:"]), [Delta::Content("x <|tool_call>call:f{a:".into())]);
        // A call that is not in the call syntax stays as written.
        assert_eq!(
            parse_all(&["<|tool_call>", "oops", "<tool_call|>"]),
            [Delta::Content("<|tool_call>oops<tool_call|>".into())]
        );
    }

    /// The oracle: the model's own chat template writes a call's arguments
    /// (`format_argument`); reading them back gives the arguments it was given.
    #[test]
    fn calls_written_by_the_gemma4_template_read_back_to_their_arguments() {
        // The 26B-A4B's own template (the vocabulary file carries it).
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ggml-vocab-gemma-4.gguf");
        let gguf = ggml::gguf::GgufFile::open(&path).unwrap();
        let template = ChatTemplate::from_gguf(&gguf.header).unwrap();
        let arguments = json!({
            "city": "São Paulo, \"BR\"",
            "days": 3,
            "ratio": 0.25,
            "metric": false,
            "tags": ["a", "b c"],
            "nested": {"k": [1, 2.5, true], "empty": {}},
            "none": []
        });
        let call = json!([{"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]);
        let messages = [Message::user("weather?"), Message { tool_calls: Some(call), ..Message::assistant("") }];
        let opts = RenderOptions { add_generation_prompt: false, ..RenderOptions::default() };
        let text = template.render(&messages, &opts).unwrap();
        let start = text.find(CALL_OPEN).expect(&text) + CALL_OPEN.len();
        let end = text.find(CALL_CLOSE).expect(&text);
        let parsed = parse_call(&text[start..end]).expect(&text);
        assert_eq!(parsed, ToolCall { name: "get_weather".into(), arguments });
    }
}
