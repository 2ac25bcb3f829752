//! Malformed GGUF files for tests and fuzzing: a small valid file, encoded by hand so that
//! every field can be broken, and one broken variant per way a file can be wrong (truncated at
//! each section boundary, huge counts, bad type ids, bad offsets, invalid UTF-8, ...).
//! The reader must reject each with an error, never panic or over-allocate.

use super::{DEFAULT_ALIGNMENT, MAGIC};

/// A GGUF file described field by field, including fields a valid file would never have.
#[derive(Clone)]
pub struct RawFile {
    pub magic: [u8; 4],
    pub version: u32,
    /// Tensor and metadata counts as written (normally the lengths of the lists below).
    pub n_tensors: u64,
    pub n_kv: u64,
    pub kvs: Vec<RawKv>,
    pub tensors: Vec<RawTensor>,
    pub alignment: u64,
    pub data: Vec<u8>,
}

#[derive(Clone)]
pub struct RawKv {
    pub key: Vec<u8>,
    pub type_id: u32,
    /// The encoded value, after its type id.
    pub payload: Vec<u8>,
}

#[derive(Clone)]
pub struct RawTensor {
    pub name: Vec<u8>,
    pub n_dims: u32,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub offset: u64,
}

/// Byte offsets where each section of an encoded [`RawFile`] ends.
pub struct Boundaries {
    pub after_counts: usize,
    pub after_each_kv: Vec<usize>,
    pub after_each_tensor: Vec<usize>,
    pub data_start: usize,
}

