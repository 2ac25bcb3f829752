#!/usr/bin/env python3
"""A tiny random Gemma 4 with a vision tower (every quirk of 26B-A4B's), test images, the Hugging
Face processor's pixels for them, and transformers' and llama.cpp's converter's outputs: the
oracle of image input.

    tiny-gemma4-vision.py hf MODELS_DIR                numpy + gguf + tokenizers (CI runs this)
    tiny-gemma4-vision.py gguf MODELS_DIR              numpy + gguf (CI runs this)
    tiny-gemma4-vision.py images MODELS_DIR            numpy + Pillow, pip (CI runs this)
    tiny-gemma4-vision.py pixels MODELS_DIR            numpy + Pillow + transformers, no torch (CI
                                                       runs this)
    tiny-gemma4-vision.py mmproj MODELS_DIR            numpy + gguf (CI runs this)
    tiny-gemma4-vision.py reference MODELS_DIR FIXTURES
                                                       + torch (run by hand; writes the committed
                                                       fixtures)
    tiny-gemma4-vision.py check MODELS_DIR FIXTURES    numpy + gguf (CI may run it)
    tiny-gemma4-vision.py convert MODELS_DIR quantize/tests/fixtures [CONVERT_HF_TO_GGUF_PY]
                                                       + torch, sentencepiece (by hand; writes a
                                                       committed fixture)

FIXTURES is tests/fixtures; the converter's record lives beside the other .convert.json files, in
quantize/tests/fixtures.

MODELS_DIR must hold ggml-vocab-gemma-4.gguf (scripts/fetch-test-models.sh leaves it there).

`hf` writes `tiny-gemma4-vision-hf/`, a `Gemma4ForConditionalGeneration` checkpoint (float32, one
`model.safetensors`): the language model is exactly tiny-gemma4.py's tiny-gemma4-moe (same config,
same seed, so the same weights) with `use_bidirectional_attention="vision"` as 26B/31B have it;
the vision tower is a 3-layer, 64-wide Gemma 4 ViT (4 heads of 16, MLP 96, patch 16, pooling 3,
320 learned positions per axis, axial RoPE theta 100, gelu_pytorch_tanh, standardize, clippable
linears with finite clamp bounds, tight enough that a few percent of values are clamped) and
`embed_vision` projects into the text width (256). Vocabulary: the first 1,024 tokens of the real
one with seven unused ones renamed to the multimodal tokens, with the real ones' token types:
6 `<|image>` (boi), 7 `<|image|>` (soft token), 8 `<image|>` (eoi), 9 `<|audio>`, 10 `<|audio|>`,
11 `<audio|>`, 12 `<|video|>` (the audio and video ones only so that the processor, which needs
them, finds them in the vocabulary). With the processor files (`processor_config.json`,
`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`) `AutoProcessor` loads a
`Gemma4Processor`.

`gguf` writes `tiny-gemma4-vision.gguf`: the text model as tiny-gemma4.py writes
tiny-gemma4-moe.gguf (same tensors) with the renamed vocabulary.

`images` writes `vision-images/`: deterministic test images (gradients and seeded noise, so that
resampling differences show) of every kind the loader meets: RGBA PNG with varying alpha, mode-L
JPEG, an RGB JPEG with EXIF orientation 6 and 4:2:0 chroma, a photo (scikit-image's bundled
`chelsea.png`, taken from its CPython 3.11 manylinux x86_64 wheel, whatever the host: `pip
download`, never installed, cached in MODELS_DIR/.cache/scikit-image) as PNG and as a 4:4:4 JPEG, a 1x1 PNG, a 4000x300 PNG, a 2-frame
palette GIF, a BMP and a 640x640 PNG. JPEGs: Pillow's encoder at quality 95.

`pixels` runs transformers' `Gemma4ImageProcessorPil` (PIL and numpy, no torch) on each image,
loaded as the runtime loads it (`open_image`: `PIL.ImageOps.exif_transpose(PIL.Image.open(path))`,
mode kept, given to the processor as a PIL image, whose `convert_to_rgb` then composites any
transparency over opaque white with `Image.alpha_composite`, as GEMMA4.md section 8 describes; not
transformers' `load_image`, whose `convert("RGB")` drops alpha instead), at budgets 70, 140 and
280, and writes
`vision-images/FILE.bBUDGET.f32` (e.g. `square.png.b70.f32`: little-endian float32
[n_patches][768], the real patches only, in HF's patch layout: row-major patches, each [16
rows][16 cols][3 channels]; every value is an exact uint8 level k/255, checked) and
`vision-images/pixels.json` (per image and budget: resized size, patch grid, soft tokens; the
positions are always the row-major meshgrid (x fastest), checked here). Where torchvision is
importable it also compares transformers' torchvision `Gemma4ImageProcessor`.

`reference` loads the checkpoint into transformers' `Gemma4ForConditionalGeneration` (float32,
eager attention and experts) and its processor with the PIL image processor, gives it the images
loaded with `open_image` (as `pixels` does; a path would go through `load_image`), and writes to
FIXTURES: `tiny-gemma4-vision.json` (versions, sha256 of the checkpoint and the GGUF, the cases
with their images, budgets, the processor's expanded input_ids and soft token counts),
`tiny-gemma4-vision.NAME.emb.f32` (the projector's output, [n_soft][256], for square.png at 70,
wide.png at 70, rgba.png at 140), `tiny-gemma4-vision.square.vit.f32` (the tower's standardized
output before `embed_vision`, [n_soft][64]), `tiny-gemma4-vision.prompt.logits.f32` (logits
[n_tokens][1024] of a prompt with text, square.png, text, rgba.png, text, both at budget 70, run
with the processor's mm_token_type_ids so that the sliding layers get the bidirectional image
mask) and `tiny-gemma4-vision.squares.logits.f32` (the same prompt with square.png and one.png,
64 soft tokens each in both HF and llama.cpp's mtmd: the comparison with llama.cpp); and the
expanded input_ids of a chat turn with square.png through the processor's chat template. It prints the fraction of values each clamp bound cuts and how far the logits move without
the bidirectional mask.

`mmproj` writes `tiny-gemma4-vision-mmproj-f32.gguf`, `-f16.gguf` and `-q8_0.gguf` (the vision
tower and projector, llama.cpp's mmproj format) from the checkpoint with gguf-py, byte-identical
to what llama.cpp's `convert_hf_to_gguf.py --mmproj --outtype f32 / f16 / q8_0` writes (the same
metadata keys in the same order with the same value types, tensors in the checkpoint's name order
with the converter's names, shapes and types, float16 by numpy's round to nearest even, Q8_0 by
gguf-py's quantizer, the converter's), and checks every tensor's sha256 and the metadata against
the converter's record,
`quantize/tests/fixtures/tiny-gemma4-vision.mmproj.convert.json`.

`check` runs the vision tower and projector again in float64 numpy (`numpy_tower`, an executable
statement of what transformers computes) on the `pixels` files of the reference's images and
compares with the fixtures (it also prints how far the embeddings move without the clamps), then
checks the `mmproj` files against the converter's record as `mmproj` does.

`convert` runs llama.cpp's `convert_hf_to_gguf.py --mmproj` (by default the one in the
llama-cpp-python sdist under MODELS_DIR/.cache/llama-cpp-python, extracted to a temporary folder)
for each outtype, checks that the `mmproj` step's F32 and F16 files are byte-identical to the
converter's, and writes `FIXTURES/tiny-gemma4-vision.mmproj.convert.json` (FIXTURES:
quantize/tests/fixtures) in the format of tiny-gemma4-hf.py's `oracle` (metadata in order with
GGUF value types; per outtype (F32, F16, BF16, Q8_0) the tensor table with each tensor's sha256).
"""
import glob
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_script(name, filename):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, filename))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tiny = load_script("tiny_gemma4", "tiny-gemma4.py")
tiny_hf = load_script("tiny_gemma4_hf", "tiny-gemma4-hf.py")

