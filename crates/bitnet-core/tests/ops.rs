//! Behaviour tests of `bitnet_core::ops`: one section per op family, plus the dispatch
//! decision table. Property tests against naive references live in `ops_props.rs`, SIMD
//! against scalar in `ops_simd.rs`.

use bitnet_core::ops::dispatch::{self, decide, Env, Kernel, OpClass, Request};
use bitnet_core::ops::{self, Activation, BinaryOp, CmpOp, TensorMut};
use bitnet_core::{DType, Device, Error, Tensor};
use half::{bf16, f16};

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape).unwrap()
}

fn f(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol * (1.0 + y.abs());
        assert!(ok, "{a:?} vs {b:?}");
    }
}

// ------------------------------------------------------------------ element-wise

#[test]
fn broadcasting_arithmetic() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let row = t(&[10., 20., 30.], &[3]);
    let col = t(&[100., 200.], &[2, 1]);
    assert_eq!(
        f(&ops::add(&a, &row).unwrap()),
        [11., 22., 33., 14., 25., 36.]
    );
    assert_eq!(
        f(&ops::sub(&a, &col).unwrap()),
        [-99., -98., -97., -196., -195., -194.]
    );
    let outer = ops::mul(&col, &row).unwrap();
    assert_eq!(outer.dims(), &[2, 3]);
    assert_eq!(f(&outer), [1000., 2000., 3000., 2000., 4000., 6000.]);
    assert_eq!(
        f(&ops::div(&a, &t(&[2.], &[])).unwrap()),
        [0.5, 1., 1.5, 2., 2.5, 3.]
    );
    assert_eq!(
        f(&ops::rem(&t(&[7., -7.], &[2]), &t(&[3.], &[1])).unwrap()),
        [1., -1.]
    );
    assert_eq!(
        f(&ops::pow(&t(&[2., 3.], &[2]), &t(&[3.], &[1])).unwrap()),
        [8., 27.]
    );
    let mx = ops::maximum(&t(&[1., f32::NAN, 3.], &[3]), &t(&[2., 0., f32::NAN], &[3])).unwrap();
    let v = f(&mx);
    assert_eq!(v[0], 2.);
    assert!(v[1].is_nan() && v[2].is_nan());
    assert_eq!(
        f(&ops::minimum(&a, &t(&[3.], &[])).unwrap()),
        [1., 2., 3., 3., 3., 3.]
    );
    // Incompatible shapes and dtypes are errors.
    assert!(matches!(
        ops::add(&a, &t(&[1., 2.], &[2])),
        Err(Error::Shape { .. })
    ));
    let i = Tensor::from_vec(vec![1i32, 2, 3], 3).unwrap();
    assert!(matches!(ops::add(&row, &i), Err(Error::DType { .. })));
}

#[test]
fn zero_size_and_scalar_shapes() {
    let e = Tensor::zeros((0, 3), DType::F32).unwrap();
    let r = ops::add(&e, &t(&[1., 2., 3.], &[3])).unwrap();
    assert_eq!(r.dims(), &[0, 3]);
    let r = ops::mul(
        &Tensor::zeros((2, 1, 0), DType::F32).unwrap(),
        &t(&[1., 2.], &[2, 1]),
    )
    .unwrap();
    assert_eq!(r.dims(), &[2, 2, 0]);
    let s = ops::add(&t(&[1.], &[]), &t(&[2.], &[])).unwrap();
    assert_eq!(s.dims(), &[] as &[usize]);
    assert_eq!(s.to_scalar::<f32>().unwrap(), 3.);
}

#[test]
fn integer_arithmetic() {
    let a = Tensor::from_vec(vec![100i8, -128, 7], 3).unwrap();
    let b = Tensor::from_vec(vec![100i8, -1, 2], 3).unwrap();
    // Wrapping, like NumPy.
    assert_eq!(
        ops::add(&a, &b).unwrap().to_vec::<i8>().unwrap(),
        [-56, 127, 9]
    );
    assert_eq!(
        ops::div(&a, &b).unwrap().to_vec::<i8>().unwrap(),
        [1, -128, 3]
    );
    assert_eq!(ops::rem(&a, &b).unwrap().to_vec::<i8>().unwrap(), [0, 0, 1]);
    let z = Tensor::from_vec(vec![1i32, 0], 2).unwrap();
    let x = Tensor::from_vec(vec![5i32, 6], 2).unwrap();
    let e = ops::div(&x, &z).unwrap_err();
    assert!(e.to_string().contains("division by zero"), "{e}");
    assert!(ops::rem(&x, &z).is_err());
    assert!(ops::pow(&x, &Tensor::from_vec(vec![-1i32], 1).unwrap()).is_err());
    assert_eq!(
        ops::pow(&x, &Tensor::from_vec(vec![2i32], 1).unwrap())
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        [25, 36]
    );
    let u = Tensor::from_vec(vec![250u8, 3], 2).unwrap();
    assert_eq!(
        ops::binary_scalar(&u, BinaryOp::Add, 10.0)
            .unwrap()
            .to_vec::<u8>()
            .unwrap(),
        [4, 13]
    );
    assert!(ops::binary_scalar(&u, BinaryOp::Add, 0.5).is_err());
    assert_eq!(
        ops::maximum(&u, &Tensor::from_vec(vec![5u8], 1).unwrap())
            .unwrap()
            .to_vec::<u8>()
            .unwrap(),
        [250, 5]
    );
}

