// The KV cache as the shaders read it: `[n_kv_head][capacity][head_dim]` per tensor, as the CPU
// cache lays it out (ggml/src/attention/mod.rs), in f32 or, with KV_F16, in f16 packed two to
// a word (element d of a row in the low half of word d/2 when d is even). head_dim is even.

#if defined(KV_F16)
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

#define KV_WORD(row, d) (((row) + (d)) >> 1)
#define KV_READ2(buf, row, d) unpackHalf2x16(buf[KV_WORD(row, d)])
#define KV_WRITE2(buf, row, d, v) buf[KV_WORD(row, d)] = f16_bits((v).x) | (f16_bits((v).y) << 16)
#else
#define KV_READ2(buf, row, d) vec2(uintBitsToFloat(buf[(row) + (d)]), uintBitsToFloat(buf[(row) + (d) + 1u]))
#define KV_WRITE2(buf, row, d, v) buf[(row) + (d)] = floatBitsToUint((v).x); buf[(row) + (d) + 1u] = floatBitsToUint((v).y)
#endif
