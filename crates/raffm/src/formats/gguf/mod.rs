//! Reading GGUF files (llama.cpp's single-file checkpoints, format version 2 and 3).
//!
//! A GGUF holds typed metadata (the architecture's hyper-parameters, the tokenizer) and
//! tensors, each quantized in blocks by one of ggml's types. [`GgufFile`] maps the file,
//! checks every offset and length against its size, and dequantizes a tensor to F32 on
//! request ([`quant`]). Pipelines never read a GGUF: the import step ([`import`]) turns
//! it into an HF folder once.

pub mod import;
pub mod quant;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::core::error::{Error, Result};
pub use quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value, as the file types it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// An unsigned or non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// Where a tensor lies in the file and how it is stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub kind: GgmlType,
    /// From the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in row-major order, outermost first, as HF and safetensors write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// `None` when the dimensions' product overflows (a corrupt file).
    pub fn elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }
}

/// A mapped GGUF file with its metadata and tensor directory parsed and checked.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        // SAFETY: the file is only read. A concurrent writer could change what we read;
        // `record` hashes the mapped bytes, so the manifest names what was parsed.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let mut r = Reader {
            bytes: &map,
            pos: 0,
            path: &path,
        };
        if r.take(4)? != MAGIC {
            return Err(Error::format(&path, "not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(Error::format(
                &path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let tensor_count = r.u64()?;
        let kv_count = r.u64()?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::format(
                    &path,
                    format!("tensor {name}: {n_dims} dimensions (1 to 4 are possible)"),
                ));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let kind_id = r.u32()?;
            let kind = GgmlType::from_id(kind_id).ok_or_else(|| {
                Error::format(
                    &path,
                    format!(
                        "tensor {name}: quantization type {kind_id} ({}) is not supported (supported: {})",
                        quant::type_name(kind_id),
                        GgmlType::SUPPORTED
                    ),
                )
            })?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                kind,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| Error::format(&path, "general.alignment is not a power of two"))?,
        };
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let gguf = GgufFile {
            path,
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            map,
        };
        for t in &gguf.tensors {
            gguf.tensor_bytes(t)?;
        }
        Ok(gguf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's record (sha256, size), hashed from the bytes that were parsed.
    pub fn record(&self) -> crate::core::io::FileRecord {
        crate::core::io::FileRecord {
            path: self.path.display().to_string(),
            sha256: crate::core::io::sha256_bytes(&self.map),
            bytes: self.map.len() as u64,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, checked to lie inside the file.
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let elements = t.elements().ok_or_else(|| {
            Error::format(
                &self.path,
                format!("tensor {}: dimensions {:?} overflow", t.name, t.dims),
            )
        })?;
        let len = t.kind.byte_len(elements).ok_or_else(|| {
            Error::format(
                &self.path,
                format!(
                    "tensor {}: {elements} elements are not whole blocks of {} ({:?})",
                    t.name,
                    t.kind.block_elements(),
                    t.kind
                ),
            )
        })?;
        let start = (self.data_start as u64).checked_add(t.offset);
        match start.and_then(|s| s.checked_add(len).map(|end| (s, end))) {
            Some((start, end)) if end <= self.map.len() as u64 => {
                Ok(&self.map[start as usize..end as usize])
            }
            _ => Err(Error::format(
                &self.path,
                format!(
                    "tensor {}: its {len} bytes at offset {} run past the end of the file ({} bytes): truncated?",
                    t.name,
                    t.offset,
                    self.map.len()
                ),
            )),
        }
    }

    /// A tensor dequantized to F32, in row-major order of [`TensorInfo::shape`].
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        Ok(quant::dequantize(t.kind, self.tensor_bytes(t)?))
    }

    /// A metadata value the caller needs, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| Error::format(&self.path, format!("metadata key {key} is missing")))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?
            .as_u64()
            .ok_or_else(|| Error::format(&self.path, format!("metadata {key} is not an integer")))
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .ok_or_else(|| Error::format(&self.path, format!("metadata {key} is not a number")))
    }

    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.require(key)?
            .as_str()
            .ok_or_else(|| Error::format(&self.path, format!("metadata {key} is not a string")))
    }

    /// An array of strings (a vocabulary, merges).
    pub fn require_strings(&self, key: &str) -> Result<Vec<&str>> {
        let bad = || {
            Error::format(
                &self.path,
                format!("metadata {key} is not an array of strings"),
            )
        };
        match self.require(key)? {
            Value::Array(items) => items.iter().map(|v| v.as_str().ok_or_else(bad)).collect(),
            _ => Err(bad()),
        }
    }

    /// An array of integers (token types).
    pub fn require_ints(&self, key: &str) -> Result<Vec<i64>> {
        let bad = || {
            Error::format(
                &self.path,
                format!("metadata {key} is not an array of integers"),
            )
        };
        match self.require(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match *v {
                    Value::I32(x) => Ok(x as i64),
                    Value::I64(x) => Ok(x),
                    ref other => other.as_u64().map(|x| x as i64).ok_or_else(bad),
                })
                .collect(),
            _ => Err(bad()),
        }
    }
}

/// The fewest bytes a metadata value of this type takes (a string: its 8-byte length);
/// `None` for an unknown type.
fn encoded_size(kind: u32) -> Option<usize> {
    Some(match kind {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8..=12 => 8,
        _ => return None,
    })
}

