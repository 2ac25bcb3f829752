//! `gemma serve` end to end: each test starts the real server on a free localhost port, drives
//! it with the official `openai` Python client and raw HTTP (`tests/serve_openai.py`, which
//! asserts the details), checks the server's log, and stops it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> String {
    let path = root().join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/setup.sh", path.display());
    path.display().to_string()
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    model: String,
}

impl Server {
    /// `gemma serve -m MODEL --port 0 -t 2 FLAGS`, once it has loaded the model.
    fn start(model_name: &str, flags: &[&str]) -> Server {
        let model = model(model_name);
        let mut child = Command::new(env!("CARGO_BIN_EXE_gemma"))
            .args(["serve", "-m", &model, "--port", "0", "-t", "2"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting gemma serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("gemma serve: listening on ") {
                    let _ = tx.send(Ok(addr.to_string()));
                }
                if line.starts_with("gemma serve: model loaded") {
                    let _ = tx.send(Err(()));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut base, mut loaded) = (None, false);
        while base.is_none() || !loaded {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(addr)) => base = Some(addr),
                Ok(Err(())) => loaded = true,
                Err(_) => panic!("the server did not start: {:?}", log.lock().unwrap()),
            }
        }
        Server { child, base: base.unwrap(), log, model }
    }

    /// Runs a check of `serve_openai.py`; its stdout.
    fn check(&self, check: &str, extra: &[&str]) -> String {
        let python = root().join(".venv/bin/python");
        assert!(python.exists(), "the venv is missing: run scripts/setup.sh");
        let pid = self.child.id().to_string();
        let out = Command::new(python)
            .arg(root().join("tests/serve_openai.py"))
            .args([check, "--base", &self.base, "--gemma", env!("CARGO_BIN_EXE_gemma"), "--model", &self.model])
            .args(["--pid", &pid])
            .args(extra)
            .output()
            .expect("running tests/serve_openai.py");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{check}: {stdout}\n{stderr}\nserver log:\n{}", self.log().join("\n"));
        stdout.into_owned()
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The status of every request line in the log.
    fn statuses(&self) -> Vec<u16> {
        (self.log().iter())
            .filter(|l| l.starts_with("GET ") || l.starts_with("POST "))
            .map(|l| l.split(' ').nth(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("log line {l:?}")))
            .collect()
    }

    /// Nothing in the log but the listening and loaded lines and request lines.
    fn assert_clean_log(&self, allowed: &[u16]) {
        for line in self.log() {
            let request = line.starts_with("GET ") || line.starts_with("POST ");
            assert!(request || line.starts_with("gemma serve: "), "unexpected log line {line:?}");
            assert!(!line.contains("panicked"), "{line}");
        }
        for status in self.statuses() {
            assert!(allowed.contains(&status), "status {status} in the log: {:?}", self.log());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's view: models, chat (streamed chunks concatenate to the non-streamed text, which
/// is `gemma run --chat`'s), prompt caching, completions from token ids, health, tokenize,
/// detokenize, metrics.
#[test]
fn openai_client_chat_completions_and_utility_endpoints() {
    let server = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "2", "-c", "2048"]);
    assert!(server.check("api", &[]).contains("api ok"));
    server.assert_clean_log(&[200]);
    // One line per request: method, path, status, tokens, ms.
    let chat: Vec<String> =
        server.log().into_iter().filter(|l| l.starts_with("POST /v1/chat/completions 200 ")).collect();
    assert_eq!(chat.len(), 3, "{chat:?}");
    assert!(chat.iter().all(|l| l.ends_with(" ms") && l.contains(" tokens ")), "{chat:?}");
}

/// A tool round trip on the 26B-A4B's own template and vocabulary (the 2-layer synthetic
/// model): OpenAI's assistant tool_calls and tool message run the same prompt as the template's
/// own form through `gemma run --jsonl`.
#[test]
fn a_tool_round_trip_renders_as_the_gemma4_template_wants() {
    let server = Server::start("synth-gemma4-2l-v1.gguf", &["--parallel", "1", "-c", "1024"]);
    assert!(server.check("tools", &[]).contains("tools ok"));
    server.assert_clean_log(&[200]);
}

/// Images in chat messages on the tiny vision model (see `check_images`), two slots.
#[test]
fn images_in_chat_messages() {
    let mmproj = model("tiny-gemma4-vision-mmproj-f32.gguf");
    let flags = ["--parallel", "2", "-c", "1024", "--mmproj", &mmproj, "--image-tokens", "70"];
    let server = Server::start("tiny-gemma4-vision.gguf", &flags);
    assert!(server.check("images", &["--mmproj", &mmproj]).contains("images ok"));
    server.assert_clean_log(&[200, 400]);
}

/// Every error case gets its status and an OpenAI-shaped JSON error, and the server goes on.
#[test]
fn errors_are_openai_json_with_their_status() {
    let server = Server::start(
        "gemma-3-270m-q4_k_m.gguf",
        &["--parallel", "2", "-c", "512", "--api-key", "secret", "--max-body", "1"],
    );
    assert!(server.check("errors", &["--key", "secret"]).contains("errors ok"));
    server.assert_clean_log(&[200, 400, 401, 404, 405, 413]);
    let statuses = server.statuses();
    for status in [400, 401, 404, 405, 413] {
        assert!(statuses.contains(&status), "{status} not logged: {statuses:?}");
    }
}

/// One slot and a queue of one: the third request at once is a 503 with Retry-After.
#[test]
fn a_full_queue_turns_requests_away_with_503() {
    let server = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "1", "--queue", "1", "-b", "16"]);
    assert!(server.check("busy", &[]).contains("busy ok"));
    server.assert_clean_log(&[200, 503]);
}

