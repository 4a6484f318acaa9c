//! Our own GGUF (v2/v3) reader: memory-mapped, zero-copy tensor data, defensive parsing.
//!
//! Format (little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! metadata count; then metadata `(string key, u32 type, value)`; then tensor infos
//! `(string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset)`; then padding
//! to `general.alignment` (default 32); then the data section. Strings are `u64 length +
//! bytes` (v1's u32 lengths are not supported). Tensor offsets are relative to the data
//! section and must be multiples of the alignment.
//!
//! Robustness: every count and length is checked against the bytes that remain before
//! anything is allocated, arithmetic is checked, nesting of arrays is limited, and every
//! problem is an [`Error::BadFile`] naming the file — a corrupt file never panics.
//!
//! # Tensor names and dims of bitnet.cpp's `bitnet-25` conversions (as found in the fixtures)
//!
//! Dims are GGML order: `dims[0]` (ne0) is the row length = the **input** features;
//! `dims[1]` = output features (rows). The data is row-major over `[dims[1], dims[0]]`, i.e.
//! exactly the Hugging Face `[out, in]` weight.
//!
//! | tensor | dims (ne0, ne1) | HF tensor |
//! |---|---|---|
//! | `token_embd.weight` (F16 in the ternary files) | `[hidden, vocab]` = [256, 1024] | `model.embed_tokens.weight` [vocab, hidden]; also the tied LM head (no `output.weight`) |
//! | `blk.N.attn_q.weight` | [256, 256] | `self_attn.q_proj` |
//! | `blk.N.attn_k.weight` | [256, 128] | `self_attn.k_proj` |
//! | `blk.N.attn_v.weight` | [256, 128] | `self_attn.v_proj` |
//! | `blk.N.attn_output.weight` | [256, 256] | `self_attn.o_proj` |
//! | `blk.N.ffn_gate.weight` | [256, 768] | `mlp.gate_proj` |
//! | `blk.N.ffn_up.weight` | [256, 768] | `mlp.up_proj` |
//! | `blk.N.ffn_down.weight` | [768, 256] | `mlp.down_proj` |
//! | `blk.N.attn_norm.weight` (F32) | [256] | `input_layernorm` |
//! | `blk.N.attn_sub_norm.weight` (F32) | [256] | `self_attn.attn_sub_norm` |
//! | `blk.N.ffn_norm.weight` (F32) | [256] | `post_attention_layernorm` |
//! | `blk.N.ffn_sub_norm.weight` (F32) | [768] | `mlp.ffn_sub_norm` |
//! | `output_norm.weight` (F32) | [256] | `model.norm` |
//!
//! **No row permutation**: unlike llama.cpp's converter for the `llama` arch (which
//! permutes q/k rows for its interleaved RoPE), `convert-ms-to-gguf-bitnet.py` writes
//! `attn_q`/`attn_k` of `bitnet-25` in the HF row order: row `r` of the GGUF tensor is row
//! `r` of the HF weight (verified in `tests/formats.rs` for all 14 projections of the I2_S,
//! TQ2_0 and TQ1_0 fixtures, including `attn_k` with one KV head where a permutation would
//! be visible). So the model must apply HF's rotate-half (NEOX) RoPE to these rows.
//!
//! Metadata keys are `bitnet-25.*` (vocab_size, context_length, embedding_length,
//! block_count, feed_forward_length, rope.dimension_count, attention.head_count,
//! attention.head_count_kv, attention.layer_norm_rms_epsilon, rope.freq_base) plus
//! `general.*` and `tokenizer.ggml.*` (model `gpt2`, tokens, scores, token_type, merges,
//! bos/eos ids, add_bos_token, chat_template). All integers there are u32.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitnet_core::SharedBytes;

use crate::error::{Error, Result};

/// `GGUF` in file order.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest array nesting we accept (arrays of arrays of ...).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a tensor may have (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Longest tensor name we accept (llama.cpp's `GGML_MAX_NAME` is 64; we are lenient).
pub const MAX_TENSOR_NAME: u64 = 1024;

/// GGML tensor element types (ids as in `ggml.h`; 36 is bitnet.cpp's I2_S).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's 2-bit ternary type (id 36 in its fork; upstream ggml once used 36
    /// for IQ4_NL_4_4, which never appears in files).
    I2_S,
}