NAME = "tiny-gemma4-vision"
TEXT_MODEL = "tiny-gemma4-moe"
# tiny-gemma4.py seeds each model with 1000 + its index in CONFIGS.
TEXT_SEED = 1000 + list(tiny.CONFIGS).index(TEXT_MODEL)
VISION_SEED = 4000
N_VOCAB = tiny.N_VOCAB

# Unused ids of the first 1,024 that become the multimodal tokens, and the ids of those tokens in
# the real vocabulary (whose token types they take).
MM_TOKENS = {
    6: ("<|image>", 255999),
    7: ("<|image|>", 258880),
    8: ("<image|>", 258882),
    9: ("<|audio>", 256000),
    10: ("<|audio|>", 258881),
    11: ("<audio|>", 258883),
    12: ("<|video|>", 258884),
}
BOI, IMAGE, EOI, BOA, AUDIO, EOA, VIDEO = range(6, 13)

HIDDEN_V = 64
VISION_CONFIG = dict(
    model_type="gemma4_vision",
    hidden_size=HIDDEN_V,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    head_dim=16,
    hidden_activation="gelu_pytorch_tanh",
    rms_norm_eps=1e-6,
    max_position_embeddings=131072,
    attention_bias=False,
    attention_dropout=0.0,
    rope_parameters={"rope_type": "axial", "rope_theta": 100.0},
    pooling_kernel_size=3,
    patch_size=16,
    position_embedding_size=320,
    use_clipped_linears=True,
    standardize=True,
    initializer_range=0.02,
)

# Clamp bounds of the clippable linears, per projection: (input_min, input_max, output_min,
# output_max), chosen (by the reference run's printout) so that each cuts a few percent (0.2-6%) of the values
# on the reference images; asymmetric, so that a swapped or mirrored bound shows. Each layer
# scales them by its own factor in [0.9, 1.1].
CLAMPS = {
    "self_attn.q_proj": (-2.0, 2.3, -2.4, 2.1),
    "self_attn.k_proj": (-2.2, 2.0, -2.1, 2.5),
    "self_attn.v_proj": (-2.1, 2.2, -2.3, 2.2),
    "self_attn.o_proj": (-1.3, 1.35, -1.2, 1.15),
    "mlp.gate_proj": (-2.3, 2.1, -2.0, 2.2),
    "mlp.up_proj": (-2.1, 2.3, -2.2, 2.0),
    "mlp.down_proj": (-1.6, 1.9, -1.1, 1.0),
}
PROJ_SHAPES = {  # (out, in)
    "self_attn.q_proj": (4 * 16, HIDDEN_V),
    "self_attn.k_proj": (4 * 16, HIDDEN_V),
    "self_attn.v_proj": (4 * 16, HIDDEN_V),
    "self_attn.o_proj": (HIDDEN_V, 4 * 16),
    "mlp.gate_proj": (96, HIDDEN_V),
    "mlp.up_proj": (96, HIDDEN_V),
    "mlp.down_proj": (HIDDEN_V, 96),
}
# RMS of the pooled features (times sqrt(hidden)) on the reference images, for std_scale.
POOLED_RMS = 16.0

IMAGES = ["rgba.png", "gray.jpg", "exif-rotated.jpg", "one.png", "wide.png", "photo.png", "photo.jpg",
          "palette.gif", "plain.bmp", "square.png"]
BUDGETS = [70, 140, 280]
# scikit-image's bundled photo (a cat, 451x300 RGB), from this wheel version.
SKIMAGE = "scikit-image==0.25.2"
PHOTO = "skimage/data/chelsea.png"
PHOTO_SHA256 = "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"


def text_config():
    return dict(tiny_hf.text_config(tiny.CONFIGS[TEXT_MODEL]), use_bidirectional_attention="vision")


def hf_config():
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": text_config(),
        "vision_config": VISION_CONFIG,
        "audio_config": None,
        "boi_token_id": BOI,
        "eoi_token_id": EOI,
        "image_token_id": IMAGE,
        "video_token_id": VIDEO,
        "boa_token_id": BOA,
        "eoa_token_index": EOA,
        "audio_token_id": AUDIO,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }


