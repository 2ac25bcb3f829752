//! `gemma bench`: prompt-processing and generation speed, measured as llama-bench measures it so
//! the two tables can be read side by side.
//!
//! - `ppP`: `P` prompt tokens through a fresh cache (after `D` tokens of depth), in batches of
//!   `-b`, logits of the last one only; tokens/s = P / time.
//! - `tgN`: `N` tokens generated one at a time after the depth; tokens/s = N / time.
//! - With `-ctk`/`-ctv` lists, every pair of cache types (llama-bench's `type_k`, `type_v`).
//!
//! Tokens are random ids (as llama-bench's), so the speed does not depend on a text. Each test
//! runs once to warm up (page cache, allocations), then `-r` times; the table gives the mean ±
//! the sample standard deviation of the per-repetition tokens/s. Every combination of the
//! `-p`/`-n`/`-d`/`-t`/`-ctk`/`-ctv` lists is run.

use std::time::{Duration, Instant};

use ggml::gguf::GgufFile;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::info::{human_bytes, human_count, ModelInfo};
use crate::kv_cache::KvTypes;
use crate::model::decoder::MoeStats;
use crate::model::{Logits, Model, Never, Offload};
use crate::run::uncancelled;
use crate::run::RunError;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prompt: Vec<usize>,
    pub gen: Vec<usize>,
    pub depth: Vec<usize>,
    pub threads: Vec<usize>,
    pub batch: usize,
    pub repetitions: usize,
    /// The cache types to time, each pair in turn.
    pub kv_types: Vec<KvTypes>,
}

/// One line of the table; serialized with llama-bench's JSON field names, so that scripts read
/// either.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// `pp512`, `tg128`, `tg128 @ d4096`.
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    pub n_threads: usize,
    pub n_batch: usize,
    /// The cache's element types (`f16`, `q8_0`).
    pub type_k: String,
    pub type_v: String,
    /// Tokens per second of each repetition, their mean and sample standard deviation.
    pub samples_ts: Vec<f64>,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// With GPU layers that keep their experts in RAM: how the timed runs ran them (CPU or
    /// copied to VRAM, in layer passes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts_in_ram: Option<MoeStats>,
}

/// The whole run: the model, how long it took to load, the results, the peak memory.
/// `model.name` is the architecture and file type.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: Label,
    pub load_ms: f64,
    pub results: Vec<BenchResult>,
    /// The process's peak resident set (`VmHWM`), when the OS reports it.
    pub peak_rss: Option<u64>,
    /// The most device memory allocated (weights, KV cache, activations) at the end of a
    /// test's timed run, with layers on a GPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_vram: Option<u64>,
}

/// A model loaded for benchmarking.
pub struct Bench {
    model: Model,
    pub label: Label,
    pub load_ms: f64,
}

/// What the table says about the model.
#[derive(Clone, Debug, Serialize)]
pub struct Label {
    /// Architecture and file type, e.g. `gemma4 MOSTLY_Q4_K_M`.
    pub name: String,
    pub file_size: u64,
    pub n_params: u64,
}

impl Bench {
    /// Where the model runs ([`Model::placement`]).
    pub fn placement(&self) -> &str {
        self.model.placement()
    }

    /// Device memory allocated now, when layers run on a GPU.
    pub fn vram_bytes(&self) -> Option<u64> {
        self.model.vram_bytes()
    }

    pub fn load(path: &std::path::Path, offload: &Offload) -> Result<Bench, RunError> {
        let started = Instant::now();
        let gguf = GgufFile::open(path)?;
        let info = ModelInfo::new(&gguf, 0, false);
        let model = Model::load_with(gguf, offload)?;
        let name = format!(
            "{} {}",
            info.architecture.as_deref().unwrap_or("?"),
            info.file_type.as_ref().map_or("?", |f| f.name)
        );
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        // All weights mapped before the timed runs, as llama.cpp does at load: the background
        // prefetch is done during the first warm-up.
        model.prefetch();
        Ok(Bench { model, label: Label { name, file_size: info.file_size, n_params: info.n_params }, load_ms })
    }

