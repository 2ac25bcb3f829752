#!/usr/bin/env python3
"""The tiny random Gemma 4 models of tiny-gemma4.py (and a tiny Gemma 3) as Hugging Face
checkpoint folders, and what llama.cpp's own converter makes of them: quantize's test input and
oracle.

    tiny-gemma4-hf.py hf MODELS_DIR                     numpy + gguf + tokenizers (CI runs this)
    tiny-gemma4-hf.py synth OUT_DIR LAYERS [VOCAB_GGUF] numpy + gguf + tokenizers (by hand)
    tiny-gemma4-hf.py oracle MODELS_DIR FIXTURES CONVERT_HF_TO_GGUF_PY
                                                        + torch, transformers, sentencepiece (by
                                                        hand; writes the committed fixtures)

`hf` writes, next to the GGUFs of tiny-gemma4.py (MODELS_DIR must hold ggml-vocab-gemma-4.gguf
and gemma-3-270m-q4_k_m.gguf, as scripts/fetch-test-models.sh leaves it):

- `tiny-gemma4-moe-hf/`: the 26B-A4B-family model as `Gemma4ForConditionalGeneration` (config
  with a `text_config`, tensors under `model.language_model.`, two vision tensors that a text
  conversion skips), float32, in two shards with `model.safetensors.index.json`, the chat
  template in `chat_template.jinja`. Its weights are those of `tiny-gemma4-moe.gguf`.
- `tiny-gemma4-dense-hf/`: the 31B-family model as `Gemma4ForCausalLM` (flat config, tensors
  under `model.`), bfloat16, one `model.safetensors`, the chat template inside
  `tokenizer_config.json`.
- `tiny-gemma3-hf/`: a Gemma 3 (`Gemma3ForCausalLM`, float16, 1,030-row vocabulary over a
  1,024-piece SentencePiece `tokenizer.model` written here from the first 1,024 tokens of the
  real Gemma 3 270M GGUF, the RoPE settings in the older config style with linear scaling).

The Gemma 4 ones carry a `tokenizer.json` built with `tokenizers` the way transformers'
`GemmaTokenizer` builds Gemma 4's (BPE with byte fallback, " " -> "▁"), over the first 1,024
tokens of the real vocabulary and the merges among them, and a `tokenizer_config.json` with the
real one's special token names (those whose tokens are among the 1,024).

`synth OUT_DIR LAYERS` writes a bfloat16 checkpoint with the real 26B-A4B shapes (hidden 2816,
128 experts of width 704, 262,144-token embedding, the real tokenizer and chat template) but
only LAYERS layers (the last one full-attention), with made-up values: several GB for measuring
quantize's memory and speed (about 1.5 GB plus 1.6 GB per layer).

`oracle` runs llama.cpp's `convert_hf_to_gguf.py` on the three folders for each --outtype and
writes `FIXTURES/NAME.convert.json`: the metadata (in order, with GGUF value types) and, per
outtype, the tensor table (name, type, ggml dims) with each tensor's sha256. quantize's tests
compare our output with it.
"""
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("tiny_gemma4", os.path.join(HERE, "tiny-gemma4.py"))
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)

# The special-token entries of Gemma 4's tokenizer_config.json whose tokens are in the first
# 1,024 ids (the image/audio/video ones are not).
SPECIAL_TOKENS = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}

# Tensors of a vision tower that a text conversion skips.
VISION_TENSORS = {
    "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight": (32, 32),
    "model.embed_vision.embedding_projection.weight": (tiny.HIDDEN, 32),
}


def full_vocabulary(vocab_path):
    from gguf import GGUFReader

    r = GGUFReader(vocab_path)
    field = lambda k: r.fields[k].contents()
    return {
        "tokens": field("tokenizer.ggml.tokens"),
        "types": field("tokenizer.ggml.token_type"),
        "merges": field("tokenizer.ggml.merges"),
        "chat_template": field("tokenizer.chat_template"),
    }