def vision_tensors(seed=VISION_SEED):
    """Random vision tower and projector weights under their HF names, float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    c = VISION_CONFIG
    h, hd, n_pos, p = c["hidden_size"], c["head_dim"], c["position_embedding_size"], c["patch_size"]

    def linear(n_out, n_in, std=1.0):
        return (rng.standard_normal((n_out, n_in)) * std / np.sqrt(n_in)).astype(np.float32)

    def norm(n, mean=1.0):
        return (mean + 0.1 * mean * rng.standard_normal(n)).astype(np.float32)

    vt = "model.vision_tower."
    # Pixels enter as 2 * (x - 0.5) in [-1, 1]; patch embedding and positions both of order 1.
    t = {vt + "patch_embedder.input_proj.weight": linear(h, 3 * p * p, 2.0),
         vt + "patch_embedder.position_embedding_table": (0.6 * rng.standard_normal((2, n_pos, h))).astype(np.float32)}
    for il in range(c["num_hidden_layers"]):
        lp = f"{vt}encoder.layers.{il}."
        t[lp + "input_layernorm.weight"] = norm(h)
        t[lp + "post_attention_layernorm.weight"] = norm(h)
        t[lp + "pre_feedforward_layernorm.weight"] = norm(h)
        t[lp + "post_feedforward_layernorm.weight"] = norm(h)
        # Attention scale 1.0: q_norm and k_norm carry it (scores of a few units, so that the
        # attention over hundreds of patches is not uniform).
        t[lp + "self_attn.q_norm.weight"] = norm(hd, 1.5 * hd**-0.25)
        t[lp + "self_attn.k_norm.weight"] = norm(hd, 1.5 * hd**-0.25)
        for proj, (n_out, n_in) in PROJ_SHAPES.items():
            t[lp + proj + ".linear.weight"] = linear(n_out, n_in)
            f = rng.uniform(0.9, 1.1)
            for key, bound in zip(["input_min", "input_max", "output_min", "output_max"], CLAMPS[proj]):
                t[lp + proj + "." + key] = np.array(bound * f, dtype=np.float32)
    t[vt + "std_bias"] = (0.3 * POOLED_RMS * rng.standard_normal(h)).astype(np.float32)
    t[vt + "std_scale"] = (rng.uniform(0.6, 1.4, h) / POOLED_RMS).astype(np.float32)
    # After the weightless pre-norm (RMS 1), image embeddings of the text embeddings' RMS
    # (0.3 * sqrt(256) = 4.8).
    text_rms = 0.3 * np.sqrt(tiny.HIDDEN)
    t["model.embed_vision.embedding_projection.weight"] = linear(tiny.HIDDEN, h, text_rms)
    return t


def all_hf_tensors():
    tensors = {k.replace("model.", "model.language_model.", 1): v
               for k, v in tiny.hf_tensors(tiny.CONFIGS[TEXT_MODEL], TEXT_SEED).items()}
    tensors.update(vision_tensors())
    return tensors


def vocabulary(models):
    """tiny-gemma4.py's vocabulary (the same selection, read with one GGUFReader: opening the real
    vocabulary takes ~20 s) with the multimodal tokens renamed in."""
    from gguf import GGUFReader

    r = GGUFReader(os.path.join(models, "ggml-vocab-gemma-4.gguf"))
    field = lambda k: r.fields[k].contents()
    real_tokens, real_types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    tokens, types = real_tokens[:N_VOCAB], real_types[:N_VOCAB]
    merges = tiny.merges_among(field("tokenizer.ggml.merges"), tokens)
    for i, (name, real) in MM_TOKENS.items():
        assert tokens[i].startswith("<unused") and real_tokens[real] == name, (i, tokens[i], real_tokens[real])
        assert not any(tokens[i] in m.split(" ") or name in m.split(" ") for m in merges)
        tokens[i], types[i] = name, real_types[real]
    return {
        "tokens": tokens,
        "scores": field("tokenizer.ggml.scores")[:N_VOCAB],
        "types": types,
        "merges": merges,
        "chat_template": field("tokenizer.chat_template"),
    }


def processor_config():
    image = {
        "do_convert_rgb": True, "do_normalize": False, "do_rescale": True, "do_resize": True,
        "image_mean": [0.0, 0.0, 0.0], "image_processor_type": "Gemma4ImageProcessor",
        "image_std": [1.0, 1.0, 1.0], "max_soft_tokens": 280, "patch_size": 16, "pooling_kernel_size": 3,
        "resample": 3, "rescale_factor": 1 / 255,
    }
    video = dict(image, do_normalize=True, do_sample_frames=True, max_soft_tokens=70, num_frames=32,
                 return_metadata=False, video_processor_type="Gemma4VideoProcessor")
    del video["image_processor_type"]
    audio = {
        "dither": 0.0, "feature_extractor_type": "Gemma4AudioFeatureExtractor", "feature_size": 128,
        "fft_length": 512, "fft_overdrive": False, "frame_length": 320, "hop_length": 160,
        "input_scale_factor": 1.0, "max_frequency": 8000.0, "mel_floor": 0.001, "min_frequency": 0.0,
        "padding_side": "right", "padding_value": 0.0, "per_bin_mean": None, "per_bin_stddev": None,
        "preemphasis": 0.0, "preemphasis_htk_flavor": True, "return_attention_mask": True, "sampling_rate": 16000,
    }
    return {"audio_ms_per_token": 40, "audio_seq_length": 750, "feature_extractor": audio, "image_processor": image,
            "image_seq_length": 280, "processor_class": "Gemma4Processor", "video_processor": video}


def write_hf(models):
    vocab = vocabulary(models)
    out = os.path.join(models, NAME + "-hf")
    os.makedirs(out, exist_ok=True)
    tensors = all_hf_tensors()
    tiny_hf.write_safetensors(os.path.join(out, "model.safetensors"), tensors, "F32")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(hf_config(), f, indent=2)
    tok_cfg = dict(tiny_hf.SPECIAL_TOKENS, boi_token="<|image>", image_token="<|image|>", eoi_token="<image|>",
                   boa_token="<|audio>", audio_token="<|audio|>", eoa_token="<audio|>",
                   extra_special_tokens=["<|video|>"], padding_side="left", tokenizer_class="GemmaTokenizer",
                   backend="tokenizers", model_max_length=1000000000000000019884624838656)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        f.write(tiny_hf.tokenizer_json(vocab))
    with open(os.path.join(out, "chat_template.jinja"), "w") as f:
        f.write(vocab["chat_template"])
    with open(os.path.join(out, "processor_config.json"), "w") as f:
        json.dump(processor_config(), f, indent=2)
    path = os.path.join(out, "model.safetensors")
    print(f"{out}: {len(tensors)} tensors, model.safetensors sha256 {tiny.sha256(path)}")


def write_gguf(models):
    vocab = vocabulary(models)
    cfg = tiny.CONFIGS[TEXT_MODEL]
    path = os.path.join(models, NAME + ".gguf")
    tiny.write_gguf(path, NAME, cfg, tiny.hf_tensors(cfg, TEXT_SEED), vocab)
    print(f"{path}: {os.path.getsize(path)} bytes, sha256 {tiny.sha256(path)}")


# --- mmproj: the vision tower and projector as llama.cpp's converter writes them ------------

# The converter's file for this checkpoint (recorded by `convert`): every tensor's sha256 per outtype.
CONVERT_JSON = os.path.join(HERE, "..", "quantize", "tests", "fixtures", NAME + ".mmproj.convert.json")

# HF name (under model.vision_tower.encoder.layers.N.) -> GGUF name (under v.blk.N.), as the
# converter's Gemma4VisionAudioModel maps them (".linear.weight" -> ".weight").
MMPROJ_PROJ_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                     "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                     "mlp.down_proj": "ffn_down"}
MMPROJ_LAYER_NAMES = {
    "input_layernorm.weight": "ln1.weight",
    "post_attention_layernorm.weight": "attn_post_norm.weight",
    "pre_feedforward_layernorm.weight": "ln2.weight",
    "post_feedforward_layernorm.weight": "ffn_post_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    **{f"{hf}.linear.weight": f"{g}.weight" for hf, g in MMPROJ_PROJ_NAMES.items()},
    **{f"{hf}.{bound}": f"{g}.{bound}" for hf, g in MMPROJ_PROJ_NAMES.items()
       for bound in ("input_min", "input_max", "output_min", "output_max")},
}
MMPROJ_NAMES = {
    "model.embed_vision.embedding_projection.weight": "mm.input_projection.weight",
    "model.vision_tower.patch_embedder.input_proj.weight": "v.patch_embd.weight",
    "model.vision_tower.patch_embedder.position_embedding_table": "v.position_embd.weight",
    "model.vision_tower.std_bias": "v.std_bias",
    "model.vision_tower.std_scale": "v.std_scale",
}
# general.* as the converter derives them from the folder name tiny-gemma4-vision-hf.
MMPROJ_GENERAL = {"name": "Tiny Gemma4 Vision Hf", "finetune": "vision-hf", "basename": "tiny-gemma4"}


# The mmproj files the `mmproj` step writes.
MMPROJ_OUTTYPES = ("f32", "f16", "q8_0")


def mmproj_name(hf):
    if hf in MMPROJ_NAMES:
        return MMPROJ_NAMES[hf]
    prefix = "model.vision_tower.encoder.layers."
    assert hf.startswith(prefix), hf
    il, rest = hf[len(prefix):].split(".", 1)
    return f"v.blk.{il}.{MMPROJ_LAYER_NAMES[rest]}"


def mmproj_tensor(name, a, outtype):
    """One tensor as the converter writes it for OUTTYPE (f32, f16 or q8_0), as (data, GGML type or
    None for numpy's): scalars (the clamp bounds) become [1]; the patch embedding [hidden][16 * 16
    * 3] (HF's patch layout: rows, columns, channels) becomes [hidden][3][16][16]; in an F16 file
    the matrices named *.weight become float16 (numpy's astype: round to nearest even), except the
    position embedding, which the converter keeps F32 (as every 1-D tensor: norms, clamp bounds,
    std_bias, std_scale). The patch embedding is F16 in an F16 file; in a Q8_0 file it stays F32
    with the position embedding, and the other matrices become Q8_0."""
    import gguf

    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 0:
        a = a.reshape(1)
    if name == "v.patch_embd.weight":
        p = VISION_CONFIG["patch_size"]
        a = a.reshape(a.shape[0], p, p, 3).transpose(0, 3, 1, 2)
    a = np.ascontiguousarray(a)
    matrix = a.ndim >= 2 and name.endswith(".weight") and name != "v.position_embd.weight"
    if outtype == "f16" and matrix:
        return a.astype(np.float16), None
    if outtype == "q8_0" and matrix and name != "v.patch_embd.weight":
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(a, q8), q8
    return a, None


def write_mmproj_file(path, hf_tensors, outtype):
    import gguf

    w = gguf.GGUFWriter(path + ".tmp", "clip")
    # Tensors in the checkpoint's (sorted) name order, the converter's; the language model's are
    # not in an mmproj.
    for hf, a in hf_tensors.items():
        if hf.startswith("model.language_model."):
            continue
        name = mmproj_name(hf)
        data, ty = mmproj_tensor(name, a, outtype)
        if ty is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=ty)
    w.add_type("mmproj")
    w.add_string("general.name", MMPROJ_GENERAL["name"])
    w.add_string("general.finetune", MMPROJ_GENERAL["finetune"])
    w.add_string("general.basename", MMPROJ_GENERAL["basename"])
    w.add_string("general.size_label", gguf.size_label(*w.get_total_parameter_count()))
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    w.add_uint32("general.file_type", int(file_type))
    c, image = VISION_CONFIG, processor_config()["image_processor"]
    w.add_bool("clip.has_vision_encoder", True)
    w.add_uint32("clip.vision.projection_dim", tiny.HIDDEN)
    w.add_uint32("clip.vision.image_size", 224)  # the converter's placeholder (Gemma 4 has none)
    w.add_uint32("clip.vision.patch_size", c["patch_size"])
    w.add_uint32("clip.vision.embedding_length", c["hidden_size"])
    w.add_uint32("clip.vision.feed_forward_length", c["intermediate_size"])
    w.add_uint32("clip.vision.block_count", c["num_hidden_layers"])
    w.add_uint32("clip.vision.attention.head_count", c["num_attention_heads"])
    w.add_array("clip.vision.image_mean", [float(x) for x in image["image_mean"]])
    w.add_array("clip.vision.image_std", [float(x) for x in image["image_std"]])
    w.add_string("clip.vision.projector_type", "gemma4v")
    # The converter reads layer_norm_eps, which the vision config does not have: its default.
    w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)


def write_mmproj(models, out=None, verify=True):
    """Writes OUT (default MODELS_DIR)/tiny-gemma4-vision-mmproj-{f32,f16,q8_0}.gguf from the
    checkpoint in MODELS_DIR and, with verify, checks them against CONVERT_JSON."""
    hf = read_safetensors(os.path.join(models, NAME + "-hf", "model.safetensors"))
    paths = []
    for outtype in MMPROJ_OUTTYPES:
        path = os.path.join(out or models, f"{NAME}-mmproj-{outtype}.gguf")
        write_mmproj_file(path, hf, outtype)
        print(f"{path}: {os.path.getsize(path)} bytes, sha256 {tiny.sha256(path)}")
        paths.append(path)
    if verify:
        verify_mmproj(out or models)
    return paths


def verify_mmproj(models):
    """The mmproj files' metadata (keys in order, value types, values) and tensors (order, names,
    types, shapes, sha256 of the data) against the converter's, recorded in CONVERT_JSON."""
    want = json.load(open(CONVERT_JSON))
    for outtype in MMPROJ_OUTTYPES:
        ty = outtype.upper()
        path = os.path.join(models, f"{NAME}-mmproj-{outtype}.gguf")
        meta, tensors = tiny_hf.read_gguf(path)
        meta, tensors = json.loads(json.dumps(meta)), json.loads(json.dumps(tensors))
        file_type = [m for m in meta if m[0] == "general.file_type"][0][2]
        meta = [m for m in meta if m[0] != "general.file_type"]
        expect = want["outputs"][ty]
        bad = [f"metadata: {a} != {b}" for a, b in zip(meta, want["metadata"]) if a != b]
        if len(meta) != len(want["metadata"]):
            bad.append(f"{len(meta)} metadata keys, the converter wrote {len(want['metadata'])}")
        if file_type != expect["file_type"]:
            bad.append(f"general.file_type {file_type}, the converter wrote {expect['file_type']}")
        bad += [f"tensor {a} != {b}" for a, b in zip(tensors, expect["tensors"]) if a != b]
        if len(tensors) != len(expect["tensors"]):
            bad.append(f"{len(tensors)} tensors, the converter wrote {len(expect['tensors'])}")
        assert not bad, f"{path} differs from the converter's ({CONVERT_JSON}):\n" + "\n".join(bad[:20])
        print(f"{path}: metadata and all {len(tensors)} tensors' sha256 match the converter's {ty} output")


# --- images -------------------------------------------------------------------------------

def photo_png(models):
    """The bytes of scikit-image's chelsea.png, from its wheel (downloaded once, not installed)."""
    cache = os.path.join(models, ".cache", "scikit-image")
    wheels = sorted(glob.glob(os.path.join(cache, "scikit_image-*.whl")))
    if not wheels:
        os.makedirs(cache, exist_ok=True)
        # One wheel whatever the host's Python and platform (the PNG is the same in every wheel).
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.11", "--platform", "manylinux2014_x86_64", "--dest", cache, SKIMAGE],
                       check=True)
        wheels = sorted(glob.glob(os.path.join(cache, "scikit_image-*.whl")))
    with zipfile.ZipFile(wheels[-1]) as z:
        png = z.read(PHOTO)
    assert hashlib.sha256(png).hexdigest() == PHOTO_SHA256, f"{PHOTO} in {wheels[-1]} is not the expected file"
    return png


