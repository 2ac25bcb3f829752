//! Write the valid base GGUF and its malformed variants (ggml::gguf::corpus) into a folder,
//! as seeds for the fuzzer: `cargo run -p ggml --example gguf-corpus -- ggml/fuzz/corpus/gguf_parse`.

use ggml::gguf::corpus::{malformed, RawFile};

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "ggml/fuzz/corpus/gguf_parse".into());
    std::fs::create_dir_all(&dir)?;
    std::fs::write(format!("{dir}/valid.gguf"), RawFile::valid().bytes())?;
    let cases = malformed();
    for (name, bytes) in &cases {
        std::fs::write(format!("{dir}/{name}.gguf"), bytes)?;
    }
    println!("wrote {} files to {dir}", cases.len() + 1);
    Ok(())
}