#[test]
fn half_types_compute_in_f32() {
    let a = Tensor::from_vec(vec![f16::from_f32(1.5), f16::from_f32(-2.0)], 2).unwrap();
    let b = Tensor::from_vec(vec![f16::from_f32(0.25)], 1).unwrap();
    let r = ops::mul(&a, &b).unwrap();
    assert_eq!(r.dtype(), DType::F16);
    assert_eq!(
        r.to_vec::<f16>().unwrap(),
        [f16::from_f32(0.375), f16::from_f32(-0.5)]
    );
    let c = Tensor::from_vec(vec![bf16::from_f32(3.0)], 1).unwrap();
    let r = ops::binary_scalar(&c, BinaryOp::Div, 2.0).unwrap();
    assert_eq!(r.to_vec::<bf16>().unwrap(), [bf16::from_f32(1.5)]);
    let r = ops::scalar_binary(1.0, BinaryOp::Sub, &a).unwrap();
    assert_eq!(
        r.to_vec::<f16>().unwrap(),
        [f16::from_f32(-0.5), f16::from_f32(3.0)]
    );
}

#[test]
fn scalar_variants() {
    let a = t(&[1., 2., 4.], &[3]);
    assert_eq!(
        f(&ops::binary_scalar(&a, BinaryOp::Mul, 3.0).unwrap()),
        [3., 6., 12.]
    );
    assert_eq!(
        f(&ops::scalar_binary(8.0, BinaryOp::Div, &a).unwrap()),
        [8., 4., 2.]
    );
    assert_eq!(
        f(&ops::binary_scalar(&a, BinaryOp::Pow, 0.5).unwrap()),
        [1., 2f32.sqrt(), 2.]
    );
}

#[test]
fn tensor_mut_in_place() {
    let base = t(&[1., -2., 3., -4., 5., -6.], &[2, 3]);
    let mut m = TensorMut::from_tensor(&base.t().unwrap()).unwrap();
    assert_eq!(m.shape().dims(), &[3, 2]);
    let ptr = m.as_mut_slice::<f32>().unwrap().as_ptr();
    m.binary_assign(BinaryOp::Add, &t(&[10., 20.], &[2]))
        .unwrap();
    m.binary_scalar_assign(BinaryOp::Mul, 2.0).unwrap();
    m.unary_assign(Activation::Relu).unwrap();
    // Still the same buffer: nothing was reallocated.
    assert_eq!(m.as_mut_slice::<f32>().unwrap().as_ptr(), ptr);
    let r = m.freeze().unwrap();
    // transpose = [[1,-4],[-2,5],[3,-6]] → +[10,20] → ×2 → relu
    assert_eq!(f(&r), [22., 32., 16., 50., 26., 28.]);
    let mut m = TensorMut::zeros(3, DType::F32).unwrap();
    assert!(m
        .binary_assign(BinaryOp::Add, &t(&[1., 2.], &[2, 1]))
        .is_err());
    let mut mi = TensorMut::from_tensor(&Tensor::from_vec(vec![4i32, 9], 2).unwrap()).unwrap();
    assert!(mi.binary_scalar_assign(BinaryOp::Div, 0.0).is_err());
    assert!(mi.unary_assign(Activation::Relu).is_err());
    let mut mh =
        TensorMut::from_tensor(&Tensor::from_vec(vec![f16::from_f32(-1.0)], 1).unwrap()).unwrap();
    mh.unary_assign(Activation::Relu2).unwrap();
    assert_eq!(
        mh.freeze().unwrap().to_vec::<f16>().unwrap(),
        [f16::from_f32(0.0)]
    );
}

// ------------------------------------------------------------------ activations

#[test]
fn activation_values() {
    let x = t(&[-1., 0., 1., 2.], &[4]);
    assert_eq!(f(&ops::relu(&x).unwrap()), [0., 0., 1., 2.]);
    assert_eq!(f(&ops::relu2(&x).unwrap()), [0., 0., 1., 4.]);
    // Reference values from the closed forms in f64.
    close(
        &f(&ops::gelu(&x).unwrap()),
        &[-0.158_655_25, 0., 0.841_344_7, 1.954_5],
        1e-5,
    );
    close(
        &f(&ops::gelu_tanh(&x).unwrap()),
        &[-0.158_808, 0., 0.841_192, 1.954_598],
        1e-5,
    );
    close(
        &f(&ops::silu(&x).unwrap()),
        &[-0.268_941_4, 0., 0.731_058_6, 1.761_594_2],
        1e-6,
    );
    close(
        &f(&ops::sigmoid(&x).unwrap()),
        &[0.268_941_4, 0.5, 0.731_058_6, 0.880_797],
        1e-6,
    );
    close(
        &f(&ops::tanh(&x).unwrap()),
        &[-0.761_594_2, 0., 0.761_594_2, 0.964_027_6],
        1e-6,
    );
    // NaN propagates, infinities saturate.
    let s = t(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY], &[3]);
    let r = f(&ops::sigmoid(&s).unwrap());
    assert!(r[0].is_nan() && r[1] == 1.0 && r[2] == 0.0);
    let r = f(&ops::relu(&s).unwrap());
    assert!(r[0].is_nan() && r[1] == f32::INFINITY && r[2] == 0.0);
    // Non-contiguous input, large enough for the SIMD path.
    let big: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
    let m = t(&big, &[8, 8]);
    let r = ops::gelu(&m.t().unwrap()).unwrap();
    let want: Vec<f32> = f(&m.t().unwrap())
        .iter()
        .map(|&v| 0.5 * v * (1.0 + erf64(v as f64 / 2f64.sqrt()) as f32))
        .collect();
    close(&f(&r), &want, 2e-6);
    assert!(matches!(
        ops::relu(&Tensor::from_vec(vec![1i32], 1).unwrap()),
        Err(Error::UnsupportedDType { .. })
    ));
}

