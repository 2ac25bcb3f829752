//! `gemma devices`: lists the Vulkan devices (here lavapipe, which `scripts/setup.sh` installs,
//! a CPU device that is never the default), as text and as JSON, and on a machine without a
//! Vulkan driver says so and still exits 0.

use std::process::{Command, Output};

use serde_json::Value;

fn devices(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gemma"));
    cmd.arg("devices").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

#[test]
fn lavapipe_is_listed_with_its_limits_and_is_not_the_default() {
    let out = devices(&["--json"], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v["devices"].as_array().unwrap();
    let lvp = list
        .iter()
        .find(|d| d["name"].as_str().unwrap().starts_with("llvmpipe"))
        .unwrap_or_else(|| panic!("no lavapipe in {v}: run scripts/setup.sh"));
    assert_eq!(lvp["type"], "CPU");
    // lavapipe's documented limits (Mesa 22.3): 128 MiB storage buffers, subgroups of 8.
    assert_eq!(lvp["max_buffer_range"], 134217728);
    assert_eq!(lvp["subgroup_size"], 8);
    assert_eq!(lvp["cooperative_matrix"], false);
    assert!(lvp.get("unsuitable").is_none(), "lavapipe runs our shaders: {lvp}");
    if list.iter().all(|d| d["type"] == "CPU") {
        assert_eq!(v["default"], Value::Null, "a CPU device is never chosen by default");
    }
    let text = devices(&[], &[]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("llvmpipe") && text.contains("max buffer 128.00 MiB"), "{text}");
}

#[test]
fn no_vulkan_driver_is_a_message_not_a_failure() {
    let out =
        devices(&[], &[("VK_ICD_FILENAMES", "/nonexistent/icd.json"), ("VK_DRIVER_FILES", "/nonexistent/icd.json")]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("no GPU devices"), "{text}");
}
