#!/usr/bin/env bash
# Install what the tests need, idempotently: Debian packages for building llama.cpp (the test
# oracle), a Python venv with the `gguf` package (its gguf-dump is an oracle for `gemma info`),
# and the real test models (scripts/fetch-test-models.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need=()
for pkg in cmake clang libclang-dev python3-venv g++; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    sudo_="" ; [ "$(id -u)" = 0 ] || sudo_="sudo"
    $sudo_ apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv="$root/.venv"
if [ ! -x "$venv/bin/gguf-dump" ]; then
    echo "setup: creating $venv with gguf"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "gguf==0.19.0"
fi

PYTHON="$venv/bin/python" "$root/scripts/fetch-test-models.sh"
