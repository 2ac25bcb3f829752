//! `quantize` on the tiny Gemma 4 checkpoints of `scripts/tiny-gemma4-hf.py`, against what
//! llama.cpp's own converter made of them (`fixtures/NAME.convert.json`, written by the same
//! script's `oracle` mode) and against `models/tiny-gemma4-moe.gguf` (scripts/tiny-gemma4.py).

mod common;

use std::collections::HashMap;

use common::*;

fn fixture(name: &str) -> serde_json::Value {
    let path = root().join(format!("quantize/tests/fixtures/{name}.convert.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn fixture_tensors(out: &serde_json::Value) -> Vec<Tensor> {
    out["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| Tensor {
            name: t[0].as_str().unwrap().into(),
            ty: t[1].as_str().unwrap().into(),
            dims: t[2].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(),
            sha256: t[3].as_str().unwrap().into(),
        })
        .collect()
}

/// F32, F16 and BF16 are what llama.cpp's converter writes: the same metadata keys in the same
/// order with the same types and values (the model's name aside), and the same tensors in the
/// same order, byte for byte.
#[test]
fn float_outputs_are_the_converters() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let fx = fixture(name);
        for ty in ["F32", "F16", "BF16"] {
            let out = dir.path().join(format!("{name}-{ty}.gguf"));
            convert(&checkpoint(name), &out, ty);
            let ours = read(&out);
            let want: Vec<(String, (String, serde_json::Value))> = fx["metadata"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| !is_provenance(m[0].as_str().unwrap()))
                .map(|m| (m[0].as_str().unwrap().to_string(), (m[1].as_str().unwrap().to_string(), m[2].clone())))
                .collect();
            let got: Vec<(String, (String, serde_json::Value))> = ours
                .metadata
                .iter()
                .filter(|(k, _)| !is_provenance(k) && k != "general.file_type")
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect();
            assert_eq!(got.len(), want.len(), "{name} {ty}: keys {:?}", got.iter().map(|g| &g.0).collect::<Vec<_>>());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g, w, "{name} {ty}: metadata");
            }
            let file_type = ours.metadata.iter().find(|(k, _)| k == "general.file_type").unwrap().1.clone();
            assert_eq!(to_json(&file_type).1, fx["outputs"][ty]["file_type"], "{name} {ty}: general.file_type");
            assert_eq!(ours.tensors, fixture_tensors(&fx["outputs"][ty]), "{name} {ty}: tensors");
        }
    }
}

