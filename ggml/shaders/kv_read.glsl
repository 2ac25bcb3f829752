// `vec2 KV_FN(uint row, uint d)`: elements d and d + 1 (d even) of row `row` (head · capacity +
// slot) of the cache tensor KV_BUF, whose type is KV_TYPE (kv.glsl), in f32. Included once per
// tensor with those three macros set; reads p.head_dim.

vec2 KV_FN(uint row, uint d) {
#if KV_TYPE == KV_TYPE_F32
    uint i = row * p.head_dim + d;
    return vec2(uintBitsToFloat(KV_BUF[i]), uintBitsToFloat(KV_BUF[i + 1u]));
#elif KV_TYPE == KV_TYPE_F16
    return unpackHalf2x16(KV_BUF[(row * p.head_dim + d) >> 1]);
#elif KV_TYPE == KV_TYPE_BF16
    uint w = KV_BUF[(row * p.head_dim + d) >> 1];
    return vec2(uintBitsToFloat(w << 16), uintBitsToFloat(w & 0xFFFF0000u));
#else
    // The block's first byte; its scale and the pair's bytes each sit in one half of a word
    // (blocks and rows start on even bytes, d is even).
    uint block = row * (p.head_dim / 32u) + d / 32u;
    uint at = block * kv_block_bytes(KV_TYPE);
    float scale = unpackHalf2x16(KV_BUF[at >> 2] >> ((at & 2u) * 8u)).x;
    uint j = d % 32u;
#if KV_TYPE == KV_TYPE_Q8_0
    uint o = at + 2u + j;
    uint w = KV_BUF[o >> 2] >> ((o & 2u) * 8u);
    return vec2(float(int(w << 24) >> 24), float(int(w << 16) >> 24)) * scale;
#else
    uint o = at + 2u + j % 16u;
    uint w = KV_BUF[o >> 2] >> ((o & 2u) * 8u + (j < 16u ? 0u : 4u));
    return vec2(float(int(w & 0xFu) - 8), float(int((w >> 8) & 0xFu) - 8)) * scale;
#endif
#endif
}