def gradient_noise(rng, h, w, channels, noise=24.0):
    """Smooth colour gradients with a ripple plus seeded noise, as uint8 [h][w][channels]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = []
    for c in range(channels):
        a, b = rng.uniform(-1, 1, 2)
        fx, fy = rng.uniform(2, 9, 2)
        v = 128 + 80 * (a * x / max(w - 1, 1) + b * y / max(h - 1, 1)) \
            + 40 * np.sin(2 * np.pi * (fx * x / max(w, 2) + c / 3.0)) * np.cos(2 * np.pi * fy * y / max(h, 2))
        planes.append(v)
    img = np.stack(planes, -1) + noise * rng.standard_normal((h, w, channels))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_images(models):
    from PIL import Image

    out = os.path.join(models, "vision-images")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(5000)
    jpeg = dict(quality=95, subsampling=0)

    # RGBA 300x200: alpha from transparent (left) to opaque (right), with noise and a fully
    # transparent and a fully opaque band.
    rgb = gradient_noise(rng, 200, 300, 3)
    alpha = np.clip(np.rint(np.linspace(-20, 275, 300)[None, :] + 30 * rng.standard_normal((200, 300))), 0, 255)
    alpha[:20] = 0
    alpha[-20:] = 255
    Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA").save(os.path.join(out, "rgba.png"))

    Image.fromarray(gradient_noise(rng, 191, 257, 1)[..., 0], "L").save(os.path.join(out, "gray.jpg"), **jpeg)

    # Stored 320 wide, 200 high, with EXIF orientation 6 (display rotated 90 degrees clockwise:
    # 200 wide, 320 high); a dark block marks the stored top-left corner. Default 4:2:0 chroma.
    stored = gradient_noise(rng, 200, 320, 3)
    stored[:40, :60] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "RGB").save(os.path.join(out, "exif-rotated.jpg"), quality=95, exif=exif.tobytes())

    Image.fromarray(np.array([[[200, 40, 90]]], dtype=np.uint8), "RGB").save(os.path.join(out, "one.png"))
    Image.fromarray(gradient_noise(rng, 300, 4000, 3), "RGB").save(os.path.join(out, "wide.png"))

    png = photo_png(models)
    with open(os.path.join(out, "photo.png"), "wb") as f:
        f.write(png)
    with Image.open(os.path.join(out, "photo.png")) as im:
        im.convert("RGB").save(os.path.join(out, "photo.jpg"), **jpeg)

    # Two-frame palette GIF, 160x120: a 64-colour adaptive palette of a gradient, then its mirror.
    frame = Image.fromarray(gradient_noise(rng, 120, 160, 3, noise=10.0), "RGB").quantize(64, dither=Image.Dither.NONE)
    second = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    frame.save(os.path.join(out, "palette.gif"), save_all=True, append_images=[second], duration=100, loop=0)

    # 24-bit BMP with an odd width (rows padded to 4 bytes).
    Image.fromarray(gradient_noise(rng, 77, 123, 3), "RGB").save(os.path.join(out, "plain.bmp"))
    Image.fromarray(gradient_noise(rng, 640, 640, 3), "RGB").save(os.path.join(out, "square.png"))

    for name in IMAGES:
        path = os.path.join(out, name)
        with Image.open(path) as im:
            info = f"{im.format} {im.mode} {im.size[0]}x{im.size[1]}"
        print(f"{path}: {info}, {os.path.getsize(path)} bytes, sha256 {tiny.sha256(path)}")


# --- pixels -------------------------------------------------------------------------------

def open_image(path):
    """An image as the runtime loads it: EXIF orientation applied, its mode kept, so that the
    processor's `convert_to_rgb` composites transparency over opaque white (transformers'
    `load_image(path)` would `convert("RGB")` first and drop the alpha channel)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        return ImageOps.exif_transpose(im)  # a new, loaded image (never `im` itself)


