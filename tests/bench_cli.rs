//! `gemma bench` end to end on the tiny Gemma 4 model: llama-bench's JSON fields, one result per
//! test and thread count, each with one sample per repetition.

use std::process::Command;

#[test]
fn bench_prints_llama_bench_json() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4-moe.gguf");
    assert!(model.exists(), "{} is missing: run scripts/setup.sh", model.display());
    let out = Command::new(env!("CARGO_BIN_EXE_gemma"))
        .args(["bench", "-p", "16", "-n", "4", "-d", "0,8", "-t", "1,2", "-r", "3", "-o", "json", "-m"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    // 2 thread counts x 2 depths x (pp16, tg4).
    assert_eq!(rows.len(), 8);
    let tests: Vec<&str> = rows.iter().map(|r| r["test"].as_str().unwrap()).collect();
    assert_eq!(&tests[..4], ["pp16", "tg4", "pp16 @ d8", "tg4 @ d8"]);
    for r in rows {
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 3);
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert_eq!(r["model_type"], "gemma4 ALL_F32");
        let (p, g) = (r["n_prompt"].as_u64().unwrap(), r["n_gen"].as_u64().unwrap());
        assert!((p, g) == (16, 0) || (p, g) == (0, 4), "{r}");
    }
    assert_eq!(rows[4]["n_threads"], 2);
    assert_eq!(rows[2]["n_depth"], 8);
}

/// `-ctk`/`-ctv` lists: every pair timed, llama-bench's `type_k`/`type_v` in the JSON and as
/// columns in the table.
#[test]
fn bench_times_each_pair_of_cache_types() {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma4-moe.gguf");
    let bench = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_gemma"))
            .args(["bench", "-p", "0", "-n", "2", "-d", "4", "-r", "1", "-ctk", "f16,q8_0", "-ctv", "q4_0", "-m"])
            .arg(&model)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let v: serde_json::Value = serde_json::from_str(&bench(&["-o", "json"])).unwrap();
    let types: Vec<(&str, &str)> =
        v.as_array().unwrap().iter().map(|r| (r["type_k"].as_str().unwrap(), r["type_v"].as_str().unwrap())).collect();
    assert_eq!(types, [("f16", "q4_0"), ("q8_0", "q4_0")]);
    let md = bench(&[]);
    let rows: Vec<&str> = md.lines().filter(|l| l.contains("tg2 @ d4")).collect();
    assert_eq!(rows.len(), 2, "{md}");
    assert!(md.lines().next().unwrap().contains("type_k | type_v"), "{md}");
    assert!(rows[1].contains("|   q8_0 |   q4_0 |"), "{md}");
}
