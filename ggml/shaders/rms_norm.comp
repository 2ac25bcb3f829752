#version 450
// RMSNorm of every row: y = (x · 1/sqrt(mean(x²) + eps)) · w, w optional (ggml/src/ops/norm.rs;
// the CPU sums the squares in f64, here in f32 by a tree: the results differ by a few ulp).
// Rows are whole hidden states or single heads (q_norm, k_norm, v_norm), in place or not.
//
// Bindings: 0 x `[n_rows][n]`, 1 y `[n_rows][n]` (may be x), 2 w `[n]` (ignored unless
// has_weight). One workgroup per row.

#extension GL_EXT_control_flow_attributes : enable

layout(local_size_x = 128) in;
const uint LANES = 128u;

layout(binding = 0) readonly buffer X { float x[]; };
layout(binding = 1) writeonly buffer Y { float y[]; };
layout(binding = 2) readonly buffer W { float w[]; };

layout(push_constant) uniform Params {
    uint n;
    uint n_rows;
    float eps;
    uint has_weight;
} p;

#include "common.glsl"

shared float partial[LANES];

void main() {
    uint row = flat_workgroup();
    if (row >= p.n_rows) {
        return;
    }
    uint lane = gl_LocalInvocationID.x;
    uint base = row * p.n;
    float acc = 0.0;
    for (uint i = lane; i < p.n; i += LANES) {
        precise float sq = x[base + i] * x[base + i];
        acc += sq;
    }
    partial[lane] = acc;
    barrier();
    [[unroll]] for (uint s = LANES / 2u; s > 0u; s >>= 1) {
        if (lane < s) {
            partial[lane] += partial[lane + s];
        }
        barrier();
    }
    float scale = 1.0 / sqrt(partial[0] / float(p.n) + p.eps);
    for (uint i = lane; i < p.n; i += LANES) {
        precise float v = x[base + i] * scale;
        if (p.has_weight != 0u) {
            v = v * w[i];
        }
        y[base + i] = v;
    }
}
