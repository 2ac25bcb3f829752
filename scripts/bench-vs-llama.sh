#!/usr/bin/env bash
# gemma bench and llama.cpp's llama-bench on the same GGUF, same thread count, interleaved
# (this machine is shared and noisy: only the ratio measured side by side means something),
# plus the machine's read bandwidth and generation speed as a fraction of its bound.
#
#   scripts/bench-vs-llama.sh MODEL.gguf [-p 512] [-n 128] [-d DEPTH] [-t THREADS] [-r ROUNDS]
#                             [-ctk TYPE] [-ctv TYPE]
#
# -d runs each test after DEPTH tokens already in the context; -ctk/-ctv set both runtimes'
# KV cache types (llama-bench then uses flash attention, which a quantized V needs).
#
# llama-bench is built once from the llama-cpp-python==0.3.36 sdist's vendored llama.cpp
# (scripts/llama-tool.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$1"; shift
pp=512; tg=128; depth=0; threads="$(nproc)"; rounds=3; ctk=f16; ctv=f16
while [ $# -gt 0 ]; do
    case "$1" in
        -p) pp="$2"; shift 2 ;;
        -n) tg="$2"; shift 2 ;;
        -d) depth="$2"; shift 2 ;;
        -t) threads="$2"; shift 2 ;;
        -r) rounds="$2"; shift 2 ;;
        -ctk) ctk="$2"; shift 2 ;;
        -ctv) ctv="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

bench="$("$root/scripts/llama-tool.sh" llama-bench)"
(cd "$root" && cargo build --release --quiet --bin gemma --example membw)
target="${CARGO_TARGET_DIR:-$root/target}"
gemma="$target/release/gemma"
fa=(); [ "$ctk/$ctv" = f16/f16 ] || fa=(-fa 1)

bw="$("$target/release/examples/membw" 4 "$threads")"
ours=(); theirs=()
for r in $(seq "$rounds"); do
    ours+=("$("$gemma" bench -m "$model" -p "$pp" -n "$tg" -d "$depth" -t "$threads" -r 1 -ctk "$ctk" -ctv "$ctv" -o json)")
    theirs+=("$("$bench" -m "$model" -p "$pp" -n "$tg" -d "$depth" -t "$threads" -r 1 -ctk "$ctk" -ctv "$ctv" "${fa[@]}" -o json 2>/dev/null)")
done

"$root/.venv/bin/python" - "$model" "$bw" "$pp" "$tg" "$threads" "$depth/$ctk/$ctv" <<'PY' "${ours[@]}" -- "${theirs[@]}"
import json, statistics, sys
from gguf import GGUFReader
model, bw, pp, tg, threads, setup = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
depth, ctk, ctv = setup.split("/")
rest = sys.argv[7:]
cut = rest.index("--")
ours = [json.loads(s) for s in rest[:cut]]
theirs = [json.loads(s) for s in rest[cut + 1:]]

def ts(kind, n):
    # Both print llama-bench's JSON: one object per test with n_prompt, n_gen and avg_ts.
    def pick(runs):
        return [t["avg_ts"] for run in runs for t in run
                if (t["n_prompt"], t["n_gen"]) == ((int(n), 0) if kind == "pp" else (0, int(n)))]
    return pick(ours), pick(theirs)

# Bytes of weights read per generated token: every tensor once, except the experts (only the
# used ones) and the token embedding when an output head exists (one row).
r = GGUFReader(model)
f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.")}
arch = f["general.architecture"]
used, n_exp = f.get(f"{arch}.expert_used_count", 0), f.get(f"{arch}.expert_count", 0)
has_output = any(t.name == "output.weight" for t in r.tensors)
per_token = 0
for t in r.tensors:
    n = int(t.n_bytes)
    if "_exps." in t.name and n_exp:
        n = n * used // n_exp
    elif t.name == "token_embd.weight" and has_output:
        n = 0
    per_token += n

print(f"model {model}, {threads} threads, depth {depth}, KV cache K {ctk} V {ctv}, "
      f"read bandwidth {bw:.1f} GB/s, {per_token / 1e9:.2f} GB of weights per generated token")
print("| test | gemma.rs t/s | llama.cpp t/s | ratio |")
print("|---|---:|---:|---:|")
for kind, n in (("pp", pp), ("tg", tg)):
    a, b = ts(kind, n)
    if not a or not b:
        continue
    ma, mb = statistics.mean(a), statistics.mean(b)
    sa = statistics.stdev(a) if len(a) > 1 else 0.0
    sb = statistics.stdev(b) if len(b) > 1 else 0.0
    print(f"| {kind}{n} | {ma:.2f} ± {sa:.2f} | {mb:.2f} ± {sb:.2f} | {ma / mb:.2f}x |")
    if kind == "tg":
        for who, m in (("gemma.rs", ma), ("llama.cpp", mb)):
            print(f"{who} generation: {m * per_token / 1e9:.1f} GB/s of weights, "
                  f"{100 * m * per_token / 1e9 / bw:.0f}% of the measured bandwidth")
PY
