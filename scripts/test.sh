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
cargo test --workspace --features oracle
.venv/bin/python scripts/compare-info-with-gguf-dump.py models/*.gguf
