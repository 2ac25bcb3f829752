#version 450
// The MoE router's choice per token (ggml/src/ops/softmax.rs, `softmax_top_k`): softmax over
// all experts' logits, the k most probable (ties: the lower index first), their probabilities
// renormalized to sum to 1, each then multiplied by its expert's scale (ffn_down_exps.scale).
//
// Bindings: 0 logits `[n_tokens][n_expert]`, 1 ids `[n_tokens][k]` (u32), 2 weights
// `[n_tokens][k]`, 3 scale `[n_expert]`. One invocation per token; n_expert <= 256.

layout(local_size_x = 64) in;
const uint MAX_EXPERTS = 256u;

layout(binding = 0) readonly buffer Logits { float logits[]; };
layout(binding = 1) writeonly buffer Ids { uint ids[]; };
layout(binding = 2) writeonly buffer Weights { float weights[]; };
layout(binding = 3) readonly buffer Scale { float expert_scale[]; };

layout(push_constant) uniform Params {
    uint n_expert;
    uint k;
    uint n_tokens;
} p;

#include "common.glsl"

void main() {
    uint t = flat_workgroup() * 64u + gl_LocalInvocationID.x;
    if (t >= p.n_tokens) {
        return;
    }
    uint base = t * p.n_expert;
    float mx = -1.0 / 0.0;
    for (uint e = 0u; e < p.n_expert; e++) {
        mx = max(mx, logits[base + e]);
    }
    float sum = 0.0;
    for (uint e = 0u; e < p.n_expert; e++) {
        sum += exp(logits[base + e] - mx);
    }
    float inv = 1.0 / sum;
    // Chosen experts as a bit set; k passes of "largest not yet chosen".
    uint chosen[MAX_EXPERTS / 32u];
    for (uint i = 0u; i < MAX_EXPERTS / 32u; i++) {
        chosen[i] = 0u;
    }
    float probs[8];
    uint picked[8];
    float total = 0.0;
    for (uint j = 0u; j < p.k; j++) {
        uint best = 0u;
        float best_p = -1.0;
        for (uint e = 0u; e < p.n_expert; e++) {
            if ((chosen[e / 32u] & (1u << (e % 32u))) != 0u) {
                continue;
            }
            float pe = exp(logits[base + e] - mx) * inv;
            if (pe > best_p) {
                best_p = pe;
                best = e;
            }
        }
        chosen[best / 32u] |= 1u << (best % 32u);
        probs[j] = best_p;
        picked[j] = best;
        total += best_p;
    }
    for (uint j = 0u; j < p.k; j++) {
        ids[t * p.k + j] = picked[j];
        weights[t * p.k + j] = probs[j] / total * expert_scale[picked[j]];
    }
}
