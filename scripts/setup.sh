#!/usr/bin/env bash
# Install what the tests need, idempotently: Debian packages for building llama.cpp (the test
# oracle) and shaderc's glslang (cmake, a C++ compiler), the Vulkan loader and lavapipe (Mesa's
# Vulkan device on the CPU, where every GPU test runs), a Python venv with the `gguf` package (its gguf-dump is an oracle for `gemma info`),
# the real test models (scripts/fetch-test-models.sh), the tiny random Gemma 4 models
# (scripts/tiny-gemma4.py, regenerated when their sha256 differs from the fixtures') and the tiny
# Gemma 4 with a vision tower with its test images (scripts/tiny-gemma4-vision.py).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need=()
for pkg in cmake nasm clang libclang-dev python3-venv g++ libvulkan1 mesa-vulkan-drivers; do
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
# is the official client the `gemma serve` tests drive the server with (tests/serve_openai.py);
# Pillow and transformers (its PIL image processor, no torch) write the test images and the HF
# processor's pixels for them (scripts/tiny-gemma4-vision.py).
pins=("gguf==0.19.0" "numpy==2.4.6" "tokenizers==0.23.3" "openai==3.63.0" "Pillow==13.0.0" "transformers==5.24.0")
if ! "$venv/bin/python" -c 'import gguf, numpy, tokenizers, openai, PIL, transformers; assert numpy.__version__ == "2.4.6"; assert tokenizers.__version__ == "0.23.3"; assert openai.__version__ == "3.63.0"; assert PIL.__version__ == "13.0.0"; assert transformers.__version__ == "5.24.0"' 2>/dev/null; then
    echo "setup: creating $venv with ${pins[*]}"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "${pins[@]}"
fi

PYTHON="$venv/bin/python" "$root/scripts/fetch-test-models.sh"

for fixture in "$root"/tests/fixtures/tiny-gemma4-*.json; do
    # tiny-gemma4-vision.gguf is tiny-gemma4-vision.py's (below), not tiny-gemma4.py's.
    [ "$(basename "$fixture")" = tiny-gemma4-vision.json ] && continue
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

# The tiny Gemma 4 with a vision tower (scripts/tiny-gemma4-vision.py): its checkpoint folder, its
# text GGUF, the test images, the HF processor's pixels for them and the mmproj files (F32, F16,
# Q8_0; the mmproj step checks them against llama.cpp's converter's record); all rewritten when a script
# or fixture they come from or a pinned version changed since they were written, when one is
# missing, or when the checkpoint's or the GGUF's sha256 differs from the fixture's.
m="$root/models"
vfix="$root/tests/fixtures/tiny-gemma4-vision.json"
sha() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
vwant() { "$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$vfix" "$1"; }
stamp="$m/tiny-gemma4-vision.stamp"
want="$( (cat "$root/scripts/tiny-gemma4.py" "$root/scripts/tiny-gemma4-hf.py" "$root/scripts/tiny-gemma4-vision.py" \
    "$vfix" "$root/quantize/tests/fixtures/tiny-gemma4-vision.mmproj.convert.json"; echo "${pins[*]}") | sha256sum | cut -d' ' -f1)"
vision_ok() {
    [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] &&
        [ "$(sha "$m/tiny-gemma4-vision-hf/model.safetensors")" = "$(vwant safetensors_sha256)" ] &&
        [ "$(sha "$m/tiny-gemma4-vision.gguf")" = "$(vwant gguf_sha256)" ] &&
        [ -f "$m/vision-images/pixels.json" ] &&
        [ -f "$m/tiny-gemma4-vision-mmproj-f32.gguf" ] && [ -f "$m/tiny-gemma4-vision-mmproj-f16.gguf" ] &&
        [ -f "$m/tiny-gemma4-vision-mmproj-q8_0.gguf" ]
}
if ! vision_ok; then
    echo "setup: writing the tiny Gemma 4 with a vision tower, its test images and their pixels"
    rm -f "$stamp"
    for step in hf gguf images pixels mmproj; do
        "$venv/bin/python" "$root/scripts/tiny-gemma4-vision.py" "$step" "$m"
    done
    for f in tiny-gemma4-vision-hf/model.safetensors:safetensors_sha256 tiny-gemma4-vision.gguf:gguf_sha256; do
        if [ "$(sha "$m/${f%%:*}")" != "$(vwant "${f#*:}")" ]; then
            echo "setup: models/${f%%:*} is not the one $vfix was made from (${f#*:}); the vision tests will fail" >&2
            exit 1
        fi
    done
    echo "$want" >"$stamp"
fi
