#version 450
// The MoE output: out[t] = Σ_j w[t][j] · y[t k + j] over a token's k experts, added in
// ascending expert order with each product rounded, as the CPU's moe_ffn sums them; choices of
// weight 0 are skipped, as there.
//
// Bindings: 0 y `[n_tokens · k][n]`, 1 ids `[n_tokens][k]`, 2 weights `[n_tokens][k]`,
// 3 out `[n_tokens][n]`. One invocation per output element; k <= 8.

layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer Y { float y[]; };
layout(binding = 1) readonly buffer Ids { uint ids[]; };
layout(binding = 2) readonly buffer Weights { float weights[]; };
layout(binding = 3) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint n;
    uint k;
    uint n_tokens;
} p;

#include "common.glsl"

void main() {
    uint id = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    uint i = id % p.n, t = id / p.n;
    if (t >= p.n_tokens) {
        return;
    }
    uint order[8];
    for (uint j = 0u; j < p.k; j++) {
        order[j] = j;
    }
    for (uint a = 1u; a < p.k; a++) {
        uint x = order[a];
        uint b = a;
        while (b > 0u && ids[t * p.k + order[b - 1u]] > ids[t * p.k + x]) {
            order[b] = order[b - 1u];
            b--;
        }
        order[b] = x;
    }
    float acc = 0.0;
    for (uint a = 0u; a < p.k; a++) {
        uint j = order[a];
        float w = weights[t * p.k + j];
        // A choice of weight 0 is left out, as the CPU leaves it out (its expert ran elsewhere).
        if (w != 0.0) {
            precise float term = w * y[(t * p.k + j) * p.n + i];
            precise float next = acc + term;
            acc = next;
        }
    }
    o[t * p.n + i] = acc;
}