/// A cursor over the header that turns every short read into an error naming the file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            _ => Err(Error::format(
                self.path,
                format!(
                    "the header ends early (wanted {n} bytes at offset {} of {}): truncated?",
                    self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .map_err(|_| Error::format(self.path, "string length overflows"))?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            Error::format(
                self.path,
                format!("a string at offset {} is not UTF-8", self.pos - len),
            )
        })
    }

    fn value(&mut self, kind: u32, key: &str) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let item_kind = self.u32()?;
                let count = self.u64()?;
                // No metadata a model needs nests arrays; refusing them bounds the recursion.
                let Some(item_bytes) = encoded_size(item_kind).filter(|_| item_kind != 9) else {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "metadata {key}: arrays of value type {item_kind} are not supported"
                        ),
                    ));
                };
                // Each item takes at least `item_bytes`: a count beyond the file is corrupt,
                // and refusing it keeps the allocation below bounded by the file's size.
                if count > ((self.bytes.len() - self.pos) / item_bytes) as u64 {
                    return Err(Error::format(
                        self.path,
                        format!(
                            "metadata {key}: an array of {count} items is longer than the file"
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(item_kind, key)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(Error::format(
                    self.path,
                    format!("metadata {key}: unknown value type {other}"),
                ))
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A minimal GGUF writer, for files the tests shape by hand.

    use super::*;

    pub struct Tensor<'a> {
        pub name: &'a str,
        pub dims: Vec<u64>,
        pub kind_id: u32,
        pub bytes: Vec<u8>,
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A version-3 file with string and u32 metadata and the given tensors.
    pub fn write(metadata: &[(&str, Value)], tensors: &[Tensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            string(&mut out, key);
            match value {
                Value::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Value::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Value::String(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Value::Array(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for item in items {
                        string(&mut out, item.as_str().expect("string arrays only"));
                    }
                }
                other => panic!("the test writer does not write {other:?}"),
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            string(&mut out, t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.kind_id.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offsets.push(offset);
            offset =
                (offset + t.bytes.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        }
        let data_start = (out.len() as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
        for (t, offset) in tensors.iter().zip(offsets) {
            out.resize((data_start + offset) as usize, 0);
            out.extend(&t.bytes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{write, Tensor};
    use super::*;

    fn open(bytes: &[u8]) -> (tempfile::TempDir, Result<GgufFile>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        std::fs::write(&path, bytes).unwrap();
        let file = GgufFile::open(&path);
        (dir, file)
    }

    fn f32_tensor<'a>(name: &'a str, values: &[f32], dims: Vec<u64>) -> Tensor<'a> {
        Tensor {
            name,
            dims,
            kind_id: 0,
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    #[test]
    fn metadata_and_tensors_read_back_in_row_major_order() {
        let values: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let bytes = write(
            &[
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
                (
                    "tokenizer.ggml.tokens",
                    Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
                ),
            ],
            &[
                f32_tensor("first", &values, vec![3, 2]),
                f32_tensor("second", &[7.0], vec![1]),
            ],
        );
        let (_dir, file) = open(&bytes);
        let file = file.unwrap();
        assert_eq!(file.require_str("general.architecture").unwrap(), "llama");
        assert_eq!(file.require_u64("llama.block_count").unwrap(), 2);
        assert_eq!(
            file.require_strings("tokenizer.ggml.tokens").unwrap(),
            ["a", "b"]
        );
        let first = file.tensor("first").unwrap();
        assert_eq!(first.shape(), [2, 3]);
        assert_eq!(file.tensor_f32(first).unwrap(), values);
        assert_eq!(
            file.tensor_f32(file.tensor("second").unwrap()).unwrap(),
            [7.0]
        );
        let err = file.require_u64("llama.missing").unwrap_err().to_string();
        assert!(
            err.contains("m.gguf") && err.contains("llama.missing"),
            "{err}"
        );
    }

    #[test]
    fn bad_files_are_errors_naming_the_file_and_the_problem() {
        let good = write(&[], &[f32_tensor("w", &[1.0; 64], vec![64])]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"GGML".to_vec(), "no GGUF magic"),
            (
                good[..good.len() - 8].to_vec(),
                "run past the end of the file",
            ),
            (good[..20].to_vec(), "header ends early"),
            (
                write(
                    &[],
                    &[Tensor {
                        name: "w",
                        dims: vec![256],
                        kind_id: 12, // Q4_K
                        bytes: vec![0; 144],
                    }],
                ),
                "tensor w: quantization type 12 (Q4_K) is not supported",
            ),
            (
                write(
                    &[],
                    &[Tensor {
                        name: "w",
                        dims: vec![33],
                        kind_id: 8, // Q8_0: blocks of 32
                        bytes: vec![0; 68],
                    }],
                ),
                "not whole blocks of 32",
            ),
        ];
        for (bytes, want) in cases {
            let (_dir, file) = open(&bytes);
            let err = file.unwrap_err().to_string();
            assert!(
                err.contains("m.gguf") && err.contains(want),
                "{err} (wanted {want})"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        let nested = {
            let mut b = write(&[], &[]);
            b[16..24].copy_from_slice(&1u64.to_le_bytes()); // one metadata entry
            b.extend(1u64.to_le_bytes());
            b.extend(b"k");
            b.extend(9u32.to_le_bytes()); // an array
            b.extend(9u32.to_le_bytes()); // of arrays
            b.extend(1u64.to_le_bytes());
            b
        };
        let overflowing = write(
            &[],
            &[Tensor {
                name: "w",
                dims: vec![1 << 40, 1 << 40],
                kind_id: 0,
                bytes: vec![],
            }],
        );
        for (bytes, want) in [
            (
                nested,
                "metadata k: arrays of value type 9 are not supported",
            ),
            (
                overflowing,
                "tensor w: dimensions [1099511627776, 1099511627776] overflow",
            ),
        ] {
            let (_dir, file) = open(&bytes);
            let err = file.unwrap_err().to_string();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        let mut version = good.clone();
        version[4] = 9;
        let (_dir, file) = open(&version);
        assert!(file
            .unwrap_err()
            .to_string()
            .contains("version 9 is not supported"));
    }
}
