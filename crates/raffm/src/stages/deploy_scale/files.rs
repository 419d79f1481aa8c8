//! Clients of a tier usually get the same model: its files are written once, into the
//! first client's folder, and hard-linked into the others'.

use std::collections::BTreeMap;
use std::path::Path;

use crate::core::error::{Error, Result};
use crate::core::io::{FileRecord, StagingDir};

/// The models written so far, by model key: the client whose folder holds the files, and
/// the files.
#[derive(Default)]
pub struct WrittenModels(BTreeMap<String, (String, Vec<FileRecord>)>);

impl WrittenModels {
    /// How many different models were written.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Links the files of the model `key` into `client_dir`, inside `output`, where
    /// that model was written already; false where it was not.
    pub fn link(&self, key: &str, output: &Path, client_dir: &mut StagingDir) -> Result<bool> {
        let Some((first, records)) = self.0.get(key) else {
            return Ok(false);
        };
        for record in records {
            let name = Path::new(&record.path)
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::Invalid(format!("{}: a file with no name", record.path)))?;
            client_dir.link(name, &output.join(first).join(name), record)?;
        }
        Ok(true)
    }

    /// Records that `client_dir`, the folder of `client`, holds the model `key`.
    pub fn record(&mut self, key: String, client: &str, client_dir: &StagingDir) {
        let records = client_dir.records().to_vec();
        self.0.insert(key, (client.to_string(), records));
    }
}