    /// Runs every test, reporting each result through `progress` as soon as it is measured.
    pub fn run(
        &mut self,
        options: &BenchOptions,
        progress: &mut dyn FnMut(&BenchResult),
    ) -> Result<BenchReport, RunError> {
        let model = &mut self.model;
        let mut rng = ChaCha8Rng::seed_from_u64(1234);
        let n_vocab = model.n_vocab() as u32;
        let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.gen_range(0..n_vocab)).collect() };
        let batch = options.batch.max(1);
        let mut results = Vec::new();
        let mut peak_vram = model.vram_bytes();
        for &threads in &options.threads {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads.max(1))
                .build()
                .expect("a thread pool with a positive thread count");
            for (&types, &depth) in options.kv_types.iter().flat_map(|t| options.depth.iter().map(move |d| (t, d))) {
                let pp = options.prompt.iter().filter(|&&p| p > 0).map(|&p| (format!("pp{p}"), p, true));
                let tg = options.gen.iter().filter(|&&n| n > 0).map(|&n| (format!("tg{n}"), n, false));
                for (mut test, n_tokens, is_prompt) in pp.chain(tg).collect::<Vec<_>>() {
                    if depth > 0 {
                        test += &format!(" @ d{depth}");
                    }
                    let mut samples = Vec::with_capacity(options.repetitions);
                    let mut experts_in_ram: Option<MoeStats> = None;
                    for rep in 0..=options.repetitions {
                        let (depth_tokens, tokens) = (random(depth), random(n_tokens));
                        let elapsed = pool.install(|| -> Result<(Duration, Option<MoeStats>), RunError> {
                            let mut cache = model.new_cache_for(depth + n_tokens, types, Some(batch))?;
                            for (i, chunk) in depth_tokens.chunks(batch).enumerate() {
                                uncancelled(model.forward_cancellable(
                                    chunk,
                                    i * batch,
                                    &mut cache,
                                    Logits::Last,
                                    &Never,
                                ))?;
                            }
                            let start = Instant::now();
                            let moe_before = model.moe_stats();
                            if is_prompt {
                                for (i, chunk) in tokens.chunks(batch).enumerate() {
                                    let pos = depth + i * batch;
                                    uncancelled(model.forward_cancellable(
                                        chunk,
                                        pos,
                                        &mut cache,
                                        Logits::Last,
                                        &Never,
                                    ))?;
                                }
                            } else {
                                for (i, &t) in tokens.iter().enumerate() {
                                    let pos = depth + i;
                                    uncancelled(model.forward_cancellable(
                                        &[t],
                                        pos,
                                        &mut cache,
                                        Logits::Last,
                                        &Never,
                                    ))?;
                                }
                            }
                            let elapsed = start.elapsed();
                            peak_vram = peak_vram.max(model.vram_bytes());
                            let moe = model.moe_stats().zip(moe_before).map(|(after, before)| after.since(before));
                            Ok((elapsed, moe))
                        })?;
                        let (elapsed, moe) = elapsed;
                        // Repetition 0 is the warm-up.
                        if rep > 0 {
                            samples.push(n_tokens as f64 / elapsed.as_secs_f64().max(1e-9));
                            if let Some(m) = moe {
                                experts_in_ram = Some(experts_in_ram.unwrap_or_default().plus(m));
                            }
                        }
                    }
                    let (avg_ts, stddev_ts) = mean_stddev(&samples);
                    let result = BenchResult {
                        test,
                        n_prompt: if is_prompt { n_tokens } else { 0 },
                        n_gen: if is_prompt { 0 } else { n_tokens },
                        n_depth: depth,
                        n_threads: threads,
                        n_batch: batch,
                        type_k: types.k.to_string(),
                        type_v: types.v.to_string(),
                        samples_ts: samples,
                        avg_ts,
                        stddev_ts,
                        experts_in_ram,
                    };
                    progress(&result);
                    results.push(result);
                }
            }
        }
        Ok(BenchReport { model: self.label.clone(), load_ms: self.load_ms, results, peak_rss: peak_rss(), peak_vram })
    }
}

