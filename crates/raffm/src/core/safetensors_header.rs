//! A strict reading of a safetensors header, before any tensor of the file is used.
//!
//! The `safetensors` crate reads the header into a map: a tensor named twice silently
//! takes its last entry (two entries can even cover one region with different dtypes),
//! and its offset errors do not say which tensor is wrong. A folder without a manifest
//! has no recorded hash to catch either, so every reader goes through [`deserialize`]:
//! names are unique, every entry's dtype, shape and offsets agree, entries lie inside the
//! data and do not share bytes, and each error names the tensor.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use safetensors::SafeTensors;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::core::error::{Error, Result};

/// The file's tensors, once its header has passed [`check_header`].
pub fn deserialize<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    check_header(path, bytes)?;
    SafeTensors::deserialize(bytes).map_err(|e| {
        Error::format(
            path,
            format!("not a valid safetensors file ({e}); is it truncated?"),
        )
    })
}

/// Checks the header of the safetensors file `bytes` (read from `path`).
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |message: String| Error::format(path, message);
    let Some(length) = bytes.get(..8) else {
        return Err(bad(format!(
            "{} bytes is too short for a safetensors file; is it truncated?",
            bytes.len()
        )));
    };
    let length = u64::from_le_bytes(length.try_into().expect("8 bytes"));
    let rest = (bytes.len() - 8) as u64;
    if length > rest {
        return Err(bad(format!(
            "its header claims {length} bytes, the file has {rest} after the length; is it truncated?"
        )));
    }
    let header = &bytes[8..8 + length as usize];
    let data_bytes = rest - length;
    let UniqueEntries(entries) = serde_json::from_slice(header)
        .map_err(|e| bad(format!("invalid safetensors header: {e}")))?;
    let mut regions = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| bad(format!("tensor `{name}`: invalid header entry ({e})")))?;
        let [start, end] = entry.data_offsets;
        if start > end || end > data_bytes {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets [{start}, {end}] lie outside the {data_bytes} data bytes; is the file truncated?"
            )));
        }
        if let Some(size) = dtype_bytes(&entry.dtype) {
            let needed = entry
                .shape
                .iter()
                .try_fold(size, |n, &d| n.checked_mul(d))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}`: shape {:?} overflows",
                        entry.shape
                    ))
                })?;
            if end - start != needed {
                return Err(bad(format!(
                    "tensor `{name}`: data_offsets [{start}, {end}] hold {} bytes, its {} shape {:?} needs {needed}",
                    end - start,
                    entry.dtype,
                    entry.shape
                )));
            }
        }
        regions.push((start, end, name));
    }
    regions.sort();
    for pair in regions.windows(2) {
        let ((_, end, a), (start, _, b)) = (&pair[0], &pair[1]);
        if start < end {
            return Err(bad(format!("tensors `{a}` and `{b}` share data bytes")));
        }
    }
    Ok(())
}

/// One tensor's header entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Bytes per element of the whole-byte dtypes; `None` for the others (sub-byte floats),
/// which the `safetensors` crate checks on its own.
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// The header's entries in file order, a name given twice refused.
struct UniqueEntries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for UniqueEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = UniqueEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of tensor entries")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueEntries, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if !seen.insert(name.clone()) {
                        return Err(de::Error::custom(format!(
                            "tensor `{name}` is listed twice"
                        )));
                    }
                    entries.push((name, map.next_value()?));
                }
                Ok(UniqueEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `header` (JSON text) and `data` bytes.
    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; data]);
        bytes
    }

    fn error(header: &str, data: usize) -> String {
        check_header(Path::new("m.safetensors"), &file(header, data))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_good_header_passes_and_the_crate_reads_it() {
        let bytes = file(
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[8,12]}}"#,
            12,
        );
        let st = deserialize(Path::new("m.safetensors"), &bytes).unwrap();
        assert_eq!(st.len(), 2);
    }

    #[test]
    fn every_bad_header_names_the_file_and_the_tensor() {
        let twice = r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let e = error(twice, 4);
        assert!(
            e.starts_with("m.safetensors: ") && e.contains("`w` is listed twice"),
            "{e}"
        );
        let e = error(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(e.contains("tensor `w`") && e.contains("needs 12"), "{e}");
        let e = error(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            4,
        );
        assert!(
            e.contains("tensor `w`") && e.contains("outside the 4 data bytes"),
            "{e}"
        );
        let e = error(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
            8,
        );
        assert!(e.contains("tensor `w`") && e.contains("[8, 0]"), "{e}");
        let overlap = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I32","shape":[2],"data_offsets":[4,12]}}"#;
        let e = error(overlap, 12);
        assert!(e.contains("`a` and `b` share data bytes"), "{e}");
        let e = error(
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            8,
        );
        assert!(e.contains("tensor `w`") && e.contains("overflows"), "{e}");
        let e = error(r#"{"w":{"dtype":"F32","shape":[2]}}"#, 8);
        assert!(
            e.contains("tensor `w`") && e.contains("data_offsets"),
            "{e}"
        );
        let e = check_header(Path::new("m.safetensors"), &[1, 0])
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let mut long = file("{}", 0);
        long[..8].copy_from_slice(&1000u64.to_le_bytes());
        let e = check_header(Path::new("m.safetensors"), &long)
            .unwrap_err()
            .to_string();
        assert!(e.contains("claims 1000 bytes"), "{e}");
    }
}
