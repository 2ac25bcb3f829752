#version 450
// NeoX RoPE in place (ggml/src/ops/rope.rs): in each head, dims i and i + n_rot/2 (i < n_rot/2)
// are rotated by the angle whose cos and sin the host computed for the token's position (the
// CPU's RopeCache, so both sides rotate by the same f32 values), each product rounded: the
// result equals the CPU's bit for bit.
//
// Bindings: 0 x `[n_tokens][n_heads][head_dim]`, 1 cs `[n_tokens][2][n_rot/2]` (cos, then sin).
// One invocation per (token, head, pair).

layout(local_size_x = 64) in;

layout(binding = 0) buffer X { float x[]; };
layout(binding = 1) readonly buffer CosSin { float cs[]; };

layout(push_constant) uniform Params {
    uint head_dim;
    uint n_heads;
    uint half_rot;   // n_rot / 2
    uint n_tokens;
} p;

#include "common.glsl"

void main() {
    uint id = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    uint i = id % p.half_rot;
    uint head = id / p.half_rot;
    uint t = head / p.n_heads;
    if (t >= p.n_tokens) {
        return;
    }
    uint lo = head * p.head_dim + i;
    uint hi = lo + p.half_rot;
    float c = cs[t * 2u * p.half_rot + i];
    float s = cs[t * 2u * p.half_rot + p.half_rot + i];
    float a = x[lo], b = x[hi];
    precise float ac = a * c, bs = b * s, as_ = a * s, bc = b * c;
    precise float y0 = ac - bs, y1 = as_ + bc;
    x[lo] = y0;
    x[hi] = y1;
}