/// erf in f64 by its Taylor series (|x| < 3 here), an independent reference for GELU.
fn erf64(x: f64) -> f64 {
    let mut term = x;
    let mut sum = x;
    for n in 1..200 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn softmax_is_stable_and_along_axis() {
    let x = t(&[1000., 1001., 1002., -1000., 0., 1000.], &[2, 3]);
    let s = f(&ops::softmax(&x, -1).unwrap());
    close(&s[..3], &[0.090_030_57, 0.244_728_48, 0.665_240_9], 1e-6);
    close(&s[3..], &[0., 0., 1.], 1e-6);
    let ls = f(&ops::log_softmax(&x, 1).unwrap());
    close(&ls[..3], &[-2.407_606, -1.407_606, -0.407_606], 1e-5);
    assert_eq!(ls[5], 0.0);
    assert!(ls[3] < -1999.0 && ls[3].is_finite());
    // Axis 0: columns sum to one.
    let c = ops::softmax(&x, 0).unwrap();
    let cs = f(&ops::sum(&c, &[0], false).unwrap());
    close(&cs, &[1., 1., 1.], 1e-6);
    // A NaN poisons its row only.
    let n = f(&ops::softmax(&t(&[f32::NAN, 1., 2., 3.], &[2, 2]), 1).unwrap());
    assert!(n[0].is_nan() && n[1].is_nan());
    close(&n[2..], &[0.268_941_4, 0.731_058_6], 1e-6);
    // f16 in, f16 out; empty rows are fine.
    let h = Tensor::from_vec(vec![f16::from_f32(0.0); 4], (2, 2)).unwrap();
    assert_eq!(
        ops::softmax(&h, 1).unwrap().to_vec::<f16>().unwrap(),
        vec![f16::from_f32(0.5); 4]
    );
    assert_eq!(
        ops::softmax(&Tensor::zeros((3, 0), DType::F32).unwrap(), 1)
            .unwrap()
            .dims(),
        &[3, 0]
    );
    assert!(ops::softmax(&x, 2).is_err());
}

// ------------------------------------------------------------------ reductions

#[test]
fn reductions() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(f(&ops::sum(&x, &[0], false).unwrap()), [5., 7., 9.]);
    let k = ops::sum(&x, &[1], true).unwrap();
    assert_eq!(k.dims(), &[2, 1]);
    assert_eq!(f(&k), [6., 15.]);
    assert_eq!(ops::sum_all(&x).unwrap().to_scalar::<f32>().unwrap(), 21.);
    assert_eq!(f(&ops::sum(&x, &[0, -1], true).unwrap()), [21.]);
    assert_eq!(f(&ops::mean(&x, &[1], false).unwrap()), [2., 5.]);
    assert_eq!(f(&ops::max(&x, &[0], false).unwrap()), [4., 5., 6.]);
    assert_eq!(
        f(&ops::min(&x.t().unwrap(), &[1], false).unwrap()),
        [1., 2., 3.]
    );
    assert_eq!(
        ops::argmax(&x, 1, false).unwrap().to_vec::<i32>().unwrap(),
        [2, 2]
    );
    assert_eq!(ops::argmin(&x, 0, true).unwrap().dims(), &[1, 3]);
    close(
        &f(&ops::var(&x, &[1], true, false).unwrap()),
        &[1., 1.],
        1e-6,
    );
    close(
        &f(&ops::var(&x, &[1], false, false).unwrap()),
        &[2. / 3., 2. / 3.],
        1e-6,
    );
    close(
        &f(&ops::std(&x, &[0], true, false).unwrap()),
        &[2.121_320_3; 3],
        1e-6,
    );
    close(
        &[ops::var_all(&x, true).unwrap().to_scalar::<f32>().unwrap()],
        &[3.5],
        1e-6,
    );
    // Large mean, small spread: two-pass variance stays exact.
    let y = t(&[1e6 + 1., 1e6 + 2., 1e6 + 3.], &[3]);
    close(&f(&ops::var(&y, &[0], true, false).unwrap()), &[1.], 1e-6);
    // NaN: min/max propagate; arg* pick the first NaN.
    let n = t(&[1., f32::NAN, 3., f32::NAN], &[4]);
    assert!(ops::max_all(&n)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .is_nan());
    assert_eq!(
        ops::argmax(&n, 0, false).unwrap().to_vec::<i32>().unwrap(),
        [1]
    );
    assert_eq!(
        ops::argmin(&t(&[3., 1., 1.], &[3]), 0, false)
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        [1]
    );
    // Empty reductions.
    let e = Tensor::zeros((0, 3), DType::F32).unwrap();
    assert_eq!(f(&ops::sum(&e, &[0], false).unwrap()), [0., 0., 0.]);
    assert!(f(&ops::mean(&e, &[0], false).unwrap())[0].is_nan());
    assert!(ops::max(&e, &[0], false).is_err());
    assert_eq!(ops::max(&e, &[1], false).unwrap().dims(), &[0]);
    assert!(f(&ops::var(&t(&[1.], &[1]), &[0], true, false).unwrap())[0].is_nan());
    // Integers: sum → i32, min/max keep the dtype, mean is unsupported.
    let i = Tensor::from_vec(vec![200u8, 100, 50], 3).unwrap();
    let s = ops::sum_all(&i).unwrap();
    assert_eq!(s.dtype(), DType::I32);
    assert_eq!(s.to_scalar::<i32>().unwrap(), 350);
    assert_eq!(ops::max_all(&i).unwrap().to_scalar::<u8>().unwrap(), 200);
    assert_eq!(
        ops::argmin(&i, 0, false).unwrap().to_vec::<i32>().unwrap(),
        [2]
    );
    assert!(matches!(
        ops::mean_all(&i),
        Err(Error::UnsupportedDType { .. })
    ));
    // bf16 in, bf16 out.
    let b = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(
        ops::sum(&b, &[1], false).unwrap().to_vec::<bf16>().unwrap(),
        [bf16::from_f32(6.), bf16::from_f32(15.)]
    );
    assert!(ops::sum(&x, &[2], false).is_err());
    assert!(ops::reduce::reduce(&x, ops::ReduceOp::ArgMax, &[0, 1], false).is_err());
}

