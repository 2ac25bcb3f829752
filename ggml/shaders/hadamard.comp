#version 450
// x = H x for each run of n elements of x (n a power of two, at most 512): the normalized
// Walsh–Hadamard rotation of a quantized cache's rows (ggml/src/attention/rotation.rs, its CPU
// twin, with the same butterflies in the same order, then the same 1/√n, given by the host).
//
// Binding: 0 x `[n_runs][n]` f32, in place. One workgroup per run.

#extension GL_EXT_control_flow_attributes : enable

layout(local_size_x = 256) in;

layout(binding = 0) buffer X { float x[]; };

layout(push_constant) uniform Params {
    uint n;
    uint n_runs;
    float scale;  // 1/√n, from the host so that it is the CPU's bits
} p;

#include "common.glsl"

shared float s[512];

void main() {
    uint run = flat_workgroup();
    if (run >= p.n_runs) {
        return;
    }
    uint lane = gl_LocalInvocationID.x;
    uint base = run * p.n;
    for (uint i = lane; i < p.n; i += 256u) {
        s[i] = x[base + i];
    }
    barrier();
    for (uint h = 1u; h < p.n; h *= 2u) {
        for (uint i = lane; i < p.n / 2u; i += 256u) {
            uint a = (i / h) * 2u * h + i % h;
            float u = s[a], v = s[a + h];
            s[a] = u + v;
            s[a + h] = u - v;
        }
        barrier();
    }
    for (uint i = lane; i < p.n; i += 256u) {
        x[base + i] = s[i] * p.scale;
    }
}
