//! Image input against transformers on the tiny Gemma 4 with a vision tower of
//! `scripts/tiny-gemma4-vision.py`:
//! - pixels: our decoding and Pillow-exact resizing against `Gemma4ImageProcessorPil` (run by
//!   setup.sh into `models/vision-images/`, every image at budgets 70, 140 and 280);
//! - the encoder and projector (the mmproj llama.cpp's converter writes) against transformers'
//!   float32 vision tower (`tests/fixtures/tiny-gemma4-vision.*.f32`);
//! - the logits of a prompt with two images (soft tokens in place, the bidirectional mask on
//!   sliding layers) against transformers' `Gemma4ForConditionalGeneration`.

use gemma::vision::image::{decode, preprocess};
use gemma::vision::VisionTower;
use ggml::gguf::GgufFile;

mod common;
use common::vision::{f32s, fixture, json, max_abs, models, prompt_logits, root, tower};

/// Decodes and preprocesses every test image of `formats` at every budget and compares with
/// the HF processor's pixels: the largest difference per image and budget.
fn pixel_errors(formats: &[&str]) -> Vec<(String, f32)> {
    let dir = models().join("vision-images");
    let meta = json(&dir.join("pixels.json"));
    let images = meta["images"].as_object().unwrap();
    let mut errors = Vec::new();
    for (file, info) in images.iter().filter(|(f, _)| formats.iter().any(|e| f.ends_with(e))) {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let img = decode(file, &bytes).unwrap();
        for budget in ["70", "140", "280"] {
            let case = &info[budget];
            let pixels = preprocess(&img, 16, 3, budget.parse().unwrap());
            assert_eq!(
                (pixels.width as u64, pixels.height as u64),
                (case["width"].as_u64().unwrap(), case["height"].as_u64().unwrap()),
                "{file} at {budget}: size"
            );
            let want = f32s(&dir.join(case["file"].as_str().unwrap()));
            let got = pixels.patches_yxc();
            let err = max_abs(&got, &want);
            let off = got.iter().zip(&want).filter(|(a, b)| (*a - *b).abs() > 1e-5).count();
            println!(
                "{file} at {budget}: {}x{}, max |diff| {err:.2e}, {off} of {} values off",
                pixels.width,
                pixels.height,
                got.len()
            );
            errors.push((format!("{file} at {budget}"), err));
        }
    }
    errors
}

/// PNG (RGBA over white, 1x1, 4000x300, a real photo, a square), GIF, BMP and JPEG (grayscale,
/// EXIF-rotated 4:2:0, a 4:4:4 photo) at budgets 70, 140 and 280: the pixel values equal the HF
/// processor's to 1e-5 (both are k/255: equal bytes after decoding and resizing give equal
/// floats, up to the rounding of the division).
#[test]
fn pixels_match_the_hf_processor() {
    let errors = pixel_errors(&[".png", ".gif", ".bmp", ".jpg"]);
    assert!(errors.len() >= 30, "{} cases", errors.len());
    let bad: Vec<_> = errors.iter().filter(|(_, e)| *e > 1e-5).collect();
    assert!(bad.is_empty(), "pixels differ from transformers': {bad:?}");
}

/// The encoder's output (pooled, standardized) and the projector's against transformers,
/// float32 mmproj: max abs ≤ 1e-3 (seen: see the printed numbers).
#[test]
fn embeddings_match_transformers() {
    let f = fixture();
    let vision = tower("tiny-gemma4-vision-mmproj-f32.gguf");
    assert!(vision.clamps(), "the tiny model clamps its projections");
    let fixtures = root().join("tests/fixtures");
    for case in f["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == "embeddings") {
        let file = case["images"][0].as_str().unwrap();
        let budget = case["budget"].as_u64().unwrap() as usize;
        let bytes = std::fs::read(models().join("vision-images").join(file)).unwrap();
        let pixels = preprocess(&decode(file, &bytes).unwrap(), 16, 3, budget);
        if let Some(vit) = case["vit"].as_str() {
            let want = f32s(&fixtures.join(vit));
            let got = vision.encoder(&pixels).unwrap();
            let err = max_abs(&got, &want);
            println!("{file} at {budget}: tower output max |diff| {err:.2e}");
            assert!(err <= 1e-3, "{file}: tower {err}");
        }
        let want = f32s(&fixtures.join(case["emb"].as_str().unwrap()));
        let got = vision.encode(&pixels).unwrap();
        assert_eq!(got.len() / 256, case["num_soft_tokens"][0].as_u64().unwrap() as usize);
        let err = max_abs(&got, &want);
        println!("{file} at {budget}: embeddings max |diff| {err:.2e}");
        assert!(err <= 1e-3, "{file}: embeddings {err}");
    }
}

