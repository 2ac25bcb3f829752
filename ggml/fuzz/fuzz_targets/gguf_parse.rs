//! Any byte string given to the GGUF parser gives a header or an error: never a panic, an
//! out-of-bounds read, or an allocation sized by a count in the input. A parsed header's tensor
//! views are read back and, for small tensors of supported types, dequantized.
#![no_main]

use ggml::gguf::parse;
use ggml::quants::{dequantize_row, supports};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = parse(data) else { return };
    for t in &header.tensors {
        let bytes = header.tensor_data(data, t);
        assert_eq!(bytes.len() as u64, t.n_bytes());
        let n = t.n_elements() as usize;
        if supports(t.ty) && n <= 1 << 16 {
            // Copy into an aligned buffer: the fuzzer's input has no alignment guarantees.
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()];
            buf.copy_from_slice(bytes);
            let mut out = vec![0f32; n];
            dequantize_row(t.ty, buf, &mut out).expect("validated tensor dequantizes");
        }
    }
    let _ = header.get_u64("general.alignment");
    for (_, value) in &header.metadata {
        let _ = value.to_string();
    }
});
