#!/usr/bin/env bash
# The GPU check (issues 14 and 16) as one prepared run on a lent device machine, for a session
# whose task has one (the `device` tool; an NVIDIA H200, no network there):
#
#   scripts/gpu-check.sh prepare            # here: fills .gpu/ (git-ignored, about 40 MB)
#   device run, carry [".gpu"]:  scripts/gpu-check.sh run [LAYERS] [PP] [TG]
#
# `run` unpacks the Vulkan loader where the machine has none, lists the Vulkan devices, writes
# the synthetic 26B-A4B (LAYERS layers, default 30: the real shapes and vocabulary, llama.cpp's
# Q4_K_M types, random weights), checks our GPU logits against our CPU's on it (top-1, mean KL,
# with an f32 KV cache), then times `gemma bench -ngl 99` and llama.cpp's Vulkan backend (b9190,
# ../shared/bench/llama-vulkan-bench.py) on the same file, and prints both with their ratio.
# Everything it prints also goes to $OUT/gpu-check.log when $OUT is set.
#
# Here, `scripts/gpu-check.sh run 2 64 16` does the same on lavapipe (GEMMA_GPU_DEVICE=N picks
# the device, GGML_VK_VISIBLE_DEVICES the one llama.cpp uses; lavapipe's llama.cpp wheel is
# the cp311 one: GEMMA_GPU_WHEEL=path).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
dir="$root/.gpu"
target="${CARGO_TARGET_DIR:-$root/target}"

prepare() {
    mkdir -p "$dir"
    grep -qs '^/.gpu/$' .git/info/exclude || { mkdir -p .git/info; echo /.gpu/ >>.git/info/exclude; }
    cargo build --release --quiet
    cargo build --release --quiet --features oracle --example synth_gemma4
    for bin in "$target/release/gemma" "$target/release/examples/synth_gemma4"; do
        strip -o "$dir/$(basename "$bin")" "$bin"
        xz -9 -f "$dir/$(basename "$bin")"
    done
    xz -9 -c models/ggml-vocab-gemma-4.gguf >"$dir/ggml-vocab-gemma-4.gguf.xz"
    cp ../shared/bench/llama-vulkan-bench.py "$dir/"
    cp scripts/gpu-check-tag.py "$dir/tag.py"
    (cd "$dir" && { ls cyllama_vulkan-0.2.18-cp312-*.whl >/dev/null 2>&1 ||
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_35_x86_64 -d . cyllama-vulkan==0.2.18; })
    (cd "$dir" && { ls libvulkan1_*.deb >/dev/null 2>&1 || apt-get download libvulkan1 2>/dev/null; })
    du -sh "$dir"
}

# Unpacks the binaries, the Vulkan loader where the machine has none, and llama.cpp's wheel;
# writes the model of LAYERS layers when missing; logs to $OUT/LOG when $OUT is set. Sets
# $work, $gemma and $model.
setup() {
    local layers="$1" log="$2"
    work=/tmp/gpu-check
    mkdir -p "$work/models"
    if [ -n "${OUT:-}" ]; then exec > >(tee "$OUT/$log") 2>&1; fi
    if ! ldconfig -p | grep -q libvulkan.so.1; then
        dpkg -x "$dir"/libvulkan1_*.deb "$work/vk"
        export LD_LIBRARY_PATH="$work/vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    [ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
    for f in gemma synth_gemma4; do xz -d -c "$dir/$f.xz" >"$work/$f" && chmod +x "$work/$f"; done
    xz -d -c "$dir/ggml-vocab-gemma-4.gguf.xz" >"$work/models/ggml-vocab-gemma-4.gguf"
    gemma="$work/gemma" model="$work/synth-$layers.gguf"
    nproc; free -g | head -2; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
    "$gemma" devices
    [ -f "$model" ] || (cd "$work" && time ./synth_gemma4 "$model" --layers "$layers")
    local wheel="${GEMMA_GPU_WHEEL:-$(ls "$dir"/cyllama_vulkan-0.2.18-cp312-*.whl)}"
    python3 -m pip install -q --no-index --no-deps --target "$work/site" "$wheel"
}