impl GgmlType {
    /// Every supported type.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::I2_S,
    ];

    /// The numeric id used in files.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2_K => 10,
            Q3_K => 11,
            Q4_K => 12,
            Q5_K => 13,
            Q6_K => 14,
            Q8_K => 15,
            IQ2_XXS => 16,
            IQ2_XS => 17,
            IQ3_XXS => 18,
            IQ1_S => 19,
            IQ4_NL => 20,
            IQ3_S => 21,
            IQ2_S => 22,
            IQ4_XS => 23,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            IQ1_M => 29,
            BF16 => 30,
            TQ1_0 => 34,
            TQ2_0 => 35,
            I2_S => 36,
        }
    }

    /// The type with this id, if we know it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.id() == id)
    }

    /// `(elements per block, bytes per block)`. I2_S reports `(4, 1)` for its packed data
    /// only; its tensors carry a 32-byte trailer on top, see [`GgmlType::tensor_bytes`].
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I32 => (1, 4),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2_K => (256, 84),
            Q3_K => (256, 110),
            Q4_K => (256, 144),
            Q5_K => (256, 176),
            Q6_K => (256, 210),
            Q8_K => (256, 292),
            IQ2_XXS => (256, 66),
            IQ2_XS => (256, 74),
            IQ3_XXS => (256, 98),
            IQ1_S => (256, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (256, 110),
            IQ2_S => (256, 82),
            IQ4_XS => (256, 136),
            IQ1_M => (256, 56),
            TQ1_0 => (256, 54),
            TQ2_0 => (256, 66),
            I2_S => (4, 1),
        }
    }

    /// Bytes of a tensor with these GGML dims (ne0 first), as `ggml_nbytes` computes it:
    /// `ne0` must be a multiple of the block size; I2_S is `n/4 + 32` (bitnet.cpp) and
    /// needs `n % 128 == 0`. `None` on overflow or a shape the type cannot hold.
    pub fn tensor_bytes(self, dims: &[u64]) -> Option<u64> {
        let ne0 = *dims.first().unwrap_or(&1);
        let mut rest: u64 = 1;
        for &d in dims.iter().skip(1) {
            rest = rest.checked_mul(d)?;
        }
        if self == GgmlType::I2_S {
            let n = ne0.checked_mul(rest)?;
            if !n.is_multiple_of(128) {
                return None;
            }
            return (n / 4).checked_add(32);
        }
        let (bs, ts) = self.block();
        if !ne0.is_multiple_of(bs) {
            return None;
        }
        (ne0 / bs).checked_mul(ts)?.checked_mul(rest)
    }

    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            I2_S => "I2_S",
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Metadata value types (ids as in the GGUF spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl ValueType {
    pub fn id(self) -> u32 {
        use ValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    pub fn from_id(id: u32) -> Option<ValueType> {
        use ValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The fewest bytes one value of this type occupies in a file (for count checks).
    fn min_size(self) -> u64 {
        use ValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
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
    /// Element type (kept so empty arrays round-trip) and elements, all of that type.
    Array(ValueType, Vec<Value>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F32(_) => ValueType::F32,
            Value::F64(_) => ValueType::F64,
            Value::Bool(_) => ValueType::Bool,
            Value::String(_) => ValueType::String,
            Value::Array(..) => ValueType::Array,
        }
    }

    /// Any integer type whose value is non-negative and fits in u64.
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

    /// Any integer type whose value fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U8(v) => Some(v as i64),
            Value::U16(v) => Some(v as i64),
            Value::U32(v) => Some(v as i64),
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// u32 from any integer encoding (u8..u64, i8..i64) whose value fits.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// i32 from any integer encoding whose value fits.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i64().and_then(|v| i32::try_from(v).ok())
    }

    /// f32 from F32 or F64 (rounded).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` = ne0 = row length (input features of a weight).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of the tensor data (`ggml_nbytes`; I2_S includes its 32-byte trailer).
    pub nbytes: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// `(rows, cols)` of the tensor seen as a row-major matrix: `cols = ne0`, `rows` = the
    /// product of the other dims.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1) as usize;
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (rows, cols)
    }
}

/// A parsed GGUF file whose bytes stay memory-mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// Alignment of the data section and of tensor offsets.
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    bytes: SharedBytes,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl fmt::Display) -> Error {
        Error::bad_file(self.path, format!("{msg} (at byte {})", self.pos))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str, max_len: u64) -> Result<String> {
        let len = self.u64(what)?;
        if len > max_len {
            return Err(self.err(format!("{what}: length {len} exceeds the limit {max_len}")));
        }
        if len > self.remaining() {
            return Err(self.err(format!(
                "{what}: string length {len} runs past the end of the file"
            )));
        }
        let b = self.take(len, what)?;
        // Invalid UTF-8 is replaced (U+FFFD) rather than rejected: some vocabularies
        // carry raw byte tokens.
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(key)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(self.u32(key)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => Value::U64(self.u64(key)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => {
                let b = self.array::<1>(key)?[0];
                if b > 1 {
                    return Err(self.err(format!("metadata `{key}`: invalid bool byte {b}")));
                }
                Value::Bool(b == 1)
            }
            ValueType::String => Value::String(self.string(key, u64::MAX)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "metadata `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let et_id = self.u32(key)?;
                let et = ValueType::from_id(et_id).ok_or_else(|| {
                    self.err(format!(
                        "metadata `{key}`: unknown array element type {et_id}"
                    ))
                })?;
                let n = self.u64(key)?;
                let need = n.checked_mul(et.min_size());
                if need.is_none_or(|need| need > self.remaining()) {
                    return Err(self.err(format!(
                        "metadata `{key}`: array of {n} {et:?} elements runs past the end of the file"
                    )));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et, key, depth + 1)?);
                }
                Value::Array(et, v)
            }
        })
    }
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