/// The same through the f16 mmproj (weights rounded to 11 bits): a looser bound, stated.
#[test]
fn f16_mmproj_embeddings_stay_close() {
    let f = fixture();
    let vision = tower("tiny-gemma4-vision-mmproj-f16.gguf");
    let case = &f["cases"][0];
    let bytes = std::fs::read(models().join("vision-images/square.png")).unwrap();
    let pixels = preprocess(&decode("square.png", &bytes).unwrap(), 16, 3, 70);
    let want = f32s(&root().join("tests/fixtures").join(case["emb"].as_str().unwrap()));
    let err = max_abs(&vision.encode(&pixels).unwrap(), &want);
    println!("square.png, f16 mmproj: embeddings max |diff| {err:.2e}");
    assert!(err <= 5e-2, "{err}");
}

/// A prompt with two images, run as `gemma run` runs it (text, then each image whole in its
/// own pass beside text): logits against transformers, max abs ≤ 5e-3 and the same top-1 at
/// every position, f32 weights and KV cache.
#[test]
fn prompt_with_images_matches_transformers() {
    let f = fixture();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == "prompt").unwrap();
    let want = f32s(&root().join("tests/fixtures").join(case["logits"].as_str().unwrap()));
    let (ours, n_vocab) = prompt_logits(case, "tiny-gemma4-vision-mmproj-f32.gguf");
    assert_eq!(ours.len(), want.len());
    let argmax = |x: &[f32]| (0..x.len()).fold(0, |m, i| if x[i] > x[m] { i } else { m });
    let (mut top1, mut worst) = (0, 0f32);
    for (a, b) in ours.chunks_exact(n_vocab).zip(want.chunks_exact(n_vocab)) {
        worst = worst.max(max_abs(a, b));
        top1 += usize::from(argmax(a) == argmax(b));
    }
    let n = ours.len() / n_vocab;
    println!("prompt with 2 images, {n} positions: top-1 {top1}/{n}, max |logit diff| {worst:.2e}");
    assert_eq!(top1, n);
    assert!(worst <= 5e-3, "max |logit diff| {worst}");
}

/// What a bad image or mmproj gives: a one-line error naming the file and the problem.
#[test]
fn bad_images_are_named_errors() {
    let err = decode("notes.jpg", b"just some text, not a JPEG").unwrap_err().to_string();
    assert!(err.starts_with("notes.jpg: "), "{err}");
    let png = std::fs::read(models().join("vision-images/rgba.png")).unwrap();
    let err = decode("cut.png", &png[..png.len() / 2]).unwrap_err().to_string();
    assert!(err.starts_with("cut.png: "), "{err}");
    // A text model is not an mmproj.
    let err = VisionTower::load(GgufFile::open(models().join("tiny-gemma4-vision.gguf")).unwrap()).err().unwrap();
    assert_eq!(err.to_string(), "not an mmproj file: it has no clip.vision.projector_type");
}

/// `gemma run --image` end to end: the fixture's prompt text with its two `<|image|>` markers,
/// the images and the budget on the command line. The expanded prompt ids equal the HF
/// processor's and the logits of every position (`--logits-out`) equal transformers' (f32 KV).
#[test]
fn gemma_run_with_images_matches_transformers() {
    let f = fixture();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["kind"] == "logits").unwrap();
    let dir = models().join("vision-images");
    let out = tempfile::tempdir().unwrap();
    let logits = out.path().join("logits.f32");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.args(["run", "-m"]).arg(models().join("tiny-gemma4-vision.gguf"));
    cmd.arg("--mmproj").arg(models().join("tiny-gemma4-vision-mmproj-f32.gguf"));
    for image in case["images"].as_array().unwrap() {
        cmd.arg("--image").arg(dir.join(image.as_str().unwrap()));
    }
    cmd.args(["--image-tokens", "70", "--kv-type", "f32", "-n", "0", "--json", "-p"])
        .arg(case["text"].as_str().unwrap());
    cmd.arg("--logits-out").arg(&logits);
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("square.png: 640x640 -> 384x384, 64 soft tokens"), "{stderr}");
    let done: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(done["prompt_ids"], case["input_ids"]);
    let want = f32s(&root().join("tests/fixtures").join(case["logits"].as_str().unwrap()));
    let err = max_abs(&f32s(&logits), &want);
    println!("gemma run with 2 images: max |logit diff| {err:.2e}");
    assert!(err <= 5e-3, "{err}");
}

