#version 450
// In place: y[i] *= a (OP 0), or the logit softcap y[i] = a tanh(y[i] / a) (OP 1), computed
// as the CPU does, with 1/a once. ggml/src/ops/elementwise.rs.
//
// Bindings: 0 y `[n]`.

layout(local_size_x = 64) in;

layout(binding = 0) buffer Y { float y[]; };

layout(push_constant) uniform Params {
    uint n;
    uint op;
    float a;
} p;

#include "common.glsl"

void main() {
    uint i = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    if (i >= p.n) {
        return;
    }
    if (p.op == 0u) {
        y[i] = y[i] * p.a;
    } else {
        precise float z = y[i] * (1.0 / p.a);
        y[i] = p.a * tanh(z);
    }
}