#[test]
fn large_reductions_use_blocks_and_threads() {
    // 3M elements: above the parallel threshold, many SUM_BLOCKs.
    let n = 3_000_000;
    let v: Vec<f32> = (0..n).map(|i| ((i % 1000) as f32) * 0.001).collect();
    let x = t(&v, &[n]);
    let exact: f64 = v.iter().map(|&a| a as f64).sum();
    let s = ops::sum_all(&x).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert!((s - exact).abs() / exact < 1e-6, "{s} vs {exact}");
    let m = ops::max_all(&x).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(m, v.iter().cloned().fold(f32::MIN, f32::max));
    let r = ops::sum(&x.reshape((1000, 3000)).unwrap(), &[1], false).unwrap();
    assert_eq!(r.dims(), &[1000]);
}

// ------------------------------------------------------------------ comparisons

#[test]
fn comparisons_where_clamp() {
    let a = t(&[1., 2., f32::NAN], &[3]);
    let b = t(&[2.], &[1]);
    let u8s = |t: Tensor| t.to_vec::<u8>().unwrap();
    assert_eq!(u8s(ops::eq(&a, &b).unwrap()), [0, 1, 0]);
    assert_eq!(u8s(ops::ne(&a, &b).unwrap()), [1, 0, 1]);
    assert_eq!(u8s(ops::lt(&a, &b).unwrap()), [1, 0, 0]);
    assert_eq!(u8s(ops::le(&a, &b).unwrap()), [1, 1, 0]);
    assert_eq!(u8s(ops::gt(&a, &b).unwrap()), [0, 0, 0]);
    assert_eq!(u8s(ops::ge(&a, &b).unwrap()), [0, 1, 0]);
    assert_eq!(
        u8s(ops::compare_scalar(&a, CmpOp::Gt, 1.5).unwrap()),
        [0, 1, 0]
    );
    let mask = ops::gt(&t(&[1., 5.], &[2, 1]), &t(&[2., 3., 4.], &[3])).unwrap();
    assert_eq!(mask.dims(), &[2, 3]);
    let w = ops::where_cond(&mask, &t(&[1.], &[]), &t(&[-1.], &[])).unwrap();
    assert_eq!(f(&w), [-1., -1., -1., 1., 1., 1.]);
    assert!(ops::where_cond(&a, &a, &a).is_err());
    let c = ops::clamp(&t(&[-5., 0.5, 5., f32::NAN], &[4]), Some(0.), Some(1.)).unwrap();
    let c = f(&c);
    assert_eq!(&c[..3], &[0., 0.5, 1.]);
    assert!(c[3].is_nan());
    assert_eq!(
        f(&ops::clamp(&t(&[-5., 5.], &[2]), None, Some(0.)).unwrap()),
        [-5., 0.]
    );
    let i = Tensor::from_vec(vec![-3i8, 0, 120], 3).unwrap();
    assert_eq!(
        ops::clamp(&i, Some(-1.5), Some(1000.))
            .unwrap()
            .to_vec::<i8>()
            .unwrap(),
        [-1, 0, 120]
    );
    assert!(ops::clamp(&i, Some(2.), Some(1.)).is_err());
}

// ------------------------------------------------------------------ shape ops