def pil_processor():
    from transformers import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(**{k: v for k, v in processor_config()["image_processor"].items()
                                      if k != "image_processor_type"})


def patch_info(out):
    """Checks one image's processor output and returns (real pixel_values, facts)."""
    pv, pos = np.asarray(out["pixel_values"])[0], np.asarray(out["image_position_ids"])[0]
    real = (pos != -1).all(-1)
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any(), "padding is not at the end"
    assert (pv[n:] == 0).all() and (pos[n:] == -1).all()
    gw, gh = int(pos[:n, 0].max()) + 1, int(pos[:n, 1].max()) + 1
    gx, gy = np.meshgrid(np.arange(gw), np.arange(gh), indexing="xy")
    assert gw * gh == n and (pos[:n] == np.stack([gx, gy], -1).reshape(n, 2)).all(), "positions are not a meshgrid"
    # Every value is a uint8 level k/255 (PIL resizes in uint8; rescale is float64 then float32).
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    assert np.isin(pv[:n], levels).all()
    n_soft = int(np.asarray(out["num_soft_tokens_per_image"])[0])
    assert n_soft * 9 == n
    return pv[:n].astype("<f4"), {"height": gh * 16, "width": gw * 16, "grid_w": gw, "grid_h": gh,
                                  "n_patches": n, "num_soft_tokens": n_soft}


def write_pixels(models):
    from PIL import Image

    folder = os.path.join(models, "vision-images")
    proc = pil_processor()
    facts = {}
    for name in IMAGES:
        path = os.path.join(folder, name)
        image = open_image(path)
        with Image.open(path) as raw:
            entry = {"file_sha256": tiny.sha256(path), "mode": raw.mode, "stored_width": raw.size[0],
                     "stored_height": raw.size[1], "width": image.size[0], "height": image.size[1]}
        for budget in BUDGETS:
            out = proc(images=[image], max_soft_tokens=budget, return_tensors="np")
            pv, info = patch_info(out)
            fname = f"{name}.b{budget}.f32"
            pv.tofile(os.path.join(folder, fname))
            entry[str(budget)] = dict(info, file=fname, sha256=tiny.sha256(os.path.join(folder, fname)))
            print(f"{name} budget {budget}: {entry['width']}x{entry['height']} -> {info['width']}x{info['height']}, "
                  f"{info['grid_w']}x{info['grid_h']} patches, {info['num_soft_tokens']} soft tokens")
        facts[name] = entry
    meta = {
        "processor": "transformers Gemma4ImageProcessorPil (do_resize bicubic via PIL on uint8, rescale 1/255 "
                     "in float64 then float32, no normalize), images loaded as PIL.ImageOps.exif_transpose(PIL.Image.open(path)) "
                     "and given as PIL images (convert_to_rgb composites transparency over opaque white)",
        "versions": versions(),
        "layout": "float32 LE [n_patches][16][16][3]: patches row-major over the grid (x fastest), each patch "
                  "rows of 16 pixels of RGB; real patches only",
        "positions": "row-major meshgrid: patch i is at x = i % grid_w, y = i // grid_w (checked)",
        "images": facts,
    }
    with open(os.path.join(folder, "pixels.json"), "w") as f:
        json.dump(meta, f, indent=1)
    compare_torchvision(folder, proc)


def versions():
    import PIL
    import transformers

    return {"transformers": transformers.__version__, "Pillow": PIL.__version__, "numpy": np.__version__}


