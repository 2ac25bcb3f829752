#version 450
// Appends a batch's keys and values to a layer's cache: token t's rows go to slot slots[t]
// (the host's ring bookkeeping, src/kv_cache.rs, chose them), f16 rounded as the CPU rounds.
//
// Bindings: 0 K `[n_kv_head][capacity][head_dim]`, 1 V (same), 2 k `[n_tokens][n_kv_head]
// [head_dim]` f32, 3 v (same), 4 slots `[n_tokens]` u32. One invocation per pair of elements.

layout(local_size_x = 64) in;

layout(binding = 0) buffer K { uint kc[]; };
layout(binding = 1) buffer V { uint vc[]; };
layout(binding = 2) readonly buffer KSrc { vec2 k[]; };
layout(binding = 3) readonly buffer VSrc { vec2 v[]; };
layout(binding = 4) readonly buffer Slots { uint slots[]; };

layout(push_constant) uniform Params {
    uint n_kv_head;
    uint head_dim;
    uint capacity;
    uint n_tokens;
} p;

#include "common.glsl"
#include "kv.glsl"

void main() {
    uint id = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    uint half_dim = p.head_dim / 2u;
    uint d = 2u * (id % half_dim);
    uint h = (id / half_dim) % p.n_kv_head;
    uint t = id / half_dim / p.n_kv_head;
    if (t >= p.n_tokens) {
        return;
    }
    uint row = (h * p.capacity + slots[t]) * p.head_dim;
    uint src = (t * p.n_kv_head + h) * half_dim + d / 2u;
    KV_WRITE2(kc, row, d, k[src]);
    KV_WRITE2(vc, row, d, v[src]);
}
