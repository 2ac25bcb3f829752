#!/usr/bin/env python3
"""Memory at a long context (issue 19): `gemma run -c 262144` holding a long prompt, its peak
resident memory against a short prompt's at the same -c, and the difference against the bytes
the KV cache holds for the extra positions (the layers with a cache of their own keep every
position: K and V rows of their head size in the cache types, and an 8-byte position each;
sliding layers keep their window). Nothing should be allocated for the context up front, and
the memory should follow the positions held.

    scripts/long-context.py [-m MODEL] [-n TOKENS] [-c 262144] [-ctk f16] [-ctv f16]

Default model: models/tiny-gemma4-moe.gguf (6 layers, 2 global, so that a prompt of 100K+
tokens runs in minutes on a CPU); the text is models/alice.txt, cut (and repeated if needed)
to about TOKENS tokens.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
gemma = os.path.join(target, "release", "gemma")

ROW_BYTES = {"f32": lambda d: 4 * d, "f16": lambda d: 2 * d, "bf16": lambda d: 2 * d,
             "q8_0": lambda d: d // 32 * 34, "q4_0": lambda d: d // 32 * 18}


def run(args):
    """Runs gemma with `args`; returns (its JSON output, its peak RSS in bytes, seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.time()
    out = subprocess.run([gemma] + args, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"gemma {' '.join(args)} failed: {out.stderr}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if rss <= before:
        sys.exit("a later child's peak RSS must exceed the earlier ones': run the short prompt first")
    return json.loads(out.stdout), rss * 1024, time.time() - started


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-m", default=os.path.join(root, "models", "tiny-gemma4-moe.gguf"))
    p.add_argument("-n", type=int, default=110_000)
    p.add_argument("-c", type=int, default=262_144)
    p.add_argument("-ctk", default="f16")
    p.add_argument("-ctv", default="f16")
    a = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "gemma"], cwd=root, check=True)
    info = json.loads(subprocess.run([gemma, "info", "--json", "-c", str(a.c), a.m], capture_output=True, check=True).stdout)
    h = info["hparams"]
    text = open(os.path.join(root, "models", "alice.txt"), encoding="utf-8").read()
    ids = json.loads(subprocess.run([gemma, "tokenize", "-m", a.m, "--json"], input=text.encode(),
                                    capture_output=True, check=True).stdout)["ids"]
    per_char = len(ids) / len(text)
    long_text = (text * (1 + int(a.n / len(ids))))[: int(a.n / per_char)]
    flags = ["-c", str(a.c), "-ctk", a.ctk, "-ctv", a.ctv, "-n", "1", "--temp", "0", "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        short, long = os.path.join(tmp, "short.txt"), os.path.join(tmp, "long.txt")
        open(short, "w").write(text[:2000])
        open(long, "w").write(long_text)
        # The short prompt first: RUSAGE_CHILDREN keeps the largest child's peak.
        s_out, s_rss, _ = run(["run", "-m", a.m, "-f", short] + flags)
        l_out, l_rss, secs = run(["run", "-m", a.m, "-f", long] + flags)
    n_short, n_long = len(s_out["prompt_ids"]), len(l_out["prompt_ids"])
    # Bytes per position held by the layers whose cache keeps every position.
    n_layer = h["block_count"]
    shared = h.get("shared_kv_layers") or 0
    per_pos = 0
    for il in range(n_layer - shared):
        if h["sliding_layers"][il]:
            continue
        d = h["key_length"]
        kv = h["head_count_kv"][il]
        per_pos += kv * (ROW_BYTES[a.ctk](d) + ROW_BYTES[a.ctv](d)) + 8
    expected = (n_long - n_short) * per_pos
    grown = l_rss - s_rss
    mib = 1 << 20
    print(f"model {os.path.basename(a.m)}, -c {a.c}, K {a.ctk} V {a.ctv}, weights {info['memory']['weights_bytes'] / mib:.1f} MiB")
    print(f"| prompt tokens | peak RSS | prefill + 1 token |")
    print(f"|---:|---:|---:|")
    print(f"| {n_short} | {s_rss / mib:.1f} MiB | |")
    print(f"| {n_long} | {l_rss / mib:.1f} MiB | {secs:.0f} s |")
    print(f"RSS grew {grown / mib:.1f} MiB for {n_long - n_short} more positions; the cache holds "
          f"{per_pos} bytes a position on its full-context layers: {expected / mib:.1f} MiB "
          f"({100 * (grown - expected) / expected:+.1f}%)")
    full = info["memory"]["kv_cache_bytes"]
    print(f"(f16 at the whole -c {a.c} would be {full / mib:.1f} MiB: gemma info)")


if __name__ == "__main__":
    main()
