//! Tensor core: views against naive index arithmetic, constructors and typed errors.

use bitnet_core::dtype::WithDType;
use bitnet_core::memory::{self, PoolBuffer};
use bitnet_core::storage::Storage;
use bitnet_core::{DType, Device, Error, Layout, Shape, SharedBytes, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;

fn arange(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec((0..n).map(|x| x as f32).collect(), shape).unwrap()
}

/// Row-major strides of a shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// All multi-indices of a shape, row-major.
fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
    let n: usize = shape.iter().product();
    (0..n)
        .map(|mut flat| {
            let mut idx = vec![0; shape.len()];
            for d in (0..shape.len()).rev() {
                idx[d] = flat % shape[d];
                flat /= shape[d];
            }
            idx
        })
        .collect()
}

/// Value of `arange(shape)` at a multi-index.
fn at(shape: &[usize], idx: &[usize]) -> f32 {
    idx.iter()
        .zip(strides(shape))
        .map(|(i, s)| i * s)
        .sum::<usize>() as f32
}

#[test]
fn transpose_matches_naive() {
    let dims = [2, 3, 4];
    let t = arange(&dims).transpose(0, 2).unwrap();
    assert_eq!(t.dims(), &[4, 3, 2]);
    let expect: Vec<f32> = indices(&[4, 3, 2])
        .iter()
        .map(|i| at(&dims, &[i[2], i[1], i[0]]))
        .collect();
    assert_eq!(t.to_vec::<f32>().unwrap(), expect);
    assert!(!t.is_contiguous());
}

#[test]
fn narrow_then_contiguous() {
    let t = arange(&[4, 5])
        .narrow(1, 1, 3)
        .unwrap()
        .narrow(0, 2, 2)
        .unwrap();
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        vec![11., 12., 13., 16., 17., 18.]
    );
    let c = t.contiguous().unwrap();
    assert!(c.is_contiguous());
    assert_eq!(
        c.as_slice::<f32>().unwrap(),
        &[11., 12., 13., 16., 17., 18.]
    );
    // A narrow of whole rows stays contiguous and is borrowed without a copy.
    let rows = arange(&[4, 5]).narrow(0, 1, 2).unwrap();
    assert!(rows.is_contiguous());
    assert_eq!(rows.as_slice::<f32>().unwrap()[0], 5.0);
    assert_eq!(rows.reshape(10).unwrap().to_vec::<f32>().unwrap()[9], 14.0);
}

#[test]
fn broadcast_repeats_with_stride_zero() {
    let row = Tensor::from_vec(vec![1i32, 2, 3], (1, 3)).unwrap();
    let b = row.broadcast_as((2, 2, 3)).unwrap();
    assert_eq!(b.layout().strides(), &[0, 0, 1]);
    assert_eq!(
        b.to_vec::<i32>().unwrap(),
        vec![1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    );
    let col = Tensor::from_vec(vec![7u8, 9], (2, 1)).unwrap();
    assert_eq!(
        col.broadcast_as((2, 3)).unwrap().to_vec::<u8>().unwrap(),
        vec![7, 7, 7, 9, 9, 9]
    );
    // Broadcast views cannot be reshaped in place.
    let err = b.reshape(12).unwrap_err();
    assert!(err.to_string().contains("contiguous()"), "{err}");
    assert_eq!(
        b.contiguous().unwrap().reshape(12).unwrap().elem_count(),
        12
    );
}

#[test]
fn all_dtypes_roundtrip() {
    fn check<T: WithDType>(vals: Vec<T>) {
        let t = Tensor::from_slice(&vals, (2, vals.len() / 2)).unwrap();
        assert_eq!(t.dtype(), T::DTYPE);
        assert_eq!(t.to_vec::<T>().unwrap(), vals);
        assert_eq!(t.as_slice::<T>().unwrap(), &vals[..]);
        let tt = t.t().unwrap().contiguous().unwrap().t().unwrap();
        assert_eq!(tt.to_vec::<T>().unwrap(), vals);
        let z = Tensor::zeros((3, 2), T::DTYPE).unwrap();
        assert_eq!(z.to_vec::<T>().unwrap(), vec![T::default(); 6]);
    }
    check(vec![1.0f32, -2.0, 3.5, 4.0]);
    check(vec![f16::from_f32(1.0), f16::from_f32(-0.5)]);
    check(vec![bf16::from_f32(1.0), bf16::from_f32(-0.5)]);
    check(vec![-128i8, 0, 1, 127]);
    check(vec![i32::MIN, 0, 5, i32::MAX]);
    check(vec![0u8, 255]);
}

#[test]
fn scalars_and_empty_tensors() {
    let s = Tensor::from_vec(vec![42i32], ()).unwrap();
    assert_eq!(s.rank(), 0);
    assert_eq!(s.to_scalar::<i32>().unwrap(), 42);
    let e = Tensor::zeros((0, 5), DType::F32).unwrap();
    assert_eq!(e.elem_count(), 0);
    assert!(e.to_vec::<f32>().unwrap().is_empty());
    assert!(e.as_slice::<f32>().unwrap().is_empty());
    assert_eq!(e.t().unwrap().dims(), &[5, 0]);
    let n = arange(&[3, 4]).narrow(1, 4, 0).unwrap();
    assert_eq!(n.dims(), &[3, 0]);
    assert!(n.to_vec::<f32>().unwrap().is_empty());
    assert!(arange(&[2]).to_scalar::<f32>().is_err());
}

#[test]
fn squeeze_unsqueeze_permute() {
    let t = arange(&[2, 3]);
    let u = t.unsqueeze(1).unwrap();
    assert_eq!(u.dims(), &[2, 1, 3]);
    assert!(u.is_contiguous());
    assert_eq!(u.squeeze(1).unwrap().dims(), &[2, 3]);
    assert!(u.squeeze(0).is_err());
    let p = arange(&[2, 3, 4]).permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.dims(), &[4, 2, 3]);
    let expect: Vec<f32> = indices(&[4, 2, 3])
        .iter()
        .map(|i| at(&[2, 3, 4], &[i[1], i[2], i[0]]))
        .collect();
    assert_eq!(p.to_vec::<f32>().unwrap(), expect);
}