#[test]
fn concat_stack_split() {
    let a = t(&[1., 2., 3., 4.], &[2, 2]);
    let b = t(&[5., 6.], &[2, 1]);
    let c = ops::concat(&[&a, &b], 1).unwrap();
    assert_eq!(c.dims(), &[2, 3]);
    assert_eq!(f(&c), [1., 2., 5., 3., 4., 6.]);
    let c0 = ops::concat(&[&a, &a.t().unwrap()], 0).unwrap();
    assert_eq!(f(&c0), [1., 2., 3., 4., 1., 3., 2., 4.]);
    assert!(ops::concat(&[&a, &b], 0).is_err());
    assert!(ops::concat(&[], 0).is_err());
    let s = ops::stack(&[&a, &a], 0).unwrap();
    assert_eq!(s.dims(), &[2, 2, 2]);
    let s2 = ops::stack(&[&b, &b], 2).unwrap();
    assert_eq!(s2.dims(), &[2, 1, 2]);
    assert_eq!(f(&s2), [5., 5., 6., 6.]);
    let x = t(&(0..10).map(|i| i as f32).collect::<Vec<_>>(), &[10]);
    let parts = ops::split(&x, 4, 0).unwrap();
    assert_eq!(
        parts.iter().map(|p| p.dims()[0]).collect::<Vec<_>>(),
        [4, 4, 2]
    );
    assert_eq!(f(&parts[2]), [8., 9.]);
    let parts = ops::split_sizes(&x, &[1, 9], 0).unwrap();
    assert_eq!(f(&parts[0]), [0.]);
    assert!(ops::split_sizes(&x, &[1, 2], 0).is_err());
    assert_eq!(ops::chunk(&x, 3, 0).unwrap().len(), 3);
    // Splits are views of the same storage.
    let p = &ops::split(&x, 5, 0).unwrap()[1];
    assert_eq!(p.layout().start_offset(), 5);
    // Empty pieces and zero-size concat.
    let e = Tensor::zeros((2, 0), DType::F32).unwrap();
    assert_eq!(f(&ops::concat(&[&e, &a, &e], 1).unwrap()), f(&a));
}

#[test]
fn index_select_and_gather() {
    // Embedding lookup: [vocab=4, hidden=3] with ids [2, 2].
    let w = t(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[4, 3]);
    let ids = Tensor::from_vec(vec![3i32, 0, 1, 3], (2, 2)).unwrap();
    let e = ops::index_select(&w, &ids, 0).unwrap();
    assert_eq!(e.dims(), &[2, 2, 3]);
    assert_eq!(f(&e), [9., 10., 11., 0., 1., 2., 3., 4., 5., 9., 10., 11.]);
    let cols = ops::index_select(&w, &Tensor::from_vec(vec![2u8, 0], 2).unwrap(), 1).unwrap();
    assert_eq!(f(&cols), [2., 0., 5., 3., 8., 6., 11., 9.]);
    let bad = Tensor::from_vec(vec![4i32], 1).unwrap();
    assert!(matches!(
        ops::index_select(&w, &bad, 0),
        Err(Error::OutOfRange { .. })
    ));
    let neg = Tensor::from_vec(vec![-1i32], 1).unwrap();
    assert!(matches!(
        ops::index_select(&w, &neg, 0),
        Err(Error::OutOfRange { .. })
    ));
    assert!(ops::index_select(&w, &t(&[0.], &[1]), 0).is_err());
    // gather along dim 1: out[i][j] = w[i][idx[i][j]]
    let idx = Tensor::from_vec(vec![2i32, 0, 1, 1], (2, 2)).unwrap();
    let g = ops::gather(&w, 1, &idx).unwrap();
    assert_eq!(f(&g), [2., 0., 4., 4.]);
    let g0 = ops::gather(&w, 0, &Tensor::from_vec(vec![3i32, 0, 1], (1, 3)).unwrap()).unwrap();
    assert_eq!(f(&g0), [9., 1., 5.]);
    assert!(ops::gather(&w, 1, &Tensor::from_vec(vec![0i32; 5], (5, 1)).unwrap()).is_err());
    // Any dtype; contiguous copies of views.
    let h = w.to_dtype(DType::F16).unwrap();
    assert_eq!(ops::index_select(&h, &ids, 0).unwrap().dtype(), DType::F16);
    let tv = w.t().unwrap().narrow(1, 1, 2).unwrap();
    let cc = ops::contiguous_copy(&tv).unwrap();
    assert!(cc.is_contiguous());
    assert_eq!(f(&cc), f(&tv));
    let same = ops::contiguous_copy(&w).unwrap();
    assert_ne!(
        same.contiguous_bytes().unwrap().as_ptr(),
        w.contiguous_bytes().unwrap().as_ptr()
    );
}

// ------------------------------------------------------------------ matmul

fn naive_mm(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k)
                .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                .sum::<f64>() as f32;
        }
    }
    c
}