impl GgufFile {
    /// Open and parse a GGUF file; the file is memory-mapped and tensor data is never
    /// copied.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < 24 {
            return Err(Error::bad_file(
                path,
                format!("not a GGUF file: only {len} bytes (a header needs 24)"),
            ));
        }
        // SAFETY: the map is read-only and private to this process. Like every mmap-based
        // reader we rely on the file not being truncated or rewritten by another process
        // while it is mapped; all parsing below checks bounds against the mapped length.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        // Ask for 2 MiB pages: the weights are streamed once per token, and with 4 KiB
        // pages generation ran 8–11 % slower (a 2-core Xeon, BENCHMARKS.md thirteenth
        // session). Only advice: a kernel without file-backed huge pages ignores it.
        #[cfg(target_os = "linux")]
        let _ = mmap.advise(memmap2::Advice::HugePage);
        Self::from_bytes(path, SharedBytes::new(Arc::new(mmap)))
    }

    /// Parse a GGUF image held in memory (`path` is only used in messages).
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: SharedBytes) -> Result<Self> {
        let path = path.into();
        let buf = bytes.as_slice();
        let mut c = Cursor {
            buf,
            pos: 0,
            path: &path,
        };
        let magic = c.array::<4>("magic")?;
        if magic != GGUF_MAGIC {
            return Err(Error::bad_file(
                &path,
                format!("not a GGUF file: bad magic {magic:02x?}"),
            ));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            return Err(Error::bad_file(
                &path,
                format!("unsupported GGUF version {version} (only 2 and 3 are supported)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A metadata entry takes >= 8 (key len) + 4 (type) + 1 bytes; a tensor info
        // >= 8 + 4 + 8 + 4 + 8.
        if n_kv.checked_mul(13).is_none_or(|n| n > c.remaining()) {
            return Err(c.err(format!(
                "metadata count {n_kv} is larger than the file allows"
            )));
        }
        if n_tensors.checked_mul(32).is_none_or(|n| n > c.remaining()) {
            return Err(c.err(format!(
                "tensor count {n_tensors} is larger than the file allows"
            )));
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"), 65535)?;
            let ty_id = c.u32(&key)?;
            let ty = ValueType::from_id(ty_id)
                .ok_or_else(|| c.err(format!("metadata `{key}`: unknown value type {ty_id}")))?;
            let v = c.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("duplicate metadata key `{key}`")));
            }
            metadata.push((key, v));
        }

        let alignment = match meta_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => {
                let a = metadata[i].1.as_u64().unwrap_or(0);
                if a == 0 || !a.is_power_of_two() || a > 1 << 30 {
                    return Err(Error::bad_file(
                        &path,
                        format!("invalid general.alignment {:?}", metadata[i].1),
                    ));
                }
                a
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"), MAX_TENSOR_NAME)?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(c.err(format!(
                    "tensor `{name}`: {n_dims} dimensions (1..={MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| c.err(format!("tensor `{name}`: unknown ggml type id {type_id}")))?;
            let offset = c.u64(&name)?;
            if dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(c.err(format!("tensor `{name}`: dims {dims:?} overflow")));
            }
            let nbytes = ggml_type.tensor_bytes(&dims).ok_or_else(|| {
                c.err(format!(
                    "tensor `{name}`: dims {dims:?} do not fit type {ggml_type} (row length not a multiple of its block size, or size overflow)"
                ))
            })?;
            if !offset.is_multiple_of(alignment) {
                return Err(c.err(format!(
                    "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(c.err(format!("duplicate tensor name `{name}`")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                nbytes,
            });
        }

        let file_len = buf.len() as u64;
        let data_offset = align_up(c.pos as u64, alignment)
            .filter(|&d| d <= file_len)
            .ok_or_else(|| {
                Error::bad_file(
                    &path,
                    format!("truncated: the data section would start past the end of the file ({file_len} bytes)"),
                )
            })?;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.nbytes));
            if end.is_none_or(|e| e > file_len) {
                return Err(Error::bad_file(
                    &path,
                    format!(
                        "tensor `{}` ({} {:?}, {} bytes at data offset {}) extends past the end of the file ({file_len} bytes)",
                        t.name, t.ggml_type, t.dims, t.nbytes, t.offset
                    ),
                ));
            }
        }

        Ok(GgufFile {
            path,
            version,
            alignment,
            metadata,
            tensors,
            data_offset,
            meta_index,
            tensor_index,
            bytes,
        })
    }

    /// The whole file.
    pub fn bytes(&self) -> &SharedBytes {
        &self.bytes
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::bad_file(&self.path, format!("missing metadata key `{key}`")))?;
        f(v).ok_or_else(|| {
            Error::bad_file(
                &self.path,
                format!("metadata `{key}` is {:?}, expected {what}", TruncDebug(v)),
            )
        })
    }

    /// A string value (error if missing or not a string).
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", |v| v.as_str())
    }

    /// A u32 from any integer encoding that fits (u8..u64, i8..i64).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer that fits in u32", Value::as_u32)
    }

    /// A u64 from any non-negative integer encoding.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// An i32 from any integer encoding that fits.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.typed(key, "an integer that fits in i32", Value::as_i32)
    }

    /// An f32 from F32 or F64.
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a float", Value::as_f32)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", Value::as_bool)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?.iter().map(Value::as_str).collect()
        })
    }

    /// An array of integers that fit in i32 (any integer element type).
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>> {
        self.typed(key, "an array of i32", |v| {
            v.as_array()?.iter().map(Value::as_i32).collect()
        })
    }

    /// An array of integers that fit in u32 (any integer element type).
    pub fn get_u32_array(&self, key: &str) -> Result<Vec<u32>> {
        self.typed(key, "an array of u32", |v| {
            v.as_array()?.iter().map(Value::as_u32).collect()
        })
    }

    /// An array of floats (F32 or F64 elements).
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        self.typed(key, "an array of floats", |v| {
            v.as_array()?.iter().map(Value::as_f32).collect()
        })
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// A tensor's info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes (zero-copy view into the mapped file; `info.nbytes` long).
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<SharedBytes> {
        let bad = || {
            Error::bad_file(
                &self.path,
                format!("tensor `{}` data is out of bounds", info.name),
            )
        };
        let start = self
            .data_offset
            .checked_add(info.offset)
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(bad)?;
        let end = usize::try_from(info.nbytes)
            .ok()
            .and_then(|n| start.checked_add(n))
            .ok_or_else(bad)?;
        self.bytes.slice(start..end).ok_or_else(bad)
    }

    /// The data of the tensor called `name`.
    pub fn tensor_data_by_name(&self, name: &str) -> Result<SharedBytes> {
        let info = self
            .tensor(name)
            .ok_or_else(|| Error::bad_file(&self.path, format!("missing tensor `{name}`")))?;
        self.tensor_data(info)
    }
}

