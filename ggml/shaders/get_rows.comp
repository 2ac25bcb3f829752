#version 450
// The embedding lookup: out[t] = W[ids[t]] · scale, dequantized (blocks.glsl).
//
// One workgroup per token; W here holds rows row0 .. row0 + n_rows (a tensor split across
// buffers is looked up once per part, each part writing the tokens whose rows it holds).
//
// Bindings: 0 W, 1 ids `[n_tokens]` (u32), 2 out `[n_tokens][n_in]`.

layout(local_size_x = 64) in;

layout(binding = 0) readonly buffer Weights { uint A[]; };
layout(binding = 1) readonly buffer Ids { uint ids[]; };
layout(binding = 2) writeonly buffer Out { vec4 out4[]; };

layout(push_constant) uniform Params {
    uint n_in;       // elements per row (a multiple of 4)
    uint n_rows;     // rows of W in this part
    uint row_bytes;
    uint row0;       // the id of this part's first row
    float scale;
} p;

#include "common.glsl"
#include "blocks.glsl"

void main() {
    uint t = flat_workgroup();
    uint id = ids[t];
    if (id < p.row0 || id - p.row0 >= p.n_rows) {
        return;
    }
    uint row = (id - p.row0) * p.row_bytes;
    for (uint i = 4u * gl_LocalInvocationID.x; i < p.n_in; i += 4u * 64u) {
        precise vec4 v = dequant4(row, i) * p.scale;
        out4[(t * p.n_in + i) / 4u] = v;
    }
}
