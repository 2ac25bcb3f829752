//! `gemma info` end to end: the real test models are described, and every malformed GGUF of
//! the corpus gives a one-line error and exit code 1, never a panic.

use std::path::PathBuf;
use std::process::Command;

fn gemma() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gemma"))
}

fn model(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(path.exists(), "{} is missing: run scripts/fetch-test-models.sh", path.display());
    path
}

#[test]
fn malformed_files_give_one_line_errors_and_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in ggml::gguf::corpus::malformed() {
        let path = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let out = gemma().arg("info").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: exit status, stderr {stderr}");
        assert!(out.stdout.is_empty(), "{name}: printed to stdout");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(&format!("{name}.gguf: ")), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = gemma().args(["info", "/nonexistent/model.gguf"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim(), "error: /nonexistent/model.gguf: No such file or directory (os error 2)");
}

#[test]
fn describes_the_gemma4_vocab_file_with_26b_a4b_hyperparameters() {
    let out = gemma().arg("info").arg(model("ggml-vocab-gemma-4.gguf")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for expected in [
        "layers         30: 25 sliding (window 1024) + 5 global at [5, 11, 17, 23, 29]",
        "attention      sliding: 16 q heads / 8 kv heads x 256; global: 16 q heads / 2 kv heads x 512",
        "experts        128, 8 used per token, width 704",
        "tokenizer      gemma4",
        "262144 tokens, 514906 merges",
        "chat template  yes",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn json_describes_gemma3_270m() {
    let out = gemma()
        .args(["info", "--json", "--tensors", "-c", "2048"])
        .arg(model("gemma-3-270m-q4_k_m.gguf"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["architecture"], "gemma3");
    assert_eq!(info["file_type"]["name"], "MOSTLY_Q4_K_M");
    assert_eq!(info["hparams"]["block_count"], 18);
    assert_eq!(info["tokenizer"]["n_tokens"], 262144);
    assert_eq!(info["memory"]["context"], 2048);
    let tensors = info["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), info["n_tensors"].as_u64().unwrap() as usize);
    let params: u64 = tensors
        .iter()
        .map(|t| t["dims"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).product::<u64>())
        .sum();
    assert_eq!(info["n_params"].as_u64().unwrap(), params);
}

/// `-ngl N` splits the weights and the KV cache between the devices as `gemma run -ngl N`
/// places them: nothing on the GPU at 0; half the layers at 9 of 18 (weights and KV add up to
/// the totals); everything at 99, where the tied head is a copy of the embedding that the CPU
/// keeps for its lookups.
#[test]
fn gpu_layers_split_the_memory_between_the_devices() {
    let info = |n: &str| -> serde_json::Value {
        let out = gemma().args(["info"]).arg(model("gemma-3-270m-q4_k_m.gguf")).args(["-ngl", n, "--json"]).output();
        let out = out.unwrap();
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let n = |v: &serde_json::Value| v.as_u64().unwrap();
    let none = info("0");
    let m = &none["memory"];
    let (weights, kv) = (n(&m["weights_bytes"]), n(&m["kv_cache_bytes"]));
    assert_eq!((n(&m["split"]["gpu_weights_bytes"]), n(&m["split"]["cpu_weights_bytes"])), (0, weights));
    let half = &info("9")["memory"]["split"];
    assert_eq!(n(&half["gpu_weights_bytes"]) + n(&half["cpu_weights_bytes"]), weights);
    assert_eq!(n(&half["gpu_kv_cache_bytes"]) + n(&half["cpu_kv_cache_bytes"]), kv);
    assert!(n(&half["gpu_weights_bytes"]) > 0 && n(&half["gpu_kv_cache_bytes"]) > 0);
    let all = &info("99")["memory"]["split"];
    let embd = n(&all["cpu_weights_bytes"]);
    assert_eq!(n(&all["gpu_weights_bytes"]), weights, "every layer, the output norm and the tied head");
    assert_eq!((n(&all["gpu_kv_cache_bytes"]), n(&all["cpu_kv_cache_bytes"])), (kv, 0));
    // The CPU keeps the embedding alone: 262144 rows of 640 in the file's type.
    assert!(embd > 262144 * 640 / 2 && embd < 262144 * 640 * 2, "{embd}");
}

/// `gemma info --plan --vram-budget`: the fit's plan without loading, its costs equal to the
/// file's own tensor sizes (the experts, the tied head as the embedding's copy), within the
/// budget, and the same placement as the text says.
#[test]
fn plan_shows_where_the_fit_puts_the_model() {
    let m = model("synth-gemma4-2l-v1.gguf");
    let out = gemma().args(["info", "--json", "--tensors", "--plan", "--vram-budget", "1.2"]).arg(&m).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bytes_of = |pred: &dyn Fn(&str) -> bool| -> u64 {
        let tensors = info["tensors"].as_array().unwrap();
        tensors.iter().filter(|t| pred(t["name"].as_str().unwrap())).map(|t| t["n_bytes"].as_u64().unwrap()).sum()
    };
    let plan = &info["plan"];
    for il in 0..2 {
        let prefix = format!("blk.{il}.");
        let experts = bytes_of(&|n| n.starts_with(&prefix) && n.ends_with("_exps.weight"));
        let dense = bytes_of(&|n| n.starts_with(&prefix) && !n.ends_with("_exps.weight"));
        assert_eq!(plan["costs"]["layers"][il]["experts"].as_u64(), Some(experts), "layer {il}");
        assert_eq!(plan["costs"]["layers"][il]["dense"].as_u64(), Some(dense), "layer {il}");
    }
    let head = bytes_of(&|n| n == "token_embd.weight" || n == "output_norm.weight");
    assert_eq!(plan["costs"]["head"].as_u64(), Some(head));
    let budget = (1.2 * (1u64 << 30) as f64) as u64;
    assert_eq!(plan["plan"]["budget"].as_u64(), Some(budget));
    assert!(plan["plan"]["gpu_bytes"].as_u64().unwrap() <= budget);
    // 1.2 GiB holds the layers without their experts and the head (~0.95 GiB), not a layer's
    // experts (0.43 and 0.52 GiB) beside them, nor the buffers to copy them in for prompts.
    assert_eq!(plan["plan"]["kind"], "experts_in_ram");
    assert_eq!(plan["plan"]["placement"]["n_cpu_moe"], 2);
    assert_eq!(plan["plan"]["uploads"], false);

    let text = gemma().args(["info", "--plan", "--vram-budget", "1.2"]).arg(&m).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("plan for       --vram-budget 1.20 GiB"), "{text}");
    assert!(text.contains("2 of 2 layers (their experts in RAM) and the output head"), "{text}");
    assert!(text.contains("no room to copy them to VRAM for prompts"), "{text}");

    // Without a budget or a GPU to plan for: an error that says what to give.
    let none = gemma()
        .args(["info", "--plan"])
        .arg(&m)
        .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
        .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && stderr.contains("give --vram-budget GIB"), "{stderr}");
}

/// The KV cache per type (issue 19) for Gemma 3 270M at `-c 8192`, hand-derived from its
/// shape: 18 layers of 1 KV head of 256, every sixth global (3 keep 8192 positions), the other
/// 15 sliding over 512; a row of 256 is 1024 bytes in f32, 512 in f16 and bf16, 8 blocks of 34
/// in q8_0 (272) and of 18 in q4_0 (144). `-ctk`/`-ctv` (llama.cpp's one-dash spellings) set
/// the estimate's types, each its own.
#[test]
fn kv_cache_memory_per_type() {
    let positions: u64 = 15 * 512 + 3 * 8192; // 32,256 rows of K and as many of V
    let info = |args: &[&str]| -> serde_json::Value {
        let out = gemma()
            .args(["info", "--json", "-c", "8192"])
            .arg(model("gemma-3-270m-q4_k_m.gguf"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = info(&[]);
    let by_type: Vec<(String, u64)> = plain["memory"]["kv_cache_bytes_by_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["type"].as_str().unwrap().to_string(), t["bytes"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = [("f32", 1024), ("f16", 512), ("bf16", 512), ("q8_0", 272), ("q4_0", 144)]
        .into_iter()
        .map(|(t, row)| (t.to_string(), 2 * positions * row))
        .collect();
    assert_eq!(by_type, want);
    assert_eq!(
        (plain["memory"]["kv_types"].as_str(), plain["memory"]["kv_cache_bytes"].as_u64()),
        (Some("f16"), Some(2 * positions * 512))
    );
    let mixed = info(&["-ctk", "q8_0", "-ctv", "q4_0"]);
    assert_eq!(mixed["memory"]["kv_types"], "K q8_0, V q4_0");
    assert_eq!(mixed["memory"]["kv_cache_bytes"].as_u64(), Some(positions * (272 + 144)));
    let both = info(&["--kv-type", "bf16", "--cache-type-v", "q8_0"]);
    assert_eq!(both["memory"]["kv_types"], "K bf16, V q8_0");
    // The text says it too.
    let out = gemma().args(["info", "-c", "8192", "-ctk", "q8_0"]).arg(model("gemma-3-270m-q4_k_m.gguf")).output();
    let text = String::from_utf8(out.unwrap().stdout).unwrap();
    assert!(text.contains("KV cache (K q8_0, V f16, -c 8192)"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("KV by type") && l.contains("q4_0 ")), "{text}");
}
