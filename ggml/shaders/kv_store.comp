#version 450
// Appends a batch's keys (or values) to one tensor of a layer's cache: token t's rows go to slot
// slots[t] (the host's ring bookkeeping, src/kv_cache.rs, chose them), in the cache's type
// KV_TYPE (kv.glsl) and rounded as the CPU rounds: f16 and bf16 to nearest even, q8_0 and q4_0
// by ggml's reference quantizers (the CPU's `ggml::quants`). A block type's rows arrive already
// rotated (hadamard.comp); head_dim is a multiple of 64 for them, so that rows are whole words.
//
// Bindings: 0 the cache tensor `[n_kv_head][capacity][head_dim]`, 1 x `[n_tokens][n_kv_head]
// [head_dim]` f32, 2 slots `[n_tokens]` u32. One invocation per pair of elements (f32, f16,
// bf16) or per row (q8_0, q4_0).

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

// C's roundf: halves away from zero.
float round_away(float v) {
    return sign(v) * floor(abs(v) + 0.5);
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
        // The first value of largest magnitude, sign included, maps to level 0.
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
        put(bits);
        put(bits >> 8);
        for (uint j = 0u; j < 16u; j++) {
            uint lo = min(15u, uint(int(x[x0 + j] * id_ + 8.5)));
            uint hi = min(15u, uint(int(x[x0 + j + 16u] * id_ + 8.5)));
            put(lo | (hi << 4));
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
