//! A Hugging Face checkpoint folder: `config.json` and the weights, either one
//! `model.safetensors` or shards `model-*.safetensors` listed by `model.safetensors.index.json`.
//!
//! Tensors are listed in the order llama.cpp's converter visits them (shards in sorted file
//! order, each shard's tensors sorted by name), which is the order of an F32/F16/BF16 output.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

use crate::safetensors::{SafetensorsError, SafetensorsFile, TensorEntry};

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("{0}: no config.json (expected a Hugging Face checkpoint folder or a .gguf file)")]
    NoConfig(PathBuf),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: invalid JSON: {err}")]
    Json { path: PathBuf, err: serde_json::Error },
    #[error("{path}: {what}")]
    Config { path: PathBuf, what: String },
    #[error("{0}: no model.safetensors, model-*.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    #[error("{path}: {what}")]
    Index { path: PathBuf, what: String },
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
}

/// `config.json` with its `text_config` merged into the root (the text model's keys win), as
/// llama.cpp's converter reads it. A JSON `null` reads as absent.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    /// The untouched file, for lookups llama.cpp makes in the original (special token ids).
    pub raw: Map<String, Value>,
    merged: Map<String, Value>,
}

impl Config {
    pub fn read(dir: &Path) -> Result<Config, CheckpointError> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(CheckpointError::NoConfig(dir.to_path_buf()));
        }
        let raw = read_json(&path)?;
        let Value::Object(raw) = raw else {
            return Err(CheckpointError::Config { path, what: "is not a JSON object".into() });
        };
        Ok(Config::from_map(path, raw))
    }

    pub fn from_map(path: PathBuf, raw: Map<String, Value>) -> Config {
        let mut merged = raw.clone();
        if let Some(Value::Object(text)) = raw.get("text_config") {
            for (k, v) in text {
                merged.insert(k.clone(), v.clone());
            }
        }
        Config { path, raw, merged }
    }

    /// The Hugging Face architecture: `architectures[0]` of the text config when it has one,
    /// else of the root.
    pub fn architecture(&self) -> Result<String, CheckpointError> {
        fn first(m: &Map<String, Value>) -> Option<&str> {
            m.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|a| a.as_str())
        }
        let text = self.raw.get("text_config").and_then(|t| t.as_object()).and_then(first);
        text.or_else(|| first(&self.raw)).map(str::to_string).ok_or_else(|| CheckpointError::Config {
            path: self.path.clone(),
            what: "no \"architectures\" entry: cannot tell which model this is".into(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.merged.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is in the file at all, `null` included.
    pub fn present(&self, key: &str) -> bool {
        self.merged.contains_key(key)
    }

    fn wrong(&self, key: &str, what: &str) -> CheckpointError {
        CheckpointError::Config { path: self.path.clone(), what: format!("{key} must be {what}") }
    }

    pub fn u64_opt(&self, key: &str) -> Result<Option<u64>, CheckpointError> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer"))).transpose()
    }

    /// `key`, or `default` when absent (transformers' default for the model's config class).
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, CheckpointError> {
        Ok(self.u64_opt(key)?.unwrap_or(default))
    }

    pub fn f64_opt(&self, key: &str) -> Result<Option<f64>, CheckpointError> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number"))).transpose()
    }

    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, CheckpointError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "true or false")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    pub fn str_opt(&self, key: &str) -> Result<Option<&str>, CheckpointError> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string"))).transpose()
    }

    pub fn error(&self, what: impl Into<String>) -> CheckpointError {
        CheckpointError::Config { path: self.path.clone(), what: what.into() }
    }
}

pub fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|err| CheckpointError::Io { path: path.to_path_buf(), err })?;
    serde_json::from_str(&text).map_err(|err| CheckpointError::Json { path: path.to_path_buf(), err })
}

/// One tensor of the checkpoint: which file, which entry.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef {
    pub file: usize,
    pub entry: usize,
}

/// The weights of a checkpoint folder.
pub struct Weights {
    pub files: Vec<SafetensorsFile>,
    /// Every tensor in converter order.
    pub order: Vec<TensorRef>,
    by_name: HashMap<String, TensorRef>,
}

impl Weights {
    pub fn open(dir: &Path) -> Result<Weights, CheckpointError> {
        let index_path = dir.join("model.safetensors.index.json");
        let mut from_index: Option<Map<String, Value>> = None;
        let names: Vec<String> = if index_path.is_file() {
            let index = read_json(&index_path)?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).cloned().ok_or_else(|| {
                CheckpointError::Index { path: index_path.clone(), what: "no \"weight_map\" object".into() }
            })?;
            let mut files = BTreeSet::new();
            for (name, file) in &map {
                let file = file.as_str().ok_or_else(|| CheckpointError::Index {
                    path: index_path.clone(),
                    what: format!("weight_map[{name:?}] is not a file name"),
                })?;
                files.insert(file.to_string());
            }
            from_index = Some(map);
            files.into_iter().collect()
        } else {
            let read = std::fs::read_dir(dir).map_err(|err| CheckpointError::Io { path: dir.to_path_buf(), err })?;
            let mut names = Vec::new();
            for e in read {
                let e = e.map_err(|err| CheckpointError::Io { path: dir.to_path_buf(), err })?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("model") && name.ends_with(".safetensors") {
                    names.push(name);
                }
            }
            names.sort();
            names
        };
        if names.is_empty() {
            return Err(CheckpointError::NoWeights(dir.to_path_buf()));
        }

        let mut files = Vec::with_capacity(names.len());
        for name in &names {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(CheckpointError::Index {
                    path: index_path.clone(),
                    what: format!("lists {name}, which is not in {}", dir.display()),
                });
            }
            files.push(SafetensorsFile::open(&path)?);
        }

        let mut order = Vec::new();
        let mut by_name = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ei, t) in f.tensors.iter().enumerate() {
                let r = TensorRef { file: fi, entry: ei };
                if by_name.insert(t.name.clone(), r).is_some() {
                    return Err(CheckpointError::Index {
                        path: f.path.clone(),
                        what: format!("tensor {:?} is in more than one file", t.name),
                    });
                }
                order.push(r);
            }
        }
        if let Some(map) = from_index {
            let missing: Vec<&String> = map.keys().filter(|n| !by_name.contains_key(*n)).collect();
            if let Some(first) = missing.first() {
                return Err(CheckpointError::Index {
                    path: index_path,
                    what: format!(
                        "{} tensor(s) listed in weight_map are in no file, e.g. {first:?} (in {})",
                        missing.len(),
                        map[first.as_str()].as_str().unwrap_or("?")
                    ),
                });
            }
            if let Some(extra) = by_name.keys().find(|n| !map.contains_key(*n)) {
                return Err(CheckpointError::Index {
                    path: index_path,
                    what: format!("tensor {extra:?} is in a shard but not in weight_map"),
                });
            }
        }
        Ok(Weights { files, order, by_name })
    }

    pub fn entry(&self, r: TensorRef) -> &TensorEntry {
        &self.files[r.file].tensors[r.entry]
    }

    pub fn get(&self, name: &str) -> Option<TensorRef> {
        self.by_name.get(name).copied()
    }

    pub fn data(&self, r: TensorRef) -> &[u8] {
        let f = &self.files[r.file];
        f.data(&f.tensors[r.entry])
    }

    pub fn path(&self, r: TensorRef) -> &Path {
        &self.files[r.file].path
    }

    /// Bytes of all tensors (what a progress bar counts).
    pub fn total_bytes(&self) -> u64 {
        self.order.iter().map(|&r| self.entry(r).len as u64).sum()
    }
}
