#!/usr/bin/env python3
"""Tiny random-weight Gemma 4 models with every quirk of 26B-A4B, and their reference logits.

    tiny-gemma4.py gguf OUT_DIR                 numpy + gguf only (CI runs this)
    tiny-gemma4.py reference OUT_DIR FIXTURES   torch + transformers (run by hand; writes
                                                the committed fixtures)

`gguf` writes `tiny-gemma4-moe.gguf` (26B-A4B family: MoE with the dense MLP beside it,
k_eq_v global layers, 2x wider global heads, proportional RoPE via rope_freqs, layer scalars,
softcap) and `tiny-gemma4-dense.gguf` (31B family: the same without MoE), all tensors F32,
with the tensor names, metadata keys and transforms of llama.cpp's Gemma 4 converter
(GEMMA4.md section 4) and the first 1,024 tokens of the real Gemma 4 vocabulary
(`ggml-vocab-gemma-4.gguf`, which must be in OUT_DIR) with the merges among them. The
weights come from a seeded numpy PCG64 stream, so the files are the same on every machine
with the pinned numpy and gguf (setup.sh pins both; the fixtures record each file's sha256).

`reference` loads each GGUF's tensors into transformers' `Gemma4ForCausalLM` (float32,
eager attention and experts), runs TOKENS and writes, per model, `FIXTURES/NAME.json`
(config, tokens, sha256 of the GGUF, versions) and `FIXTURES/NAME.logits.f32` (little-endian
float32, [n_tokens][n_vocab]): the oracle of tests/oracle_gemma4.rs.
"""
import hashlib
import json
import os
import sys

import numpy as np

N_VOCAB = 1024
HIDDEN = 256
SLIDING_WINDOW = 16
# 6 layers: 5 sliding then 1 full, as 26B-A4B's period; the last layer is full (transformers
# forces that).
LAYER_TYPES = ["sliding_attention"] * 2 + ["full_attention"] + ["sliding_attention"] * 2 + ["full_attention"]

# The HF text_config of each model (what transformers builds) ...
CONFIGS = {
    "tiny-gemma4-moe": dict(
        vocab_size=N_VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=len(LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        global_head_dim=128,
        num_global_key_value_heads=1,
        sliding_window=SLIDING_WINDOW,
        layer_types=LAYER_TYPES,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
        },
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        max_position_embeddings=4096,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        attention_k_eq_v=True,
        enable_moe_block=True,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=64,
        tie_word_embeddings=True,
    ),
}
CONFIGS["tiny-gemma4-dense"] = dict(
    CONFIGS["tiny-gemma4-moe"], enable_moe_block=False, num_experts=None, top_k_experts=None,
    moe_intermediate_size=None, intermediate_size=256,
)

# ... and the token ids the reference runs: BOS, then ids drawn from the whole vocabulary
# (specials included), 3x the sliding window so the rings wrap.
TOKENS = [2] + [int(t) for t in np.random.default_rng(7).integers(5, N_VOCAB, 3 * SLIDING_WINDOW - 1)]


def is_full(il):
    return LAYER_TYPES[il] == "full_attention"


