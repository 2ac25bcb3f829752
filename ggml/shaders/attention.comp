#version 450
// Attention of each (query token, head) over a layer's cache, one pass with an online softmax
// (ggml/src/attention/mod.rs, `attention`; its f64 `attention_reference` is the oracle):
// scores s = scale · q · k for the visible slots (a slot holds position kpos >= 0 with
// kpos <= qlast, the last position the query sees: its own, or on a sliding layer its image's
// last; and kpos + window > qpos on sliding layers: `AttnShape::visible_to`),
// out = Σ e^(s - max) v / Σ e^(s - max).
//
// One workgroup per (token, head), 128 lanes: per tile of 128 slots each lane scores one slot,
// the tile's maximum and sum meet in shared memory, and each lane accumulates its head_dim / 128
// output dimensions over the tile's values.
//
// Bindings: 0 q `[n_tokens][n_head][head_dim]`, 1 K of type K_TYPE, 2 V of type V_TYPE (kv.glsl),
// 3 kpos `[capacity]` (i32, -1: unused), 4 qpos `[n_tokens]` (i32), 5 out `[n_tokens][n_head]
// [head_dim]`, 6 qlast `[n_tokens]` (i32). A block type's rotation (of q and the stored K, of the output against the stored
// V) is the caller's (hadamard.comp).

#extension GL_EXT_control_flow_attributes : enable

layout(local_size_x = 128) in;
const uint LANES = 128u;
const uint MAX_DIM = 512u;

layout(binding = 0) readonly buffer Q { float q[]; };
layout(binding = 1) readonly buffer K { uint kc[]; };
layout(binding = 2) readonly buffer V { uint vc[]; };
layout(binding = 3) readonly buffer KPos { int kpos[]; };
layout(binding = 4) readonly buffer QPos { int qpos[]; };
layout(binding = 5) writeonly buffer Out { float o[]; };
layout(binding = 6) readonly buffer QLast { int qlast[]; };

layout(push_constant) uniform Params {
    uint n_head;
    uint n_kv_head;
    uint head_dim;   // even, at most 512
    uint capacity;
    uint n_slots;    // slots in use: 0 .. n_slots
    float scale;
    uint window;     // 0: causal only
    uint n_tokens;
} p;

#include "common.glsl"
#include "kv.glsl"

#define KV_FN k_read2
#define KV_BUF kc
#define KV_TYPE K_TYPE
#include "kv_read.glsl"
#undef KV_FN
#undef KV_BUF
#undef KV_TYPE
#define KV_FN v_read2
#define KV_BUF vc
#define KV_TYPE V_TYPE
#include "kv_read.glsl"

shared float qs[MAX_DIM];
shared float ps[LANES];
shared float red[LANES];

float tile_reduce(float v, bool is_max) {
    uint lane = gl_LocalInvocationID.x;
    red[lane] = v;
    barrier();
    [[unroll]] for (uint s = LANES / 2u; s > 0u; s >>= 1) {
        if (lane < s) {
            red[lane] = is_max ? max(red[lane], red[lane + s]) : red[lane] + red[lane + s];
        }
        barrier();
    }
    float r = red[0];
    barrier();
    return r;
}

void main() {
    uint wg = flat_workgroup();
    uint t = wg / p.n_head, hq = wg % p.n_head;
    if (t >= p.n_tokens) {
        return;
    }
    uint lane = gl_LocalInvocationID.x;
    uint kvh = hq / (p.n_head / p.n_kv_head);
    uint qbase = (t * p.n_head + hq) * p.head_dim;
    for (uint d = lane; d < p.head_dim; d += LANES) {
        qs[d] = q[qbase + d];
    }
    barrier();
    int qp = qpos[t], ql = qlast[t];
    float m = -1.0 / 0.0, l = 0.0;
    float acc[MAX_DIM / LANES];
    [[unroll]] for (uint j = 0u; j < MAX_DIM / LANES; j++) {
        acc[j] = 0.0;
    }
    uint head0 = kvh * p.capacity;
    for (uint base = 0u; base < p.n_slots; base += LANES) {
        uint s = base + lane;
        float score = -1.0 / 0.0;
        if (s < p.n_slots) {
            int kp = kpos[s];
            bool seen = kp >= 0 && kp <= ql && (p.window == 0u || kp + int(p.window) > qp);
            if (seen) {
                float dot_ = 0.0;
                for (uint d = 0u; d < p.head_dim; d += 2u) {
                    vec2 kk = k_read2(head0 + s, d);
                    dot_ += qs[d] * kk.x + qs[d + 1u] * kk.y;
                }
                score = dot_ * p.scale;
            }
        }
        float m_new = max(m, tile_reduce(score, true));
        if (m_new == -1.0 / 0.0) {
            continue;  // nothing visible yet (uniform across the workgroup)
        }
        float e = score == -1.0 / 0.0 ? 0.0 : exp(score - m_new);
        ps[lane] = e;
        float tile_sum = tile_reduce(e, false);
        float alpha = m == -1.0 / 0.0 ? 0.0 : exp(m - m_new);
        l = l * alpha + tile_sum;
        m = m_new;
        uint n = min(LANES, p.n_slots - base);
        [[unroll]] for (uint j = 0u; j < MAX_DIM / LANES; j++) {
            uint d = lane + j * LANES;
            if (d < p.head_dim) {
                float a = acc[j] * alpha;
                for (uint i = 0u; i < n; i++) {
                    float w = ps[i];
                    if (w != 0.0) {
                        vec2 vv = v_read2(head0 + base + i, d & ~1u);
                        a += w * ((d & 1u) == 0u ? vv.x : vv.y);
                    }
                }
                acc[j] = a;
            }
        }
        barrier();
    }
    [[unroll]] for (uint j = 0u; j < MAX_DIM / LANES; j++) {
        uint d = lane + j * LANES;
        if (d < p.head_dim) {
            o[qbase + d] = l > 0.0 ? acc[j] / l : 0.0;  // no visible key: 0, as the CPU
        }
    }
}
