//! Gemma 4 chat requests end to end through the real binary: every case of
//! `tests/fixtures/chat-gemma4.json` (Python jinja2's rendering of the real Gemma 4 template,
//! from `scripts/chat-template-fixtures.py`) sent to `gemma run --jsonl` as
//! `{"messages", "tools", "think"}` reaches the model as exactly the tokens of the rendered
//! text: special tokens parsed, one BOS. On the 2-layer synthetic 26B-A4B, which carries the
//! real Gemma 4 vocabulary and chat template (its weights are noise, so no text is checked).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use gemma::tokenizer::Tokenizer;
use ggml::gguf::GgufFile;
use serde::Deserialize;
use serde_json::{json, Value};

const SYNTH: &str = "models/synth-gemma4-2l-v1.gguf";

#[derive(Deserialize)]
struct Fixture {
    bos_token: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Value,
    tools: Option<Value>,
    enable_thinking: bool,
    add_generation_prompt: bool,
    expected: String,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The synthetic model; missing is a failure that says how to make it, not a skip.
fn synth() -> PathBuf {
    let path = root().join(SYNTH);
    assert!(
        path.exists(),
        "{} is missing: make it with `cargo run --release --features oracle --example synth_gemma4 -- {SYNTH} \
         --layers 2` (scripts/test.sh does)",
        path.display()
    );
    path
}

#[test]
fn jsonl_chat_requests_reach_the_model_as_the_jinja2_rendering() {
    let model = synth();
    let text = std::fs::read_to_string(root().join("tests/fixtures/chat-gemma4.json")).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    // `gemma run --jsonl` always asks for the generation prompt.
    let cases: Vec<&Case> = fixture.cases.iter().filter(|c| c.add_generation_prompt).collect();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    for wanted in ["system_two_turns", "tool_call_and_response", "tool_answer_after_response"] {
        for think in ["thinking_on", "thinking_off"] {
            let name = format!("{wanted}/{think}");
            assert!(names.contains(&name.as_str()), "the fixture lacks {name}: {names:?}");
        }
    }

    let requests: String = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut request = json!({"id": i, "messages": c.messages, "think": c.enable_thinking, "n_predict": 0});
            if let Some(tools) = &c.tools {
                request["tools"] = tools.clone();
            }
            request.to_string() + "\n"
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["run", "--jsonl", "-q", "-m"])
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(requests.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let responses: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(responses.len(), cases.len());

    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&model).unwrap().header).unwrap();
    let bos = tokenizer.bos().expect("Gemma 4 has a BOS");
    assert_eq!(tokenizer.encode(&fixture.bos_token, false, true), [bos]);
    let mut failures = Vec::new();
    for (i, (case, response)) in cases.iter().zip(&responses).enumerate() {
        assert_eq!(response["id"], i, "{}: {response}", case.name);
        let Some(got) = response["prompt_ids"].as_array() else {
            failures.push(format!("{}: no prompt_ids in {response}", case.name));
            continue;
        };
        let got: Vec<u32> = got.iter().map(|id| id.as_u64().unwrap() as u32).collect();
        // The rendered text starts with its own `<bos>`: no BOS is added to it.
        let want = tokenizer.encode(&case.expected, false, true);
        assert_eq!(want.iter().filter(|&&id| id == bos).count(), 1, "{}: {want:?}", case.name);
        assert_eq!(want[0], bos, "{}", case.name);
        assert_eq!(response["prompt_tokens"], got.len(), "{}", case.name);
        assert_eq!(response["completion_tokens"], 0, "{}", case.name);
        eprintln!("{}: {} tokens, {} cached", case.name, got.len(), response["cached_tokens"]);
        if got != want {
            let at = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
            failures.push(format!(
                "{}: {} tokens, want {}; first difference at {at}:\n  want {:?}\n  got  {:?}",
                case.name,
                got.len(),
                want.len(),
                tokenizer.decode_all(&want[at..], true),
                tokenizer.decode_all(&got[at..], true),
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}
