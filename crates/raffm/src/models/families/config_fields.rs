//! Typed reads of an HF `config.json` object, with one-line errors naming the file: what
//! every family's config parser needs (a JSON `null` counts as absent, as HF writes it).

use std::path::Path;

use serde_json::{Map, Value};

use crate::core::error::{Error, Result};

pub(crate) struct Fields<'a> {
    raw: &'a Map<String, Value>,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    pub fn new(raw: &'a Map<String, Value>, path: &'a Path) -> Self {
        Self { raw, path }
    }

    /// An error about this config.
    pub fn bad(&self, message: String) -> Error {
        Error::format(self.path, message)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.raw.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer; `default` where absent (`None`: required).
    pub fn usize(&self, key: &str, default: Option<usize>) -> Result<usize> {
        match self.get(key) {
            Some(v) => v
                .as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| self.bad(format!("`{key}` must be a non-negative integer"))),
            None => default.ok_or_else(|| self.bad(format!("missing `{key}`"))),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(format!("`{key}` must be a number"))),
            None => Ok(default),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("`{key}` must be true or false"))),
            None => Ok(default),
        }
    }
}
