use super::corpus::{malformed, RawFile};
use super::read::parse;
use super::write::{assign_offsets, GgufWriter};
use super::*;

#[test]
fn the_hand_encoded_base_file_parses_with_every_field() {
    let h = parse(&RawFile::valid().bytes()).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.architecture(), Some("gemma4"));
    assert_eq!(h.get_f64("gemma4.rope.freq_base").unwrap(), 1e6);
    assert_eq!(h.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(h.get_u64("test.u64").unwrap(), u64::MAX);
    assert_eq!(h.get("test.f64"), Some(&Value::F64(-0.5)));
    let tokens = h.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens, &Array::String(vec!["<pad>".into(), "<eos>".into(), "▁hello".into()]));
    assert_eq!(
        h.get_array("test.nested").unwrap(),
        &Array::Array(vec![Array::I32(vec![1, 2]), Array::I32(vec![3, 4])])
    );
    let q = h.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.ty, q.dims.as_slice(), q.offset, q.n_bytes()), (GgmlType::Q8_0, &[32, 2][..], 64, 68));
    assert_eq!(h.data_offset % 32, 0);
}

#[test]
fn metadata_errors_name_the_key() {
    let h = parse(&RawFile::valid().bytes()).unwrap();
    assert_eq!(h.get_u64("gemma4.block_count").unwrap_err().to_string(), "cannot find gemma4.block_count in metadata");
    assert_eq!(
        h.get_u64("general.architecture").unwrap_err().to_string(),
        "metadata general.architecture is string \"gemma4\", expected an unsigned integer"
    );
}

#[test]
fn every_malformed_file_is_an_error_not_a_panic() {
    let cases = malformed();
    assert!(cases.len() > 60, "corpus has {} files", cases.len());
    for (name, bytes) in cases {
        match parse(&bytes) {
            Ok(_) => panic!("{name}: parsed without error"),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.is_empty() && !msg.contains('\n'), "{name}: {msg:?}");
            }
        }
    }
}

#[test]
fn malformed_files_get_errors_that_say_what_is_wrong() {
    let cases: std::collections::HashMap<_, _> = malformed().into_iter().collect();
    let err = |name: &str| parse(&cases[name]).unwrap_err().to_string();
    assert_eq!(err("bad-magic"), "not a GGUF file: starts with [47, 47, 4d, 4c], expected \"GGUF\"");
    assert_eq!(err("version-1"), "unsupported GGUF version 1 (this reader supports 2 and 3)");
    assert!(err("huge-kv-count").starts_with("metadata count 18446744073709551615 at offset 24 cannot fit"));
    assert!(err("huge-string-length").contains("metadata key #0 \"general.architecture\": truncated: string"));
    assert!(err("unknown-value-type").contains("\"gemma4.rope.freq_base\": unknown value type 13"));
    assert!(err("invalid-utf8-key").starts_with("metadata key #4: key at offset"));
    assert!(err("duplicate-tensor").contains("duplicate tensor name \"token_embd.weight\""));
    assert!(err("unknown-tensor-type").contains("\"blk.0.attn_q.weight\": unknown tensor type id 1000"));
    assert!(err("row-not-whole-blocks").contains("row of 33 elements is not a multiple of the q8_0 block size 32"));
    assert!(err("offset-unaligned").contains("data offset 66 is not a multiple of the alignment 32"));
    assert!(err("data-runs-past-end").contains("runs past the end of the data section"));
    assert_eq!(
        err("overlapping-tensors"),
        "tensors \"token_embd.weight\" and \"blk.0.attn_q.weight\" overlap in the data section"
    );
    assert!(err("alignment-not-power-of-two").contains("general.alignment must be a u32 power of two, found u32 48"));
    assert!(err("big-endian").contains("big-endian"));
    let e = err("padding-cut-with-empty-tensor");
    assert!(e.contains("truncated: padding before the data section"), "{e}");
}

/// `finish_zeroed` after the first tensor: the second reads as zeros, the length is what
/// `finish` would have written.
#[test]
fn a_zeroed_finish_leaves_the_remaining_data_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.gguf");
    let metadata = vec![("general.alignment".to_string(), Value::U32(64))];
    let mut tensors = vec![
        TensorInfo { name: "a".into(), ty: GgmlType::F32, dims: vec![5], offset: 0 },
        TensorInfo { name: "b".into(), ty: GgmlType::Q8_0, dims: vec![32, 3], offset: 0 },
    ];
    assign_offsets(&mut tensors, 64);
    let mut w = GgufWriter::create(&path, 3, &metadata, &tensors).unwrap();
    w.write_tensor_data(&[9; 20]).unwrap();
    w.finish_zeroed().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_data(&tensors[0]), [9; 20]);
    assert_eq!(f.tensor_data(&tensors[1]), [0; 102]);
    assert_eq!(f.len(), f.header.data_offset + 64 + 128);
}

