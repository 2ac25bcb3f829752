#!/usr/bin/env bash
# Kernel throughput next to ggml's (ggml/benches/kernels.rs). ggml is built for this CPU
# (target-cpu=native) in its own target dir, so the test build (portable ggml, used as the
# bit-exact oracle) is left alone. Extra arguments go to the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-target/native}"
RUSTFLAGS="-C target-cpu=native" cargo bench -p ggml --features oracle --bench kernels -- "$@"