run() {
    local layers="${1:-30}" pp="${2:-512}" tg="${3:-128}" device="${GEMMA_GPU_DEVICE:-0}"
    setup "$layers" gpu-check.log
    "$gemma" info "$model" -ngl 99 | grep -E 'memory|ngl'

    echo "== correctness: GPU against CPU logits (f32 KV cache)"
    local ids="2 105 2364 107 3689 563 506 5279 236881 106 107 105 4368 107 9259 1234 77777 31337"
    "$gemma" run -m "$model" --ids "$ids" -n 0 --kv-type f32 -q --logits-out "$work/cpu.f32"
    "$gemma" run -m "$model" --ids "$ids" -n 0 --kv-type f32 -ngl 99 --device "$device" --logits-out "$work/gpu.f32"
    python3 - "$work/cpu.f32" "$work/gpu.f32" <<'EOF'
import array, math, sys
a, b = (array.array("f", open(p, "rb").read()) for p in sys.argv[1:3])
n = 262144
rows = len(a) // n
agree, kl, worst = 0, 0.0, 0.0
for r in range(rows):
    x, y = a[r * n:(r + 1) * n], b[r * n:(r + 1) * n]
    agree += max(range(n), key=x.__getitem__) == max(range(n), key=y.__getitem__)
    mx, my = max(x), max(y)
    lx = mx + math.log(sum(math.exp(v - mx) for v in x))
    ly = my + math.log(sum(math.exp(v - my) for v in y))
    kl += sum(math.exp(p - lx) * ((p - lx) - (q - ly)) for p, q in zip(x, y))
    worst = max(worst, max(abs(p - q) for p, q in zip(x, y)))
print(f"rows {rows}: top-1 {agree}/{rows}, mean KL {kl / rows:.3g}, max |diff| {worst:.3g}")
EOF

    echo "== speed: gemma.rs and llama.cpp (Vulkan, b9190), -ngl 99, same file"
    "$gemma" bench -m "$model" -ngl 99 --device "$device" -p "$pp" -n "$tg" -r 3 -t "$(nproc)"
    "$gemma" bench -m "$model" -ngl 99 --device "$device" -p "$pp" -n "$tg" -r 3 -t "$(nproc)" -o json >"$work/ours.json"
    PYTHONPATH="$work/site" python3 "$dir/llama-vulkan-bench.py" "$model" 99 "$pp" "$tg" 3 "$(nproc)" | tee "$work/llama.jsonl"
    python3 - "$work/ours.json" "$work/llama.jsonl" <<'EOF'
import json, sys
ours = {r["test"]: r["avg_ts"] for r in json.load(open(sys.argv[1]))}
theirs = {r["test"]: r["avg_ts"] for r in map(json.loads, open(sys.argv[2]))}
print("| test | gemma.rs t/s | llama.cpp Vulkan t/s | ratio |\n|---|---:|---:|---:|")
for t in ours:
    if t in theirs:
        print(f"| {t} | {ours[t]:.2f} | {theirs[t]:.2f} | {ours[t] / theirs[t]:.2f}x |")
EOF
}

# Issue 15: the experts-in-RAM placements against the CPU and llama.cpp's whole-layer offload.
moe() {
    local layers="${1:-30}" pp="${2:-512}" tg="${3:-128}" budgets="${4:-8 12}" device="${GEMMA_GPU_DEVICE:-0}" t
    setup "$layers" gpu-check-moe.log
    t="$(nproc)"
    local runs="$work/moe.jsonl"
    : >"$runs"
    ours() { # LABEL ARGS...: one `gemma bench`, its rows tagged
        local label="$1"; shift
        echo "== gemma.rs, $label: $*"
        if "$gemma" bench -m "$model" --device "$device" -p "$pp" -n "$tg" -r 2 -t "$t" "$@" -o json \
            >"$work/one.json" 2>"$work/one.err"; then
            grep -E "gemma: |plan|  GPU|  CPU" "$work/one.err" || true
            python3 "$dir/tag.py" gemma.rs "$label" <"$work/one.json" | tee -a "$runs"
        else
            cat "$work/one.err"
        fi
    }
    theirs() { # LABEL NGL: llama.cpp's Vulkan backend with n_gpu_layers NGL
        echo "== llama.cpp Vulkan, $1: n_gpu_layers $2"
        PYTHONPATH="$work/site" python3 "$dir/llama-vulkan-bench.py" "$model" "$2" "$pp" "$tg" 2 "$t" |
            python3 "$dir/tag.py" llama.cpp "$1" | tee -a "$runs"
    }
    ours "CPU" --fit off
    theirs "CPU" 0
    ours "--cpu-moe, no cache" --cpu-moe --expert-cache 0
    ours "--cpu-moe, cache" --cpu-moe
    local b n ngl
    for b in $budgets; do
        ours "$b GiB, no cache" --vram-budget "$b" --expert-cache 0
        ours "$b GiB, cache" --vram-budget "$b"
        # llama.cpp's whole layers at the same VRAM: the most whose weights and KV fit.
        ngl=0
        for n in $(seq $((layers + 1)) -1 1); do
            if "$gemma" info "$model" --json -ngl "$n" -c $((pp + tg)) | python3 "$dir/tag.py" fits "$b"; then
                ngl=$n
                break
            fi
        done
        theirs "$b GiB, whole layers" "$ngl"
    done
    python3 "$dir/tag.py" table <"$runs"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    moe) shift; moe "$@" ;;
    *) echo "usage: $0 prepare | run [LAYERS] [PP] [TG] | moe [LAYERS] [PP] [TG] [BUDGETS]" >&2; exit 2 ;;
esac
