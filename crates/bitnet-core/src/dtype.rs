//! Element types, and the byte-level reinterpretation helpers tensors and pool buffers use.
//!
//! Every dtype here is "plain old data": any bit pattern is a valid value and there is no
//! padding. That is what makes it sound to view a byte buffer as `&[T]` (given alignment)
//! without a dependency such as bytemuck. [`WithDType`] is sealed so that property cannot be
//! broken by an implementation outside this crate.

use std::fmt;

/// The element types a tensor can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I8,
    I32,
    U8,
}

impl DType {
    /// Every dtype, in declaration order (handy for tests and CLI listings).
    pub const ALL: [DType; 6] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I32,
        DType::U8,
    ];

    /// Size of one element in bytes.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
        }
    }

    /// Lower-case name as used in file formats and messages ("f32", "bf16", ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::U8 => "u8",
        }
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// Parse a name as returned by [`DType::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
    impl Sealed for i8 {}
    impl Sealed for i32 {}
    impl Sealed for u8 {}
}

/// A Rust type that is the element type of a [`DType`].
///
/// Sealed: every implementor is plain old data (no padding, every bit pattern valid), which
/// the unsafe byte casts in this crate rely on.
pub trait WithDType:
    sealed::Sealed + Copy + Default + PartialEq + fmt::Debug + Send + Sync + 'static
{
    /// The dtype this type stores as.
    const DTYPE: DType;

    /// Widen to f64 (exact for every implementor).
    fn to_f64(self) -> f64;

    /// Narrow from f64: floats round to nearest, integers saturate and truncate toward
    /// zero (Rust `as` semantics; NaN becomes 0).
    fn from_f64(v: f64) -> Self;
}

macro_rules! with_dtype_prim {
    ($t:ty, $d:ident) => {
        impl WithDType for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}
with_dtype_prim!(f32, F32);
with_dtype_prim!(i8, I8);
with_dtype_prim!(i32, I32);
with_dtype_prim!(u8, U8);

impl WithDType for half::f16 {
    const DTYPE: DType = DType::F16;
    #[inline]
    fn to_f64(self) -> f64 {
        half::f16::to_f64(self)
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::f16::from_f64(v)
    }
}

impl WithDType for half::bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline]
    fn to_f64(self) -> f64 {
        half::bf16::to_f64(self)
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        half::bf16::from_f64(v)
    }
}

/// View a slice of elements as its bytes (native endianness).
#[inline]
pub fn as_bytes<T: WithDType>(s: &[T]) -> &[u8] {
    // SAFETY: T is plain old data without padding (sealed trait), so every byte of the slice
    // is initialized; u8 has alignment 1 and the length covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// View a mutable slice of elements as its bytes (native endianness).
#[inline]
pub fn as_bytes_mut<T: WithDType>(s: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(s);
    // SAFETY: as in `as_bytes`; additionally any byte pattern written back is a valid T.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), len) }
}

/// Reinterpret bytes as elements, or `None` if the length is not a multiple of the element
/// size or the start is not aligned for `T` (e.g. a memory-mapped tensor at an odd offset).
#[inline]
pub fn cast_slice<T: WithDType>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    if bytes.is_empty() {
        return Some(&[]);
    }
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
        return None;
    }
    // SAFETY: alignment and length were checked above; every bit pattern is a valid T.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

/// Mutable version of [`cast_slice`].
#[inline]
pub fn cast_slice_mut<T: WithDType>(bytes: &mut [u8]) -> Option<&mut [T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    if bytes.is_empty() {
        return Some(&mut []);
    }
    if bytes.as_ptr().align_offset(std::mem::align_of::<T>()) != 0 {
        return None;
    }
    let n = bytes.len() / size;
    // SAFETY: alignment and length were checked above; every bit pattern is a valid T and
    // every T is fully initialized bytes, so writes through either view stay valid.
    Some(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<T>(), n) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(DType::F32.size_in_bytes(), 4);
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::U8.size_in_bytes(), 1);
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("F16"), Some(DType::F16));
        assert_eq!(DType::from_name("q4"), None);
        assert_eq!(<half::bf16 as WithDType>::DTYPE, DType::BF16);
        assert_eq!(std::mem::size_of::<half::f16>(), DType::F16.size_in_bytes());
    }

    #[test]
    fn byte_casts_roundtrip_and_check_alignment() {
        let v = [1.0f32, -2.5, 3.25];
        let b = as_bytes(&v);
        assert_eq!(b.len(), 12);
        assert_eq!(cast_slice::<f32>(b).unwrap(), &v);
        assert!(cast_slice::<f32>(&b[..11]).is_none());
        // b[1..5] is 4 bytes but misaligned for f32.
        assert!(cast_slice::<f32>(&b[1..5]).is_none());
        assert_eq!(cast_slice::<u8>(&b[1..5]).unwrap().len(), 4);
    }

    #[test]
    fn f64_conversions_saturate() {
        assert_eq!(i8::from_f64(300.0), 127);
        assert_eq!(u8::from_f64(-3.0), 0);
        assert_eq!(i32::from_f64(f64::NAN), 0);
        assert_eq!(half::f16::from_f64(0.5).to_f64(), 0.5);
    }
}