#[test]
fn matmul_shapes_and_views() {
    let a: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..12).map(|i| (i as f32) * 0.5 - 2.0).collect();
    let ta = t(&a, &[2, 3]);
    let tb = t(&b, &[3, 4]);
    let c = ops::matmul(&ta, &tb).unwrap();
    assert_eq!(c.dims(), &[2, 4]);
    close(&f(&c), &naive_mm(&a, &b, 2, 3, 4), 1e-6);
    // Transposed operand as a view: bᵀ stored as [4, 3], used as [3, 4] without a copy.
    let bt = t(&b, &[4, 3]);
    let view = bt.t().unwrap();
    assert!(!view.is_contiguous());
    let c2 = ops::matmul(&ta, &view).unwrap();
    close(&f(&c2), &naive_mm(&a, &f(&view), 2, 3, 4), 1e-6);
    // Batched with a broadcast weight: [2, 2, 3] × [3, 4].
    let batch = t(&(0..12).map(|i| i as f32).collect::<Vec<_>>(), &[2, 2, 3]);
    let cb = ops::matmul(&batch, &tb).unwrap();
    assert_eq!(cb.dims(), &[2, 2, 4]);
    let lower = naive_mm(&f(&batch)[6..], &b, 2, 3, 4);
    close(&f(&cb)[8..], &lower, 1e-6);
    // 1-D operands.
    let v = ops::matmul(&t(&[1., 2., 3.], &[3]), &tb).unwrap();
    assert_eq!(v.dims(), &[4]);
    let mv = ops::matmul(&ta, &t(&[1., 1., 1.], &[3])).unwrap();
    assert_eq!(f(&mv), [3., 12.]);
    // k = 0 gives zeros; mismatches are errors.
    let z = ops::matmul(
        &Tensor::zeros((2, 0), DType::F32).unwrap(),
        &Tensor::zeros((0, 3), DType::F32).unwrap(),
    )
    .unwrap();
    assert_eq!(f(&z), [0.; 6]);
    assert!(matches!(ops::matmul(&ta, &ta), Err(Error::Shape { .. })));
    assert!(matches!(
        ops::matmul(
            &Tensor::from_vec(vec![1i32], (1, 1)).unwrap(),
            &Tensor::from_vec(vec![1i32], (1, 1)).unwrap()
        ),
        Err(Error::UnsupportedDType { .. })
    ));
    // f16 through f32.
    let h = ops::matmul(
        &ta.to_dtype(DType::F16).unwrap(),
        &tb.to_dtype(DType::F16).unwrap(),
    )
    .unwrap();
    assert_eq!(h.dtype(), DType::F16);
    close(&f(&h.to_dtype(DType::F32).unwrap()), &f(&c), 1e-3);
}

#[test]
fn matmul_large_parallel() {
    let (m, k, n) = (96, 80, 70);
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    let c = ops::matmul(&t(&a, &[m, k]), &t(&b, &[k, n])).unwrap();
    // Small integers: exact in f32.
    assert_eq!(f(&c), naive_mm(&a, &b, m, k, n));
}

// ------------------------------------------------------------------ linear algebra

