//! GGUF v3 writer: metadata of every value type, tensors laid out in the order added, each
//! padded with zeros to the alignment (as gguf-py does), so re-writing a file's metadata
//! and tensors in file order reproduces a gguf-py file.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, Value, ValueType, DEFAULT_ALIGNMENT, GGUF_MAGIC};

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory, then writes it.
pub struct GgufWriter {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(format!("gguf writer: {}", msg.into()))
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Add a metadata entry (kept in insertion order). Setting `general.alignment` (any
    /// integer type, a power of two) also changes the alignment used for the data.
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> Result<&mut Self> {
        let key = key.into();
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(invalid(format!("duplicate metadata key `{key}`")));
        }
        check_value(&key, &value, 0)?;
        if key == "general.alignment" {
            let a = value
                .as_u64()
                .filter(|a| *a > 0 && a.is_power_of_two())
                .ok_or_else(|| invalid(format!("invalid general.alignment {value:?}")))?;
            self.alignment = a;
        }
        self.metadata.push((key, value));
        Ok(self)
    }

    /// Add a tensor (dims in GGML order, ne0 first). `data` must be exactly
    /// `ggml_type.tensor_bytes(dims)` bytes (I2_S: packed data + 32-byte trailer).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Result<&mut Self> {
        let name = name.into();
        let data = data.into();
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("duplicate tensor `{name}`")));
        }
        if dims.is_empty() || dims.len() > crate::gguf::MAX_DIMS {
            return Err(invalid(format!("tensor `{name}`: {} dims", dims.len())));
        }
        let need = ggml_type.tensor_bytes(dims).ok_or_else(|| {
            invalid(format!(
                "tensor `{name}`: dims {dims:?} do not fit {ggml_type}"
            ))
        })?;
        if need != data.len() as u64 {
            return Err(invalid(format!(
                "tensor `{name}`: {ggml_type} {dims:?} needs {need} bytes, got {}",
                data.len()
            )));
        }
        self.tensors.push(PendingTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            data,
        });
        Ok(self)
    }

    /// Serialize the whole file.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        let mut head = Vec::new();
        head.extend(GGUF_MAGIC);
        head.extend(3u32.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut head, k);
            head.extend(v.value_type().id().to_le_bytes());
            write_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            write_str(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend(d.to_le_bytes());
            }
            head.extend(t.ggml_type.id().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = pad(offset + t.data.len() as u64, self.alignment);
        }
        let len = head.len() as u64;
        head.resize(pad(len, self.alignment) as usize, 0);
        w.write_all(&head)?;
        let zeros = vec![0u8; self.alignment as usize];
        for t in &self.tensors {
            w.write_all(&t.data)?;
            let len = t.data.len() as u64;
            w.write_all(&zeros[..(pad(len, self.alignment) - len) as usize])?;
        }
        Ok(())
    }

    /// Serialize to a byte vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v).expect("writing to a Vec cannot fail");
        v
    }

    /// Write the file at `path`.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut w = BufWriter::new(f);
        self.write_to(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))
    }
}

fn pad(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn check_value(key: &str, v: &Value, depth: usize) -> Result<()> {
    if let Value::Array(et, items) = v {
        if depth >= crate::gguf::MAX_ARRAY_DEPTH {
            return Err(invalid(format!("`{key}`: arrays nested too deeply")));
        }
        for it in items {
            if it.value_type() != *et {
                return Err(invalid(format!(
                    "`{key}`: array of {et:?} holds a {:?}",
                    it.value_type()
                )));
            }
            check_value(key, it, depth + 1)?;
        }
    }
    Ok(())
}

fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn write_value(buf: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend(x.to_le_bytes()),
        Value::I16(x) => buf.extend(x.to_le_bytes()),
        Value::U32(x) => buf.extend(x.to_le_bytes()),
        Value::I32(x) => buf.extend(x.to_le_bytes()),
        Value::U64(x) => buf.extend(x.to_le_bytes()),
        Value::I64(x) => buf.extend(x.to_le_bytes()),
        Value::F32(x) => buf.extend(x.to_le_bytes()),
        Value::F64(x) => buf.extend(x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => write_str(buf, s),
        Value::Array(et, items) => {
            buf.extend(et.id().to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            for it in items {
                write_value(buf, it);
            }
        }
    }
}

/// Convenience: the element type of an array value (for building `Value::Array`).
pub fn array_of(et: ValueType, items: Vec<Value>) -> Value {
    Value::Array(et, items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use bitnet_core::SharedBytes;

    #[test]
    fn round_trip_all_value_types_and_tensors() {
        let mut w = GgufWriter::new();
        let vals = vec![
            ("u8", Value::U8(200)),
            ("i8", Value::I8(-5)),
            ("u16", Value::U16(60000)),
            ("i16", Value::I16(-300)),
            ("u32", Value::U32(4_000_000_000)),
            ("i32", Value::I32(-7)),
            ("u64", Value::U64(1 << 40)),
            ("i64", Value::I64(-(1 << 40))),
            ("f32", Value::F32(1.5)),
            ("f64", Value::F64(-2.25)),
            ("bool", Value::Bool(true)),
            ("str", Value::String("héllo".into())),
            ("empty", Value::Array(ValueType::U32, vec![])),
            (
                "nested",
                Value::Array(
                    ValueType::Array,
                    vec![
                        Value::Array(ValueType::String, vec![Value::String("a".into())]),
                        Value::Array(ValueType::I16, vec![Value::I16(1), Value::I16(-1)]),
                    ],
                ),
            ),
        ];
        for (k, v) in &vals {
            w.add_kv(*k, v.clone()).unwrap();
        }
        let trits: Vec<i8> = (0..256).map(|i| (i % 3) as i8 - 1).collect();
        let i2 = bitnet_core::quant::i2s::pack_with_scale(&trits, 2, 128, 0.125);
        w.add_tensor("w.i2s", &[128, 2], GgmlType::I2_S, i2.clone())
            .unwrap();
        let f: Vec<u8> = (0..3).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.add_tensor("w.f32", &[3], GgmlType::F32, f.clone())
            .unwrap();
        assert!(w
            .add_tensor("bad", &[3], GgmlType::F32, vec![0u8; 11])
            .is_err());
        let bytes = w.to_bytes();
        let g = GgufFile::from_bytes("mem", SharedBytes::from_vec(bytes)).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.metadata.len(), vals.len());
        for ((k, v), (k2, v2)) in vals.iter().zip(&g.metadata) {
            assert_eq!(k, k2);
            assert_eq!(v, v2);
        }
        let t = g.tensor("w.i2s").unwrap();
        assert_eq!(t.dims, vec![128, 2]);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(g.tensor_data(t).unwrap().as_slice(), i2.as_slice());
        let t = g.tensor("w.f32").unwrap();
        assert_eq!(g.tensor_data(t).unwrap().as_slice(), f.as_slice());
    }

    #[test]
    fn custom_alignment() {
        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", Value::U32(64)).unwrap();
        w.add_tensor("a", &[1], GgmlType::F32, vec![0u8; 4])
            .unwrap();
        w.add_tensor("b", &[1], GgmlType::F32, vec![1u8; 4])
            .unwrap();
        let g = GgufFile::from_bytes("mem", SharedBytes::from_vec(w.to_bytes())).unwrap();
        assert_eq!(g.alignment, 64);
        assert_eq!(g.data_offset % 64, 0);
        assert_eq!(g.tensor("b").unwrap().offset, 64);
        assert!(w.add_kv("general.alignment", Value::U32(3)).is_err());
    }
}