def tokenizer_json(vocab):
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    ids = {t: i for i, t in enumerate(vocab["tokens"])}
    merges = []
    for m in vocab["merges"]:
        i = m.index(" ", 1)
        merges.append((m[:i], m[i + 1:]))
    tok = Tokenizer(BPE(vocab=ids, merges=merges, fuse_unk=True, unk_token="<unk>", dropout=None, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.normalizer = normalizers.Replace(" ", "▁")
    # CONTROL (3) and USER_DEFINED (4) tokens of the real vocabulary are its added tokens.
    specials = [t for t, ty in zip(vocab["tokens"], vocab["types"]) if ty in (3, 4)]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok.to_str(pretty=True)


def bf16_bytes(a):
    """float32 -> bfloat16, rounded to nearest even (as torch and ggml do), as little-endian bytes."""
    u = a.astype("<f4").view("<u4").astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return u.tobytes()


def write_safetensors(path, tensors, dtype):
    """A safetensors file (8-byte header length, JSON header, data), tensors in name order."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = tensors[name]
        data = {"F32": lambda: a.astype("<f4").tobytes(), "F16": lambda: a.astype("<f2").tobytes(),
                "BF16": lambda: bf16_bytes(a)}[dtype]()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def text_config(cfg):
    out = dict(cfg, model_type="gemma4_text", hidden_activation="gelu_pytorch_tanh", use_double_wide_mlp=False,
               vocab_size_per_layer_input=tiny.N_VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2,
               attention_bias=False, use_bidirectional_attention=None)
    return out


def write_hf(models):
    vocab = tiny.vocabulary(os.path.join(models, "ggml-vocab-gemma-4.gguf"))
    tok_json = tokenizer_json(vocab)
    for seed, (name, cfg) in enumerate(tiny.CONFIGS.items()):
        moe = name == "tiny-gemma4-moe"
        out = os.path.join(models, name + "-hf")
        os.makedirs(out, exist_ok=True)
        tensors = tiny.hf_tensors(cfg, 1000 + seed)
        tok_cfg = dict(SPECIAL_TOKENS, padding_side="left", tokenizer_class="GemmaTokenizer", backend="tokenizers",
                       model_max_length=1000000000000000019884624838656)
        if moe:
            config = {
                "architectures": ["Gemma4ForConditionalGeneration"],
                "model_type": "gemma4",
                "text_config": text_config(cfg),
                "vision_config": {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64,
                                  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
                                  "head_dim": 16},
                "audio_config": None,
                "tie_word_embeddings": True,
            }
            tensors = {k.replace("model.", "model.language_model.", 1): v for k, v in tensors.items()}
            rng = np.random.default_rng(seed + 7)
            for k, shape in VISION_TENSORS.items():
                tensors[k] = rng.standard_normal(shape).astype(np.float32)
            names = sorted(tensors)
            shards = {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
            weight_map = {}
            for fname, part in shards.items():
                write_safetensors(os.path.join(out, fname), {k: tensors[k] for k in part}, "F32")
                weight_map.update({k: fname for k in part})
            total = sum(v.size * 4 for v in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f, indent=2)
            with open(os.path.join(out, "chat_template.jinja"), "w") as f:
                f.write(vocab["chat_template"])
        else:
            config = dict(text_config(cfg), architectures=["Gemma4ForCausalLM"])
            write_safetensors(os.path.join(out, "model.safetensors"), tensors, "BF16")
            tok_cfg["chat_template"] = vocab["chat_template"]
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
        with open(os.path.join(out, "tokenizer.json"), "w") as f:
            f.write(tok_json)
        print(f"{out}: {len(tensors)} tensors")
    write_gemma3(models)


# --- Gemma 3: SentencePiece tokenizer.model, float16 weights ------------------------------

GEMMA3_CONFIG = dict(
    architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=1030, hidden_size=256,
    intermediate_size=512, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=1, head_dim=64,
    query_pre_attn_scalar=64, sliding_window=16, sliding_window_pattern=6,
    layer_types=["sliding_attention"] * 5 + ["full_attention"], rope_theta=1000000.0, rope_local_base_freq=10000.0,
    rope_scaling={"rope_type": "linear", "factor": 8.0}, max_position_embeddings=4096, rms_norm_eps=1e-6,
    final_logit_softcapping=None, attn_logit_softcapping=None, hidden_activation="gelu_pytorch_tanh",
    bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, tie_word_embeddings=True,
)
GEMMA3_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                   "else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
                   "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def sentencepiece_model(tokens, scores, types):
    """A serialized SentencePiece ModelProto (BPE, byte fallback, Gemma's special ids)."""
    out = b""
    for i, (t, sc, ty) in enumerate(zip(tokens, scores, types)):
        kind = 2 if i == 3 else ty  # <unk> is the UNKNOWN piece
        piece = pb(1, 2, t.encode()) + pb(2, 5, struct.pack("<f", sc)) + pb(3, 0, varint(kind))
        out += pb(1, 2, piece)
    trainer = (pb(3, 0, varint(2)) + pb(4, 0, varint(len(tokens))) + pb(35, 0, varint(1)) + pb(40, 0, varint(3))
               + pb(41, 0, varint(2)) + pb(42, 0, varint(1)) + pb(43, 0, varint(0)))
    normalizer = pb(1, 2, b"identity") + pb(3, 0, varint(0)) + pb(4, 0, varint(0)) + pb(5, 0, varint(1))
    return out + pb(2, 2, trainer) + pb(3, 2, normalizer)


def write_gemma3(models):
    from gguf import GGUFReader

    r = GGUFReader(os.path.join(models, "gemma-3-270m-q4_k_m.gguf"))
    field = lambda k: r.fields[k].contents()
    n = 1024
    # User-defined tokens are stored with spaces for "▁" in the GGUF (the converter's
    # pre-normalization); the SentencePiece model has the "▁" form.
    types = field("tokenizer.ggml.token_type")[:n]
    tokens = [t.replace(" ", "▁") if ty == 4 else t for t, ty in zip(field("tokenizer.ggml.tokens")[:n], types)]
    scores = field("tokenizer.ggml.scores")[:n]
    out = os.path.join(models, "tiny-gemma3-hf")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.model"), "wb") as f:
        f.write(sentencepiece_model(tokens, scores, types))
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": ty == 3} for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    tok_json = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<bos>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "model": {"type": "BPE", "byte_fallback": True, "vocab": {}, "merges": []},
    }
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok_json, f, indent=2, ensure_ascii=False)
    tok_cfg = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "tokenizer_class": "GemmaTokenizer",
        "chat_template": GEMMA3_TEMPLATE,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(GEMMA3_CONFIG, f, indent=2)

    cfg = GEMMA3_CONFIG
    rng = np.random.default_rng(3000)
    h, hd, ff = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    lin = lambda o, i: rng.standard_normal((o, i)) / np.sqrt(i)
    t = {"model.embed_tokens.weight": 0.3 * rng.standard_normal((cfg["vocab_size"], h)),
         "model.norm.weight": 0.1 * rng.standard_normal(h)}
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        for name in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"]:
            t[p + name + ".weight"] = 0.1 * rng.standard_normal(h)
        t[p + "self_attn.q_norm.weight"] = 0.1 * rng.standard_normal(hd)
        t[p + "self_attn.k_norm.weight"] = 0.1 * rng.standard_normal(hd)
        t[p + "self_attn.q_proj.weight"] = lin(cfg["num_attention_heads"] * hd, h)
        t[p + "self_attn.k_proj.weight"] = lin(cfg["num_key_value_heads"] * hd, h)
        t[p + "self_attn.v_proj.weight"] = lin(cfg["num_key_value_heads"] * hd, h)
        t[p + "self_attn.o_proj.weight"] = lin(h, cfg["num_attention_heads"] * hd)
        t[p + "mlp.gate_proj.weight"] = lin(ff, h)
        t[p + "mlp.up_proj.weight"] = lin(ff, h)
        t[p + "mlp.down_proj.weight"] = lin(h, ff)
    write_safetensors(os.path.join(out, "model.safetensors"), {k: v.astype(np.float32) for k, v in t.items()}, "F16")
    print(f"{out}: {len(t)} tensors")


# --- synth: the real 26B-A4B shapes, few layers -------------------------------------------

def synth_shapes(n_layers):
    h, e, ffe, ff, nq = 2816, 128, 704, 2112, 16
    shapes = {"model.language_model.embed_tokens.weight": (262144, h), "model.language_model.norm.weight": (h,)}
    for il in range(n_layers):
        full = il == n_layers - 1
        hd, kv = (512, 2) if full else (256, 8)
        p = f"model.language_model.layers.{il}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (nq * hd, h),
            p + "self_attn.k_proj.weight": (kv * hd, h),
            p + "self_attn.q_norm.weight": (hd,),
            p + "self_attn.k_norm.weight": (hd,),
            p + "self_attn.o_proj.weight": (h, nq * hd),
            p + "post_attention_layernorm.weight": (h,),
            p + "pre_feedforward_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ff, h),
            p + "mlp.up_proj.weight": (ff, h),
            p + "mlp.down_proj.weight": (h, ff),
            p + "post_feedforward_layernorm.weight": (h,),
            p + "router.proj.weight": (e, h),
            p + "router.scale": (h,),
            p + "router.per_expert_scale": (e,),
            p + "experts.gate_up_proj": (e, 2 * ffe, h),
            p + "experts.down_proj": (e, h, ffe),
            p + "pre_feedforward_layernorm_2.weight": (h,),
            p + "post_feedforward_layernorm_1.weight": (h,),
            p + "post_feedforward_layernorm_2.weight": (h,),
            p + "layer_scalar": (1,),
        })
        if not full:
            shapes[p + "self_attn.v_proj.weight"] = (kv * hd, h)
    return shapes


