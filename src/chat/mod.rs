//! Chat templates: a conversation to the prompt text a model was trained on.
//!
//! The GGUF's own `tokenizer.chat_template` (a Hugging Face jinja template) is rendered the way
//! transformers' `apply_chat_template` renders it with Python's jinja2, byte for byte
//! (`template.rs` sets up the environment, `python.rs` supplies Python's value formatting).
//! Without one, a built-in template for the architecture stands in: Gemma 4's turn format
//! (`gemma4.jinja`) or Gemma 3's (`gemma3.jinja`, also used for anything else).
//!
//! The oracle is `scripts/chat-template-fixtures.py` (transformers + jinja2); its fixtures are
//! checked by `tests/chat_template.rs`.

mod python;
pub mod reply;
mod template;

use ggml::gguf::{GgufHeader, MetadataError};
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
const TOKENS: &str = "tokenizer.ggml.tokens";
const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
const EOS_ID: &str = "tokenizer.ggml.eos_token_id";

const GEMMA4: &str = include_str!("gemma4.jinja");
const GEMMA3: &str = include_str!("gemma3.jinja");

/// One message of a conversation, as the template sees it: a dict with `role` and `content`,
/// plus the optional keys only when they are set (absent keys are undefined in the template,
/// as transformers drops `None` values).
///
/// Gemma 4's template reads tool calls from an assistant message's `tool_calls`
/// (`[{"function": {"name", "arguments"}}]`, arguments an object or a JSON string) and their
/// results from the same message's `tool_responses` (`[{"name", "response"}]`); other
/// templates read results from `tool` messages with `name`/`tool_call_id`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    /// Empty when absent in JSON (an assistant message with only tool calls).
    #[serde(default)]
    pub content: Content,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_responses: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// What a message says: text, or parts (text and images, in order) as OpenAI's API writes them.
/// A chat template sees the parts as `{"type": "text", "text"}` and `{"type": "image"}`, which
/// Gemma 4's template renders as the `<|image|>` placeholder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Default for Content {
    fn default() -> Content {
        Content::Text(String::new())
    }
}

impl From<String> for Content {
    fn from(s: String) -> Content {
        Content::Text(s)
    }
}

impl From<&str> for Content {
    fn from(s: &str) -> Content {
        Content::Text(s.to_string())
    }
}

impl Content {
    /// The text: all of it, or the text parts joined.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => (parts.iter())
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect(),
        }
    }

    /// The image parts, in order.
    pub fn images(&self) -> Vec<&Part> {
        match self {
            Content::Text(_) => Vec::new(),
            Content::Parts(parts) => parts.iter().filter(|p| !matches!(p, Part::Text { .. })).collect(),
        }
    }

    /// What a chat template sees: the text, or the parts with each image as `{"type": "image"}`.
    fn for_template(&self) -> serde_json::Value {
        match self {
            Content::Text(t) => serde_json::Value::String(t.clone()),
            Content::Parts(parts) => (parts.iter())
                .map(|p| match p {
                    Part::Text { text } => serde_json::json!({"type": "text", "text": text}),
                    _ => serde_json::json!({"type": "image"}),
                })
                .collect(),
        }
    }
}

/// One part of a message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text {
        text: String,
    },
    /// OpenAI's image part: `{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`.
    ImageUrl {
        image_url: ImageUrl,
    },
    /// An image file: `{"type": "image", "path": "photo.jpg"}`.
    Image {
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    pub url: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<Content>) -> Message {
        Message { role: role.into(), content: content.into(), ..Message::default() }
    }

    pub fn system(content: impl Into<Content>) -> Message {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<Content>) -> Message {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<Content>) -> Message {
        Message::new("assistant", content)
    }
}

/// The template variables besides `messages`, as apply_chat_template passes them.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    /// End with the opening of a model turn (and, for Gemma 4 with thinking off, the empty
    /// thought channel).
    pub add_generation_prompt: bool,
    pub enable_thinking: bool,
    /// The tool declarations, a JSON list of `{"type": "function", "function": {name,
    /// description, parameters}}`; `None` is Python's `tools=None`.
    pub tools: Option<serde_json::Value>,
    /// Text of the BOS/EOS tokens (see [`ChatTemplate::bos_eos`]).
    pub bos_token: String,
    pub eos_token: String,
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            add_generation_prompt: true,
            enable_thinking: false,
            tools: None,
            bos_token: String::new(),
            eos_token: String::new(),
        }
    }
}

/// Where a template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The GGUF's `tokenizer.chat_template`, or a caller's own text.
    Given,
    BuiltinGemma4,
    BuiltinGemma3,
}

