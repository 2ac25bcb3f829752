//! Chat templates against Python's jinja2 as transformers' apply_chat_template runs it
//! (fixtures from `scripts/chat-template-fixtures.py`): the real Gemma 4 template from
//! `models/ggml-vocab-gemma-4.gguf` on plain, tool-calling and thinking conversations, our
//! environment on small templates for the jinja features HF templates use, and the built-in
//! Gemma 4 / Gemma 3 templates.

use std::path::PathBuf;

use gemma::chat::{ChatError, ChatTemplate, Message, Origin, RenderOptions};
use ggml::gguf::GgufFile;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    #[serde(default)]
    template: Option<String>,
    messages: Vec<Message>,
    tools: Option<serde_json::Value>,
    enable_thinking: bool,
    add_generation_prompt: bool,
    expected: String,
}

impl Case {
    fn options(&self, fixture: &Fixture) -> RenderOptions {
        RenderOptions {
            add_generation_prompt: self.add_generation_prompt,
            enable_thinking: self.enable_thinking,
            tools: self.tools.clone(),
            bos_token: fixture.bos_token.clone(),
            eos_token: fixture.eos_token.clone(),
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> Fixture {
    let path = root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn vocab_gguf() -> GgufFile {
    let path = root().join("models/ggml-vocab-gemma-4.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    GgufFile::open(path).unwrap()
}

/// Renders every case and reports all mismatches at once.
fn check_cases(fixture: &Fixture, template_for: impl Fn(&Case) -> ChatTemplate) {
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let got = template_for(case).render(&case.messages, &case.options(fixture));
        match got {
            Ok(got) if got == case.expected => {}
            Ok(got) => failures.push(format!("{}:\n  want {:?}\n  got  {:?}", case.name, case.expected, got)),
            Err(err) => failures.push(format!("{}: {err}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        fixture.cases.len(),
        failures.join("\n")
    );
}

#[test]
fn gemma4_gguf_template_matches_jinja2() {
    let file = vocab_gguf();
    let template = ChatTemplate::from_gguf(&file.header).unwrap();
    assert_eq!(template.origin(), Origin::Given);
    let fixture = fixture("chat-gemma4.json");
    assert_eq!(ChatTemplate::bos_eos(&file.header).unwrap(), (fixture.bos_token.clone(), fixture.eos_token.clone()));
    check_cases(&fixture, |_| ChatTemplate::from_gguf(&file.header).unwrap());
}

#[test]
fn jinja_features_match_jinja2() {
    let fixture = fixture("chat-features.json");
    check_cases(&fixture, |case| ChatTemplate::new(case.template.clone().unwrap()).unwrap());
}

fn plain_conversation() -> Vec<Message> {
    vec![
        Message::system(" Be brief. "),
        Message::user("Hi!"),
        Message::assistant("<|channel>thought\nGreet back.<channel|>Hello."),
        Message::user("How are you?\n"),
    ]
}

fn options(enable_thinking: bool) -> RenderOptions {
    RenderOptions {
        add_generation_prompt: true,
        enable_thinking,
        tools: None,
        bos_token: "<bos>".into(),
        eos_token: "<eos>".into(),
    }
}

#[test]
fn builtin_gemma4_two_turns() {
    let template = ChatTemplate::builtin("gemma4").unwrap();
    assert_eq!(template.origin(), Origin::BuiltinGemma4);
    assert_eq!(
        template.render(&plain_conversation(), &options(false)).unwrap(),
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi!<turn|>\n<|turn>model\nHello.<turn|>\n\
         <|turn>user\nHow are you?<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    );
    assert_eq!(
        template.render(&plain_conversation(), &options(true)).unwrap(),
        "<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nHi!<turn|>\n<|turn>model\nHello.<turn|>\n\
         <|turn>user\nHow are you?<turn|>\n<|turn>model\n"
    );
}

/// For plain text messages the built-in renders exactly what Google's template renders.
#[test]
fn builtin_gemma4_matches_real_template_on_plain_text() {
    let real = ChatTemplate::from_gguf(&vocab_gguf().header).unwrap();
    let builtin = ChatTemplate::builtin("gemma4").unwrap();
    let conversations = [
        plain_conversation(),
        plain_conversation()[1..].to_vec(),
        vec![Message::user("one")],
        vec![Message::new("developer", "dev\n"), Message::user("x"), Message::assistant("  y  ")],
        vec![Message::user("a"), Message::assistant("<|channel>t<channel|>b<|channel>u<channel|> c")],
    ];
    for messages in &conversations {
        for thinking in [false, true] {
            for generation_prompt in [false, true] {
                let opts = RenderOptions { add_generation_prompt: generation_prompt, ..options(thinking) };
                let want = real.render(messages, &opts).unwrap();
                assert_eq!(builtin.render(messages, &opts).unwrap(), want, "{messages:?} {opts:?}");
            }
        }
    }
}

#[test]
fn builtin_gemma3_two_turns() {
    let template = ChatTemplate::builtin("gemma3").unwrap();
    assert_eq!(template.origin(), Origin::BuiltinGemma3);
    assert_eq!(
        template.render(&plain_conversation(), &options(false)).unwrap(),
        "<bos><start_of_turn>user\n Be brief. \n\nHi!<end_of_turn>\n\
         <start_of_turn>model\n<|channel>thought\nGreet back.<channel|>Hello.<end_of_turn>\n\
         <start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n"
    );
    let err = template.render(&[Message::user("a"), Message::user("b")], &options(false)).unwrap_err();
    assert!(matches!(&err, ChatError::Raised { message } if message.contains("alternate")), "{err}");
}

#[test]
fn gguf_without_template_gets_the_builtin() {
    // The real Gemma 3 270M GGUF is the base model: no chat template, architecture gemma3.
    let path = root().join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    let file = GgufFile::open(path).unwrap();
    assert!(file.header.get("tokenizer.chat_template").is_none());
    let template = ChatTemplate::from_gguf(&file.header).unwrap();
    assert_eq!(template.origin(), Origin::BuiltinGemma3);
    let (bos, eos) = ChatTemplate::bos_eos(&file.header).unwrap();
    assert_eq!((bos.as_str(), eos.as_str()), ("<bos>", "<eos>"));
}

#[test]
fn raise_exception_becomes_a_chat_error() {
    let template =
        ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('bad role') }}{% endif %}").unwrap();
    let err = template.render(&[Message::system("x")], &RenderOptions::default()).unwrap_err();
    assert!(matches!(&err, ChatError::Raised { message } if message == "bad role"), "{err:?}");
    assert!(err.to_string().contains("bad role"), "{err}");
}

#[test]
fn syntax_error_names_the_line() {
    let err = ChatTemplate::new("{{ bos_token }}\n{% for m in messages %}\n{{ m.content }\n{% endfor %}").unwrap_err();
    assert!(matches!(err, ChatError::Syntax { line: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("line 3"), "{err}");
}