fn mm(a: &Tensor, b: &Tensor) -> Vec<f32> {
    f(&ops::matmul(a, b).unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

#[test]
fn svd_qr_reconstruct() {
    for &(m, n) in &[(6, 4), (4, 6), (5, 5), (1, 3)] {
        let a = t(&pseudo_random(m * n, (m * 10 + n) as u32), &[m, n]);
        let (u, s, vt) = ops::svd(&a).unwrap();
        let r = m.min(n);
        assert_eq!(
            (u.dims(), s.dims(), vt.dims()),
            (&[m, r][..], &[r][..], &[r, n][..])
        );
        let sv = f(&s);
        assert!(sv.windows(2).all(|w| w[0] >= w[1]) && sv.iter().all(|&x| x >= 0.0));
        let us = ops::mul(&u, &s).unwrap();
        // Tolerance: f32 rounding of the factors, ~1e-5 for entries of size ~1.
        assert!(max_abs_diff(&mm(&us, &vt), &f(&a)) < 1e-5);
        let utu = mm(&u.t().unwrap(), &u);
        let eye: Vec<f32> = (0..r * r)
            .map(|i| if i % (r + 1) == 0 { 1.0 } else { 0.0 })
            .collect();
        assert!(max_abs_diff(&utu, &eye) < 1e-5);
        let (q, rr) = ops::qr(&a).unwrap();
        assert_eq!((q.dims(), rr.dims()), (&[m, r][..], &[r, n][..]));
        assert!(max_abs_diff(&mm(&q, &rr), &f(&a)) < 1e-5);
        assert!(max_abs_diff(&mm(&q.t().unwrap(), &q), &eye) < 1e-5);
        let rv = f(&rr);
        for i in 0..r {
            for j in 0..i.min(n) {
                assert_eq!(rv[i * n + j], 0.0, "R not upper triangular");
            }
        }
    }
}

#[test]
fn cholesky_and_solve() {
    let n = 5;
    let g = t(&pseudo_random(n * n, 7), &[n, n]);
    // A = G·Gᵀ + n·I is symmetric positive definite.
    let mut a = mm(&g, &g.t().unwrap());
    for i in 0..n {
        a[i * n + i] += n as f32;
    }
    let at = t(&a, &[n, n]);
    let l = ops::cholesky(&at).unwrap();
    let lv = f(&l);
    for i in 0..n {
        assert!(lv[i * n + i] > 0.0);
        for j in i + 1..n {
            assert_eq!(lv[i * n + j], 0.0);
        }
    }
    assert!(max_abs_diff(&mm(&l, &l.t().unwrap()), &a) < 1e-4);
    let not_pd = t(&[1., 2., 2., 1.], &[2, 2]);
    assert!(matches!(
        ops::cholesky(&not_pd),
        Err(ops::LinalgError::NotPositiveDefinite { pivot: 1 })
    ));
    assert!(matches!(
        ops::cholesky(&g.narrow(0, 0, 3).unwrap()),
        Err(ops::LinalgError::NotSquare { .. })
    ));
    // solve: residual ‖A·x − b‖ small.
    let b = t(&pseudo_random(n * 2, 3), &[n, 2]);
    let x = ops::solve(&at, &b).unwrap();
    assert_eq!(x.dims(), &[n, 2]);
    assert!(max_abs_diff(&mm(&at, &x), &f(&b)) < 1e-4);
    let bv = t(&pseudo_random(n, 9), &[n]);
    let xv = ops::solve(&g, &bv).unwrap();
    assert_eq!(xv.dims(), &[n]);
    assert!(max_abs_diff(&f(&ops::matmul(&g, &xv).unwrap()), &f(&bv)) < 1e-4);
    let singular = t(&[1., 2., 2., 4.], &[2, 2]);
    assert!(matches!(
        ops::solve(&singular, &t(&[1., 1.], &[2])),
        Err(ops::LinalgError::Singular { .. })
    ));
    assert!(matches!(
        ops::solve(&g.narrow(1, 0, 2).unwrap(), &bv),
        Err(ops::LinalgError::NotSquare { .. })
    ));
    assert!(ops::solve(&at, &t(&[1., 2.], &[2])).is_err());
    assert!(matches!(
        ops::svd(&t(&[f32::NAN, 1.], &[1, 2])),
        Err(ops::LinalgError::NonFinite { .. })
    ));
    // Converts into the crate error for `?` in Result<_, bitnet_core::Error> code.
    let e: Error = ops::cholesky(&not_pd).unwrap_err().into();
    assert!(e.to_string().contains("not positive definite"));
}

// ------------------------------------------------------------------ dispatch

fn env(avx2: bool, threads: usize) -> Env {
    Env {
        avx2,
        threads,
        forced_kernel: None,
        preferred_backend: Device::Cpu,
    }
}

fn req(class: OpClass, devices: &[Device], dtype: DType, work: usize) -> Request<'_> {
    Request {
        op: "test_op",
        class,
        devices,
        dtype,
        work,
    }
}

#[test]
fn dispatch_decision_table() {
    let cpu2 = [Device::Cpu, Device::Cpu];
    // Kernel by class, dtype, size and CPU.
    let p = decide(
        &req(OpClass::Elementwise, &cpu2, DType::F32, 1000),
        &env(true, 2),
    )
    .unwrap();
    assert_eq!(
        (p.device, p.kernel, p.parallel, p.fallback.as_deref()),
        (Device::Cpu, Kernel::Avx2, false, None)
    );
    let p = decide(
        &req(OpClass::Elementwise, &cpu2, DType::F32, 8),
        &env(true, 2),
    )
    .unwrap();
    assert_eq!(p.kernel, Kernel::Scalar, "below SIMD_MIN_ELEMS");
    let p = decide(
        &req(OpClass::Elementwise, &cpu2, DType::I32, 1 << 20),
        &env(true, 2),
    )
    .unwrap();
    assert_eq!(p.kernel, Kernel::Scalar, "no integer SIMD kernels");
    let p = decide(
        &req(OpClass::Reduce, &cpu2, DType::F32, 1 << 20),
        &env(false, 2),
    )
    .unwrap();
    assert_eq!(p.kernel, Kernel::Scalar, "no AVX2 on this CPU");
    assert!(p.parallel);
    let p = decide(
        &req(OpClass::Copy, &cpu2, DType::F32, 1 << 20),
        &env(true, 2),
    )
    .unwrap();
    assert_eq!(p.kernel, Kernel::Scalar);
    // Thresholds for threads.
    let t = OpClass::Transcendental.parallel_threshold();
    assert!(
        !decide(
            &req(OpClass::Transcendental, &cpu2, DType::F32, t - 1),
            &env(true, 2)
        )
        .unwrap()
        .parallel
    );
    assert!(
        decide(
            &req(OpClass::Transcendental, &cpu2, DType::F32, t),
            &env(true, 2)
        )
        .unwrap()
        .parallel
    );
    assert!(
        !decide(
            &req(OpClass::Transcendental, &cpu2, DType::F32, t),
            &env(true, 1)
        )
        .unwrap()
        .parallel
    );
    assert!(
        OpClass::Elementwise.parallel_threshold() > t,
        "cheap ops need more work per thread"
    );
    // Library-backed classes.
    assert_eq!(
        decide(&req(OpClass::Matmul, &cpu2, DType::F32, 10), &env(true, 2))
            .unwrap()
            .kernel,
        Kernel::Gemm
    );
    assert_eq!(
        decide(&req(OpClass::Linalg, &cpu2, DType::F32, 10), &env(true, 2))
            .unwrap()
            .kernel,
        Kernel::Faer
    );
    // Forced kernels: scalar always honoured; AVX2 an error where missing.
    let mut e = env(true, 2);
    e.forced_kernel = Some(Kernel::Scalar);
    assert_eq!(
        decide(&req(OpClass::Softmax, &cpu2, DType::F32, 1 << 20), &e)
            .unwrap()
            .kernel,
        Kernel::Scalar
    );
    let mut e = env(false, 2);
    e.forced_kernel = Some(Kernel::Avx2);
    assert!(matches!(
        decide(&req(OpClass::Softmax, &cpu2, DType::F32, 100), &e),
        Err(Error::KernelUnavailable(_))
    ));
    let mut e = env(true, 2);
    e.forced_kernel = Some(Kernel::Avx2);
    assert_eq!(
        decide(&req(OpClass::Softmax, &cpu2, DType::F32, 4), &e)
            .unwrap()
            .kernel,
        Kernel::Avx2
    );
    assert_eq!(
        decide(&req(OpClass::Elementwise, &cpu2, DType::U8, 100), &e)
            .unwrap()
            .kernel,
        Kernel::Scalar
    );
    // Devices: mixed → DeviceMismatch; GPU inputs → Unsupported (no silent copy).
    let mixed = [Device::Cpu, Device::Cuda(0)];
    match decide(
        &req(OpClass::Elementwise, &mixed, DType::F32, 10),
        &env(true, 2),
    ) {
        Err(Error::DeviceMismatch { op, a, b }) => {
            assert_eq!((op, a.as_str(), b.as_str()), ("test_op", "cpu", "cuda:0"))
        }
        other => panic!("{other:?}"),
    }
    let gpus = [Device::Cuda(0), Device::Cuda(1)];
    assert!(matches!(
        decide(&req(OpClass::Matmul, &gpus, DType::F32, 10), &env(true, 2)),
        Err(Error::DeviceMismatch { .. })
    ));
    let gpu = [Device::Wgpu(0)];
    let err = decide(&req(OpClass::Matmul, &gpu, DType::F32, 10), &env(true, 2)).unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("to_device"),
        "{err}"
    );
    // A preferred GPU backend falls back to the CPU with a reason.
    let mut e = env(true, 2);
    e.preferred_backend = Device::Cuda(0);
    let p = decide(&req(OpClass::Elementwise, &cpu2, DType::F32, 100), &e).unwrap();
    assert_eq!(p.device, Device::Cpu);
    let why = p.fallback.unwrap();
    assert!(
        why.contains("cuda:0") && why.contains("running on cpu"),
        "{why}"
    );
    // No inputs (in-place ops on a TensorMut) means the CPU.
    assert_eq!(
        decide(
            &req(OpClass::Elementwise, &[], DType::F32, 100),
            &env(true, 2)
        )
        .unwrap()
        .device,
        Device::Cpu
    );
}