def compare_torchvision(folder, proc):
    try:
        import torchvision  # noqa: F401
        from transformers import Gemma4ImageProcessor
    except ImportError:
        print("torchvision not importable: no comparison with Gemma4ImageProcessor")
        return
    tv = Gemma4ImageProcessor()
    for name in IMAGES:
        path = os.path.join(folder, name)
        for budget in BUDGETS:
            a = proc(images=[open_image(path)], max_soft_tokens=budget, return_tensors="np")
            b = tv(images=[open_image(path)], max_soft_tokens=budget, return_tensors="pt")
            pa, pb = np.asarray(a["pixel_values"]), b["pixel_values"].numpy()
            try:
                pc = tv(images=[path], max_soft_tokens=budget, return_tensors="pt")["pixel_values"].numpy()
                by_path = f"{np.abs(pa - pc).max():.4f}"
            except RuntimeError as e:
                by_path = "(torchvision cannot decode it: " + str(e).split(". ")[0].split(", ")[-1] + ")"
            same_pos = (np.asarray(a["image_position_ids"]) == b["image_position_ids"].numpy()).all()
            d = np.abs(pa - pb)
            # torchvision rescales in float32 (PIL's path in float64): ulp differences besides the
            # resampling's whole levels.
            print(f"torchvision vs PIL {name} b{budget}: positions equal {same_pos}; from the same PIL image "
                  f"max |diff| {d.max():.4f} ({d.max() * 255:.1f}/255), {100 * (d > 1e-6).mean():.2f}% of values "
                  f"differ by a level, {100 * ((d > 0) & (d <= 1e-6)).mean():.1f}% by rounding only; from the "
                  f"path (torchvision's own decoding) max |diff| {by_path}")


# --- reference ----------------------------------------------------------------------------

# Each byte is a token in the tiny vocabulary (it has no single letters): 1 + 9, 12 and 5 tokens.
PROMPT_TEXT = ["The cat", "Or a dog", "Done."]


def load_model(folder):
    import torch
    from transformers import AutoImageProcessor, AutoProcessor, Gemma4ForConditionalGeneration, Gemma4ImageProcessorPil

    model, info = Gemma4ForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager",
        output_loading_info=True)
    missing = [m for m in info["missing_keys"] if m != "lm_head.weight"]
    assert not missing and not info["unexpected_keys"] and not info["mismatched_keys"], info
    model.eval()
    assert model.config.get_text_config()._experts_implementation == "eager"
    # backend="pil" given to AutoProcessor would reach the video processor too, which has none.
    processor = AutoProcessor.from_pretrained(folder, image_processor=AutoImageProcessor.from_pretrained(
        folder, backend="pil"))
    assert type(processor.image_processor) is Gemma4ImageProcessorPil, type(processor.image_processor)
    return model, processor


class ClampCounter:
    """Counts, over real patches, the values each clamp bound of each clippable linear cuts."""

    def __init__(self, model):
        from transformers.models.gemma4.modeling_gemma4 import Gemma4ClippableLinear

        self.counts, self.real, self.handles = {}, None, []
        for name, mod in model.model.vision_tower.named_modules():
            if isinstance(mod, Gemma4ClippableLinear):
                self.handles.append(mod.register_forward_pre_hook(self.pre(name, mod)))
                self.handles.append(mod.linear.register_forward_hook(self.post(name, mod)))

    def add(self, key, x, lo, hi):
        if self.real is None:  # not counting
            return
        x = x[self.real]  # [batch][patch][...] -> the real patches' rows
        c = self.counts.setdefault(key, [0, 0, 0])
        c[0] += int((x < lo).sum())
        c[1] += int((x > hi).sum())
        c[2] += x.numel()

    def pre(self, name, mod):
        return lambda _m, args: self.add(name + " input", args[0].detach(), mod.input_min, mod.input_max)

    def post(self, name, mod):
        return lambda _m, _args, out: self.add(name + " output", out.detach(), mod.output_min, mod.output_max)

    def report(self):
        total = [0, 0]
        lines = []
        for key, (lo, hi, n) in self.counts.items():
            lines.append(f"  {key}: {100 * lo / n:.2f}% below min, {100 * hi / n:.2f}% above max")
            total[0] += lo + hi
            total[1] += n
        for h in self.handles:
            h.remove()
        return total[0] / total[1], lines


