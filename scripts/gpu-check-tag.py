"""Helpers of `scripts/gpu-check.sh moe` (copied to .gpu/tag.py), reading stdin:

    tag.py WHO LABEL   bench results (a JSON array, or JSON lines) -> JSON lines tagged with
                       who ran them and the placement's label
    tag.py fits GIB    `gemma info --json -ngl N` -> exit 0 when the GPU's weights and KV cache
                       fit GIB
    tag.py table       tagged JSON lines -> the markdown table, with ratios
"""

import json
import sys


def rows(text):
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def table(results):
    cpu = {r["test"]: r["avg_ts"] for r in results if r["who"] == "gemma.rs" and r["label"] == "CPU"}
    print("| runtime | placement | test | t/s | vs our CPU | experts in RAM |")
    print("|---|---|---|---:|---:|---|")
    for r in results:
        e = r.get("experts_in_ram")
        note = ""
        if e:
            note = f"CPU {e['cpu']}, uploaded {e['uploaded']} layer passes"
            if e.get("cache_choices"):
                note += f", cache hits {100 * e['cache_hits'] / e['cache_choices']:.1f}%"
        base = cpu.get(r["test"])
        ratio = f"{r['avg_ts'] / base:.2f}x" if base else ""
        print(f"| {r['who']} | {r['label']} | {r['test']} | {r['avg_ts']:.2f} | {ratio} | {note} |")
    # At equal VRAM: ours (with and without the cache) against llama.cpp's whole layers.
    theirs = {(r["label"].split(",")[0], r["test"]): r["avg_ts"] for r in results if r["who"] == "llama.cpp"}
    print("\nat equal VRAM, against llama.cpp's whole-layer offload:")
    for r in results:
        budget = r["label"].split(",")[0]
        t = theirs.get((budget, r["test"]))
        if r["who"] == "gemma.rs" and budget.endswith("GiB") and t:
            print(f"  {r['label']} {r['test']}: {r['avg_ts']:.2f} / {t:.2f} = {r['avg_ts'] / t:.2f}x")


def main():
    mode = sys.argv[1]
    if mode == "fits":
        split = json.load(sys.stdin)["memory"]["split"]
        need = split["gpu_weights_bytes"] + (split["gpu_kv_cache_bytes"] or 0)
        sys.exit(0 if need <= float(sys.argv[2]) * 2**30 else 1)
    if mode == "table":
        table(rows(sys.stdin.read()))
        return
    for r in rows(sys.stdin.read()):
        print(json.dumps(dict(r, who=mode, label=sys.argv[2])))


main()
