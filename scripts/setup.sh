#!/usr/bin/env bash
# Install what the tests need, idempotently: Debian packages for building llama.cpp (the test
# oracle) and shaderc's glslang (cmake, a C++ compiler), the Vulkan loader and lavapipe (Mesa's
# Vulkan device on the CPU, where every GPU test runs), a Python venv with the `gguf` package (its gguf-dump is an oracle for `gemma info`),
# the real test models (scripts/fetch-test-models.sh) and the tiny random Gemma 4 models
# (scripts/tiny-gemma4.py, regenerated when their sha256 differs from the fixtures').
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need=()
for pkg in cmake clang libclang-dev python3-venv g++ libvulkan1 mesa-vulkan-drivers; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    sudo_="" ; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv="$root/.venv"
# numpy is pinned too: the tiny models' weights come from its seeded random streams.
# tokenizers writes the tiny checkpoints' tokenizer.json (scripts/tiny-gemma4-hf.py); openai
# is the official client the `gemma serve` tests drive the server with (tests/serve_openai.py).
if ! "$venv/bin/python" -c 'import gguf, numpy, tokenizers, openai; assert numpy.__version__ == "2.4.6"; assert tokenizers.__version__ == "0.23.3"; assert openai.__version__ == "3.63.0"' 2>/dev/null; then
    echo "setup: creating $venv with gguf, numpy, tokenizers and openai"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "gguf==0.19.0" "numpy==2.4.6" "tokenizers==0.23.3" "openai==3.63.0"
fi

PYTHON="$venv/bin/python" "$root/scripts/fetch-test-models.sh"

for fixture in "$root"/tests/fixtures/tiny-gemma4-*.json; do
    gguf="$root/models/$(basename "$fixture" .json).gguf"
    want="$("$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["gguf_sha256"])' "$fixture")"
    if [ ! -f "$gguf" ] || [ "$(sha256sum "$gguf" | cut -d' ' -f1)" != "$want" ]; then
        echo "setup: writing the tiny Gemma 4 models"
        "$venv/bin/python" "$root/scripts/tiny-gemma4.py" gguf "$root/models"
        break
    fi
done

# The same tiny models (and a tiny Gemma 3) as Hugging Face checkpoint folders, quantize's test
# input; rewritten when either script changed since they were written.
stamp="$root/models/tiny-gemma4-hf.stamp"
want="$(cat "$root/scripts/tiny-gemma4.py" "$root/scripts/tiny-gemma4-hf.py" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -f "$root/models/tiny-gemma3-hf/model.safetensors" ]; then
    echo "setup: writing the tiny Gemma 4 checkpoints"
    "$venv/bin/python" "$root/scripts/tiny-gemma4-hf.py" hf "$root/models"
    echo "$want" >"$stamp"
fi
