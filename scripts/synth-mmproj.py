#!/usr/bin/env python3
"""A synthetic full-size Gemma 4 26B-A4B vision mmproj (llama.cpp's format), for speed
measurements of the image encoder beside llama.cpp's mtmd (scripts/vision-bench.sh).

    synth-mmproj.py OUT.gguf [--type f16|f32|q8_0] [--seed N]     numpy + gguf
    synth-mmproj.py --check MODELS_DIR [--seed N]                   numpy + gguf

The writer is tiny-gemma4-vision.py's `mmproj` step (imported, not copied: `vision_tensors`,
`mmproj_tensor`, `write_mmproj_file`) with 26B-A4B's vision config in place of the tiny one:
projector type gemma4v, hidden 1152, 27 blocks, 16 heads of 72, MLP 4304 (gated), patch 16,
pooling 3, 10240 learned positions per axis, projection into the text width 2816, std_bias /
std_scale, and clamp bounds on the seven linears of each block. So the tensor names, shapes,
types, metadata keys and their order are what llama.cpp's `convert_hf_to_gguf.py --mmproj`
writes for a checkpoint of those shapes (tensors in the checkpoint's sorted name order). Like
the tiny tower it has no `layer_scalar` (v.blk.N.out_scale.weight) tensors.

Weights come from one seeded numpy PCG64 stream and are scaled as the tiny tower's (linears
std 1/sqrt(fan_in), norms near 1, q/k norms carrying the attention scale), with std_bias and
std_scale sized for this depth's pooled features (POOLED_RMS below, from `--check`), so the
tower's output has RMS about 1 and the embeddings the text embeddings' scale; the clamp bounds
(the tiny tower's, about +-2) sit near two standard deviations of the unit-RMS values they clamp.

--type: f16 (default) is the converter's `--outtype f16`: the 2-D weights F16, the position
table and every 1-D tensor F32; f32 (`--outtype f32`) keeps everything F32; q8_0 is the converter's
`--outtype q8_0`: the 2-D weights Q8_0 (gguf-py's bit-exact quantizer), the patch embedding
and position table F32, and `ffn_down` F16, since its rows (4304) are not a multiple of Q8_0's
block of 32 (the converter falls back to F16 there too). Sizes: f32 2.3 GB, f16 1.19 GB, q8_0
0.81 GB. The file is written to OUT.tmp and renamed.

`--check` runs tiny-gemma4-vision.py's numpy statement of the tower (`numpy_tower`, float32 here)
on square.png's budget-70 patches (MODELS_DIR/vision-images, written by that script's `pixels`
step) and prints the tower output's and the embeddings' RMS, with and without the clamps.
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_script(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


vis = load_script("tiny_gemma4_vision", "tiny-gemma4-vision.py")

SEED = 4026
TEXT_HIDDEN = 2816
# google/gemma-4-26B-A4B's vision_config (GEMMA4.md section 8); the rest as the tiny tower's.
VISION_CONFIG = dict(
    vis.VISION_CONFIG,
    hidden_size=1152,
    intermediate_size=4304,
    num_hidden_layers=27,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=72,
    position_embedding_size=10240,
)
# Measured with --check (RMS of the pooled features times sqrt(1152) on square.png, 203): sizes
# std_bias (0.3x) and std_scale (1/x).
POOLED_RMS = 200.0


class _Tiny:
    """tiny-gemma4.py as tiny-gemma4-vision.py sees it, with the text width of 26B-A4B (the
    projector's output, clip.vision.projection_dim)."""

    HIDDEN = TEXT_HIDDEN

    def __getattr__(self, name):
        return getattr(vis.tiny, name)


def configure():
    """Points tiny-gemma4-vision.py's mmproj step at the full-size tower."""
    c = VISION_CONFIG
    h, inner, ff = c["hidden_size"], c["num_attention_heads"] * c["head_dim"], c["intermediate_size"]
    vis.VISION_CONFIG = c
    vis.PROJ_SHAPES = {
        "self_attn.q_proj": (inner, h),
        "self_attn.k_proj": (inner, h),
        "self_attn.v_proj": (inner, h),
        "self_attn.o_proj": (h, inner),
        "mlp.gate_proj": (ff, h),
        "mlp.up_proj": (ff, h),
        "mlp.down_proj": (h, ff),
    }
    vis.POOLED_RMS = POOLED_RMS
    vis.tiny = _Tiny()
    # general.* as the converter derives them from a folder named synth-gemma4-26B-A4B-vision.
    vis.MMPROJ_GENERAL = {"name": "Synth Gemma4 26B A4B Vision", "finetune": "vision", "basename": "synth-gemma4"}


def tensors(seed):
    """The tower's and projector's weights under their HF names, in the checkpoint's (sorted) order."""
    t = vis.vision_tensors(seed)
    return {k: t[k] for k in sorted(t)}


class Q8Writer:
    """Wraps the GGUFWriter that write_mmproj_file makes (called with f16=False, so every tensor
    arrives float32) into the converter's `--outtype q8_0` choices."""

    def __init__(self, gguf, base):
        self.gguf, self.base = gguf, base

    def __call__(self, *args, **kwargs):
        gguf = self.gguf
        writer = self.base(*args, **kwargs)
        add_tensor, add_uint32 = writer.add_tensor, writer.add_uint32

        def tensor(name, a, *rest, **kw):
            if a.ndim >= 2 and name.endswith(".weight") and name not in ("v.position_embd.weight",
                                                                         "v.patch_embd.weight"):
                try:
                    q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
                    return add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
                except gguf.QuantError:
                    return add_tensor(name, a.astype(np.float16))
            return add_tensor(name, a, *rest, **kw)

        def uint32(key, value):
            if key == "general.file_type":
                value = int(gguf.LlamaFileType.MOSTLY_Q8_0)
            return add_uint32(key, value)

        writer.add_tensor, writer.add_uint32 = tensor, uint32
        return writer


def write(out, ty, seed):
    import gguf

    configure()
    t0 = time.time()
    hf = tensors(seed)
    n_params = sum(a.size for a in hf.values())
    print(f"{len(hf)} tensors, {n_params / 1e6:.1f} M parameters, generated in {time.time() - t0:.1f} s",
          file=sys.stderr)
    t1 = time.time()
    if ty == "q8_0":
        base = gguf.GGUFWriter
        gguf.GGUFWriter = Q8Writer(gguf, base)
        try:
            vis.write_mmproj_file(out, hf, False)
        finally:
            gguf.GGUFWriter = base
    else:
        vis.write_mmproj_file(out, hf, ty == "f16")
    print(f"{out}: {ty}, {os.path.getsize(out) / 1e9:.3f} GB, written in {time.time() - t1:.1f} s", file=sys.stderr)


def check(models, seed):
    configure()
    w = tensors(seed)
    folder = os.path.join(models, "vision-images")
    entry = json.load(open(os.path.join(folder, "pixels.json")))["images"]["square.png"]["70"]
    px = np.fromfile(os.path.join(folder, entry["file"]), "<f4").reshape(-1, 768)
    t0 = time.time()
    rms = lambda x: float(np.sqrt((x.astype(np.float64) ** 2).mean()))
    for clamps in (True, False):
        vit, emb = vis.numpy_tower(w, px, entry["grid_w"], entry["grid_h"], clamps=clamps)
        # Undo the standardization: the pooled features times sqrt(hidden).
        pooled = vit / w["model.vision_tower.std_scale"] + w["model.vision_tower.std_bias"]
        print(f"square.png budget 70 ({px.shape[0]} patches), clamps {'on' if clamps else 'off'}: pooled x "
              f"sqrt(hidden) RMS {rms(pooled):.2f} (POOLED_RMS {POOLED_RMS}), tower output RMS {rms(vit):.3f}, "
              f"embeddings RMS {rms(emb):.3f} (text embedding scale {0.3 * np.sqrt(TEXT_HIDDEN):.2f}), "
              f"finite: {bool(np.isfinite(emb).all())}")
    print(f"{time.time() - t0:.1f} s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", help="the mmproj GGUF to write")
    ap.add_argument("--type", choices=["f16", "f32", "q8_0"], default="f16")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", metavar="MODELS_DIR")
    args = ap.parse_args()
    if args.check:
        check(args.check, args.seed)
    elif args.out:
        write(args.out, args.type, args.seed)
    else:
        ap.error("OUT.gguf or --check MODELS_DIR")
