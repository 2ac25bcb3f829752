#!/usr/bin/env bash
# Builds one of llama.cpp's tools (llama-bench, llama-perplexity, llama-server, llama-mtmd-cli,
# ...) once, from the llama-cpp-python==0.3.36 sdist's vendored llama.cpp (cmake,
# -DGGML_NATIVE=ON), into ~/.cache/gemma.rs/llama-bench/build/bin, and prints its path. The oracle
# for our speed and perplexity comparisons; not part of the runtime.
#
#   scripts/llama-tool.sh llama-perplexity
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tool="$1"
cache="${GEMMA_CACHE:-$HOME/.cache/gemma.rs}"
src="$cache/llama-bench"
bin="$src/build/bin/$tool"
if [ ! -x "$bin" ]; then
    if [ ! -f "$src/CMakeLists.txt" ]; then
        # The sdist fetch-test-models.sh downloaded (into CI's cache or models/.cache), else
        # downloaded here: that script skips it when the vocabulary files are already present.
        name=llama_cpp_python-0.3.36.tar.gz
        sdist="$cache/models/llama-cpp-python/$name"
        [ -f "$sdist" ] || [ ! -f "$root/models/.cache/llama-cpp-python/$name" ] \
            || sdist="$root/models/.cache/llama-cpp-python/$name"
        [ -f "$sdist" ] || python3 -m pip download --quiet --no-deps --no-binary=:all: \
            -d "$(dirname "$sdist")" "llama-cpp-python==0.3.36" >&2
        mkdir -p "$src"
        tar xzf "$sdist" -C "$src" --strip-components=3 llama_cpp_python-0.3.36/vendor/llama.cpp
    fi
    cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >/dev/null
    cmake --build "$src/build" --target "$tool" -j "$(nproc)" >/dev/null 2>&1
fi
echo "$bin"