def write_synth(out, n_layers, vocab_path):
    os.makedirs(out, exist_ok=True)
    layer_types = ["sliding_attention"] * (n_layers - 1) + ["full_attention"]
    text = dict(
        model_type="gemma4_text", vocab_size=262144, hidden_size=2816, intermediate_size=2112,
        num_hidden_layers=n_layers, num_attention_heads=16, num_key_value_heads=8, head_dim=256,
        global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True, sliding_window=1024,
        layer_types=layer_types, final_logit_softcapping=30.0, rms_norm_eps=1e-6, max_position_embeddings=262144,
        hidden_size_per_layer_input=0, num_kv_shared_layers=0, enable_moe_block=True, num_experts=128,
        top_k_experts=8, moe_intermediate_size=704, tie_word_embeddings=True, use_double_wide_mlp=False,
        hidden_activation="gelu_pytorch_tanh",
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
    )
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "text_config": text}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    vocab = full_vocabulary(vocab_path)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        f.write(tokenizer_json(vocab))
    tok_cfg = dict(SPECIAL_TOKENS, audio_token="<|audio|>", boa_token="<|audio>", boi_token="<|image>",
                   eoa_token="<audio|>", eoi_token="<image|>", image_token="<|image|>",
                   extra_special_tokens=["<|video|>"], padding_side="left", tokenizer_class="GemmaTokenizer")
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out, "chat_template.jinja"), "w") as f:
        f.write(vocab["chat_template"])

    # bfloat16 values: one block of random bits (small normal-ish numbers), reused with a shift
    # per tensor, written tensor by tensor so memory stays small.
    rng = np.random.default_rng(0)
    block = bf16_bytes((0.02 * rng.standard_normal(1 << 24)).astype(np.float32))
    shapes = synth_shapes(n_layers)
    header, offset = {}, 0
    for name in sorted(shapes):
        n = 2 * int(np.prod(shapes[name]))
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + n]}
        offset += n
    text_h = json.dumps(header, separators=(",", ":")).encode()
    text_h += b" " * (-len(text_h) % 8)
    path = os.path.join(out, "model.safetensors")
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text_h)))
        f.write(text_h)
        for i, name in enumerate(sorted(shapes)):
            n = 2 * int(np.prod(shapes[name]))
            start = (i * 4098) % len(block)
            while n > 0:
                part = block[start:start + n]
                f.write(part)
                n -= len(part)
                start = 0
    os.replace(path + ".tmp", path)
    print(f"{out}: {len(shapes)} tensors, {offset / 1e9:.2f} GB")