#[test]
fn shape_and_dtype_errors_are_typed() {
    let t = arange(&[2, 3]);
    assert!(matches!(
        Tensor::from_vec(vec![1.0f32; 5], (2, 3)),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        t.to_vec::<i8>(),
        Err(Error::DType {
            expected: DType::I8,
            got: DType::F32,
            ..
        })
    ));
    assert!(matches!(t.as_slice::<f16>(), Err(Error::DType { .. })));
    assert!(matches!(t.transpose(0, 2), Err(Error::OutOfRange { .. })));
    assert!(matches!(t.narrow(2, 0, 1), Err(Error::OutOfRange { .. })));
    assert!(matches!(t.narrow(1, 2, 2), Err(Error::Shape { .. })));
    assert!(matches!(
        t.narrow(1, usize::MAX, 2),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(t.permute(&[0, 0]), Err(Error::Shape { .. })));
    assert!(matches!(t.permute(&[0]), Err(Error::Shape { .. })));
    assert!(matches!(t.permute(&[0, 5]), Err(Error::Shape { .. })));
    assert!(matches!(t.reshape((4, 2)), Err(Error::Shape { .. })));
    assert!(matches!(t.broadcast_as((3, 3)), Err(Error::Shape { .. })));
    assert!(matches!(t.broadcast_as(3), Err(Error::Shape { .. })));
    assert!(matches!(
        t.t().unwrap().reshape(6),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        t.t().unwrap().as_slice::<f32>(),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(t.dim(2), Err(Error::OutOfRange { .. })));
    assert!(matches!(arange(&[3]).t(), Err(Error::Shape { .. })));
    assert!(matches!(
        Tensor::zeros([usize::MAX, 4], DType::F32),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        t.broadcast_as([usize::MAX, 2, 3]),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn gpu_devices_error_without_backend() {
    let compiled_in = [cfg!(feature = "cuda"), cfg!(feature = "wgpu")];
    for ((dev, name), compiled) in [(Device::Cuda(0), "cuda"), (Device::Wgpu(0), "wgpu")]
        .into_iter()
        .zip(compiled_in)
    {
        let r = Tensor::zeros_on((2, 2), DType::F32, &dev);
        let r2 = Tensor::from_slice_on(&[1.0f32], 1, &dev);
        let r3 = arange(&[2]).to_device(&dev);
        for e in [r.unwrap_err(), r2.unwrap_err(), r3.unwrap_err()] {
            if compiled {
                assert!(matches!(e, Error::Unsupported(_)), "{e}");
            } else {
                assert!(
                    matches!(e, Error::BackendNotCompiled(n) if n == name),
                    "{e}"
                );
            }
        }
    }
    assert_eq!(arange(&[2]).device(), Device::Cpu);
}

#[test]
fn from_bytes_is_zero_copy_and_handles_misalignment() {
    // 1 leading byte, then three f32: the tensor view at offset 1 is misaligned.
    let mut raw = vec![0u8];
    for v in [1.0f32, 2.0, 3.0] {
        raw.extend_from_slice(&v.to_ne_bytes());
    }
    let bytes = SharedBytes::from_vec(raw).slice(1..13).unwrap();
    let t = Tensor::from_bytes(bytes.clone(), 3, DType::F32).unwrap();
    assert_eq!(t.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
    if !(bytes.as_ptr() as usize).is_multiple_of(4) {
        assert!(matches!(t.as_slice::<f32>(), Err(Error::Unsupported(_))));
    }
    assert_eq!(
        t.contiguous().unwrap().as_slice::<f32>().unwrap(),
        &[1.0, 2.0, 3.0]
    );
    assert!(matches!(
        Tensor::from_bytes(bytes, 4, DType::F32),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn from_storage_checks_bounds_and_pool_buffers_wrap() {
    let mut buf: PoolBuffer<'static> = memory::global().allocate(6 * 4).unwrap();
    buf.typed_mut::<f32>()
        .unwrap()
        .copy_from_slice(&[0., 1., 2., 3., 4., 5.]);
    let t = Tensor::from_pool_buffer(buf, (3, 2), DType::F32).unwrap();
    let storage: Storage = t.storage().clone();
    let col = Layout::new((3,), vec![2], 1).unwrap();
    let v = Tensor::from_storage(storage.clone(), col, DType::F32).unwrap();
    assert_eq!(v.to_vec::<f32>().unwrap(), vec![1., 3., 5.]);
    let bad = Layout::new((3,), vec![2], 2).unwrap();
    assert!(matches!(
        Tensor::from_storage(storage, bad, DType::F32),
        Err(Error::Shape { .. })
    ));
    assert!(Layout::new((3, 2), vec![1], 0).is_err());
}

#[test]
fn storage_comes_from_the_global_pool_aligned() {
    let before = memory::global().stats().allocations;
    let t = Tensor::zeros((7, 3), DType::I8).unwrap();
    assert!(memory::global().stats().allocations > before);
    assert_eq!(t.contiguous_bytes().unwrap().as_ptr() as usize % 64, 0);
}

#[test]
fn full_and_to_dtype() {
    let t = Tensor::full(bf16::from_f32(2.5), (2, 2)).unwrap();
    assert_eq!(
        t.to_dtype(DType::F32).unwrap().to_vec::<f32>().unwrap(),
        vec![2.5; 4]
    );
    let strided = arange(&[2, 3]).t().unwrap().to_dtype(DType::I32).unwrap();
    assert_eq!(strided.to_vec::<i32>().unwrap(), vec![0, 3, 1, 4, 2, 5]);
    assert_eq!(Shape::from((2, 3)).to_string(), "[2, 3]");
}

/// A random view: a chain of transposes, narrows and broadcasts applied both to a tensor
/// and to a naive index map, compared element by element.
#[derive(Debug, Clone)]
enum Op {
    Transpose(usize, usize),
    Narrow(usize, usize, usize),
    Unsqueeze(usize),
    Broadcast(usize, usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 0..4usize).prop_map(|(a, b)| Op::Transpose(a, b)),
        (0..4usize, 0..4usize, 0..4usize).prop_map(|(d, s, l)| Op::Narrow(d, s, l)),
        (0..4usize).prop_map(Op::Unsqueeze),
        (0..4usize, 1..4usize).prop_map(|(d, n)| Op::Broadcast(d, n)),
    ]
}

/// The naive model: a view is a shape plus a function from view indices to base indices.
type IndexMap = Box<dyn Fn(&[usize]) -> Vec<usize>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_view_chains_match_naive(
        dims in prop::collection::vec(1..5usize, 1..4),
        ops in prop::collection::vec(op_strategy(), 0..6),
    ) {
        let base_dims = dims.clone();
        let mut t = arange(&dims);
        let mut shape = dims.clone();
        let mut map: IndexMap = Box::new(|i: &[usize]| i.to_vec());
        for op in ops {
            let r = shape.len();
            match op {
                Op::Transpose(a, b) if a < r && b < r => {
                    t = t.transpose(a, b).unwrap();
                    shape.swap(a, b);
                    map = Box::new(move |i: &[usize]| {
                        let mut j = i.to_vec();
                        j.swap(a, b);
                        map(&j)
                    });
                }
                Op::Narrow(d, s, l) if d < r && s + l <= shape[d] => {
                    t = t.narrow(d, s, l).unwrap();
                    shape[d] = l;
                    map = Box::new(move |i: &[usize]| {
                        let mut j = i.to_vec();
                        j[d] += s;
                        map(&j)
                    });
                }
                Op::Unsqueeze(d) if d <= r && r < 5 => {
                    t = t.unsqueeze(d).unwrap();
                    shape.insert(d, 1);
                    map = Box::new(move |i: &[usize]| {
                        let mut j = i.to_vec();
                        j.remove(d);
                        map(&j)
                    });
                }
                Op::Broadcast(d, n) if d < r && shape[d] == 1 => {
                    shape[d] = n;
                    t = t.broadcast_as(shape.clone()).unwrap();
                    map = Box::new(move |i: &[usize]| {
                        let mut j = i.to_vec();
                        j[d] = 0;
                        map(&j)
                    });
                }
                // Invalid parameters must be rejected with an error, never a panic.
                Op::Transpose(a, b) => prop_assert!(t.transpose(a, b).is_err()),
                Op::Narrow(d, s, l) => prop_assert!(t.narrow(d, s, l).is_err()),
                Op::Unsqueeze(d) => {
                    if d > r {
                        prop_assert!(t.unsqueeze(d).is_err());
                    }
                }
                Op::Broadcast(d, n) => {
                    if d < r && shape[d] != n {
                        let mut s2 = shape.clone();
                        s2[d] = n;
                        prop_assert!(t.broadcast_as(s2).is_err());
                    }
                }
            }
        }
        prop_assert_eq!(t.dims(), &shape[..]);
        let expect: Vec<f32> = indices(&shape).iter().map(|i| at(&base_dims, &map(i))).collect();
        prop_assert_eq!(&t.to_vec::<f32>().unwrap(), &expect);
        let c = t.contiguous().unwrap();
        prop_assert!(c.is_contiguous());
        prop_assert_eq!(c.as_slice::<f32>().unwrap(), &expect[..]);
        let flat = c.reshape(expect.len()).unwrap();
        prop_assert_eq!(flat.to_vec::<f32>().unwrap(), expect);
        if t.is_contiguous() {
            prop_assert!(t.reshape(t.elem_count()).is_ok());
        }
    }

    #[test]
    fn random_permutations_match_naive(
        dims in prop::collection::vec(1..4usize, 1..5),
        seed in any::<u64>(),
    ) {
        // Fisher-Yates with a tiny LCG, so the permutation depends only on the seed.
        let mut perm: Vec<usize> = (0..dims.len()).collect();
        let mut s = seed;
        for i in (1..perm.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (s >> 33) as usize % (i + 1));
        }
        let t = arange(&dims).permute(&perm).unwrap();
        let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
        prop_assert_eq!(t.dims(), &out_dims[..]);
        let expect: Vec<f32> = indices(&out_dims)
            .iter()
            .map(|i| {
                let mut base = vec![0; dims.len()];
                for (k, &p) in perm.iter().enumerate() {
                    base[p] = i[k];
                }
                at(&dims, &base)
            })
            .collect();
        prop_assert_eq!(t.to_vec::<f32>().unwrap(), expect);
    }

    #[test]
    fn broadcast_shape_is_symmetric(
        a in prop::collection::vec(1..4usize, 0..4),
        b in prop::collection::vec(1..4usize, 0..4),
    ) {
        let (sa, sb) = (Shape::from(a), Shape::from(b));
        let ab = sa.broadcast_shape_binary_op(&sb, "test");
        let ba = sb.broadcast_shape_binary_op(&sa, "test");
        prop_assert_eq!(ab.is_ok(), ba.is_ok());
        if let (Ok(ab), Ok(ba)) = (ab, ba) {
            prop_assert_eq!(&ab, &ba);
            prop_assert!(sa.is_broadcastable_to(&ab));
            prop_assert!(sb.is_broadcastable_to(&ab));
        }
    }
}
