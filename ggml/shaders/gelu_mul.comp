#version 450
// The MLP's gate = gelu(gate) · up, GELU by its tanh approximation written as
// x / (1 + exp(-2u)), u = sqrt(2/pi) x (1 + 0.044715 x²) (ggml/src/ops/gelu.rs).
//
// Bindings: 0 gate (in place), 1 up. Element e of row t of gate sits at t · gate_stride + e, of
// up at t · up_stride + up_offset + e: gate and up may be the two halves of one `[n_tokens]
// [2 n_ff]` buffer (the fused expert gate_up), bound twice.

layout(local_size_x = 64) in;

layout(binding = 0) buffer Gate { float gate[]; };
layout(binding = 1) readonly buffer Up { float up[]; };

layout(push_constant) uniform Params {
    uint n;          // elements per row
    uint n_rows;
    uint gate_stride;
    uint up_stride;
    uint up_offset;
} p;

#include "common.glsl"

const float SQRT_2_OVER_PI = 0.7978846;
const float GELU_COEF_A = 0.044715;

void main() {
    uint id = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    uint e = id % p.n, t = id / p.n;
    if (t >= p.n_rows) {
        return;
    }
    float x = gate[t * p.gate_stride + e];
    precise float u = SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x);
    float g = x / (1.0 + exp(-2.0 * u));
    gate[t * p.gate_stride + e] = g * up[t * p.up_stride + p.up_offset + e];
}
