//! `gemma run` in shell pipelines, on the real Gemma 3 270M: `--jsonl` answers every request
//! line with one response line in order (a bad line with an error object, and the stream goes
//! on), its greedy texts are those of `gemma run -p`, a prompt on stdin gives the completion
//! alone on stdout, and usage errors exit with status 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

const GEMMA3: &str = "gemma-3-270m-q4_k_m.gguf";

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path
}

/// `gemma run -m 270M ARGS` with `stdin` piped in.
fn run(args: &[&str], stdin: &str) -> Output {
    run_model(GEMMA3, args, stdin)
}

fn run_model(name: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["run", "-m"])
        .arg(model(name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const PROMPTS: [&str; 2] = ["The capital of France is", "Once upon a time"];

#[test]
fn jsonl_answers_each_line_and_matches_single_runs() {
    let requests = [
        json!({"id": 1, "prompt": PROMPTS[0], "n_predict": 8, "temperature": 0}).to_string(),
        r#"{"id": 2, "prompt": "unterminated"#.to_string(),
        json!({"id": "three", "prompt": PROMPTS[1], "n_predict": 8, "temperature": 0}).to_string(),
        json!({"id": 4, "prompt": PROMPTS[1], "n_predict": 8, "temperture": 0}).to_string(),
    ];
    let out = run(&["--jsonl"], &(requests.join("\n") + "\n\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("4 requests answered, 2 with an error"), "{stderr}");
    let responses = lines(&out);
    assert_eq!(responses.len(), 4, "{responses:?}");

    assert_eq!(responses[1]["id"], Value::Null, "no id can be read from broken JSON");
    assert!(responses[1]["error"].as_str().unwrap().starts_with("invalid JSON"), "{}", responses[1]);
    assert_eq!(responses[3]["id"], 4);
    assert!(responses[3]["error"].as_str().unwrap().contains("unknown field `temperture`"), "{}", responses[3]);

    for (response, (id, prompt)) in
        [&responses[0], &responses[2]].into_iter().zip([(json!(1), PROMPTS[0]), (json!("three"), PROMPTS[1])])
    {
        let single = run(&["-p", prompt, "-n", "8", "--temp", "0", "--json", "-q"], "");
        assert!(single.status.success());
        let single: Value = serde_json::from_slice(&single.stdout).unwrap();
        assert_eq!(response["id"], id);
        assert_eq!(response["text"], single["text"], "{prompt}");
        assert_eq!(response["prompt_tokens"], single["prompt_ids"].as_array().unwrap().len());
        assert_eq!(response["prompt_ids"], single["prompt_ids"]);
        assert_eq!(response["completion_tokens"], 8);
        assert_eq!(response["stop_reason"], "length");
        assert!(response["timings"]["generation_tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(response.get("error").is_none());
    }
    // The second prompt shares its BOS with the first: the cache kept it.
    assert_eq!(responses[2]["cached_tokens"], 1);
}

/// A batch of 100 requests (one malformed) gives 100 lines, in order, with `messages`
/// requests rendered by the chat template and `stop` honoured. On the tiny random Gemma 4
/// (its real chat template; noise for text), which is fast enough for 100 requests in a test.
#[test]
fn a_hundred_requests_in_order() {
    let mut requests: Vec<String> = (0..100)
        .map(|i| match i % 3 {
            0 => json!({"id": i, "prompt": format!("Item {i}:"), "n_predict": 4, "temperature": 0}).to_string(),
            1 => json!({"id": i, "messages": [{"role": "user", "content": format!("Say {i}")}], "n_predict": 4})
                .to_string(),
            _ => json!({"id": i, "prompt": format!("Number {i}"), "n_predict": 4, "stop": ["e"]}).to_string(),
        })
        .collect();
    requests[57] = "{\"id\": 57, \"prompt\": 5}".into();
    let out = run_model("tiny-gemma4-moe.gguf", &["--jsonl", "-q", "-s", "1"], &(requests.join("\n") + "\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "-q: nothing on stderr");
    let responses = lines(&out);
    assert_eq!(responses.len(), 100);
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r["id"], i, "{r}");
        assert_eq!(r.get("error").is_some(), i == 57, "{r}");
    }
    assert!(responses[57]["error"].as_str().unwrap().contains("invalid type"), "{}", responses[57]);
    for r in responses.iter().filter(|r| r.get("error").is_none()) {
        let text = r["text"].as_str().unwrap();
        match r["stop_reason"].as_str().unwrap() {
            "stop_string" => assert!(!text.contains('e') && r["id"].as_u64().unwrap() % 3 == 2, "{r}"),
            "length" => assert_eq!(r["completion_tokens"], 4, "{r}"),
            "eog" => {}
            other => panic!("stop_reason {other}: {r}"),
        }
    }
}

#[test]
fn stdin_prompt_gives_the_completion_alone() {
    let piped = run(&["-n", "6", "--temp", "0", "-q"], PROMPTS[1]);
    let flag = run(&["-p", PROMPTS[1], "-n", "6", "--temp", "0", "-q"], "");
    assert!(piped.status.success());
    assert!(piped.stderr.is_empty(), "{}", String::from_utf8_lossy(&piped.stderr));
    assert!(!piped.stdout.is_empty());
    assert_eq!(piped.stdout, flag.stdout);
}

#[test]
fn usage_errors_exit_with_2() {
    for args in [
        &["--jsonl", "-p", "hi"][..],
        &["--jsonl", "--json"],
        &["-p", "hi", "-c", "0"],
        &["-p", "hi", "--think"],
        &["-p", "hi", "--system", "x"],
    ] {
        let out = run(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
    }
    let out = run(&["-p", "hi", "--top-p", "1.5"], "");
    assert_eq!(out.status.code(), Some(1), "a bad value found at run time is a runtime error");
}