/// Debug output of a value with long arrays abbreviated (for error messages).
struct TruncDebug<'a>(&'a Value);

impl fmt::Debug for TruncDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::Array(t, v) => write!(f, "an array of {} {:?}", v.len(), t),
            Value::String(s) if s.len() > 60 => write!(f, "a string of {} bytes", s.len()),
            v => write!(f, "{v:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_ids_round_trip() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::I2_S.id(), 36);
        assert_eq!(GgmlType::BF16.id(), 30);
    }

    #[test]
    fn sizes() {
        assert_eq!(GgmlType::I2_S.tensor_bytes(&[768, 256]), Some(49184));
        assert_eq!(
            GgmlType::TQ2_0.tensor_bytes(&[768, 256]),
            Some(3 * 66 * 256)
        );
        assert_eq!(GgmlType::Q6_K.tensor_bytes(&[256, 2]), Some(420));
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[100]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
    }

    #[test]
    fn lenient_integer_getters() {
        assert_eq!(Value::I32(5).as_u32(), Some(5));
        assert_eq!(Value::U64(5).as_u32(), Some(5));
        assert_eq!(Value::I32(-1).as_u32(), None);
        assert_eq!(Value::U64(1 << 40).as_u32(), None);
        assert_eq!(Value::F64(0.5).as_f32(), Some(0.5));
    }

    #[test]
    fn rejects_garbage_headers() {
        let p = Path::new("mem.gguf");
        assert!(GgufFile::from_bytes(p, SharedBytes::from_vec(b"GGUF".to_vec())).is_err());
        let mut h = b"GGUF".to_vec();
        h.extend(3u32.to_le_bytes());
        h.extend(u64::MAX.to_le_bytes());
        h.extend(0u64.to_le_bytes());
        let e = GgufFile::from_bytes(p, SharedBytes::from_vec(h)).unwrap_err();
        assert!(e.to_string().contains("tensor count"), "{e}");
    }
}
