#!/usr/bin/env python3
"""Aggregate speed of `gemma serve` under concurrent load, beside llama.cpp's `llama-server`
(built from the same vendored llama.cpp by scripts/llama-tool.sh) on the same file, slots,
threads and load. A benchmark, not a test: it prints numbers and ratios.

    scripts/serve-bench.py MODEL.gguf [--parallel 4] [--requests 32] [--clients 8]
                           [--max-tokens 64] [--threads 2] [--no-llama]

For each server: `gemma serve --parallel 1`, `gemma serve --parallel N`, and `llama-server -np N`
(and `-np 1`), it sends the same requests (streamed chat completions, prompts of mixed lengths,
temperature 0, `ignore_eos` so that every request generates exactly --max-tokens tokens) from
--clients threads, and reports aggregate generated tokens/s (all completion tokens over the
wall time of the load) and the time to first token (request sent to first content chunk),
p50 and p95. Run it with the release build: `cargo build --release` first.
"""

import argparse
import concurrent.futures as futures
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "Tell me about the history of the printing press.",
    "Write a long story about a lighthouse keeper who finds a message in a bottle, with dialogue.",
    "Hi!",
    "Explain, step by step and with examples, how a hash table handles collisions, and compare "
    "open addressing with separate chaining in terms of memory and speed.",
    "List ten fruits.",
    "Summarize the plot of a detective novel set in Venice in the winter of 1920, where the "
    "detective is a retired opera singer and the victim a glassmaker.",
]


def wait_ready(port, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit("the server did not become ready")


def one_request(port, i, max_tokens):
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        sys.exit(f"request {i}: {r.status} {r.read()[:300]}")
    first, tokens = None, 0
    for line in r:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for c in chunk.get("choices") or []:
            delta = c.get("delta") or {}
            if first is None and (delta.get("content") or delta.get("reasoning_content")):
                first = time.perf_counter() - start
    conn.close()
    return first if first is not None else time.perf_counter() - start, tokens


def load(port, requests, clients, max_tokens):
    start = time.perf_counter()
    with futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one_request(port, i, max_tokens), range(requests)))
    wall = time.perf_counter() - start
    ttft = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1e3 * statistics.median(ttft),
        "ttft_p95_ms": 1e3 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
    }


def run_server(cmd, port, args):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(port, proc)
        # One warm-up request (pages the weights in), then the load.
        one_request(port, 0, 4)
        return load(port, args.requests, args.clients, args.max_tokens)
    finally:
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx-per-slot", type=int, default=2048)
    p.add_argument("--no-llama", action="store_true")
    p.add_argument("--port", type=int, default=18431)
    args = p.parse_args()

    gemma = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "gemma")
    if not os.path.exists(gemma):
        sys.exit(f"{gemma} is missing: cargo build --release")
    rows = []
    for n in (1, args.parallel):
        cmd = [gemma, "serve", "-m", args.model, "--port", str(args.port), "-t", str(args.threads), "-q",
               "--parallel", str(n), "-c", str(n * args.ctx_per_slot)]
        rows.append((f"gemma serve --parallel {n}", n, run_server(cmd, args.port, args)))
    if not args.no_llama:
        llama = subprocess.run([os.path.join(ROOT, "scripts/llama-tool.sh"), "llama-server"], capture_output=True,
                               text=True, check=True).stdout.strip()
        for n in (1, args.parallel):
            cmd = [llama, "-m", args.model, "--port", str(args.port), "-t", str(args.threads), "-np", str(n),
                   "-c", str(n * args.ctx_per_slot), "--no-webui", "-lv", "0", "--jinja"]
            rows.append((f"llama-server -np {n}", n, run_server(cmd, args.port, args)))

    print(f"\n{os.path.basename(args.model)}: {args.requests} requests from {args.clients} clients, "
          f"{args.max_tokens} tokens each, {args.threads} threads\n")
    print("| server | tokens/s | TTFT p50 ms | TTFT p95 ms | wall s |")
    print("|---|---:|---:|---:|---:|")
    for name, _, r in rows:
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_p95_ms']:.0f} | {r['wall_s']:.1f} |")
    ours = {n: r for name, n, r in rows if name.startswith("gemma")}
    print(f"\ngemma serve --parallel {args.parallel} / --parallel 1, aggregate tokens/s: "
          f"{ours[args.parallel]['tokens_per_s'] / ours[1]['tokens_per_s']:.2f}x")
    theirs = {n: r for name, n, r in rows if name.startswith("llama")}
    if theirs:
        for n in (1, args.parallel):
            o, t = ours[n], theirs[n]
            print(f"slots {n}: gemma / llama-server: tokens/s {o['tokens_per_s'] / t['tokens_per_s']:.2f}x, "
                  f"TTFT p50 {t['ttft_p50_ms'] / o['ttft_p50_ms']:.2f}x, p95 {t['ttft_p95_ms'] / o['ttft_p95_ms']:.2f}x "
                  f"(TTFT ratios: theirs over ours, above 1 is ours faster)")
    print(json.dumps({name: r for name, _, r in rows}))


if __name__ == "__main__":
    main()
