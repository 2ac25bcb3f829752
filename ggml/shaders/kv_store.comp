#version 450
// Appends a batch's keys (or values) to one tensor of a layer's cache: token t's rows go to slot
// slots[t] (the host's ring bookkeeping, src/kv_cache.rs, chose them), in the cache's type
// KV_TYPE (kv.glsl) and rounded as the CPU rounds: f16 and bf16 to nearest even, q8_0 and q4_0
// by ggml's reference quantizers (the CPU's `ggml::quants`). A block type's rows arrive already
// rotated (hadamard.comp); head_dim is a multiple of 64 for them, so that rows are whole words.
//
// Bindings: 0 the cache tensor `[n_kv_head][capacity][head_dim]`, 1 x `[n_tokens][n_kv_head]
// [head_dim]` f32, 2 slots `[n_tokens]` u32. One invocation per pair of elements (f32, f16,
// bf16) or per row (q8_0, q4_0). q4_0's blocks are chosen by least squares, as the CPU's
// (`quants::q4_0::quantize_least_squares`).

layout(local_size_x = 64) in;

layout(binding = 0) buffer Cache { uint c[]; };
layout(binding = 1) readonly buffer Src { float x[]; };
layout(binding = 2) readonly buffer Slots { uint slots[]; };

layout(push_constant) uniform Params {
    uint n_kv_head;
    uint head_dim;
    uint capacity;
    uint n_tokens;
} p;

#include "common.glsl"
#include "kv.glsl"

#if KV_TYPE == KV_TYPE_Q8_0 || KV_TYPE == KV_TYPE_Q4_0
// The bytes of a row, gathered into words and written whole.
uint word_at;
uint word;
uint n_bytes;

void put(uint b) {
    word |= (b & 0xFFu) << (8u * n_bytes);
    n_bytes += 1u;
    if (n_bytes == 4u) {
        c[word_at] = word;
        word_at += 1u;
        word = 0u;
        n_bytes = 0u;
    }
}

// C's roundf and Rust's f32::round: halves away from zero. (`floor(|v| + 0.5)` would round
// 0.49999997 up: the sum rounds to 1.)
float round_away(float v) {
    float r = trunc(v);
    return abs(v - r) >= 0.5 ? r + sign(v) : r;
}
#endif

#if KV_TYPE == KV_TYPE_Q4_0
// The block's value of largest magnitude goes to these levels in the candidates of the
// least-squares quantizer (ggml/src/quants/q4_0.rs, `TOPS`, in the same order).
const float TOPS[24] = float[24](-11.0, -10.5, -10.0, -9.5, -9.0, -8.5, -8.0, -7.75, -7.5, -7.25, -7.0,
                                 -6.75, -6.5, 6.5, 6.75, 7.0, 7.25, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5);

// Σ (x - d l)², in order, unfused, as the CPU computes it.
float block_err(uint x0, float d, int l[32]) {
    precise float err = 0.0;
    for (uint j = 0u; j < 32u; j++) {
        precise float e = x[x0 + j] - d * float(l[j]);
        err += e * e;
    }
    return err;
}
#endif

void main() {
    uint id = flat_workgroup() * 64u + gl_LocalInvocationID.x;
#if KV_TYPE == KV_TYPE_Q8_0 || KV_TYPE == KV_TYPE_Q4_0
    uint h = id % p.n_kv_head;
    uint t = id / p.n_kv_head;
    if (t >= p.n_tokens) {
        return;
    }
    uint src = (t * p.n_kv_head + h) * p.head_dim;
    uint row = h * p.capacity + slots[t];
    word_at = row * (p.head_dim / 32u) * kv_block_bytes(KV_TYPE) / 4u;
    word = 0u;
    n_bytes = 0u;
    for (uint b = 0u; b < p.head_dim / 32u; b++) {
        uint x0 = src + 32u * b;
#if KV_TYPE == KV_TYPE_Q8_0
        // The scale maps the block's largest |x| to 127.
        float amax = 0.0;
        for (uint j = 0u; j < 32u; j++) {
            amax = max(amax, abs(x[x0 + j]));
        }
        float d = amax / 127.0;
        float id_ = d != 0.0 ? 1.0 / d : 0.0;
        uint bits = f16_bits(d);
        put(bits);
        put(bits >> 8);
        for (uint j = 0u; j < 32u; j++) {
            put(uint(int(round_away(x[x0 + j] * id_))));
        }
#else
        // The least-squares quantizer of ggml/src/quants/q4_0.rs, step for step: ggml's
        // reference block first (the first value of largest magnitude, sign included, maps to
        // level 0), then each candidate of TOPS, keeping the block of least squared error.
        float amax = 0.0, vmax = 0.0;
        for (uint j = 0u; j < 32u; j++) {
            float v = x[x0 + j];
            if (amax < abs(v)) {
                amax = abs(v);
                vmax = v;
            }
        }
        float d = vmax / -8.0;
        float id_ = d != 0.0 ? 1.0 / d : 0.0;
        uint bits = f16_bits(d);
        int best_l[32];
        for (uint j = 0u; j < 32u; j++) {
            best_l[j] = int(min(15u, uint(int(x[x0 + j] * id_ + 8.5)))) - 8;
        }
        if (vmax != 0.0) {
            float best = block_err(x0, unpackHalf2x16(bits).x, best_l);
            for (uint c = 0u; c < 24u; c++) {
                float idc = TOPS[c] / vmax;
                int l[32];
                precise float sxl = 0.0, sll = 0.0;
                for (uint j = 0u; j < 32u; j++) {
                    l[j] = clamp(int(round_away(x[x0 + j] * idc)), -8, 7);
                    sxl += x[x0 + j] * float(l[j]);
                    sll += float(l[j] * l[j]);
                }
                if (sll == 0.0) {
                    continue;
                }
                uint cbits = f16_bits(sxl / sll);
                float e = block_err(x0, unpackHalf2x16(cbits).x, l);
                if (e < best) {
                    best = e;
                    bits = cbits;
                    best_l = l;
                }
            }
        }
        put(bits);
        put(bits >> 8);
        for (uint j = 0u; j < 16u; j++) {
            put(uint(best_l[j] + 8) | (uint(best_l[j + 16] + 8) << 4));
        }
#endif
    }
#else
    uint half_dim = p.head_dim / 2u;
    uint d = 2u * (id % half_dim);
    uint h = (id / half_dim) % p.n_kv_head;
    uint t = id / half_dim / p.n_kv_head;
    if (t >= p.n_tokens) {
        return;
    }
    uint row = (h * p.capacity + slots[t]) * p.head_dim;
    uint src = (t * p.n_kv_head + h) * p.head_dim + d;
    vec2 v = vec2(x[src], x[src + 1u]);
#if KV_TYPE == KV_TYPE_F32
    c[row + d] = floatBitsToUint(v.x);
    c[row + d + 1u] = floatBitsToUint(v.y);
#elif KV_TYPE == KV_TYPE_F16
    c[(row + d) >> 1] = f16_bits(v.x) | (f16_bits(v.y) << 16);
#else
    c[(row + d) >> 1] = bf16_bits(v.x) | (bf16_bits(v.y) << 16);
#endif
#endif
}
