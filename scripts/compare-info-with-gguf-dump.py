#!/usr/bin/env python3
"""Check `gemma info --json --tensors` against the `gguf` package (llama.cpp's gguf-py, the
reader behind gguf-dump) on real GGUF files: version, every metadata key with its type and
value (arrays: element type, length, first elements), every tensor's name, type, shape and
offset, and the parameter count and per-type byte totals derived from them.

Usage: compare-info-with-gguf-dump.py FILE.gguf...   (run from the repository root; builds
gemma with cargo). Prints one line per file and a closing 'N passed, N failed'.
"""
import json
import math
import subprocess
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.constants import GGML_QUANT_SIZES

HEAD = 8  # gemma info shows the first 8 elements of an array
# gguf-py's value-type names -> ours
TYPE_NAMES = {
    "UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
    "FLOAT32": "f32", "BOOL": "bool", "STRING": "string", "ARRAY": "array", "UINT64": "u64",
    "INT64": "i64", "FLOAT64": "f64",
}


def gguf_py_value(field):
    """A field's value as gguf-py decodes it (scalar, string, or list)."""
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        if sub == GGUFValueType.ARRAY:
            return None  # nested arrays: gguf-py does not decode them; length checked only
        return [field.parts[i].tolist()[0] for i in field.data]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def same(a, b):
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6) or (math.isnan(float(a)) and math.isnan(float(b)))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check(path):
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--", "info", "--json", "--tensors", path],
        check=True, capture_output=True, text=True,
    ).stdout
    ours = json.loads(out)
    reader = GGUFReader(path)
    problems = []

    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    if ours["n_metadata"] != len(fields):
        problems.append(f"metadata count {ours['n_metadata']} vs {len(fields)}")
    if ours["gguf_version"] != int(reader.fields["GGUF.version"].parts[-1][0]):
        problems.append("version differs")
    for key, field in fields.items():
        mine = ours["metadata"].get(key)
        if mine is None:
            problems.append(f"missing key {key}")
            continue
        ref = gguf_py_value(field)
        if field.types[0] == GGUFValueType.ARRAY:
            elem = TYPE_NAMES[field.types[1].name] if len(field.types) > 1 else None
            if mine.get("len") != len(field.data) or (elem and mine.get("element_type") != elem):
                problems.append(f"{key}: array {mine.get('element_type')}[{mine.get('len')}] vs {elem}[{len(field.data)}]")
            elif ref is not None and not same(mine["first"], ref[:HEAD]):
                problems.append(f"{key}: first elements {mine['first']} vs {ref[:HEAD]}")
        elif not same(mine, ref):
            problems.append(f"{key}: {mine!r} vs {ref!r}")

    tensors = ours["tensors"]
    if len(tensors) != len(reader.tensors):
        problems.append(f"tensor count {len(tensors)} vs {len(reader.tensors)}")
    n_params = 0
    bytes_by_type = {}
    for mine, ref in zip(tensors, reader.tensors):
        ref_dims = [int(d) for d in ref.shape]
        ref_offset = int(ref.data_offset) - int(reader.data_offset)
        if (mine["name"], mine["type"].lower(), mine["dims"], mine["offset"]) != (
            ref.name, ref.tensor_type.name.lower(), ref_dims, ref_offset
        ):
            problems.append(f"tensor {ref.name}: {mine} vs {ref.tensor_type.name} {ref_dims} @{ref_offset}")
        if mine["n_bytes"] != int(ref.n_bytes):
            problems.append(f"tensor {ref.name}: {mine['n_bytes']} bytes vs {ref.n_bytes}")
        n_params += int(ref.n_elements)
        bytes_by_type[ref.tensor_type.name.lower()] = bytes_by_type.get(ref.tensor_type.name.lower(), 0) + int(ref.n_bytes)
    if ours["n_params"] != n_params:
        problems.append(f"parameters {ours['n_params']} vs {n_params}")
    mix = {t["type"].lower(): t["n_bytes"] for t in ours["type_mix"]}
    if mix != bytes_by_type:
        problems.append(f"type mix {mix} vs {bytes_by_type}")
    return problems, len(fields), len(reader.tensors)


def main():
    passed = failed = 0
    for path in sys.argv[1:]:
        problems, n_keys, n_tensors = check(path)
        if problems:
            failed += 1
            print(f"FAIL {path}:")
            for p in problems[:20]:
                print("   ", p)
        else:
            passed += 1
            print(f"ok   {path}: {n_keys} metadata keys and {n_tensors} tensors agree with gguf-py")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