/// Batching is exact: the same 8 prompts (mixed lengths), all at once with --parallel 4, give
/// the texts they get one at a time with --parallel 1, on Gemma 3 and on Gemma 4's MoE.
#[test]
fn replies_batched_together_equal_replies_served_alone() {
    for model in ["gemma-3-270m-q4_k_m.gguf", "tiny-gemma4-moe.gguf"] {
        let batched = Server::start(model, &["--parallel", "4", "-c", "4096", "-b", "64"]);
        let together = batched.check("batching", &[]);
        drop(batched);
        let alone = Server::start(model, &["--parallel", "1", "-c", "1024"]);
        let one_by_one = alone.check("batching", &["--sequential"]);
        let texts: Vec<String> = serde_json::from_str(&together).unwrap();
        assert_eq!(texts.len(), 8);
        assert!(texts.iter().any(|t| !t.is_empty()), "{model}: {texts:?}");
        assert_eq!(together, one_by_one, "{model}");
    }
}

/// 200 requests from 16 clients, a quarter streaming, some disconnecting: all answered or
/// turned away, none mixed up, RSS flat after warm-up, only the intended statuses logged.
#[test]
fn a_load_of_200_requests_from_16_clients() {
    let server = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "4", "-c", "8192", "--queue", "16"]);
    let out = server.check("load", &[]);
    assert!(out.contains("load ok"), "{out}");
    println!("{out}");
    // 499: a client that went away mid-stream.
    server.assert_clean_log(&[200, 499, 503]);
    let statuses = server.statuses();
    assert_eq!(statuses.len(), 200, "one log line per request");
    assert!(statuses.contains(&499), "the early disconnects are logged");
}

/// A client that leaves mid-stream frees its slot within a step.
#[test]
fn a_disconnect_cancels_the_request() {
    let server = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "1"]);
    assert!(server.check("disconnect", &[]).contains("disconnect ok"));
    server.assert_clean_log(&[200, 499]);
}

/// A non-loopback address without a key is warned about; a port in use is a clear error.
#[test]
fn listening_address_checks() {
    let first = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "1"]);
    let port = first.base.rsplit(':').next().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["serve", "-m", &model("gemma-3-270m-q4_k_m.gguf"), "--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{err}");
    drop(first);

    let open = Server::start("gemma-3-270m-q4_k_m.gguf", &["--parallel", "1", "--host", "0.0.0.0"]);
    assert!(open.log().iter().any(|l| l.contains("warning") && l.contains("--api-key")), "{:?}", open.log());
    assert!(Path::new(&open.model).exists());
}
