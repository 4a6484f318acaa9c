//! The one error type of bitnet-core. Every shape, dtype, format or backend problem is a
//! typed variant with a message that names what was wrong; nothing here panics on bad input.

use crate::dtype::DType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit the operation (`op` names it).
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },

    /// A dtype the operation does not accept.
    #[error("{op}: expected dtype {expected:?}, got {got:?}")]
    DType {
        op: &'static str,
        expected: DType,
        got: DType,
    },

    /// A dtype the operation does not support at all.
    #[error("{op}: dtype {dtype:?} is not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },

    /// A device whose backend was not compiled into this build.
    #[error("backend `{0}` is not compiled in (rebuild with `--features {0}`)")]
    BackendNotCompiled(&'static str),

    /// Inputs on different devices (never copied silently).
    #[error("{op}: inputs are on different devices ({a} and {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },

    /// Malformed packed data for a weight format (`format` names it: "I2_S", "TQ1_0", ...).
    #[error("{format}: {msg}")]
    Format { format: &'static str, msg: String },

    /// An index or range outside a dimension.
    #[error("{op}: index {index} out of range for dimension of size {size}")]
    OutOfRange {
        op: &'static str,
        index: usize,
        size: usize,
    },

    /// The memory pool or the system allocator could not provide memory.
    #[error("out of memory: could not allocate {bytes} bytes")]
    OutOfMemory { bytes: usize },

    /// A kernel path that was forced but is not available on this CPU or not built.
    #[error("kernel path `{0}` is not available on this CPU")]
    KernelUnavailable(String),

    /// Anything else that is not supported, with a sentence that says what.
    #[error("{0}")]
    Unsupported(String),
}

/// The message of a caught panic payload (`catch_unwind`'s error), or "unknown panic".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }

    pub fn format(format: &'static str, msg: impl Into<String>) -> Self {
        Error::Format {
            format,
            msg: msg.into(),
        }
    }
}
