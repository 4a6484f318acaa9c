//! Views are not copied behind the caller's back: counted through the global pool's
//! allocation statistics, every op below allocates exactly its output (plus the one
//! documented copy where a reduction axis is not innermost). One test in its own binary,
//! so no other test allocates from the pool meanwhile.

use bitnet_core::memory;
use bitnet_core::ops::{self, Activation, BinaryOp, TensorMut};
use bitnet_core::Tensor;

fn allocations_of<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = memory::global().stats().allocations;
    let r = f();
    (memory::global().stats().allocations - before, r)
}

#[test]
fn ops_allocate_only_their_outputs() {
    let n = 64;
    let a = Tensor::from_vec((0..n * n).map(|i| i as f32 * 1e-3).collect(), (n, n)).unwrap();
    let b = Tensor::from_vec((0..n * n).map(|i| 1.0 - i as f32 * 1e-3).collect(), (n, n)).unwrap();
    let bt = b.t().unwrap();
    let row = a.narrow(0, 3, 1).unwrap().squeeze(0).unwrap();
    let batch = a.reshape((4, 16, n)).unwrap();

    // Transposed and batch-broadcast matmul operands go to gemm as strides.
    let (k, c) = allocations_of(|| ops::matmul(&a, &bt).unwrap());
    assert_eq!((k, c.dims()), (1, &[n, n][..]));
    let (k, _) = allocations_of(|| ops::matmul(&batch, &bt).unwrap());
    assert_eq!(k, 1);
    // Broadcast and strided element-wise operands are walked in place.
    let (k, _) = allocations_of(|| ops::add(&bt, &row).unwrap());
    assert_eq!(k, 1);
    let (k, _) = allocations_of(|| ops::where_cond(&ops::gt(&a, &b).unwrap(), &a, &bt).unwrap());
    assert_eq!(k, 2, "the mask and the result");
    // Reductions and softmax over the innermost axis of a contiguous tensor: no copy.
    let (k, _) = allocations_of(|| ops::sum(&a, &[1], false).unwrap());
    assert_eq!(k, 1);
    let (k, _) = allocations_of(|| ops::softmax(&a, -1).unwrap());
    assert_eq!(k, 1);
    // Over an outer axis: one copy to make it innermost, as documented.
    let (k, _) = allocations_of(|| ops::sum(&a, &[0], false).unwrap());
    assert_eq!(k, 2);
    // Splits are views.
    let (k, parts) = allocations_of(|| ops::split(&a, 16, 0).unwrap());
    assert_eq!((k, parts.len()), (0, 4));
    // In-place updates on a TensorMut allocate nothing; freezing does not copy.
    let mut m = TensorMut::from_tensor(&a).unwrap();
    let (k, _) = allocations_of(|| {
        m.binary_assign(BinaryOp::Mul, &row).unwrap();
        m.unary_assign(Activation::Silu).unwrap();
        m.freeze().unwrap()
    });
    assert_eq!(k, 0);
}