/// `gemma run --chat --image`: the image goes into the user turn through the chat template,
/// before the text; the expanded prompt equals the HF processor's `apply_chat_template` with
/// the same image and text (the fixture's `chat` case).
#[test]
fn gemma_run_chat_with_an_image_builds_the_processors_prompt() {
    let f = fixture();
    let case = f["cases"].as_array().unwrap().iter().find(|c| c["name"] == "chat").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["run", "--chat", "-m"])
        .arg(models().join("tiny-gemma4-vision.gguf"))
        .arg("--mmproj")
        .arg(models().join("tiny-gemma4-vision-mmproj-f32.gguf"))
        .arg("--image")
        .arg(models().join("vision-images").join(case["images"][0].as_str().unwrap()))
        .args(["--image-tokens", "70", "-n", "1", "--json", "-p", case["user"].as_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let done: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(done["prompt_ids"], case["input_ids"]);
}

/// An image without an mmproj beside the model, a prompt whose markers do not match the
/// images, and a budget Gemma 4 does not take are one-line errors.
#[test]
fn gemma_run_image_errors() {
    let dir = models().join("vision-images");
    let gemma = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
            .args(["run", "-m"])
            .arg(models().join("tiny-gemma4-vision.gguf"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let square = dir.join("square.png");
    let mmproj = models().join("tiny-gemma4-vision-mmproj-f32.gguf");
    let (square, mmproj) = (square.to_str().unwrap(), mmproj.to_str().unwrap());
    let err = gemma(&["--mmproj", mmproj, "--image", square, "-p", "<|image|><|image|>", "-n", "1"]);
    assert!(err.contains("the prompt has 2 <|image|> markers for 1 image"), "{err}");
    let err = gemma(&["--mmproj", mmproj, "--image", square, "--image-tokens", "100", "-p", "hi"]);
    assert!(err.contains("--image-tokens 100: Gemma 4 takes 70, 140, 280, 560 or 1120"), "{err}");
    let err = gemma(&["--mmproj", mmproj, "--image", "/nonexistent.png", "-p", "hi"]);
    assert!(err.contains("/nonexistent.png: "), "{err}");
}

/// `gemma info` on an mmproj describes the encoder with the checkpoint's vision config (3
/// blocks, hidden 64, 4 heads, feed-forward 96, patch 16, 320 positions, 7 clamped projections
/// per block, projecting to the text model's 256).
#[test]
fn gemma_info_describes_an_mmproj() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
        .arg("info")
        .arg(models().join("tiny-gemma4-vision-mmproj-f16.gguf"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("gemma4v encoder: 3 blocks, hidden 64, 4 heads, feed-forward 96, 16-pixel patches"),
        "{text}"
    );
    assert!(
        text.contains("to a hidden size of 256 (the text model's); positions up to 320 patches a side; 21 clamped"),
        "{text}"
    );
    assert!(text.contains("an image encoder: no KV cache"), "{text}");
}

/// `gemma bench --mmproj` times the encoder on an image: the JSON says how many soft tokens the
/// image became (the 640x640 square at budget 70: 24x24 patches, 64 soft tokens, as
/// transformers' processor makes it) and one sample per repetition.
#[test]
fn gemma_bench_times_the_image_encoder() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["bench", "-m"])
        .arg(models().join("tiny-gemma4-vision.gguf"))
        .args(["-p", "8", "-n", "2", "-r", "2", "-o", "json", "--image-tokens", "70", "--mmproj"])
        .arg(models().join("tiny-gemma4-vision-mmproj-f16.gguf"))
        .arg("--image")
        .arg(models().join("vision-images/square.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = json.as_array().unwrap().iter().find(|r| r["test"] == "image64").expect("an image64 entry");
    assert_eq!((t["width"].as_u64(), t["height"].as_u64(), t["n_patches"].as_u64()), (Some(384), Some(384), Some(576)));
    assert_eq!(t["n_soft"], 64);
    assert_eq!(t["samples_ms"].as_array().unwrap().len(), 2);
    assert!(t["avg_ms"].as_f64().unwrap() > 0.0);
}

/// `gemma run --jsonl` with OpenAI-style image parts: a file path and the same file as a
/// base64 data URL give the same prompt and the same reply; the prompt is the chat template's
/// with each image expanded to `<|image>`, its soft tokens and `<image|>`; asking again reuses
/// the cache past the image, a different image is not reused, and a bad image is an error
/// object for that line only.
#[test]
fn jsonl_messages_with_images() {
    use base64::Engine;
    let dir = models().join("vision-images");
    let square = dir.join("square.png");
    let data = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&square).unwrap());
    let ask = |image: serde_json::Value| {
        serde_json::json!({"messages": [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}],
                           "n_predict": 4, "temperature": 0})
        .to_string()
    };
    let lines = [
        ask(serde_json::json!({"type": "image", "path": square.to_str().unwrap()})),
        ask(serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}})),
        ask(serde_json::json!({"type": "image", "path": dir.join("rgba.png").to_str().unwrap()})),
        ask(serde_json::json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}})),
        ask(serde_json::json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}})),
    ];
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["run", "--jsonl", "-q", "--image-tokens", "70", "-m"])
        .arg(models().join("tiny-gemma4-vision.gguf"))
        .arg("--mmproj")
        .arg(models().join("tiny-gemma4-vision-mmproj-f32.gguf"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let replies: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(replies.len(), 5);
    let (a, b, c) = (&replies[0], &replies[1], &replies[2]);
    assert!(a["error"].is_null(), "{a}");
    let ids: Vec<u64> = a["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // <|image> (6), 64 soft tokens (7), <image|> (8), once.
    let boi = ids.iter().position(|&t| t == 6).expect("<|image>");
    assert!(ids[boi + 1..boi + 65].iter().all(|&t| t == 7) && ids[boi + 65] == 8, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&t| t == 7).count(), 64);
    assert_eq!(b["prompt_ids"], a["prompt_ids"]);
    assert_eq!(b["text"], a["text"]);
    assert!(b["cached_tokens"].as_u64().unwrap() > (boi + 65) as u64, "{b}");
    assert!(c["cached_tokens"].as_u64().unwrap() <= (boi + 1) as u64, "a different image is not reused: {c}");
    assert!(replies[3]["error"].as_str().unwrap().starts_with("image 1: "), "{}", replies[3]);
    assert!(replies[4]["error"].as_str().unwrap().contains("remote images are not fetched"), "{}", replies[4]);
}

/// `gemma chat` with `/image`: the image is encoded when attached (its size and soft tokens
/// said), goes with the next message (the prompt holds its 64 soft tokens), stays in the cache
/// for the next turn (only the new turn is prefilled), is kept by `/save`, and a missing file is
/// a note after which the chat goes on.
#[test]
fn chat_image_command() {
    use rexpect::session::spawn_with_options;
    let data = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.args(["chat", "--temp", "0", "-n", "3", "--image-tokens", "70", "-m"])
        .arg(models().join("tiny-gemma4-vision.gguf"));
    cmd.arg("--mmproj").arg(models().join("tiny-gemma4-vision-mmproj-f32.gguf"));
    cmd.env("NO_COLOR", "1").env("TERM", "xterm").env("XDG_DATA_HOME", data.path());
    let options = rexpect::reader::Options::new().timeout_ms(Some(60_000)).strip_ansi_escape_codes(true);
    let mut p = spawn_with_options(cmd, options).unwrap();
    p.exp_string(">>> ").unwrap();
    p.send_line("/image /nonexistent/cat.png").unwrap();
    p.exp_string("error: /nonexistent/cat.png: ").unwrap();
    p.exp_string(">>> ").unwrap();
    let square = models().join("vision-images/square.png");
    p.send_line(&format!("/image {}", square.display())).unwrap();
    p.exp_string("(640x640, 64 soft tokens): it goes with your next message.").unwrap();
    p.send_line("What is it?").unwrap();
    let (_, footer) = p.exp_regex(r"prefilled (\d+) of (\d+) prompt tokens").unwrap();
    let n: Vec<usize> =
        footer.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert!(n[1] > 64 && n[0] == n[1], "the first prompt runs whole, image included: {footer}");
    p.exp_string(">>> ").unwrap();
    p.send_line("And now?").unwrap();
    let (_, footer) = p.exp_regex(r"prefilled (\d+) of (\d+) prompt tokens").unwrap();
    let n: Vec<usize> =
        footer.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap()).collect();
    assert!(n[0] < n[1] - 64, "the image stays in the cache: {footer}");
    p.exp_string(">>> ").unwrap();
    let saved = data.path().join("chat.json");
    p.send_line(&format!("/save {}", saved.display())).unwrap();
    p.exp_string("Saved 4 messages").unwrap();
    p.send_line("/exit").unwrap();
    p.exp_eof().unwrap();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    let first = &json["messages"][0]["content"];
    assert_eq!(first[0], serde_json::json!({"type": "image", "path": square.display().to_string()}));
    assert_eq!(first[1], serde_json::json!({"type": "text", "text": "What is it?"}));
}