fn str_bytes(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

impl RawKv {
    pub fn new(key: &str, type_id: u32, payload: Vec<u8>) -> RawKv {
        RawKv { key: key.as_bytes().to_vec(), type_id, payload }
    }
    pub fn string(key: &str, value: &[u8]) -> RawKv {
        RawKv::new(key, 8, str_bytes(value))
    }
    pub fn u32(key: &str, value: u32) -> RawKv {
        RawKv::new(key, 4, value.to_le_bytes().to_vec())
    }
    /// An array of strings.
    pub fn strings(key: &str, values: &[&str]) -> RawKv {
        let mut p = 8u32.to_le_bytes().to_vec();
        p.extend_from_slice(&(values.len() as u64).to_le_bytes());
        for v in values {
            p.extend(str_bytes(v.as_bytes()));
        }
        RawKv::new(key, 9, p)
    }
}

impl RawFile {
    /// A valid v3 file: eight metadata values of several types (one a nested array), and three
    /// tensors (f32, q8_0, q4_K) with real data.
    pub fn valid() -> RawFile {
        let mut nested = 9u32.to_le_bytes().to_vec(); // array of arrays
        nested.extend_from_slice(&2u64.to_le_bytes());
        for row in [[1i32, 2], [3, 4]] {
            nested.extend_from_slice(&5u32.to_le_bytes()); // of i32
            nested.extend_from_slice(&2u64.to_le_bytes());
            row.iter().for_each(|x| nested.extend_from_slice(&x.to_le_bytes()));
        }
        let kvs = vec![
            RawKv::string("general.architecture", b"gemma4"),
            RawKv::u32("general.alignment", 32),
            RawKv::new("gemma4.rope.freq_base", 6, 1e6f32.to_le_bytes().to_vec()),
            RawKv::new("test.bool", 7, vec![1]),
            RawKv::new("test.u64", 10, u64::MAX.to_le_bytes().to_vec()),
            RawKv::new("test.f64", 12, (-0.5f64).to_le_bytes().to_vec()),
            RawKv::strings("tokenizer.ggml.tokens", &["<pad>", "<eos>", "▁hello"]),
            RawKv::new("test.nested", 9, nested),
        ];
        let tensors = vec![
            RawTensor { name: b"token_embd.weight".to_vec(), n_dims: 2, dims: vec![4, 3], type_id: 0, offset: 0 },
            RawTensor { name: b"blk.0.attn_q.weight".to_vec(), n_dims: 2, dims: vec![32, 2], type_id: 8, offset: 64 },
            RawTensor { name: b"blk.0.ffn_up.weight".to_vec(), n_dims: 1, dims: vec![256], type_id: 12, offset: 160 },
        ];
        // 48 bytes of f32, then 68 bytes of q8_0 at 64, then 144 bytes of q4_K at 160.
        let data = (0..304u32).map(|i| (i * 7 % 251) as u8).collect();
        RawFile { magic: MAGIC, version: 3, n_tensors: 3, n_kv: 8, kvs, tensors, alignment: DEFAULT_ALIGNMENT, data }
    }

    pub fn encode(&self) -> (Vec<u8>, Boundaries) {
        let mut out = self.magic.to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        let after_counts = out.len();
        let mut after_each_kv = Vec::new();
        for kv in &self.kvs {
            out.extend(str_bytes(&kv.key));
            out.extend_from_slice(&kv.type_id.to_le_bytes());
            out.extend_from_slice(&kv.payload);
            after_each_kv.push(out.len());
        }
        let mut after_each_tensor = Vec::new();
        for t in &self.tensors {
            out.extend(str_bytes(&t.name));
            out.extend_from_slice(&t.n_dims.to_le_bytes());
            t.dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&t.type_id.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
            after_each_tensor.push(out.len());
        }
        out.resize((out.len() as u64).next_multiple_of(self.alignment) as usize, 0);
        let data_start = out.len();
        out.extend_from_slice(&self.data);
        (out, Boundaries { after_counts, after_each_kv, after_each_tensor, data_start })
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.encode().0
    }
}

/// Every malformed variant of [`RawFile::valid`], named by what is wrong.
pub fn malformed() -> Vec<(String, Vec<u8>)> {
    let base = RawFile::valid();
    let (good, b) = base.encode();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| cases.push((name.to_string(), bytes));
    let with = |f: &dyn Fn(&mut RawFile)| {
        let mut file = base.clone();
        f(&mut file);
        file.bytes()
    };

    // Truncated at (and just after) each section boundary.
    let mut cuts = vec![0, 2, 4, 6, 8, 12, 16, 20, b.after_counts];
    for &end in b.after_each_kv.iter().chain(&b.after_each_tensor) {
        cuts.extend([end - 1, end, end + 3]);
    }
    cuts.extend([b.data_start - 1, b.data_start, b.data_start + 10, good.len() - 1]);
    cuts.sort();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|&c| c < good.len()) {
        add(&format!("truncated-at-{cut}"), good[..cut].to_vec());
    }

    add("bad-magic", with(&|f| f.magic = *b"GGML"));
    add("version-1", with(&|f| f.version = 1));
    add("version-4", with(&|f| f.version = 4));
    add("big-endian", with(&|f| f.version = 3u32.swap_bytes()));
    add("huge-kv-count", with(&|f| f.n_kv = u64::MAX));
    add("huge-tensor-count", with(&|f| f.n_tensors = 1 << 40));
    add("kv-count-one-too-many", with(&|f| f.n_kv += 1));
    add("tensor-count-one-too-many", with(&|f| f.n_tensors += 1));
    add("huge-key-length", {
        let mut bytes = good.clone();
        bytes[b.after_counts..b.after_counts + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        bytes
    });
    add("huge-string-length", with(&|f| f.kvs[0].payload[..8].copy_from_slice(&(1u64 << 62).to_le_bytes())));
    add("huge-array-length", with(&|f| f.kvs[6].payload[4..12].copy_from_slice(&(u64::MAX / 2).to_le_bytes())));
    add("huge-nested-array-length", with(&|f| f.kvs[7].payload[16..24].copy_from_slice(&u64::MAX.to_le_bytes())));
    add("unknown-value-type", with(&|f| f.kvs[2].type_id = 13));
    add("unknown-value-type-max", with(&|f| f.kvs[2].type_id = u32::MAX));
    add("unknown-array-element-type", with(&|f| f.kvs[6].payload[..4].copy_from_slice(&99u32.to_le_bytes())));
    add("bool-not-0-or-1", with(&|f| f.kvs[3].payload = vec![2]));
    add("deeply-nested-array", {
        let mut payload = Vec::new();
        for _ in 0..40 {
            payload.extend_from_slice(&9u32.to_le_bytes());
            payload.extend_from_slice(&1u64.to_le_bytes());
        }
        payload.extend_from_slice(&4u32.to_le_bytes());
        payload.extend_from_slice(&0u64.to_le_bytes());
        with(&|f| f.kvs[7].payload = payload.clone())
    });
    add("invalid-utf8-key", with(&|f| f.kvs[4].key = b"test.\xff\xfe".to_vec()));
    add("invalid-utf8-string", with(&|f| f.kvs[0] = RawKv::string("general.architecture", b"gem\xc3ma")));
    add("invalid-utf8-tensor-name", with(&|f| f.tensors[1].name = b"blk.\x80.attn".to_vec()));
    add("duplicate-key", with(&|f| f.kvs[5].key = b"test.bool".to_vec()));
    add("duplicate-tensor", with(&|f| f.tensors[2].name = f.tensors[0].name.clone()));
    add("alignment-zero", with(&|f| f.kvs[1] = RawKv::u32("general.alignment", 0)));
    add("alignment-not-power-of-two", with(&|f| f.kvs[1] = RawKv::u32("general.alignment", 48)));
    add("alignment-wrong-type", with(&|f| f.kvs[1] = RawKv::string("general.alignment", b"32")));
    add("unknown-tensor-type", with(&|f| f.tensors[1].type_id = 1000));
    add("removed-tensor-type", with(&|f| f.tensors[1].type_id = 4));
    add(
        "too-many-dims",
        with(&|f| {
            f.tensors[0].n_dims = 5;
            f.tensors[0].dims = vec![4, 3, 1, 1, 1];
        }),
    );
    add("huge-n-dims", with(&|f| f.tensors[0].n_dims = u32::MAX));
    add("dim-over-int64", with(&|f| f.tensors[0].dims[1] = u64::MAX));
    add("element-count-overflow", with(&|f| f.tensors[0].dims = vec![1 << 32, 1 << 32]));
    add("byte-size-overflow", with(&|f| f.tensors[0].dims = vec![1 << 31, 1 << 31]));
    add("row-not-whole-blocks", with(&|f| f.tensors[1].dims = vec![33, 2]));
    add("offset-past-end", with(&|f| f.tensors[2].offset = 1 << 20));
    add("offset-near-u64-max", with(&|f| f.tensors[2].offset = u64::MAX - 31));
    add("offset-unaligned", with(&|f| f.tensors[1].offset = 66));
    add("data-runs-past-end", with(&|f| f.tensors[2].offset = 192));
    add("overlapping-tensors", with(&|f| f.tensors[1].offset = 32));
    add("same-offset-tensors", with(&|f| f.tensors[2].offset = 64));
    add("data-section-missing", with(&|f| f.data.clear()));
    // Found by the fuzzer: only empty tensors, and the file ends inside the header padding.
    add("padding-cut-with-empty-tensor", {
        let mut file =
            RawFile { n_kv: 0, kvs: vec![], n_tensors: 1, tensors: vec![base.tensors[0].clone()], ..base.clone() };
        file.tensors[0].dims = vec![0];
        file.tensors[0].n_dims = 1;
        let (mut bytes, b) = file.encode();
        assert!(b.data_start > b.after_each_tensor[0] + 1, "the cut must fall inside the padding");
        bytes.truncate(b.after_each_tensor[0] + 1);
        bytes
    });
    cases
}
