#!/usr/bin/env bash
# The quantized KV cache types (issue 19) against llama.cpp's on the same model and text: each
# runtime's mean KL divergence from its own f16-cache logits (`gemma perplexity` and
# llama-perplexity, `--kl-divergence` against an f16 base each wrote), and the ratio. Issue 19
# asks ours to be at most 1.1x llama.cpp's. llama.cpp runs with flash attention on, which its
# quantized V needs, base included.
#
#   scripts/kv-types-vs-llama.sh [-c 512] [--chunks 16] [-f TEXT] [-t TYPES] MODEL.gguf...
#
# TYPES: the cache types to compare, K and V alike (default "q8_0 q4_0"). Default text:
# models/alice.txt (scripts/fetch-test-models.sh). llama-perplexity is built once by
# scripts/llama-tool.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ctx=512; chunks=16; text="$root/models/alice.txt"; types="q8_0 q4_0"; models=()
while [ $# -gt 0 ]; do
    case "$1" in
        -c) ctx="$2"; shift 2 ;;
        --chunks) chunks="$2"; shift 2 ;;
        -f) text="$2"; shift 2 ;;
        -t) types="$2"; shift 2 ;;
        *) models+=("$1"); shift ;;
    esac
done
[ ${#models[@]} -gt 0 ] || { echo "usage: $0 [-c N] [--chunks N] [-f TEXT] [-t TYPES] MODEL.gguf..." >&2; exit 2; }
llama="$("$root/scripts/llama-tool.sh" llama-perplexity)"
(cd "$root" && cargo build --release --quiet --bin gemma)
gemma="${CARGO_TARGET_DIR:-$root/target}/release/gemma"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
threads="$(nproc)"

echo "| model | -c | chunks | cache | gemma.rs KLD | llama.cpp KLD | ratio | gemma.rs same top | llama.cpp same top |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|"
for m in "${models[@]}"; do
    "$gemma" perplexity -m "$m" -f "$text" -c "$ctx" --chunks "$chunks" --kl-divergence-base "$tmp/ours.kld" \
        -o json >/dev/null 2>&1
    "$llama" -m "$m" -f "$text" -c "$ctx" -b "$ctx" --chunks "$chunks" -t "$threads" -fa on \
        --kl-divergence-base "$tmp/theirs.kld" >/dev/null 2>&1
    for t in $types; do
        ours="$("$gemma" perplexity -m "$m" --kl-divergence-base "$tmp/ours.kld" --kl-divergence -ctk "$t" -ctv "$t" \
            -o json 2>/dev/null | python3 -c 'import json,sys; k = json.load(sys.stdin)["kl_divergence"]
print(k["kld_mean"], 100 * k["same_top"])')"
        theirs="$("$llama" -m "$m" -c "$ctx" -b "$ctx" -t "$threads" -fa on -ctk "$t" -ctv "$t" \
            --kl-divergence-base "$tmp/theirs.kld" --kl-divergence 2>&1 |
            sed -n -e 's/^Mean    KLD: *\([0-9.]*\).*/\1/p' -e 's/^Same top p: *\([0-9.]*\).*/\1/p' | tr '\n' ' ')"
        python3 -c 'import sys
m, c, n, t, ko, so, kt, st = sys.argv[1:]
print(f"| {m} | {c} | {n} | {t} | {float(ko):.6f} | {float(kt):.6f} | {float(ko) / float(kt):.3f}x | {float(so):.2f}% | {float(st):.2f}% |")' \
            "$(basename "$m")" "$ctx" "$chunks" "$t" $ours $theirs
    done
done