def hf_tensors(cfg, seed):
    """Random weights under their HF names, as float32 numpy arrays ([out, in])."""
    rng = np.random.default_rng(seed)
    h = cfg["hidden_size"]

    def linear(n_out, n_in, std=1.0):
        return (rng.standard_normal((n_out, n_in)) * std / np.sqrt(n_in)).astype(np.float32)

    def norm(n, mean=1.0):
        return (mean + 0.1 * mean * rng.standard_normal(n)).astype(np.float32)

    t = {"model.embed_tokens.weight": (0.3 * rng.standard_normal((cfg["vocab_size"], h))).astype(np.float32)}
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        hd = cfg["global_head_dim"] if is_full(il) else cfg["head_dim"]
        n_kv = cfg["num_global_key_value_heads"] if is_full(il) else cfg["num_key_value_heads"]
        n_q = cfg["num_attention_heads"]
        t[p + "input_layernorm.weight"] = norm(h)
        t[p + "self_attn.q_proj.weight"] = linear(n_q * hd, h)
        t[p + "self_attn.k_proj.weight"] = linear(n_kv * hd, h)
        if not (is_full(il) and cfg["attention_k_eq_v"]):
            t[p + "self_attn.v_proj.weight"] = linear(n_kv * hd, h)
        # Attention has no 1/sqrt(hd) (scale 1.0): q_norm and k_norm carry the scale, here
        # hd^-1/4 each so that scores come out of order 1, as in a trained model.
        t[p + "self_attn.q_norm.weight"] = norm(hd, hd**-0.25)
        t[p + "self_attn.k_norm.weight"] = norm(hd, hd**-0.25)
        t[p + "self_attn.o_proj.weight"] = linear(h, n_q * hd)
        # The branches outweigh the scaled embedding in the residual stream (with the tied head,
        # a weak stream predicts the input token back).
        t[p + "post_attention_layernorm.weight"] = norm(h, 3.0)
        t[p + "pre_feedforward_layernorm.weight"] = norm(h)
        ff = cfg["intermediate_size"]
        t[p + "mlp.gate_proj.weight"] = linear(ff, h)
        t[p + "mlp.up_proj.weight"] = linear(ff, h)
        t[p + "mlp.down_proj.weight"] = linear(h, ff)
        t[p + "post_feedforward_layernorm.weight"] = norm(h, 3.0)
        if cfg["enable_moe_block"]:
            e, ffe = cfg["num_experts"], cfg["moe_intermediate_size"]
            # Router logits with a spread of a few units, so that top-k choices are not near-ties.
            t[p + "router.proj.weight"] = (3.0 * rng.standard_normal((e, h))).astype(np.float32)
            t[p + "router.scale"] = norm(h)
            t[p + "router.per_expert_scale"] = rng.uniform(0.5, 1.5, e).astype(np.float32)
            t[p + "experts.gate_up_proj"] = np.stack([linear(2 * ffe, h) for _ in range(e)])
            t[p + "experts.down_proj"] = np.stack([linear(h, ffe) for _ in range(e)])
            t[p + "pre_feedforward_layernorm_2.weight"] = norm(h)
            t[p + "post_feedforward_layernorm_1.weight"] = norm(h)
            t[p + "post_feedforward_layernorm_2.weight"] = norm(h)
        t[p + "layer_scalar"] = rng.uniform(0.3, 0.5, 1).astype(np.float32)
    t["model.norm.weight"] = norm(h)
    return t


# HF name suffix -> GGUF role, as llama.cpp's converter maps them (GEMMA4.md 4.2-4.3).
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "router.proj.weight": "ffn_gate_inp.weight",
    "router.scale": "ffn_gate_inp.scale",
    "router.per_expert_scale": "ffn_down_exps.scale",
    "experts.gate_up_proj": "ffn_gate_up_exps.weight",
    "experts.down_proj": "ffn_down_exps.weight",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2.weight",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1.weight",
    "post_feedforward_layernorm_2.weight": "post_ffw_norm_2.weight",
    "layer_scalar": "layer_output_scale.weight",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    _, _, il, rest = hf.split(".", 3)
    return f"blk.{il}.{LAYER_NAMES[rest]}"


def merges_among(merges, tokens):
    """The merges ("left right") whose two sides and result are all among `tokens`."""
    known = set(tokens)
    kept = []
    for m in merges:
        i = m.index(" ", 1)
        left, right = m[:i], m[i + 1:]
        if left in known and right in known and left + right in known:
            kept.append(m)
    return kept


def vocabulary(vocab_path):
    """The first N_VOCAB tokens of the real Gemma 4 vocabulary and the merges among them."""
    from gguf import GGUFReader

    r = GGUFReader(vocab_path)
    field = lambda k: r.fields[k].contents()
    tokens = field("tokenizer.ggml.tokens")[:N_VOCAB]
    return {
        "tokens": tokens,
        "scores": field("tokenizer.ggml.scores")[:N_VOCAB],
        "types": field("tokenizer.ggml.token_type")[:N_VOCAB],
        "merges": merges_among(field("tokenizer.ggml.merges"), tokens),
        "chat_template": field("tokenizer.chat_template"),
    }


