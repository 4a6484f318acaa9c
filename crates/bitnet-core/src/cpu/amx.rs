//! AMX-INT8 gemm (being written).

use super::PackedView;

/// Whether AMX can be used (not yet: the kernel is not written).
pub fn available() -> bool {
    false
}

pub(crate) fn gemm(_w: &PackedView<'_>, _x: &[i8], _m: usize, _out: &mut [i32]) {
    unreachable!("AMX is never reported available")
}
