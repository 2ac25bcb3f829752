// The KV cache as the shaders read and write it: `[n_kv_head][capacity][head_dim]` per tensor,
// as the CPU cache lays it out (ggml/src/attention), in one of the cache types, each a
// KV_TYPE_* code below (the variants set K_TYPE, V_TYPE or KV_TYPE to one):
// - f32: one word an element;
// - f16, bf16: two to a word (element d of a row in the low half of word d/2, d even);
// - q8_0, q4_0: ggml's blocks of 32 (an f16 scale, then 32 signed bytes or 16 bytes of two
//   nibbles, element j in the low nibble of byte j and j + 16 in its high nibble: 34 and 18
//   bytes), packed back to back, so a row is head_dim / 32 blocks and starts on an even byte.
// A buffer is an array of words; bytes are little-endian within them.

#define KV_TYPE_F32 0
#define KV_TYPE_F16 1
#define KV_TYPE_BF16 2
#define KV_TYPE_Q8_0 3
#define KV_TYPE_Q4_0 4

// f32 to f16, rounding to nearest even as the CPU's cache does (F16C; the `half` crate), in
// integer arithmetic: packHalf2x16 leaves the rounding to the implementation.
uint f16_bits(float f) {
    uint x = floatBitsToUint(f);
    uint sign = (x >> 16) & 0x8000u;
    uint e = (x >> 23) & 0xFFu;
    uint m = x & 0x7FFFFFu;
    if (e == 0xFFu) {
        return sign | 0x7C00u | (m != 0u ? 0x200u : 0u);
    }
    int ne = int(e) - 112;  // the f16 exponent field: e - 127 + 15
    if (ne >= 31) {
        return sign | 0x7C00u;
    }
    if (ne <= 0) {
        if (ne < -10) {
            return sign;
        }
        m |= 0x800000u;
        uint shift = uint(14 - ne);
        uint h = m >> shift;
        uint rem = m & ((1u << shift) - 1u);
        uint halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u) != 0u)) {
            h += 1u;
        }
        return sign | h;
    }
    uint h = (uint(ne) << 10) | (m >> 13);
    uint rem = m & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) {
        h += 1u;  // a carry into the exponent is right, up to infinity
    }
    return sign | h;
}

// f32 to bf16 as ggml rounds it (nearest even; a NaN keeps its top bits, made quiet).
uint bf16_bits(float f) {
    uint x = floatBitsToUint(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return (x >> 16) | 0x40u;
    }
    return (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
}

// Bytes of a block and of a row of head_dim elements.
uint kv_block_bytes(uint type_code) {
    return type_code == KV_TYPE_Q8_0 ? 34u : 18u;
}
