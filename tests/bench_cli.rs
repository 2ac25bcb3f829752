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