#[derive(Debug, Error)]
pub enum ChatError {
    #[error("chat template syntax error at line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("chat template raised an exception: {message}")]
    Raised { message: String },
    #[error("chat template error{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Render { line: Option<usize>, message: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("metadata {key} = {id} is outside the vocabulary of {n_tokens} tokens")]
    TokenId { key: &'static str, id: u64, n_tokens: usize },
}

impl ChatError {
    fn from_jinja(err: minijinja::Error) -> ChatError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = source {
            if let Some(raised) = e.downcast_ref::<template::Raised>() {
                return ChatError::Raised { message: raised.0.clone() };
            }
            source = e.source();
        }
        let message = match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        };
        match (err.kind(), err.line()) {
            (ErrorKind::SyntaxError, Some(line)) => ChatError::Syntax { line, message },
            (_, line) => ChatError::Render { line, message },
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: Origin,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).field("len", &self.source.len()).finish()
    }
}

impl ChatTemplate {
    /// Compiles a jinja chat template.
    pub fn new(source: impl Into<String>) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::compile(source.into(), Origin::Given)
    }

    /// The GGUF's `tokenizer.chat_template`, or else the built-in template of its
    /// `general.architecture` (Gemma 4's for `gemma4`, Gemma 3's otherwise).
    pub fn from_gguf(header: &GgufHeader) -> Result<ChatTemplate, ChatError> {
        if let Some(source) = header.get(CHAT_TEMPLATE) {
            let source = source
                .as_str()
                .ok_or_else(|| MetadataError::WrongType {
                    key: CHAT_TEMPLATE.into(),
                    expected: "a string",
                    found: source.value_type().to_string(),
                })?
                .to_string();
            return ChatTemplate::compile(source, Origin::Given);
        }
        ChatTemplate::builtin(header.architecture().unwrap_or_default())
    }

    /// The built-in template for an architecture: Gemma 4's for `gemma4`, Gemma 3's otherwise.
    pub fn builtin(architecture: &str) -> Result<ChatTemplate, ChatError> {
        match architecture {
            "gemma4" => ChatTemplate::compile(GEMMA4.into(), Origin::BuiltinGemma4),
            _ => ChatTemplate::compile(GEMMA3.into(), Origin::BuiltinGemma3),
        }
    }

    fn compile(source: String, origin: Origin) -> Result<ChatTemplate, ChatError> {
        let env = template::compile(source.clone()).map_err(ChatError::from_jinja)?;
        Ok(ChatTemplate { env, source, origin })
    }

    /// The texts of the BOS and EOS tokens (`tokenizer.ggml.{bos,eos}_token_id` looked up in
    /// `tokenizer.ggml.tokens`), for [`RenderOptions`].
    pub fn bos_eos(header: &GgufHeader) -> Result<(String, String), ChatError> {
        Ok((token_text(header, BOS_ID)?, token_text(header, EOS_ID)?))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The prompt text for `messages`.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String, ChatError> {
        let tools = opts.tools.as_ref().map_or(Value::from(()), |t| Value::from(Serde(t)));
        // Image parts as the template knows them.
        let messages: Vec<serde_json::Value> = (messages.iter())
            .map(|m| {
                let mut v = serde_json::to_value(m).expect("messages serialize");
                v["content"] = m.content.for_template();
                v
            })
            .collect();
        let context = minijinja::context! {
            messages => Serde(messages),
            tools => tools,
            documents => (),
            add_generation_prompt => opts.add_generation_prompt,
            enable_thinking => opts.enable_thinking,
            bos_token => opts.bos_token.as_str(),
            eos_token => opts.eos_token.as_str(),
        };
        let template = self.env.get_template(template::NAME).map_err(ChatError::from_jinja)?;
        template.render(context).map_err(ChatError::from_jinja)
    }
}

fn token_text(header: &GgufHeader, key: &'static str) -> Result<String, ChatError> {
    let id = header.get_u64(key)?;
    let tokens = header.get_array(TOKENS)?;
    let ggml::gguf::Array::String(tokens) = tokens else {
        return Err(MetadataError::WrongType {
            key: TOKENS.into(),
            expected: "an array of strings",
            found: format!("an array of {}", tokens.elem_type()),
        }
        .into());
    };
    usize::try_from(id).ok().and_then(|i| tokens.get(i)).cloned().ok_or(ChatError::TokenId {
        key,
        id,
        n_tokens: tokens.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, messages: &[Message]) -> Result<String, ChatError> {
        ChatTemplate::new(source)?.render(messages, &RenderOptions::default())
    }

    #[test]
    fn absent_optional_fields_are_undefined() {
        let out = render("{{ messages[0].tool_calls is defined }}{{ messages[0].name }}", &[Message::user("hi")]);
        assert_eq!(out.unwrap(), "False");
    }

    #[test]
    fn strftime_now_formats_local_time() {
        let out = render("{{ strftime_now('%Y-%m-%d') }}", &[]).unwrap();
        assert_eq!(out.len(), 10, "{out}");
        assert!(out.starts_with("20"), "{out}");
    }

    #[test]
    fn render_errors_name_the_line() {
        let err = render("line 1\n{{ messages[0].content.nope() }}", &[Message::user("hi")]).unwrap_err();
        assert!(matches!(err, ChatError::Render { line: Some(2), .. }), "{err}");
    }
}