#[test]
fn dispatch_fallback_is_counted_and_forced_kernels_apply() {
    let x = t(&[1., 2., 3.], &[3]);
    dispatch::set_preferred_backend(Some(Device::Cuda(0)));
    let before = dispatch::fallback_count();
    let r = ops::add(&x, &x);
    let after = dispatch::fallback_count();
    dispatch::set_preferred_backend(None);
    assert_eq!(f(&r.unwrap()), [2., 4., 6.]);
    assert!(after > before);
    assert!(dispatch::set_forced_kernel(Some(Kernel::Gemm)).is_err());
    if !dispatch::avx2_available() {
        assert!(matches!(
            dispatch::set_forced_kernel(Some(Kernel::Avx2)),
            Err(Error::KernelUnavailable(_))
        ));
    }
    let p = dispatch::plan(
        "probe",
        OpClass::Elementwise,
        &[&x, &x],
        DType::F32,
        1 << 10,
    )
    .unwrap();
    assert_eq!(p.kernel == Kernel::Avx2, dispatch::avx2_available());
}

#[test]
fn linalg_empty_matrices() {
    let e = Tensor::zeros((0, 0), DType::F32).unwrap();
    let (u, s, vt) = ops::svd(&Tensor::zeros((0, 3), DType::F32).unwrap()).unwrap();
    assert_eq!(
        (u.dims(), s.dims(), vt.dims()),
        (&[0, 0][..], &[0][..], &[0, 3][..])
    );
    let (q, r) = ops::qr(&Tensor::zeros((3, 0), DType::F32).unwrap()).unwrap();
    assert_eq!((q.dims(), r.dims()), (&[3, 0][..], &[0, 0][..]));
    assert_eq!(ops::cholesky(&e).unwrap().dims(), &[0, 0]);
    assert_eq!(
        ops::solve(&e, &Tensor::zeros(0, DType::F32).unwrap())
            .unwrap()
            .dims(),
        &[0]
    );
    assert!(matches!(
        ops::svd(&Tensor::zeros(3, DType::F32).unwrap()),
        Err(ops::LinalgError::Tensor(Error::Shape { .. }))
    ));
    assert!(matches!(
        ops::qr(&Tensor::zeros((2, 2), DType::I32).unwrap()),
        Err(ops::LinalgError::Tensor(Error::UnsupportedDType { .. }))
    ));
}
