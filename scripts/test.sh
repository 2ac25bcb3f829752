#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs (scripts/setup.sh), then checks
# formatting and lints, runs every cargo test including the llama.cpp oracle tests
# (feature `oracle`: builds llama.cpp's ggml, slow the first time), and compares `gemma info`
# with gguf-dump on the real test models.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --features oracle -- -D warnings
# Two layers of a synthetic 26B-A4B (real shapes and vocabulary, llama.cpp's Q4_K_M types,
# random weights; 1.6 GB) for tests/oracle_gemma4.rs. The name carries the generator's version.
synth=models/synth-gemma4-2l-v1.gguf
[ -f "$synth" ] || cargo run --quiet --features oracle --example synth_gemma4 -- "$synth" --layers 2
cargo test --workspace --features oracle
.venv/bin/python scripts/compare-info-with-gguf-dump.py models/*.gguf
