#version 450
// y[i] = y[i] op x[i mod n_x] for the ops of the residual stream: add (OP 0) and mul (OP 1,
// a row vector broadcast over rows when n_x is one row). ggml/src/ops/elementwise.rs.
//
// Bindings: 0 y `[n]` (in place), 1 x `[n_x]`.

layout(local_size_x = 64) in;

layout(binding = 0) buffer Y { float y[]; };
layout(binding = 1) readonly buffer X { float x[]; };

layout(push_constant) uniform Params {
    uint n;
    uint n_x;
    uint op;
} p;

#include "common.glsl"

void main() {
    uint i = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    if (i >= p.n) {
        return;
    }
    float v = x[i % p.n_x];
    if (p.op == 0u) {
        y[i] = y[i] + v;
    } else {
        y[i] = y[i] * v;
    }
}
