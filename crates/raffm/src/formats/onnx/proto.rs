//! The part of ONNX's protobuf an importer of weights needs, read directly from the wire
//! format: a model's graph, its initializers (float32 tensors, raw or as `float_data`) and
//! its nodes (operator, inputs, outputs). Field numbers are those of `onnx.proto`:
//! ModelProto.graph = 7; GraphProto.node = 1, initializer = 5; TensorProto.dims = 1,
//! data_type = 2, float_data = 4, name = 8, raw_data = 9, data_location = 14; NodeProto.input
//! = 1, output = 2, name = 3, op_type = 4.

use std::path::Path;

use crate::core::error::{Error, Result};

/// ONNX's `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;

/// A float32 initializer.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// An operator application.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// A model's graph: its float initializers (others are skipped) and its nodes in order.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub initializers: Vec<Initializer>,
    pub nodes: Vec<Node>,
}

/// A field's value on the wire.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates over the fields of one protobuf message.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.bytes.get(self.at).ok_or("truncated varint")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or("a field runs past the end of its message")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// The next field: its number and value.
    fn next_field(&mut self) -> Option<std::result::Result<(u64, Value<'a>), String>> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed
                }
                2 => {
                    let n = self.varint()? as usize;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    self.take(4)?;
                    Value::Fixed
                }
                w => return Err(format!("unsupported wire type {w}")),
            };
            Ok((key >> 3, value))
        })();
        Some(field)
    }
}

fn text(bytes: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
}

/// Packed or unpacked repeated varints.
fn push_varints(out: &mut Vec<u64>, value: Value) -> std::result::Result<(), String> {
    match value {
        Value::Varint(v) => out.push(v),
        Value::Bytes(b) => {
            let mut packed = Fields::new(b);
            while packed.at < b.len() {
                out.push(packed.varint()?);
            }
        }
        Value::Fixed => return Err("dims are not varints".into()),
    }
    Ok(())
}

fn read_tensor(bytes: &[u8]) -> std::result::Result<Option<Initializer>, String> {
    let (mut name, mut dims, mut data_type) = (String::new(), Vec::new(), 0);
    let (mut raw, mut floats, mut external) = (None, Vec::new(), false);
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, v) => push_varints(&mut dims, v)?,
            (2, Value::Varint(t)) => data_type = t,
            (4, Value::Bytes(b)) => floats.extend(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            (8, Value::Bytes(b)) => name = text(b)?,
            (9, Value::Bytes(b)) => raw = Some(b),
            (14, Value::Varint(1)) => external = true,
            _ => {}
        }
    }
    if data_type != FLOAT {
        return Ok(None);
    }
    if external {
        return Err(format!(
            "`{name}` keeps its data in an external file, which is not supported"
        ));
    }
    let dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
    let data: Vec<f32> = match raw {
        Some(b) => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        None => floats,
    };
    let count: usize = dims.iter().product();
    if data.len() != count {
        return Err(format!(
            "`{name}` has {} values for dims {dims:?}",
            data.len()
        ));
    }
    Ok(Some(Initializer { name, dims, data }))
}

fn read_node(bytes: &[u8]) -> std::result::Result<Node, String> {
    let mut node = Node::default();
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, Value::Bytes(b)) => node.inputs.push(text(b)?),
            (2, Value::Bytes(b)) => node.outputs.push(text(b)?),
            (3, Value::Bytes(b)) => node.name = text(b)?,
            (4, Value::Bytes(b)) => node.op_type = text(b)?,
            _ => {}
        }
    }
    Ok(node)
}

fn read_graph(bytes: &[u8]) -> std::result::Result<Graph, String> {
    let mut graph = Graph::default();
    let mut fields = Fields::new(bytes);
    while let Some(field) = fields.next_field() {
        match field? {
            (1, Value::Bytes(b)) => graph.nodes.push(read_node(b)?),
            (5, Value::Bytes(b)) => graph.initializers.extend(read_tensor(b)?),
            _ => {}
        }
    }
    Ok(graph)
}

/// Parses a serialized `ModelProto` and returns its graph.
pub fn parse_model(bytes: &[u8]) -> std::result::Result<Graph, String> {
    let mut fields = Fields::new(bytes);
    let mut graph = None;
    while let Some(field) = fields.next_field() {
        if let (7, Value::Bytes(b)) = field? {
            graph = Some(read_graph(b)?);
        }
    }
    graph.ok_or_else(|| "no graph (is this an ONNX model?)".into())
}

/// Reads an ONNX file's graph.
pub fn read_model(path: &Path) -> Result<Graph> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_model(&bytes).map_err(|m| Error::format(path, format!("not a readable ONNX model: {m}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn varint_field(field: u64, v: u64, out: &mut Vec<u8>) {
        varint(field << 3, out);
        varint(v, out);
    }

    /// A model with one raw tensor, one float_data tensor (unpacked dims), an int64 tensor
    /// and a MatMul node, written by hand in protobuf's wire format.
    fn model() -> Vec<u8> {
        let mut raw = Vec::new();
        bytes_field(1, &[2, 3], &mut raw); // packed dims [2, 3]
        varint_field(2, 1, &mut raw);
        bytes_field(8, b"w", &mut raw);
        let values: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        bytes_field(9, &values, &mut raw);
        let mut listed = Vec::new();
        varint_field(1, 2, &mut listed); // unpacked dims [2]
        varint_field(2, 1, &mut listed);
        bytes_field(
            4,
            &[0.5f32.to_le_bytes(), 1.5f32.to_le_bytes()].concat(),
            &mut listed,
        );
        bytes_field(8, b"b", &mut listed);
        let mut ints = Vec::new();
        varint_field(2, 7, &mut ints);
        bytes_field(8, b"shape", &mut ints);
        let mut node = Vec::new();
        bytes_field(1, b"x", &mut node);
        bytes_field(1, b"w", &mut node);
        bytes_field(2, b"y", &mut node);
        bytes_field(4, b"MatMul", &mut node);
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph);
        bytes_field(5, &raw, &mut graph);
        bytes_field(5, &listed, &mut graph);
        bytes_field(5, &ints, &mut graph);
        let mut model = Vec::new();
        varint_field(1, 8, &mut model); // ir_version
        bytes_field(7, &graph, &mut model);
        model
    }

    #[test]
    fn reads_initializers_and_nodes_off_the_wire() {
        let graph = parse_model(&model()).unwrap();
        assert_eq!(graph.initializers.len(), 2, "the int64 tensor is skipped");
        assert_eq!(graph.initializers[0].dims, [2, 3]);
        assert_eq!(graph.initializers[0].data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(graph.initializers[1].data, [0.5, 1.5]);
        assert_eq!(graph.nodes[0].op_type, "MatMul");
        assert_eq!(graph.nodes[0].inputs, ["x", "w"]);
        assert_eq!(graph.nodes[0].outputs, ["y"]);
    }

    #[test]
    fn truncated_or_foreign_bytes_are_errors() {
        let whole = model();
        for cut in [1, whole.len() / 2, whole.len() - 1] {
            assert!(parse_model(&whole[..cut]).is_err(), "cut at {cut}");
        }
        assert!(parse_model(b"").unwrap_err().contains("no graph"));
        assert!(parse_model(b"GGUF\x03\x00\x00\x00").is_err());
    }
}
