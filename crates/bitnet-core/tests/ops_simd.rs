//! Every AVX2 kernel of `ops::simd` against the scalar path on the same data: lengths
//! around the vector widths (tails), random values, and NaN/±∞/±0 mixed in.

use bitnet_core::ops::dispatch::{avx2_available, Kernel};
use bitnet_core::ops::simd::{self, BinOp, UnOp};
use proptest::prelude::*;

const BIN_OPS: [BinOp; 6] = [
    BinOp::Add,
    BinOp::Sub,
    BinOp::Mul,
    BinOp::Div,
    BinOp::Min,
    BinOp::Max,
];
const UN_OPS: [UnOp; 8] = [
    UnOp::Relu,
    UnOp::Relu2,
    UnOp::GeluErf,
    UnOp::GeluTanh,
    UnOp::Silu,
    UnOp::Sigmoid,
    UnOp::Tanh,
    UnOp::Exp,
];

fn same_bits_or_both_nan(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

/// Tolerance of the polynomial approximations: 2e-6 relative plus 1e-6 absolute (GELU's
/// erf is ~1.5e-7 absolute; exp near the flush-to-zero edge ~1e-38 absolute).
fn approx(a: f32, b: f32) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= 1e-6 + 2e-6 * a.abs().max(b.abs())
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -30.0f32..30.0,
        2 => -1.0f32..1.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => -100.0f32..100.0,
    ]
}