/// `--mmproj` writes what llama.cpp's converter writes with `--mmproj` (fixture
/// `tiny-gemma4-vision.mmproj.convert.json`, F32, F16, BF16 and Q8_0; the converter quantizes
/// Q8_0 itself): the same metadata in the same order (the name aside) and the same tensors,
/// byte for byte, beside the text model of the same checkpoint; `--mmproj-type` picks another.
#[test]
fn mmproj_outputs_are_the_converters() {
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture("tiny-gemma4-vision.mmproj");
    let input = checkpoint("tiny-gemma4-vision");
    for ty in ["F32", "F16", "BF16", "Q8_0"] {
        let (text, mmproj) = (dir.path().join(format!("text-{ty}.gguf")), dir.path().join(format!("mmproj-{ty}.gguf")));
        let out = quantize(&[&input, &text, &ty, &"--mmproj", &mmproj]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let ours = read(&mmproj);
        let want: Vec<(String, (String, serde_json::Value))> = (fx["metadata"].as_array().unwrap().iter())
            .filter(|m| !is_provenance(m[0].as_str().unwrap()))
            .map(|m| (m[0].as_str().unwrap().to_string(), (m[1].as_str().unwrap().to_string(), m[2].clone())))
            .collect();
        let got: Vec<(String, (String, serde_json::Value))> = (ours.metadata.iter())
            .filter(|(k, _)| !is_provenance(k) && k != "general.file_type")
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect();
        assert_eq!(got, want, "{ty}: metadata");
        let file_type = ours.metadata.iter().find(|(k, _)| k == "general.file_type").unwrap().1.clone();
        assert_eq!(to_json(&file_type).1, fx["outputs"][ty]["file_type"], "{ty}: general.file_type");
        assert_eq!(ours.tensors, fixture_tensors(&fx["outputs"][ty]), "{ty}: tensors");
        // The text model beside it has no vision tensor.
        assert!(read(&text).tensors.iter().all(|t| !t.name.starts_with("v.") && !t.name.starts_with("mm.")));
    }
    // A Q4_K_M text model gets an F16 mmproj unless asked otherwise.
    let (text, mmproj) = (dir.path().join("q4.gguf"), dir.path().join("mm.gguf"));
    let out = quantize(&[&input, &text, &"Q4_K_M", &"--mmproj", &mmproj, &"--mmproj-type", &"Q8_0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&mmproj).tensors, fixture_tensors(&fx["outputs"]["Q8_0"]));
    // A checkpoint without a vision tower is refused before anything is written.
    let out = quantize(&[
        &checkpoint("tiny-gemma4-dense"),
        &dir.path().join("d.gguf"),
        &"F16",
        &"--mmproj",
        &dir.path().join("d-mm.gguf"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no vision tower"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("d.gguf").exists());
}

/// The moe checkpoint holds the weights of `models/tiny-gemma4-moe.gguf`: our F32 is that file's
/// tensors byte for byte, and its metadata plus the keys scripts/tiny-gemma4.py leaves out
/// (llama.cpp's converter writes them).
#[test]
fn f32_matches_the_tiny_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moe.gguf");
    convert(&checkpoint("tiny-gemma4-moe"), &out, "F32");
    let ours = read(&out);
    let tiny = read(&root().join("models/tiny-gemma4-moe.gguf"));
    let by_name = |g: &Gguf| g.tensors.iter().map(|t| (t.name.clone(), t.clone())).collect::<HashMap<_, _>>();
    assert_eq!(by_name(&ours), by_name(&tiny));
    let ours_meta: HashMap<_, _> = ours.metadata.iter().cloned().collect();
    for (k, v) in &tiny.metadata {
        if !is_provenance(k) {
            assert_eq!(ours_meta.get(k), Some(v), "{k}");
        }
    }
    let mut extra: Vec<&String> = ours_meta.keys().filter(|k| !tiny.metadata.iter().any(|(t, _)| t == *k)).collect();
    extra.sort();
    assert_eq!(
        extra,
        ["general.quantization_version", "general.size_label", "general.type", "tokenizer.ggml.mask_token_id"]
    );
}

/// Q8_0 takes the converter's types for every tensor it quantizes (llama-quantize's choices
/// coincide with the converter's --outtype q8_0 on these models), with the same bytes: both
/// quantize each row of 32-element blocks with ggml's reference rounding.
#[test]
fn q8_0_bytes_match_the_converters_q8_0() {
    let dir = tempfile::tempdir().unwrap();
    for name in MODELS {
        let out = dir.path().join(format!("{name}.gguf"));
        convert(&checkpoint(name), &out, "Q8_0");
        let ours: HashMap<String, Tensor> = read(&out).tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        let theirs = fixture_tensors(&fixture(name)["outputs"]["Q8_0"]);
        assert_eq!(ours.len(), theirs.len());
        for t in theirs {
            assert_eq!(ours[&t.name], t, "{name}");
        }
    }
}

/// A GGUF input is requantized as llama-quantize would: from our F32 file, the same bytes as
/// straight from the checkpoint; a tensor already of its target type is copied.
#[test]
fn gguf_input_requantizes_like_the_checkpoint_path() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-gemma4-moe", "tiny-gemma3"] {
        let f32 = dir.path().join(format!("{name}-F32.gguf"));
        convert(&checkpoint(name), &f32, "F32");
        for ty in ["Q8_0", "Q4_K_M"] {
            let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
            convert(&checkpoint(name), &a, ty);
            convert(&f32, &b, ty);
            assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "{name} {ty}");
        }
        let (q8, again) = (dir.path().join("q8.gguf"), dir.path().join("again.gguf"));
        convert(&checkpoint(name), &q8, "Q8_0");
        convert(&q8, &again, "Q8_0");
        assert!(std::fs::read(&q8).unwrap() == std::fs::read(&again).unwrap(), "{name}: Q8_0 to Q8_0 is a copy");
    }
}

#[test]
fn dry_run_prints_the_plan_and_the_exact_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moe.gguf");
    let ck = checkpoint("tiny-gemma4-moe");
    let plan = quantize(&[&ck, &out, &"Q4_K_M", &"--dry-run"]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    assert!(!out.exists());
    let stdout = String::from_utf8(plan.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 134, "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("token_embd.weight") && l.contains("F32 -> q6_K")), "{stdout}");
    assert!(lines.iter().any(|l| l.starts_with("blk.0.ffn_gate_inp.weight") && l.contains("F32 -> f32")), "{stdout}");
    let size: u64 = lines.last().unwrap().split(' ').nth(3).unwrap().parse().unwrap();
    convert(&ck, &out, "Q4_K_M");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
}

#[test]
fn existing_output_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let r = quantize(&[&checkpoint("tiny-gemma4-dense"), &out, &"F16"]);
    assert!(!r.status.success());
    assert_eq!(
        String::from_utf8_lossy(&r.stderr).trim(),
        format!("error: {} exists (use --force to overwrite it)", out.display())
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    convert(&checkpoint("tiny-gemma4-dense"), &out, "F16");
    assert!(std::fs::metadata(&out).unwrap().len() > 1000);
}

/// A copy of the dense checkpoint that `edit` spoils; quantize must fail with one line naming
/// what is wrong, and write nothing.
fn fails_with(edit: impl Fn(&std::path::Path), expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(checkpoint("tiny-gemma4-dense")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
    }
    edit(&ck);
    let out = dir.path().join("out.gguf");
    let r = quantize(&[&ck, &out, &"Q8_0"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for e in expect {
        assert!(lines[0].contains(e), "{:?} lacks {e:?}", lines[0]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "left files behind");
}

/// Rewrites the checkpoint's weights through `f` (name, dtype, shape, bytes).
fn rewrite_weights(ck: &std::path::Path, f: impl Fn(&mut Vec<(String, String, Vec<u64>, Vec<u8>)>)) {
    let path = ck.join("model.safetensors");
    let file = quantize::safetensors::SafetensorsFile::open(&path).unwrap();
    let mut tensors: Vec<(String, String, Vec<u64>, Vec<u8>)> = file
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype.name().to_string(), t.shape.clone(), file.data(t).to_vec()))
        .collect();
    drop(file);
    f(&mut tensors);
    let refs: Vec<(&str, &str, Vec<u64>, Vec<u8>)> =
        tensors.iter().map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone())).collect();
    quantize::safetensors::write(&path, &refs).unwrap();
}

#[test]
fn clear_errors() {
    fails_with(|ck| std::fs::remove_file(ck.join("config.json")).unwrap(), &["no config.json"]);
    fails_with(
        |ck| std::fs::write(ck.join("config.json"), "{\"architectures\": [").unwrap(),
        &["config.json", "invalid JSON"],
    );
    fails_with(
        |ck| {
            let c = std::fs::read_to_string(ck.join("config.json")).unwrap();
            std::fs::write(ck.join("config.json"), c.replace("Gemma4ForCausalLM", "LlamaForCausalLM")).unwrap();
        },
        &["unknown architecture \"LlamaForCausalLM\"", "Gemma4ForCausalLM"],
    );
    fails_with(
        |ck| rewrite_weights(ck, |t| t.retain(|t| t.0 != "model.layers.3.self_attn.q_proj.weight")),
        &["missing tensor", "blk.3.attn_q.weight"],
    );
    fails_with(
        |ck| {
            rewrite_weights(ck, |t| {
                let t = t.iter_mut().find(|t| t.0 == "model.layers.1.mlp.up_proj.weight").unwrap();
                let n: u64 = t.2.iter().product();
                t.1 = "F8_E4M3".into();
                t.3 = vec![0; n as usize];
            })
        },
        &["model.safetensors", "model.layers.1.mlp.up_proj.weight", "F8_E4M3", "F32, F16 and BF16"],
    );
    fails_with(
        |ck| {
            let path = ck.join("model.safetensors");
            let len = std::fs::metadata(&path).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 100).unwrap();
        },
        &["model.safetensors", "truncated"],
    );
    fails_with(|ck| std::fs::remove_file(ck.join("tokenizer.json")).unwrap(), &["tokenizer.json"]);
    fails_with(
        |ck| {
            rewrite_weights(ck, |t| t.push(("model.layers.0.mystery.weight".into(), "F32".into(), vec![1], vec![0; 4])))
        },
        &["model.layers.0.mystery.weight", "no GGUF name"],
    );
}

#[test]
fn gemma3_needs_its_sentencepiece_model() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    for e in std::fs::read_dir(checkpoint("tiny-gemma3")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "tokenizer.model" {
            std::fs::copy(e.path(), ck.join(e.file_name())).unwrap();
        }
    }
    let r = quantize(&[&ck, &dir.path().join("x.gguf"), &"Q8_0"]);
    assert!(!r.status.success());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.trim().starts_with("error: ") && stderr.contains("no tokenizer.model"), "{stderr}");
    std::fs::write(ck.join("tokenizer.model"), b"\x0a\xff").unwrap();
    let r = quantize(&[&ck, &dir.path().join("x.gguf"), &"Q8_0"]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("tokenizer.model: not a SentencePiece model"), "{stderr}");
}

#[test]
fn unknown_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = quantize(&[&checkpoint("tiny-gemma4-dense"), &dir.path().join("x.gguf"), &"Q7_K"]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).starts_with("error: unknown type \"Q7_K\" (one of F32, F16, BF16, Q4_0"));
}

/// SIGINT while writing: the run stops with status 130 and leaves neither OUT nor a temporary
/// file.
#[cfg(unix)]
#[test]
fn interrupt_leaves_no_output() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    synthetic_checkpoint(&ck, 512, 8192, 6);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("big.gguf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_quantize"))
        .args([ck.as_os_str(), out.as_os_str()])
        .args(["Q4_K_M", "--threads", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait until tensors are being written: the per-tensor log lines start with "[".
    let mut seen = 0;
    for line in lines.by_ref() {
        if line.unwrap().starts_with('[') {
            seen += 1;
            if seen == 8 {
                break;
            }
        }
    }
    assert_eq!(seen, 8);
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(rest.last().unwrap().contains("interrupted"), "{rest:?}");
    assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 0, "left files behind");
}
