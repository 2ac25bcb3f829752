//! GGUF metadata in the making: an ordered list of keys where setting a key again replaces its
//! value in place, as gguf-py's writer does (llama.cpp's converter sets some keys twice, from
//! the generic and the model-specific code, and the file keeps the first position).

use ggml::gguf::{Array, Value};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    kv: Vec<(String, Value)>,
}

impl Metadata {
    pub fn new() -> Metadata {
        Metadata::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        match self.kv.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.kv.push((key, value)),
        }
    }

    /// Removes `key` and appends it with `value`, as llama.cpp's `gguf_set_val_*` do.
    pub fn set_last(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        self.remove(&key);
        self.kv.push((key, value));
    }

    pub fn remove(&mut self, key: &str) {
        self.kv.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn u32(&mut self, key: impl Into<String>, v: u64) {
        self.set(key, Value::U32(v as u32));
    }

    pub fn f32(&mut self, key: impl Into<String>, v: f64) {
        self.set(key, Value::F32(v as f32));
    }

    pub fn bool(&mut self, key: impl Into<String>, v: bool) {
        self.set(key, Value::Bool(v));
    }

    pub fn string(&mut self, key: impl Into<String>, v: impl Into<String>) {
        self.set(key, Value::String(v.into()));
    }

    /// An array, unless empty: gguf-py writes no key for an empty list.
    pub fn array(&mut self, key: impl Into<String>, v: Array) {
        if !v.is_empty() {
            self.set(key, Value::Array(v));
        }
    }

    pub fn into_vec(self) -> Vec<(String, Value)> {
        self.kv
    }

    pub fn as_slice(&self) -> &[(String, Value)] {
        &self.kv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_again_keeps_the_first_position() {
        let mut m = Metadata::new();
        m.u32("a", 1);
        m.u32("b", 2);
        m.u32("a", 3);
        m.array("empty", Array::U32(vec![]));
        assert_eq!(m.as_slice(), &[("a".to_string(), Value::U32(3)), ("b".to_string(), Value::U32(2))]);
        m.set_last("a", Value::U32(4));
        assert_eq!(m.as_slice(), &[("b".to_string(), Value::U32(2)), ("a".to_string(), Value::U32(4))]);
    }
}