#[test]
fn writer_round_trips_every_value_type_and_tensor_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let metadata: Vec<(String, Value)> = vec![
        ("general.alignment".into(), Value::U32(64)),
        ("a.u8".into(), Value::U8(200)),
        ("a.i8".into(), Value::I8(-5)),
        ("a.u16".into(), Value::U16(60000)),
        ("a.i16".into(), Value::I16(-30000)),
        ("a.i32".into(), Value::I32(-7)),
        ("a.f32".into(), Value::F32(0.25)),
        ("a.bool".into(), Value::Bool(false)),
        ("a.str".into(), Value::String("héllo".into())),
        ("a.u64".into(), Value::U64(1 << 40)),
        ("a.i64".into(), Value::I64(i64::MIN)),
        ("a.f64".into(), Value::F64(1e300)),
        ("a.bools".into(), Value::Array(Array::Bool(vec![true, false, true]))),
        ("a.floats".into(), Value::Array(Array::F32(vec![-1.0; 3]))),
        ("a.empty".into(), Value::Array(Array::U64(vec![]))),
        ("a.nested".into(), Value::Array(Array::Array(vec![Array::String(vec!["x".into()]), Array::I16(vec![1, -1])]))),
    ];
    let mut tensors = vec![
        TensorInfo { name: "a".into(), ty: GgmlType::F16, dims: vec![3], offset: 0 },
        TensorInfo { name: "b".into(), ty: GgmlType::Q8_0, dims: vec![32, 2], offset: 0 },
    ];
    assign_offsets(&mut tensors, 64);
    assert_eq!(tensors[1].offset, 64);
    let data: [&[u8]; 2] = [&[1, 2, 3, 4, 5, 6], &[7; 68]];
    let mut w = GgufWriter::create(&path, 3, &metadata, &tensors).unwrap();
    for d in data {
        w.write_tensor_data(d).unwrap();
    }
    w.finish().unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.header.metadata, metadata);
    assert_eq!(f.header.tensors, tensors);
    assert_eq!(f.header.alignment, 64);
    assert_eq!(f.tensor_data(&tensors[0]), data[0]);
    assert_eq!(f.tensor_data(&tensors[1]), data[1]);
    assert_eq!(f.len(), f.header.data_offset + 64 + 128, "last tensor padded to the alignment");
}

#[test]
fn writer_refuses_wrong_sizes_and_leaves_no_file_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    std::fs::write(&path, b"precious").unwrap();
    let tensors = vec![TensorInfo { name: "a".into(), ty: GgmlType::F32, dims: vec![2], offset: 0 }];
    let mut w = GgufWriter::create(&path, 3, &[], &tensors).unwrap();
    assert!(w.write_tensor_data(&[0; 7]).is_err());
    drop(w);
    let w = GgufWriter::create(&path, 3, &[], &tensors).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("no data was written for tensor \"a\""));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious", "an unfinished write must not replace the file");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary file left behind");
}

#[test]
fn version_2_files_read_like_version_3() {
    let mut raw = RawFile::valid();
    raw.version = 2;
    let h = parse(&raw.bytes()).unwrap();
    assert_eq!(h.version, 2);
    assert_eq!(h.tensors.len(), 3);
    assert_eq!(h.get_str("general.architecture").unwrap(), "gemma4");
}

/// Released pages (a tensor copied to a GPU) read back from the file unchanged.
#[test]
fn released_pages_read_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.gguf");
    let mut tensors = vec![TensorInfo { name: "w".into(), ty: GgmlType::F32, dims: vec![16384], offset: 0 }];
    assign_offsets(&mut tensors, 32);
    let data: Vec<u8> = (0..16384 * 4).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = GgufWriter::create(&path, 3, &[], &tensors).unwrap();
    w.write_tensor_data(&data).unwrap();
    w.finish().unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_data(&tensors[0]), &data[..]);
    let start = f.header.data_offset as usize;
    f.release(start..start + data.len());
    f.release(0..f.len() as usize + 4096); // past the end: nothing happens
    assert_eq!(f.tensor_data(&tensors[0]), &data[..]);
}