def make_reference(models, fixtures):
    import torch
    import transformers

    torch.manual_seed(0)
    folder = os.path.join(models, NAME + "-hf")
    images = os.path.join(models, "vision-images")
    gguf_path = os.path.join(models, NAME + ".gguf")
    model, processor = load_model(folder)
    os.makedirs(fixtures, exist_ok=True)
    cases = []
    counter = ClampCounter(model)

    def run_processor(text, files, budget):
        return processor(text=[text], images=[[open_image(os.path.join(images, f)) for f in files]],
                         images_kwargs={"max_soft_tokens": budget}, return_tensors="pt")

    for stem, budget in [("square", 70), ("wide", 70), ("rgba", 140)]:
        file = stem + ".png"
        inputs = run_processor("<|image|>", [file], budget)
        pv, pos = inputs["pixel_values"], inputs["image_position_ids"]
        counter.real = (pos != -1).all(-1)
        with torch.no_grad():
            emb = torch.cat(model.model.get_image_features(pv, pos).pooler_output).numpy()
            counter.real = None
            if stem == "square":
                vit = model.model.vision_tower(pixel_values=pv, pixel_position_ids=pos).last_hidden_state.numpy()
                assert vit.shape == (emb.shape[0], HIDDEN_V)
                vit.astype("<f4").tofile(os.path.join(fixtures, f"{NAME}.{stem}.vit.f32"))
        ids = inputs["input_ids"][0].tolist()
        n_soft = int((inputs["input_ids"] == IMAGE).sum())
        assert emb.shape == (n_soft, tiny.HIDDEN)
        emb.astype("<f4").tofile(os.path.join(fixtures, f"{NAME}.{stem}.emb.f32"))
        grid = pos[0][(pos[0] != -1).all(-1)].max(0).values + 1
        cases.append({"name": stem, "kind": "embeddings", "images": [file], "budget": budget,
                      "grid_w": int(grid[0]), "grid_h": int(grid[1]), "num_soft_tokens": [n_soft],
                      "input_ids": ids, "emb": f"{NAME}.{stem}.emb.f32",
                      **({"vit": f"{NAME}.{stem}.vit.f32"} if stem == "square" else {})})
        print(f"{stem}.png budget {budget}: grid {int(grid[0])}x{int(grid[1])}, {n_soft} soft tokens, "
              f"embedding RMS {np.sqrt((emb**2).mean()):.3f}, vs text embedding RMS "
              f"{0.3 * np.sqrt(tiny.HIDDEN):.3f}")
    frac, lines = counter.report()
    print(f"clamped: {100 * frac:.2f}% of all clippable-linear inputs and outputs on the three images")
    print("\n".join(lines))

    # The prompt: BOS, text, square.png, text, rgba.png, text.
    text = "<bos>" + PROMPT_TEXT[0] + "<|image|>" + PROMPT_TEXT[1] + "<|image|>" + PROMPT_TEXT[2]
    inputs = run_processor(text, ["square.png", "rgba.png"], 70)
    ids = inputs["input_ids"][0].tolist()
    mm = inputs["mm_token_type_ids"][0].tolist()
    assert mm == [int(t == IMAGE) for t in ids]
    with torch.no_grad():
        logits = model(**inputs).logits[0].numpy()
        causal = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        logits_causal = model(**causal).logits[0].numpy()
        # The mask the sliding layers got, for the record.
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        masks = model.create_masks_for_generate(model.config, embeds, inputs["attention_mask"], None,
                                                torch.arange(len(ids))[None], inputs["mm_token_type_ids"])
    assert logits.shape == (len(ids), N_VOCAB)
    logits.astype("<f4").tofile(os.path.join(fixtures, f"{NAME}.prompt.logits.f32"))
    diff = np.abs(logits - logits_causal)
    n_per_image = [int(x) for x in processor.image_processor(
        [open_image(os.path.join(images, f)) for f in ["square.png", "rgba.png"]],
        max_soft_tokens=70)["num_soft_tokens_per_image"]]
    segments = segment(ids)
    print(f"prompt: {len(ids)} tokens {segments}; bidirectional vs causal logits: max |diff| {diff.max():.4f} "
          f"(text after the first image: {diff[segments_first_text_after_image(ids)].max():.4f}), "
          f"logit std {logits.std():.2f}")
    sliding = masks["sliding_attention"][0, 0]
    allowed = sliding == 0 if sliding.dtype != torch.bool else sliding
    q = ids.index(IMAGE) + 5
    seen = allowed[q].nonzero().flatten().tolist()
    print(f"sliding mask row of the 6th soft token of image 1 (position {q}): attends {seen[0]}..{seen[-1]} "
          f"({len(seen)} positions)")
    cases.append({"name": "prompt", "kind": "logits", "images": ["square.png", "rgba.png"], "budget": 70,
                  "num_soft_tokens": n_per_image, "text": text, "input_ids": ids, "mm_token_type_ids": mm,
                  "logits": f"{NAME}.prompt.logits.f32",
                  "bidirectional_vs_causal_max_abs_diff": float(diff.max())})

    # A prompt whose images llama.cpp's mtmd resizes to the same soft token count as the HF
    # processor (square ones: 8x8 at budget 70), for the comparison with llama.cpp.
    files = ["square.png", "one.png"]
    inputs = run_processor(text, files, 70)
    ids = inputs["input_ids"][0].tolist()
    with torch.no_grad():
        logits = model(**inputs).logits[0].numpy()
    logits.astype("<f4").tofile(os.path.join(fixtures, f"{NAME}.squares.logits.f32"))
    n_per_image = [int(x) for x in processor.image_processor(
        [open_image(os.path.join(images, f)) for f in files], max_soft_tokens=70)["num_soft_tokens_per_image"]]
    assert n_per_image == [64, 64], n_per_image
    print(f"squares prompt: {len(ids)} tokens {segment(ids)}")
    cases.append({"name": "squares", "kind": "logits", "images": files, "budget": 70,
                  "num_soft_tokens": n_per_image, "text": text, "input_ids": ids,
                  "mm_token_type_ids": inputs["mm_token_type_ids"][0].tolist(),
                  "logits": f"{NAME}.squares.logits.f32"})

    # A chat turn with an image, as the processor's chat template builds it: what `gemma run
    # --chat --image` must build.
    user = "What is in the picture?"
    messages = [{"role": "user", "content": [{"type": "image", "image": open_image(os.path.join(images, "square.png"))},
                                             {"type": "text", "text": user}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           processor_kwargs={"images_kwargs": {"max_soft_tokens": 70}})
    ids = [int(t) for t in inputs["input_ids"][0]]
    assert ids.count(IMAGE) == 64 and ids.count(2) == 1, ids
    print(f"chat turn with an image: {len(ids)} tokens {segment(ids)}")
    cases.append({"name": "chat", "kind": "chat", "images": ["square.png"], "budget": 70, "user": user,
                  "text": processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                  "input_ids": ids})

    st = os.path.join(folder, "model.safetensors")
    meta = {
        "oracle": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager attention "
                  "and experts, Gemma4ImageProcessorPil",
        "versions": dict(versions(), torch=torch.__version__),
        "checkpoint": NAME + "-hf",
        "safetensors_sha256": tiny.sha256(st),
        "gguf": NAME + ".gguf",
        "gguf_sha256": tiny.sha256(gguf_path),
        "n_vocab": N_VOCAB,
        "image_token_id": IMAGE, "boi_token_id": BOI, "eoi_token_id": EOI,
        "text_config": text_config(),
        "vision_config": VISION_CONFIG,
        "clamped_fraction": frac,
        "cases": cases,
    }
    with open(os.path.join(fixtures, NAME + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {fixtures}/{NAME}.json and {len(cases) + 1} tensors")


def segment(ids):
    """The prompt as runs: 'text N', 'boi', 'image N', 'eoi'."""
    out, prev, n = [], None, 0
    for t in ids + [None]:
        kind = {BOI: "boi", EOI: "eoi", IMAGE: "image"}.get(t, "text") if t is not None else None
        if kind != prev and prev is not None:
            out.append(f"{prev} {n}" if prev in ("text", "image") else prev)
            n = 0
        prev, n = kind, n + 1
    return ", ".join(out)


def segments_first_text_after_image(ids):
    first_eoi = ids.index(EOI)
    second_boi = ids.index(BOI, first_eoi)
    return slice(first_eoi + 1, second_boi)


# --- check: the vision tower in numpy --------------------------------------------------

def read_safetensors(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"F32": "<f4", "F16": "<f2"}
    return {k: np.frombuffer(data[v["data_offsets"][0]:v["data_offsets"][1]], dtypes[v["dtype"]]).reshape(v["shape"])
            for k, v in header.items() if k != "__metadata__"}


def numpy_tower(w, pixels, grid_w, grid_h, clamps=True):
    """Gemma 4's vision tower and projector in float64 numpy, as transformers computes them, on the
    real patches of one image ([n][768] pixel values in [0, 1]): returns (the standardized tower
    output [n_soft][64], the projector's output [n_soft][256])."""
    c = VISION_CONFIG
    vt, hd, nh, k = "model.vision_tower.", c["head_dim"], c["num_attention_heads"], c["pooling_kernel_size"]
    eps = c["rms_norm_eps"]

    def rms(x, weight=None):
        y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
        return y if weight is None else y * weight

    def clippable(x, name):
        if clamps:
            x = np.clip(x, w[name + ".input_min"], w[name + ".input_max"])
        y = x @ w[name + ".linear.weight"].T
        return np.clip(y, w[name + ".output_min"], w[name + ".output_max"]) if clamps else y

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    def rope_2d(x, xs, ys):
        # The first half of each head rotates by the patch's x, the second by its y; each half
        # NeoX-style (dim i pairs with i + hd/4), frequencies theta^(-2i/(hd/2)).
        half = hd // 2
        inv = c["rope_parameters"]["rope_theta"] ** (-np.arange(0, half, 2) / half)
        out = []
        for part, pos in ((x[..., :half], xs), (x[..., half:], ys)):
            ang = np.concatenate([pos[:, None] * inv] * 2, -1)[:, None, :]
            a, b = part[..., :half // 2], part[..., half // 2:]
            out.append(part * np.cos(ang) + np.concatenate([-b, a], -1) * np.sin(ang))
        return np.concatenate(out, -1)

    n = pixels.shape[0]
    xs, ys = np.arange(n) % grid_w, np.arange(n) // grid_w
    table = w[vt + "patch_embedder.position_embedding_table"]
    x = (2 * (pixels - 0.5)) @ w[vt + "patch_embedder.input_proj.weight"].T + table[0][xs] + table[1][ys]
    for il in range(c["num_hidden_layers"]):
        p = f"{vt}encoder.layers.{il}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope_2d(rms(clippable(h, p + "self_attn.q_proj").reshape(n, nh, hd), w[p + "self_attn.q_norm.weight"]), xs, ys)
        kk = rope_2d(rms(clippable(h, p + "self_attn.k_proj").reshape(n, nh, hd), w[p + "self_attn.k_norm.weight"]), xs, ys)
        v = rms(clippable(h, p + "self_attn.v_proj").reshape(n, nh, hd))
        scores = np.einsum("qhd,khd->hqk", q, kk)  # scale 1.0, every real patch sees every other
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        o = np.einsum("hqk,khd->qhd", scores / scores.sum(-1, keepdims=True), v).reshape(n, nh * hd)
        x = x + rms(clippable(o, p + "self_attn.o_proj"), w[p + "post_attention_layernorm.weight"])
        h = rms(x, w[p + "pre_feedforward_layernorm.weight"])
        a = gelu_tanh(clippable(h, p + "mlp.gate_proj")) * clippable(h, p + "mlp.up_proj")
        x = x + rms(clippable(a, p + "mlp.down_proj"), w[p + "post_feedforward_layernorm.weight"])
    # k x k average pooling; soft tokens row-major over the pooled grid; times sqrt(hidden).
    pooled = x.reshape(grid_h // k, k, grid_w // k, k, -1).mean((1, 3)).reshape(-1, x.shape[-1])
    vit = (pooled * np.sqrt(c["hidden_size"]) - w[vt + "std_bias"]) * w[vt + "std_scale"]
    return vit, rms(vit) @ w["model.embed_vision.embedding_projection.weight"].T


def check(models, fixtures):
    """The reference's embeddings again, from the pixels step's files through numpy_tower."""
    w = {k: v.astype(np.float64) for k, v in
         read_safetensors(os.path.join(models, NAME + "-hf", "model.safetensors")).items()}
    folder = os.path.join(models, "vision-images")
    pixels = json.load(open(os.path.join(folder, "pixels.json")))["images"]
    meta = json.load(open(os.path.join(fixtures, NAME + ".json")))
    worst = 0.0
    for case in meta["cases"]:
        if case["kind"] != "embeddings":
            continue
        entry = pixels[case["images"][0]][str(case["budget"])]
        px = np.fromfile(os.path.join(folder, entry["file"]), "<f4").reshape(-1, 768).astype(np.float64)
        vit, emb = numpy_tower(w, px, entry["grid_w"], entry["grid_h"])
        _, emb_free = numpy_tower(w, px, entry["grid_w"], entry["grid_h"], clamps=False)
        ref = np.fromfile(os.path.join(fixtures, case["emb"]), "<f4").reshape(emb.shape)
        d = np.abs(emb - ref).max()
        line = f"{case['name']}: numpy vs transformers embeddings max |diff| {d:.2e}"
        if "vit" in case:
            rv = np.fromfile(os.path.join(fixtures, case["vit"]), "<f4").reshape(vit.shape)
            d = max(d, np.abs(vit - rv).max())
            line += f", tower output {np.abs(vit - rv).max():.2e}"
        worst = max(worst, d)
        print(line + f"; without the clamps the embeddings move by up to {np.abs(emb_free - ref).max():.2f}")
    assert worst < 1e-4, worst
    verify_mmproj(models)


# --- convert: llama.cpp's converter -------------------------------------------------------

OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}


def find_converter(models, tmp):
    sdists = sorted(glob.glob(os.path.join(models, ".cache", "llama-cpp-python", "llama_cpp_python-*.tar.gz")))
    assert sdists, "no llama-cpp-python sdist in MODELS_DIR/.cache/llama-cpp-python"
    with tarfile.open(sdists[-1]) as tar:
        root = tar.getnames()[0].split("/")[0] + "/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(root) and (
            m.name == root + "convert_hf_to_gguf.py" or m.name.startswith(root + "conversion/")
            or m.name.startswith(root + "gguf-py/"))]
        tar.extractall(tmp, members=members, filter="data")
    return os.path.join(tmp, root, "convert_hf_to_gguf.py"), os.path.basename(sdists[-1])


def make_convert(models, fixtures, converter=None):
    import torch
    import transformers

    src = os.path.join(models, NAME + "-hf")
    with tempfile.TemporaryDirectory() as tmp:
        source = "given"
        if converter is None:
            converter, source = find_converter(models, tmp)
        out = {
            "oracle": f"llama.cpp convert_hf_to_gguf.py --mmproj with its own gguf-py ({source}), "
                      f"transformers {transformers.__version__}, torch {torch.__version__}",
            "source": NAME + "-hf",
            "outputs": {},
        }
        for ty, outtype in OUTTYPES.items():
            dst = os.path.join(tmp, f"{NAME}-mmproj-{outtype}.gguf")
            t0 = time.time()
            r = subprocess.run([sys.executable, converter, src, "--mmproj", "--outtype", outtype, "--outfile", dst],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"{ty}: the converter failed:\n{r.stderr[-3000:]}")
                continue
            meta, tensors = tiny_hf.read_gguf(dst)
            file_type = [m for m in meta if m[0] == "general.file_type"][0][2]
            meta = [m for m in meta if m[0] != "general.file_type"]
            if "metadata" in out:
                assert out["metadata"] == meta, f"{ty}: metadata differs from the other outtypes'"
            out["metadata"] = meta
            out["outputs"][ty] = {"file_type": file_type, "tensors": tensors}
            print(f"{ty}: {len(tensors)} tensors, {os.path.getsize(dst)} bytes, {time.time() - t0:.1f} s")
        # The mmproj step's files must be the converter's, byte for byte.
        ours = os.path.join(tmp, "ours")
        os.makedirs(ours)
        for path in write_mmproj(models, ours, verify=False):
            theirs = os.path.join(tmp, os.path.basename(path))
            same = open(path, "rb").read() == open(theirs, "rb").read()
            print(f"mmproj step's {os.path.basename(path)} {'is' if same else 'is NOT'} byte-identical to the converter's")
            assert same
    os.makedirs(fixtures, exist_ok=True)
    path = os.path.join(fixtures, NAME + ".mmproj.convert.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
    print(f"{path}: {len(out['metadata'])} keys, outtypes {list(out['outputs'])}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) == 2 and args[0] == "hf":
        write_hf(args[1])
    elif len(args) == 2 and args[0] == "gguf":
        write_gguf(args[1])
    elif len(args) == 2 and args[0] == "images":
        write_images(args[1])
    elif len(args) == 2 and args[0] == "pixels":
        write_pixels(args[1])
    elif len(args) == 2 and args[0] == "mmproj":
        write_mmproj(args[1])
    elif len(args) == 3 and args[0] == "reference":
        make_reference(args[1], args[2])
    elif len(args) == 3 and args[0] == "check":
        check(args[1], args[2])
    elif len(args) in (3, 4) and args[0] == "convert":
        make_convert(*args[1:])
    else:
        sys.exit(__doc__)