# --- oracle: llama.cpp's converter --------------------------------------------------------

OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}


def field_value(field):
    import gguf

    types = field.types
    if types[0] == gguf.GGUFValueType.ARRAY:
        return gguf.GGUFValueType.ARRAY.name + "[" + types[1].name + "]", [plain(v) for v in field.contents()]
    return types[0].name, plain(field.contents())


def plain(v):
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    return v


def read_gguf(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    meta = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        ty, value = field_value(field)
        meta.append([key, ty, value])
    tensors = []
    for t in r.tensors:
        data = bytes(np.asarray(t.data).view(np.uint8).reshape(-1))
        tensors.append([t.name, t.tensor_type.name, [int(d) for d in t.shape], hashlib.sha256(data).hexdigest()])
    return meta, tensors


def make_oracle(models, fixtures, converter):
    import torch
    import transformers

    os.makedirs(fixtures, exist_ok=True)
    for name in list(tiny.CONFIGS) + ["tiny-gemma3"]:
        src = os.path.join(models, name + "-hf")
        out = {
            "oracle": "llama.cpp convert_hf_to_gguf.py with its own gguf-py (llama-cpp-python 0.3.36 sdist), "
                      f"transformers {transformers.__version__}, torch {torch.__version__}",
            "source": name + "-hf",
            "outputs": {},
        }
        with tempfile.TemporaryDirectory() as tmp:
            for ty, outtype in OUTTYPES.items():
                dst = os.path.join(tmp, f"{name}-{outtype}.gguf")
                subprocess.run([sys.executable, converter, src, "--outtype", outtype, "--outfile", dst], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                meta, tensors = read_gguf(dst)
                file_type = [m for m in meta if m[0] == "general.file_type"][0][2]
                meta = [m for m in meta if m[0] != "general.file_type"]
                if "metadata" in out:
                    assert out["metadata"] == meta, f"{ty}: metadata differs from the other outtypes'"
                out["metadata"] = meta
                out["outputs"][ty] = {"file_type": file_type, "tensors": tensors}
        path = os.path.join(fixtures, name + ".convert.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
        print(f"{path}: {len(out['metadata'])} keys, {len(out['outputs']['F32']['tensors'])} tensors")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "hf":
        write_hf(sys.argv[2])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "synth":
        write_synth(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) == 5 else os.path.join(HERE, "../models/ggml-vocab-gemma-4.gguf"))
    elif len(sys.argv) == 5 and sys.argv[1] == "oracle":
        make_oracle(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
