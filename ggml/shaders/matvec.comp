#version 450
// y[t][r] = Σ_k W[r][k] x[t][k]: a quantized (or float) weight matrix times f32 activations,
// the weights dequantized on the fly (blocks.glsl), products summed in f32.
//
// With MUL_MAT_ID, W is a stack of experts (`rows` rows each) and output row z (a token's
// j-th chosen expert, z = t k + j) is expert ids[z] times x[z] (x_per_slot) or x[z / k]. A
// stack split across buffers is split between experts; each part computes the slots whose
// expert it holds.
//
// Workgroup: ROWS rows of one output row, 32 lanes per row; each lane walks its row in steps
// of 4 elements, 128 apart, then the 32 partial sums meet in shared memory. Dispatch: flat
// workgroups over ceil(n_rows / ROWS) (ceil(rows / ROWS) with MUL_MAT_ID) by output rows in z.
//
// Bindings: 0 W (raw block bytes of rows row0 .. row0 + n_rows; `row_bytes` each), 1 x
// `[..][x_stride]`, 2 y `[..][y_stride]` (this launch writes columns row0 .. without
// MUL_MAT_ID), 3 ids `[n_tokens · k]` (MUL_MAT_ID).

#extension GL_EXT_control_flow_attributes : enable

layout(local_size_x = 32, local_size_y = 4) in;
const uint LANES = 32u;
const uint ROWS = 4u;

layout(binding = 0) readonly buffer Weights { uint A[]; };
layout(binding = 1) readonly buffer X { vec4 x4[]; };
layout(binding = 2) writeonly buffer Y { float y[]; };
#if defined(MUL_MAT_ID)
layout(binding = 3) readonly buffer Ids { uint ids[]; };
#endif

layout(push_constant) uniform Params {
    uint n_in;       // elements per row (a multiple of 4 and of the block size)
    uint n_rows;     // rows of W in this launch
    uint row_bytes;
    uint row0;       // the index of W's first row in the whole matrix (or stack)
    uint x_stride;   // floats between rows of x (a multiple of 4)
    uint y_stride;   // floats between rows of y
    uint rows;       // MUL_MAT_ID: rows per expert
    uint k;          // MUL_MAT_ID: experts per token
    uint x_per_slot; // MUL_MAT_ID: x has a row per (token, expert), not per token
} p;

#include "common.glsl"
#include "blocks.glsl"

shared float partial[ROWS][LANES];

void main() {
    uint r = flat_workgroup() * ROWS + gl_LocalInvocationID.y;
    uint lane = gl_LocalInvocationID.x;
    uint z = gl_WorkGroupID.z;
#if defined(MUL_MAT_ID)
    uint first = ids[z] * p.rows;  // the expert's first row in the stack
    if (first < p.row0 || first >= p.row0 + p.n_rows) {
        return;  // another part holds this expert (uniform across the workgroup)
    }
    bool live = r < p.rows;
    uint w_row = first - p.row0 + r;
    uint x_row = p.x_per_slot != 0u ? z : z / p.k;
    uint y_col = r;
#else
    bool live = r < p.n_rows;
    uint w_row = r;
    uint x_row = z;
    uint y_col = p.row0 + r;
#endif
    float acc = 0.0;
    if (live) {
        uint row = w_row * p.row_bytes;
        uint x0 = x_row * (p.x_stride / 4u);
        for (uint i = 4u * lane; i < p.n_in; i += 4u * LANES) {
            acc += dot(dequant4(row, i), x4[x0 + i / 4u]);
        }
    }
    partial[gl_LocalInvocationID.y][lane] = acc;
    barrier();
    [[unroll]] for (uint s = LANES / 2u; s > 0u; s >>= 1) {
        if (lane < s) {
            partial[gl_LocalInvocationID.y][lane] += partial[gl_LocalInvocationID.y][lane + s];
        }
        barrier();
    }
    if (lane == 0u && live) {
        y[z * p.y_stride + y_col] = partial[gl_LocalInvocationID.y][0];
    }
}
