//! `gemma chat` end to end through a pseudo-terminal, on the real Gemma 3 270M (a base model:
//! the replies are not smart; these tests check the mechanics): a second turn prefills only its
//! new tokens, /reset starts over, Ctrl-C stops a long reply and returns to the prompt at once
//! (the partial reply stays), Ctrl-C twice at an empty prompt and Ctrl-D leave with status 0.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use regex::Regex;
use rexpect::process::WaitStatus;
use rexpect::reader::Options;
use rexpect::session::{spawn_with_options, PtySession};

fn model() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/gemma-3-270m-q4_k_m.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

/// `gemma chat` on the 270M, greedy, in a terminal without colors, its history in `data`.
fn chat(args: &[&str], data: &Path) -> PtySession {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.args(["chat", "--temp", "0", "-m"]).arg(model()).args(args);
    cmd.env("NO_COLOR", "1").env("TERM", "xterm").env("XDG_DATA_HOME", data);
    let options = Options::new().timeout_ms(Some(30_000)).strip_ansi_escape_codes(true);
    let mut p = spawn_with_options(cmd, options).unwrap();
    p.exp_string(">>> ").unwrap();
    p
}

/// The stats footer after a reply.
#[derive(Debug)]
struct Footer {
    generated: usize,
    context_used: usize,
    prefilled: usize,
    prompt: usize,
    /// Why the reply ended, when not by the model's own end of turn.
    reason: String,
}

fn footer(p: &mut PtySession) -> Footer {
    let re = Regex::new(
        r"\[(\d+) tokens, [\d.]+ tok/s \| context (\d+)/\d+ \| prefilled (\d+) of (\d+) prompt tokens, [\d.]+ tok/s(?: \| ([a-z ]+))?\]",
    )
    .unwrap();
    let (_, line) = p.exp_regex(re.as_str()).unwrap();
    let caps = re.captures(&line).unwrap();
    let number = |i: usize| caps[i].parse().unwrap();
    Footer {
        generated: number(1),
        context_used: number(2),
        prefilled: number(3),
        prompt: number(4),
        reason: caps.get(5).map_or("", |m| m.as_str()).to_string(),
    }
}

/// The exit code once the chat has ended by itself.
fn exit_code(p: &mut PtySession) -> Option<i32> {
    p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        WaitStatus::Exited(_, code) => Some(code),
        other => panic!("the chat did not exit: {other:?}"),
    }
}

#[test]
fn two_turns_reuse_the_cache_and_reset_starts_over() {
    let data = tempfile::tempdir().unwrap();
    let mut p = chat(&["-n", "6"], data.path());

    p.send_line("Hello there").unwrap();
    let first = footer(&mut p);
    assert_eq!(first.prefilled, first.prompt, "{first:?}");
    assert_eq!(first.context_used, first.prompt + first.generated - 1, "{first:?}");

    p.exp_string(">>> ").unwrap();
    p.send_line("What is the capital of France?").unwrap();
    let second = footer(&mut p);
    eprintln!("turn 1: {first:?}\nturn 2: {second:?}");
    // Turn 1's prompt (and usually its reply) is reused: only the new tokens run.
    let reused = second.prompt - second.prefilled;
    assert!(reused >= first.prompt, "turn 2 reused {reused} tokens of turn 1's {}", first.prompt);
    assert!(second.prefilled < second.prompt - first.prompt + first.generated, "{second:?}");

    p.exp_string(">>> ").unwrap();
    p.send_line("/reset").unwrap();
    p.exp_string("New conversation.").unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("Hello there").unwrap();
    let again = footer(&mut p);
    assert_eq!((again.prompt, again.prefilled), (first.prompt, first.prompt), "after /reset everything runs again");

    p.exp_string(">>> ").unwrap();
    p.send_control('d').unwrap();
    assert_eq!(exit_code(&mut p), Some(0));

    let history = std::fs::read_to_string(data.path().join("gemma/chat-history.txt")).unwrap();
    assert!(history.contains("What is the capital of France?"), "{history}");
}

#[test]
fn ctrl_c_stops_a_reply_and_twice_at_the_prompt_leaves() {
    let data = tempfile::tempdir().unwrap();
    let mut p = chat(&["-n", "5000"], data.path());

    p.send_line("Count from one to one thousand: one, two, three,").unwrap();
    // The greedy reply repeats itself for thousands of tokens: interrupt it once a few words
    // of it are out (words with their punctuation: "One, two, three," with today's kernels).
    p.exp_regex(r"three,\r?\n\S+ \S+ \S+").unwrap();
    let start = Instant::now();
    p.send_control('c').unwrap();
    let stopped = footer(&mut p);
    let latency = start.elapsed();
    p.exp_string(">>> ").unwrap();
    eprintln!("Ctrl-C to the footer: {latency:?}; {stopped:?}");
    assert_eq!(stopped.reason, "stopped", "{stopped:?}");
    assert!(stopped.generated > 0 && stopped.generated < 5000, "{stopped:?}");
    assert!(latency < Duration::from_millis(500), "Ctrl-C took {latency:?} to stop the reply");

    // The partial reply stays in the conversation.
    p.send_line("/stats").unwrap();
    p.exp_string("conversation: 2 messages").unwrap();

    p.exp_string(">>> ").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("Press Ctrl-C again to leave").unwrap();
    p.send_control('c').unwrap();
    assert_eq!(exit_code(&mut p), Some(0));
}