fn have_avx2() -> bool {
    if !avx2_available() {
        eprintln!("skipping: this CPU has no AVX2/FMA");
        return false;
    }
    true
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_kernels_match_scalar(
        a in prop::collection::vec(value(), 0..80),
        b0 in prop::collection::vec(value(), 80),
        s in value(),
    ) {
        if !have_avx2() { return Ok(()); }
        let b = &b0[..a.len()];
        let n = a.len();
        for op in BIN_OPS {
            let (mut o1, mut o2) = (vec![0f32; n], vec![0f32; n]);
            simd::binary_vv(Kernel::Scalar, op, &a, b, &mut o1);
            simd::binary_vv(Kernel::Avx2, op, &a, b, &mut o2);
            for i in 0..n {
                prop_assert!(same_bits_or_both_nan(o1[i], o2[i]), "{op:?} vv {} {} -> {} vs {}", a[i], b[i], o1[i], o2[i]);
            }
            simd::binary_vs(Kernel::Scalar, op, &a, s, &mut o1);
            simd::binary_vs(Kernel::Avx2, op, &a, s, &mut o2);
            for i in 0..n {
                prop_assert!(same_bits_or_both_nan(o1[i], o2[i]), "{op:?} vs");
            }
            simd::binary_sv(Kernel::Scalar, op, s, b, &mut o1);
            simd::binary_sv(Kernel::Avx2, op, s, b, &mut o2);
            for i in 0..n {
                prop_assert!(same_bits_or_both_nan(o1[i], o2[i]), "{op:?} sv");
            }
            let (mut i1, mut i2) = (a.clone(), a.clone());
            simd::binary_assign_vv(Kernel::Scalar, op, &mut i1, b);
            simd::binary_assign_vv(Kernel::Avx2, op, &mut i2, b);
            for i in 0..n {
                prop_assert!(same_bits_or_both_nan(i1[i], i2[i]), "{op:?} assign");
                prop_assert!(same_bits_or_both_nan(i1[i], simd::bin_scalar(op, a[i], b[i])));
            }
        }
    }

    #[test]
    fn unary_kernels_match_scalar(x in prop::collection::vec(value(), 0..80)) {
        if !have_avx2() { return Ok(()); }
        let n = x.len();
        for op in UN_OPS {
            let (mut o1, mut o2) = (vec![0f32; n], vec![0f32; n]);
            simd::unary(Kernel::Scalar, op, &x, &mut o1);
            simd::unary(Kernel::Avx2, op, &x, &mut o2);
            for i in 0..n {
                let exact = matches!(op, UnOp::Relu | UnOp::Relu2);
                let ok = if exact { same_bits_or_both_nan(o1[i], o2[i]) } else { approx(o1[i], o2[i]) };
                prop_assert!(ok, "{op:?}({}) scalar {} avx2 {}", x[i], o1[i], o2[i]);
            }
            let mut inplace = x.clone();
            simd::unary_inplace(Kernel::Avx2, op, &mut inplace);
            for i in 0..n {
                prop_assert!(same_bits_or_both_nan(inplace[i], o2[i]));
            }
        }
    }

    #[test]
    fn reductions_match_scalar(x in prop::collection::vec(-100.0f32..100.0, 0..9000), m in -10.0f32..10.0) {
        if !have_avx2() { return Ok(()); }
        let abs: f64 = x.iter().map(|v| v.abs() as f64).sum();
        let (s1, s2) = (simd::sum(Kernel::Scalar, &x), simd::sum(Kernel::Avx2, &x));
        prop_assert!((s1 - s2).abs() <= 1e-5 * abs + 1e-6, "sum {s1} vs {s2}");
        let exact: f64 = x.iter().map(|&v| v as f64).sum();
        prop_assert!((s2 - exact).abs() <= 1e-5 * abs + 1e-6, "sum {s2} vs exact {exact}");
        let (q1, q2) = (simd::sum_sq_dev(Kernel::Scalar, &x, m), simd::sum_sq_dev(Kernel::Avx2, &x, m));
        prop_assert!((q1 - q2).abs() <= 1e-5 * q1.abs() + 1e-6);
        prop_assert_eq!(simd::max(Kernel::Scalar, &x), simd::max(Kernel::Avx2, &x));
        prop_assert_eq!(simd::min(Kernel::Scalar, &x), simd::min(Kernel::Avx2, &x));
    }

    #[test]
    fn minmax_propagate_specials(x in prop::collection::vec(value(), 0..70)) {
        if !have_avx2() { return Ok(()); }
        prop_assert!(same_bits_or_both_nan(simd::max(Kernel::Scalar, &x), simd::max(Kernel::Avx2, &x)));
        prop_assert!(same_bits_or_both_nan(simd::min(Kernel::Scalar, &x), simd::min(Kernel::Avx2, &x)));
        if x.iter().any(|v| v.is_nan()) {
            prop_assert!(simd::max(Kernel::Avx2, &x).is_nan());
        }
    }

    #[test]
    fn softmax_helper_matches_scalar(x in prop::collection::vec(-50.0f32..50.0, 1..300)) {
        if !have_avx2() { return Ok(()); }
        let m = simd::max(Kernel::Scalar, &x);
        let (mut o1, mut o2) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        let s1 = simd::exp_sub_sum(Kernel::Scalar, &x, m, &mut o1);
        let s2 = simd::exp_sub_sum(Kernel::Avx2, &x, m, &mut o2);
        prop_assert!((s1 - s2).abs() <= 1e-5 * s1);
        for i in 0..x.len() {
            prop_assert!(approx(o1[i], o2[i]));
        }
    }
}

#[test]
fn exp_edges() {
    if !have_avx2() {
        return;
    }
    let x = [
        0.0f32, 1.0, -1.0, 10.0, -10.0, 88.7, -87.0, -100.0, -200.0, 200.0, 0.5, -0.5,
    ];
    let mut o = [0f32; 12];
    simd::unary(Kernel::Avx2, UnOp::Exp, &x, &mut o);
    for (i, &v) in x.iter().enumerate() {
        let e = v.exp();
        if v < -103.98 {
            assert_eq!(o[i], 0.0, "exp({v})");
        } else {
            assert!(approx(o[i], e), "exp({v}) = {} vs {e}", o[i]);
        }
    }
    assert_eq!(o[9], f32::INFINITY);
}