impl BenchReport {
    /// llama-bench's `-o json` shape: an array with one object per test, each carrying the
    /// model's fields (`model_type`, `model_size`, `model_n_params`) beside the test's; plus
    /// our `load_ms` and `peak_rss`.
    pub fn to_llama_bench_json(&self) -> serde_json::Value {
        let rows = self.results.iter().map(|r| {
            let mut row = serde_json::to_value(r).expect("plain data");
            let fields = row.as_object_mut().expect("a struct");
            fields.insert("model_type".into(), self.model.name.clone().into());
            fields.insert("model_size".into(), self.model.file_size.into());
            fields.insert("model_n_params".into(), self.model.n_params.into());
            fields.insert("load_ms".into(), self.load_ms.into());
            fields.insert("peak_rss".into(), self.peak_rss.into());
            if let Some(vram) = self.peak_vram {
                fields.insert("peak_vram".into(), vram.into());
            }
            row
        });
        serde_json::Value::Array(rows.collect())
    }
}

/// The mean and the sample standard deviation (0 for fewer than two samples).
pub fn mean_stddev(x: &[f64]) -> (f64, f64) {
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    if x.len() < 2 {
        return (mean, 0.0);
    }
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (x.len() - 1) as f64;
    (mean, var.sqrt())
}

/// Peak resident set size in bytes, from `/proc/self/status` (Linux).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The table header, in llama-bench's columns; with `types`, its `type_k` and `type_v` too
/// (llama-bench shows them when they are not f16).
pub fn table_header(types: bool) -> String {
    let (names, rule) = match types {
        true => (format!(" {:>6} | {:>6} |", "type_k", "type_v"), format!("{:->8}|{:->8}|", ":", ":")),
        false => (String::new(), String::new()),
    };
    format!(
        "| {:<24} | {:>10} | {:>8} | {:>7} |{names} {:>14} | {:>20} |\n|{:-<26}|{:->12}|{:->10}|{:->9}|{rule}{:->16}|{:->22}|",
        "model", "size", "params", "threads", "test", "t/s", "", ":", ":", ":", ":", ":"
    )
}

/// What the timed runs of `r` did with the experts kept in RAM, in a line (or nothing).
pub fn experts_line(r: &BenchResult) -> Option<String> {
    Some(format!("{}: {}", r.test, r.experts_in_ram?.describe()))
}

/// One table row for `r` (with its cache types, as [`table_header`]`(types)`).
pub fn table_row(label: &Label, r: &BenchResult, types: bool) -> String {
    let cells = match types {
        true => format!(" {:>6} | {:>6} |", r.type_k, r.type_v),
        false => String::new(),
    };
    format!(
        "| {:<24} | {:>10} | {:>8} | {:>7} |{cells} {:>14} | {:>20} |",
        label.name,
        human_bytes(label.file_size),
        human_count(label.n_params),
        r.n_threads,
        r.test,
        format!("{:.2} ± {:.2}", r.avg_ts, r.stddev_ts)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_stddev() {
        // Hand-derived: mean 5, squared deviations 9 + 1 + 1 + 9 = 20 over n - 1 = 3.
        let (m, s) = mean_stddev(&[2.0, 4.0, 6.0, 8.0]);
        assert_eq!(m, 5.0);
        assert!((s - (20.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_stddev(&[3.0]), (3.0, 0.0));
        assert_eq!(mean_stddev(&[]), (0.0, 0.0));
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = peak_rss().expect("VmHWM in /proc/self/status");
            assert!(rss > 1 << 20, "{rss}");
        }
    }
}
