//! gemma.rs: a llama.cpp-style local runtime for Google's Gemma 4 models.

pub mod bench;
pub mod chat;
pub mod devices;
pub mod info;
pub mod jsonl;
pub mod kv_cache;
pub mod model;
pub mod perplexity;
pub mod repl;
pub mod run;
pub mod sample;
pub mod serve;
pub mod session;
pub mod stop;
pub mod tokenizer;
pub mod vision;
