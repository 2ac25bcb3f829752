// ggml block formats read straight from their bytes (the layouts of ggml/src/quants/*.rs).
//
// The including shader declares the weight buffer as `uint A[]`: any block type, at any byte
// offset (Q8_0 blocks are 34 bytes, Q6_K 210, so a block may start 2 bytes into a word). No
// 8- or 16-bit storage is needed, so this runs on every Vulkan 1.2 device.
//
// `vec4 dequant4(uint row, uint i)`: elements i .. i+3 (i a multiple of 4) of the row starting
// at byte `row`, as f32, exactly as the CPU dequantizers compute them (every value is a product
// of at most two f32-rounded factors, the same ones, in the same order).

uint load_u8(uint off) {
    return (A[off >> 2] >> ((off & 3u) * 8u)) & 0xFFu;
}

// Two bytes at an even offset (never across a word).
uint load_u16(uint off) {
    return (A[off >> 2] >> ((off & 2u) * 8u)) & 0xFFFFu;
}

// Four bytes at an even offset.
uint load_u32(uint off) {
    uint w = off >> 2;
    if ((off & 3u) == 0u) {
        return A[w];
    }
    return (A[w] >> 16) | (A[w + 1u] << 16);
}

float load_f16(uint off) {
    return unpackHalf2x16(load_u16(off)).x;
}

// The four bytes of `w` as unsigned values.
uvec4 bytes4(uint w) {
    return uvec4(w & 0xFFu, (w >> 8) & 0xFFu, (w >> 16) & 0xFFu, w >> 24);
}

// The four bytes of `w` as signed values.
vec4 sbytes4(uint w) {
    ivec4 b = ivec4(bitfieldExtract(int(w), 0, 8), bitfieldExtract(int(w), 8, 8),
                    bitfieldExtract(int(w), 16, 8), bitfieldExtract(int(w), 24, 8));
    return vec4(b);
}

#if defined(DATA_A_F32)
const uint BLOCK_ELEMS = 1u;
const uint BLOCK_BYTES = 4u;
vec4 dequant4(uint row, uint i) {
    uint w = (row >> 2) + i;
    return vec4(uintBitsToFloat(A[w]), uintBitsToFloat(A[w + 1u]), uintBitsToFloat(A[w + 2u]),
                uintBitsToFloat(A[w + 3u]));
}
#elif defined(DATA_A_F16)
const uint BLOCK_ELEMS = 1u;
const uint BLOCK_BYTES = 2u;
vec4 dequant4(uint row, uint i) {
    uint off = row + 2u * i;
    return vec4(unpackHalf2x16(load_u32(off)), unpackHalf2x16(load_u32(off + 4u)));
}
#elif defined(DATA_A_BF16)
const uint BLOCK_ELEMS = 1u;
const uint BLOCK_BYTES = 2u;
vec4 dequant4(uint row, uint i) {
    uint off = row + 2u * i;
    uint a = load_u32(off), b = load_u32(off + 4u);
    return vec4(uintBitsToFloat(a << 16), uintBitsToFloat(a & 0xFFFF0000u), uintBitsToFloat(b << 16),
                uintBitsToFloat(b & 0xFFFF0000u));
}
#elif defined(DATA_A_Q8_0)
// { f16 d; i8 qs[32] }: x = d q
const uint BLOCK_ELEMS = 32u;
const uint BLOCK_BYTES = 34u;
vec4 dequant4(uint row, uint i) {
    uint off = row + (i / 32u) * 34u;
    float d = load_f16(off);
    precise vec4 y = sbytes4(load_u32(off + 2u + i % 32u)) * d;
    return y;
}
#elif defined(DATA_A_Q5_0)
// { f16 d; u8 qh[4]; u8 qs[16] }: element j < 16 is the low nibble of qs[j], j >= 16 the high
// nibble of qs[j - 16]; bit j of qh is its fifth bit; x = d (q - 16)
const uint BLOCK_ELEMS = 32u;
const uint BLOCK_BYTES = 22u;
vec4 dequant4(uint row, uint i) {
    uint off = row + (i / 32u) * 22u;
    uint j = i % 32u;
    float d = load_f16(off);
    uint qh = load_u32(off + 2u) >> j;
    uvec4 qs = bytes4(load_u32(off + 6u + (j & 15u)));
    uvec4 lo = j < 16u ? (qs & 0xFu) : (qs >> 4);
    uvec4 hi = uvec4(qh & 1u, (qh >> 1) & 1u, (qh >> 2) & 1u, (qh >> 3) & 1u) << 4;
    precise vec4 y = (vec4(lo | hi) - 16.0) * d;
    return y;
}
#elif defined(DATA_A_Q4_K)
// { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] } over 256 elements: 8 sub-blocks of 32 with a
// 6-bit scale and min each; chunk c of 64 elements takes its low nibbles from qs[32c ..] (the
// first 32) and its high nibbles (the next 32); x = d sc q - dmin m
const uint BLOCK_ELEMS = 256u;
const uint BLOCK_BYTES = 144u;
vec2 q4_k_scale_min(uint off, uint j) {
    uint sc, m;
    if (j < 4u) {
        sc = load_u8(off + 4u + j) & 63u;
        m = load_u8(off + 8u + j) & 63u;
    } else {
        uint s = load_u8(off + 8u + j);
        sc = (s & 0xFu) | ((load_u8(off + j) >> 6) << 4);
        m = (s >> 4) | ((load_u8(off + 4u + j) >> 6) << 4);
    }
    return vec2(float(sc), float(m));
}
vec4 dequant4(uint row, uint i) {
    uint off = row + (i / 256u) * 144u;
    uint j = i % 256u;
    uint c = j / 64u, l = j % 64u;
    uint is = 2u * c + l / 32u;
    vec2 dm = unpackHalf2x16(load_u32(off));
    vec2 sm = q4_k_scale_min(off, is);
    precise float d = dm.x * sm.x, m = dm.y * sm.y;
    uvec4 q = bytes4(load_u32(off + 16u + 32u * c + l % 32u));
    q = l < 32u ? (q & 0xFu) : (q >> 4);
    precise vec4 y = d * vec4(q) - m;
    return y;
}
#elif defined(DATA_A_Q6_K)
// { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d } over 256 elements, in two halves of 128; in
// half h, quarter t (32 elements) takes low (t = 0, 1) or high (t = 2, 3) nibbles of
// ql[64h + 32(t & 1) ..], two bits of qh[32h ..] at 2t, scale scales[8h + 2t + l / 16];
// x = d scale (q - 32)
const uint BLOCK_ELEMS = 256u;
const uint BLOCK_BYTES = 210u;
vec4 dequant4(uint row, uint i) {
    uint off = row + (i / 256u) * 210u;
    uint j = i % 256u;
    uint h = j / 128u, t = (j % 128u) / 32u, l = j % 32u;
    uvec4 ql = bytes4(load_u32(off + 64u * h + 32u * (t & 1u) + l));
    ql = t < 2u ? (ql & 0xFu) : (ql >> 4);
    uvec4 qh = (bytes4(load_u32(off + 128u + 32u * h + l)) >> (2u * t)) & 3u;
    int sc = bitfieldExtract(int(load_u8(off + 192u + 8u * h + 2u * t + l / 16u)), 0, 8);
    precise float d = load_f16(off + 208u) * float(sc);
    precise vec4 y = d * (vec4(ql | (qh << 4)) - 32.0);
    return y;
}
#endif
