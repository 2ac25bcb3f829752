#!/usr/bin/env bash
# llama.cpp's image encoder speed: runs llama.cpp's `llama-mtmd-cli` (built once by
# scripts/llama-tool.sh from the vendored llama.cpp) on one image ROUNDS times and prints, per run,
# the time of its vision encoder (mtmd's "mtmd batch encoding done in N ms": the ViT and the
# projector, not the image's preprocessing nor its decode through the text model), the soft
# tokens and the image size it encoded, and the share of the THREADS cores it got while encoding
# (its CPU time over the encode / wall time / THREADS; well under 1 means something else was
# using the cores, and the time is not the encoder's).
# The speed anchor for `gemma bench --mmproj`, run beside it on the same files and threads.
#
#   scripts/vision-bench.sh MMPROJ.gguf TEXT.gguf IMAGE [THREADS] [-r ROUNDS] [-b TOKENS] [-- LLAMA ARGS]
#
# MMPROJ: e.g. scripts/synth-mmproj.py's full-size 26B-A4B tower; TEXT: a GGUF of the text model
# it belongs to (its width must be the projector's, 2816 for 26B-A4B; the layers do not matter:
# the 2-layer synthetic models/synth-gemma4-2l-v1.gguf that scripts/test.sh writes will do).
# THREADS defaults to 2, ROUNDS to 3. TOKENS (default 256) is given to both --image-min-tokens and
# --image-max-tokens: llama.cpp resizes so that the patch grid, aligned to 48 px, holds that many
# soft tokens (for a square image and TOKENS = k*k, k x k). 256 is what transformers' (and
# our) budget 280 gives a square image (768x768, 2304 patches); llama.cpp with 280 would give 289
# (816x816). Check the printed tokens and size against ours. -b 0 leaves llama.cpp's own rules
# (keep the size rounded to 48 px within 70..1120 tokens). Anything after -- goes to llama-mtmd-cli.
#
# LLAMA_MTMD_CLI=path overrides the binary; VISION_BENCH_LOGS=DIR keeps each run's full log.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
usage() { sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 3 ] || usage
mmproj="$1" text="$2" image="$3"
shift 3
threads=2 rounds=3 tokens=256
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then threads="$1"; shift; fi
while [ $# -gt 0 ]; do
    case "$1" in
        -r) rounds="$2"; shift 2 ;;
        -b) tokens="$2"; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done
for f in "$mmproj" "$text" "$image"; do [ -f "$f" ] || { echo "no such file: $f" >&2; exit 1; }; done
cli="${LLAMA_MTMD_CLI:-$("$root/scripts/llama-tool.sh" llama-mtmd-cli)}"
logs="${VISION_BENCH_LOGS:-}"
tmp="$(mktemp -d)"
pid=""
trap '[ -z "$pid" ] || kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
[ -z "$logs" ] || mkdir -p "$logs"

budget=()
[ "$tokens" = 0 ] || budget=(--image-min-tokens "$tokens" --image-max-tokens "$tokens")
# -v: the soft token count and the encoded size are only logged at debug level; the encoder's
# timing is the same either way (the debug lines come before and after it).
cmd=("$cli" -m "$text" --mmproj "$mmproj" --image "$image" "${budget[@]}" -t "$threads" -n 1 -c 4096
     --jinja -p "Describe the image." -v "$@")
echo "command: $(printf '%q ' "${cmd[@]}")"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
encodes=()
for i in $(seq 1 "$rounds"); do
    log="$tmp/run$i.log"
    load0="$(cut -d' ' -f1 /proc/loadavg)"
    "${cmd[@]}" >"$log" 2>&1 &
    pid=$!
    # The process's CPU time (all threads, clock ticks) when the encode starts and ends.
    c0="" c1="" w0="" w1=""
    while kill -0 "$pid" 2>/dev/null; do
        if [ -z "$c0" ] && grep -q 'encoding mtmd batch' "$log"; then
            c0="$(awk '{ print $14 + $15 }' "/proc/$pid/stat")" w0="$(date +%s.%N)"
        fi
        if [ -n "$c0" ] && [ -z "$c1" ] && grep -q 'mtmd batch encoding done' "$log"; then
            c1="$(awk '{ print $14 + $15 }' "/proc/$pid/stat")" w1="$(date +%s.%N)"
        fi
        sleep 0.05
    done
    rc=0
    wait "$pid" || rc=$?
    pid=""
    if [ "$rc" != 0 ]; then
        tail -20 "$log" >&2
        echo "run $i: llama-mtmd-cli failed (log above)" >&2
        exit 1
    fi
    [ -z "$logs" ] || cp "$log" "$logs/run$i.log"
    ms="$(sed -n 's/.*mtmd batch encoding done in \([0-9]*\) ms.*/\1/p' "$log" | tail -1)"
    [ -n "$ms" ] || { echo "run $i: no 'mtmd batch encoding done' line in the log" >&2; exit 1; }
    ntok="$(sed -n 's/.*image_tokens->nx = \([0-9]*\).*/\1/p' "$log" | tail -1)"
    size="$(sed -n 's/.*to input buffer (nx=\([0-9]*\), ny=\([0-9]*\)).*/\1x\2/p' "$log" | tail -1)"
    dec="$(sed -n 's/.*image decoded (batch [0-9/]*) in \([0-9]*\) ms.*/\1/p' "$log" | tail -1)"
    share="?"
    [ -z "$c1" ] || share="$(awk -v c="$((c1 - c0))" -v w0="$w0" -v w1="$w1" -v hz="$(getconf CLK_TCK)" \
        -v t="$threads" 'BEGIN { printf "%.2f", c / hz / (w1 - w0) / t }')"
    echo "run $i: encode $ms ms, ${ntok:-?} soft tokens, image ${size:-?}, text-model decode of the image ${dec:-?} ms," \
         "core share $share (load before $load0)"
    encodes+=("$ms")
done
printf '%s\n' "${encodes[@]}" | sort -n | awk '{ a[NR] = $1 } END {
    printf "encode ms: min %d, median %d, max %d over %d runs\n", a[1], a[int((NR + 1) / 2)], a[NR], NR }'