def write_gguf(path, name, cfg, tensors, vocab):
    import gguf

    arch = "gemma4"
    w = gguf.GGUFWriter(path + ".tmp", arch)
    n = cfg["num_hidden_layers"]
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(
        [cfg["num_global_key_value_heads"] if is_full(il) else cfg["num_key_value_heads"] for il in range(n)]
    )
    w.add_rope_freq_base(cfg["rope_parameters"]["full_attention"]["rope_theta"])
    w.add_float32(f"{arch}.rope.freq_base_swa", cfg["rope_parameters"]["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg["global_head_dim"])
    w.add_value_length(cfg["global_head_dim"])
    w.add_uint32(f"{arch}.attention.key_length_swa", cfg["head_dim"])
    w.add_uint32(f"{arch}.attention.value_length_swa", cfg["head_dim"])
    w.add_rope_dimension_count(cfg["global_head_dim"])
    w.add_uint32(f"{arch}.rope.dimension_count_swa", cfg["head_dim"])
    w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    w.add_sliding_window(cfg["sliding_window"])
    w.add_array(f"{arch}.attention.sliding_window_pattern", [not is_full(il) for il in range(n)])
    w.add_uint32(f"{arch}.attention.shared_kv_layers", 0)
    w.add_uint32(f"{arch}.embedding_length_per_layer_input", 0)
    if cfg["enable_moe_block"]:
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["top_k_experts"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("gemma4")
    w.add_token_list(vocab["tokens"])
    w.add_token_scores(vocab["scores"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)
    w.add_add_bos_token(True)
    w.add_chat_template(vocab["chat_template"])

    for hf, value in tensors.items():
        w.add_tensor(gguf_name(hf), value)
    # Proportional RoPE on full layers: the first `partial_rotary_factor * hd / 2` frequency
    # pairs rotate, the rest get a 1e30 divisor (angle ~0), as the converter writes it.
    hd = cfg["global_head_dim"]
    n_rot = int(hd * cfg["rope_parameters"]["full_attention"]["partial_rotary_factor"] / 2)
    w.add_tensor("rope_freqs.weight", np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), dtype=np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(path + ".tmp", path)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_ggufs(out_dir):
    vocab = vocabulary(os.path.join(out_dir, "ggml-vocab-gemma-4.gguf"))
    for seed, (name, cfg) in enumerate(CONFIGS.items()):
        path = os.path.join(out_dir, name + ".gguf")
        write_gguf(path, name, cfg, hf_tensors(cfg, 1000 + seed), vocab)
        print(f"{path}: {os.path.getsize(path)} bytes, sha256 {sha256(path)}")


def gguf_as_hf(path):
    """The tensors of one of our GGUFs under their HF names, as torch float32 tensors."""
    import torch
    from gguf import GGUFReader

    by_gguf = {}
    for t in GGUFReader(path).tensors:
        # gguf-py gives numpy shapes (ggml dims reversed), as HF stores them.
        by_gguf[t.name] = torch.from_numpy(np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)]))
    names = {gguf_name(hf): hf for hf in hf_tensors_names(path)}
    return {names[g]: v for g, v in by_gguf.items() if g in names}


def hf_tensors_names(path):
    name = os.path.basename(path)[: -len(".gguf")]
    return hf_tensors(CONFIGS[name], 0).keys()


def make_reference(out_dir, fixtures):
    import torch
    import transformers
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    os.makedirs(fixtures, exist_ok=True)
    for name, cfg in CONFIGS.items():
        path = os.path.join(out_dir, name + ".gguf")
        config = Gemma4TextConfig(**cfg, attn_implementation="eager")
        config._experts_implementation = "eager"
        model = Gemma4ForCausalLM(config).to(torch.float32).eval()
        state = gguf_as_hf(path)
        missing, unexpected = model.load_state_dict(state, strict=False)
        # The tied head is the embedding; nothing else may be missing.
        assert [m for m in missing if m != "lm_head.weight"] == [] and unexpected == [], (missing, unexpected)
        with torch.no_grad():
            logits = model(torch.tensor([TOKENS])).logits[0].to(torch.float32).numpy()
        assert logits.shape == (len(TOKENS), N_VOCAB)
        logits.astype("<f4").tofile(os.path.join(fixtures, name + ".logits.f32"))
        meta = {
            "oracle": f"transformers {transformers.__version__}, torch {torch.__version__}, float32, eager",
            "gguf": name + ".gguf",
            "gguf_sha256": sha256(path),
            "tokens": TOKENS,
            "n_vocab": N_VOCAB,
            "config": cfg,
        }
        with open(os.path.join(fixtures, name + ".json"), "w") as f:
            json.dump(meta, f, indent=1)
        top = np.sort(logits, -1)
        echoes = int((logits.argmax(-1) == np.array(TOKENS)).sum())
        print(f"{name}: logits {logits.shape}, argmax == input at {echoes}/{len(TOKENS)}, "
              f"top-1 margin min {(top[:, -1] - top[:, -2]).min():.3f}, logit std {logits.std():.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "gguf":
        make_ggufs(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "reference":
        make_reference(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
