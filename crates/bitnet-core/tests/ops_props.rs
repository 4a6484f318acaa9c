//! Property tests of `bitnet_core::ops` against naive references written from the
//! definitions: NumPy broadcasting (including size-0 and size-1 dims and rank-0 tensors),
//! non-contiguous inputs (transposed and narrowed views), and NaN/±∞ propagation.

use bitnet_core::ops::{self, BinaryOp, CmpOp};
use bitnet_core::Tensor;
use proptest::prelude::*;

// ------------------------------------------------------------------ naive n-d helpers

fn count(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Flat index into `shape` (rank ≤ out rank) of an output index under broadcasting.
fn bcast_index(out_idx: &[usize], shape: &[usize]) -> usize {
    let off = out_idx.len() - shape.len();
    let mut flat = 0;
    for (d, &s) in shape.iter().enumerate() {
        let i = if s == 1 { 0 } else { out_idx[off + d] };
        flat = flat * s + i;
    }
    flat
}

fn bcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let da = if i + a.len() >= r {
                a[i + a.len() - r]
            } else {
                1
            };
            let db = if i + b.len() >= r {
                b[i + b.len() - r]
            } else {
                1
            };
            if da == db || db == 1 {
                Some(da)
            } else if da == 1 {
                Some(db)
            } else {
                None
            }
        })
        .collect()
}

// ------------------------------------------------------------------ strategies

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        24 => -10.0f32..10.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(0.0f32),
    ]
}

/// An output shape and two operand shapes that broadcast to it: each operand drops some
/// leading dims and replaces some dims by 1.
fn broadcast_shapes() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    prop::collection::vec(prop_oneof![1 => Just(0usize), 8 => 1usize..5], 0..5).prop_flat_map(
        |out| {
            let r = out.len();
            let operand = (0..=r, prop::collection::vec(any::<bool>(), r)).prop_map({
                let out = out.clone();
                move |(drop, ones)| {
                    (drop..r)
                        .map(|d| if ones[d] { 1 } else { out[d] })
                        .collect::<Vec<usize>>()
                }
            });
            (operand.clone(), operand)
        },
    )
}

/// How an input is laid out in memory.
#[derive(Clone, Copy, Debug)]
enum View {
    Contiguous,
    /// Stored reversed-dims and viewed through a permutation (strided, transposed).
    Transposed,
    /// Stored with an extra garbage column and narrowed (strided rows).
    Narrowed,
}

fn view() -> impl Strategy<Value = View> {
    prop_oneof![
        Just(View::Contiguous),
        Just(View::Transposed),
        Just(View::Narrowed)
    ]
}

/// A tensor with logical values `data` (row-major) and `shape`, laid out as `view` says.
fn make<T: bitnet_core::dtype::WithDType>(
    data: &[T],
    shape: &[usize],
    view: View,
    pad: T,
) -> Tensor {
    let r = shape.len();
    match view {
        View::Transposed if r >= 2 => {
            let rev: Vec<usize> = (0..r).rev().collect();
            let stored = Tensor::from_slice(data, shape)
                .unwrap()
                .permute(&rev)
                .unwrap()
                .contiguous()
                .unwrap();
            stored.permute(&rev).unwrap()
        }
        View::Narrowed if r >= 1 => {
            let last = shape[r - 1];
            let rows = count(&shape[..r - 1]);
            let mut padded = Vec::with_capacity(rows * (last + 1));
            for row in 0..rows {
                padded.extend_from_slice(&data[row * last..(row + 1) * last]);
                padded.push(pad);
            }
            let mut pshape = shape.to_vec();
            pshape[r - 1] = last + 1;
            Tensor::from_slice(&padded, pshape)
                .unwrap()
                .narrow(r - 1, 0, last)
                .unwrap()
        }
        _ => Tensor::from_slice(data, shape).unwrap(),
    }
}

fn same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

fn naive_f32(op: BinaryOp, a: f32, b: f32) -> f32 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Rem => a % b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Minimum | BinaryOp::Maximum if a.is_nan() || b.is_nan() => f32::NAN,
        BinaryOp::Minimum => a.min(b),
        BinaryOp::Maximum => a.max(b),
    }
}

const F_OPS: [BinaryOp; 8] = [
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Rem,
    BinaryOp::Pow,
    BinaryOp::Minimum,
    BinaryOp::Maximum,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn f32_binary_broadcasting_matches_naive(
        (sa, sb) in broadcast_shapes(),
        va in view(), vb in view(),
        pool in prop::collection::vec(value(), 700),
        op in prop::sample::select(F_OPS.to_vec()),
    ) {
        let (na, nb) = (count(&sa), count(&sb));
        let a_data = &pool[..na];
        let b_data = &pool[na..na + nb];
        let a = make(a_data, &sa, va, 777.0);
        let b = make(b_data, &sb, vb, 777.0);
        let out_shape = bcast_shape(&sa, &sb).unwrap();
        let r = ops::binary(&a, &b, op).unwrap();
        prop_assert_eq!(r.dims(), &out_shape[..]);
        let got = r.to_vec::<f32>().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let idx = unravel(i, &out_shape);
            let want = naive_f32(op, a_data[bcast_index(&idx, &sa)], b_data[bcast_index(&idx, &sb)]);
            prop_assert!(same(g, want), "{op:?} at {idx:?}: {g} vs {want}");
        }
        // Swapped operands broadcast the other way round.
        let r2 = ops::binary(&b, &a, op).unwrap();
        prop_assert_eq!(r2.dims(), &out_shape[..]);
    }

    #[test]
    fn i32_binary_matches_naive(
        (sa, sb) in broadcast_shapes(),
        va in view(), vb in view(),
        pool in prop::collection::vec(-1000i32..1000, 700),
        op in prop::sample::select(vec![BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Rem, BinaryOp::Minimum, BinaryOp::Maximum]),
    ) {
        let (na, nb) = (count(&sa), count(&sb));
        let a_data = &pool[..na];
        // Divisors are kept non-zero here; zero divisors are tested to error in ops.rs.
        let b_data: Vec<i32> = pool[na..na + nb].iter().map(|&v| if v == 0 { 3 } else { v }).collect();
        let a = make(a_data, &sa, va, 0);
        let b = make(&b_data, &sb, vb, 0);
        let out_shape = bcast_shape(&sa, &sb).unwrap();
        let got = ops::binary(&a, &b, op).unwrap().to_vec::<i32>().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let idx = unravel(i, &out_shape);
            let (x, y) = (a_data[bcast_index(&idx, &sa)], b_data[bcast_index(&idx, &sb)]);
            let want = match op {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div => x / y,
                BinaryOp::Rem => x % y,
                BinaryOp::Minimum => x.min(y),
                _ => x.max(y),
            };
            prop_assert_eq!(g, want);
        }
    }

    #[test]
    fn comparisons_and_where_match_naive(
        (sa, sb) in broadcast_shapes(),
        va in view(), vb in view(),
        pool in prop::collection::vec(prop_oneof![4 => (-3i32..3).prop_map(|v| v as f32), 1 => Just(f32::NAN), 1 => Just(f32::INFINITY)], 700),
        op in prop::sample::select(vec![CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Gt, CmpOp::Le, CmpOp::Ge]),
    ) {
        let (na, nb) = (count(&sa), count(&sb));
        let (a_data, b_data) = (&pool[..na], &pool[na..na + nb]);
        let a = make(a_data, &sa, va, 0.0);
        let b = make(b_data, &sb, vb, 0.0);
        let out_shape = bcast_shape(&sa, &sb).unwrap();
        let mask = ops::compare(&a, &b, op).unwrap();
        let got = mask.to_vec::<u8>().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let idx = unravel(i, &out_shape);
            let (x, y) = (a_data[bcast_index(&idx, &sa)], b_data[bcast_index(&idx, &sb)]);
            let want = match op {
                CmpOp::Eq => x == y,
                CmpOp::Ne => x != y,
                CmpOp::Lt => x < y,
                CmpOp::Gt => x > y,
                CmpOp::Le => x <= y,
                CmpOp::Ge => x >= y,
            };
            prop_assert_eq!(g, u8::from(want));
        }
        // where(mask, a, b) == naive select, with all three broadcast together.
        let w = ops::where_cond(&mask, &a, &b).unwrap().to_vec::<f32>().unwrap();
        for (i, &g) in w.iter().enumerate() {
            let idx = unravel(i, &out_shape);
            let (x, y) = (a_data[bcast_index(&idx, &sa)], b_data[bcast_index(&idx, &sb)]);
            let want = if got[i] != 0 { x } else { y };
            prop_assert!(same(g, want), "where at {i}: {g} vs {want}");
        }
    }

    #[test]
    fn reductions_match_naive(
        shape in prop::collection::vec(prop_oneof![1 => Just(0usize), 6 => 1usize..6], 1..4),
        axes_mask in prop::collection::vec(any::<bool>(), 3),
        keepdim in any::<bool>(),
        v in view(),
        pool in prop::collection::vec(value(), 125),
    ) {
        let r = shape.len();
        let n = count(&shape);
        let data = &pool[..n];
        let x = make(data, &shape, v, 999.0);
        let axes: Vec<isize> = (0..r).filter(|&d| axes_mask[d]).map(|d| d as isize).collect();
        let reduced: Vec<bool> = (0..r).map(|d| axes_mask[d]).collect();
        let out_dims: Vec<usize> = (0..r).filter_map(|d| if reduced[d] { keepdim.then_some(1) } else { Some(shape[d]) }).collect();
        let kept_shape: Vec<usize> = (0..r).map(|d| if reduced[d] { 1 } else { shape[d] }).collect();
        let m = count(&kept_shape);
        // Group the input elements by output position.
        let mut groups: Vec<Vec<f32>> = vec![Vec::new(); m];
        for (i, &val) in data.iter().enumerate() {
            let idx = unravel(i, &shape);
            let kidx: Vec<usize> = (0..r).map(|d| if reduced[d] { 0 } else { idx[d] }).collect();
            let mut flat = 0;
            for d in 0..r { flat = flat * kept_shape[d] + kidx[d]; }
            groups[flat].push(val);
        }
        let s = ops::sum(&x, &axes, keepdim).unwrap();
        prop_assert_eq!(s.dims(), &out_dims[..]);
        let s = s.to_vec::<f32>().unwrap();
        for (g, got) in groups.iter().zip(&s) {
            let want: f64 = g.iter().map(|&v| v as f64).sum();
            let abs: f64 = g.iter().map(|&v| v.abs() as f64).sum();
            if want.is_nan() || abs.is_infinite() {
                // Any NaN, or +∞ and −∞ together, make NaN; a lone ±∞ survives.
                prop_assert!(got.is_nan() || got.is_infinite());
                prop_assert_eq!(got.is_nan(), want.is_nan());
            } else {
                prop_assert!((*got as f64 - want).abs() <= 1e-5 * abs + 1e-6, "{got} vs {want}");
            }
        }
        let nonempty = groups.iter().all(|g| !g.is_empty());
        match ops::max(&x, &axes, keepdim) {
            Ok(mx) => {
                for (g, got) in groups.iter().zip(mx.to_vec::<f32>().unwrap()) {
                    let want = if g.iter().any(|v| v.is_nan()) { f32::NAN } else { g.iter().cloned().fold(f32::NEG_INFINITY, f32::max) };
                    prop_assert!(same(got, want));
                }
            }
            Err(_) => prop_assert!(!nonempty),
        }
        // var (biased and unbiased) on finite data: compare with a two-pass f64 reference.
        if data.iter().all(|v| v.is_finite()) && nonempty {
            for unbiased in [false, true] {
                let var = ops::var(&x, &axes, unbiased, keepdim).unwrap().to_vec::<f32>().unwrap();
                for (g, got) in groups.iter().zip(&var) {
                    let nn = g.len() as f64;
                    let mean = g.iter().map(|&v| v as f64).sum::<f64>() / nn;
                    let ssd: f64 = g.iter().map(|&v| (v as f64 - mean).powi(2)).sum();
                    let denom = nn - f64::from(u8::from(unbiased));
                    if denom <= 0.0 {
                        prop_assert!(got.is_nan());
                    } else {
                        let want = ssd / denom;
                        prop_assert!((*got as f64 - want).abs() <= 1e-4 * (want + 1.0), "{got} vs {want}");
                    }
                }
            }
        }
        // argmax along the first reduced axis when it is the only one.
        if axes.len() == 1 && nonempty {
            let am = ops::argmax(&x, axes[0], keepdim).unwrap().to_vec::<i32>().unwrap();
            for (g, &got) in groups.iter().zip(&am) {
                let want = g.iter().position(|v| v.is_nan()).unwrap_or_else(|| {
                    let mut best = 0;
                    for (i, &v) in g.iter().enumerate() { if v > g[best] { best = i; } }
                    best
                });
                prop_assert_eq!(got as usize, want);
            }
        }
    }

    #[test]
    fn softmax_matches_naive(
        shape in prop::collection::vec(1usize..7, 1..4),
        axis_pick in 0usize..3,
        v in view(),
        pool in prop::collection::vec(-30.0f32..30.0, 216),
        log in any::<bool>(),
    ) {
        let r = shape.len();
        let axis = axis_pick % r;
        let data = &pool[..count(&shape)];
        let x = make(data, &shape, v, 0.0);
        let got = if log { ops::log_softmax(&x, axis as isize) } else { ops::softmax(&x, axis as isize) }
            .unwrap().to_vec::<f32>().unwrap();
        for (i, &g) in got.iter().enumerate() {
            let idx = unravel(i, &shape);
            let row: Vec<f64> = (0..shape[axis]).map(|j| {
                let mut k = idx.clone();
                k[axis] = j;
                let mut flat = 0;
                for d in 0..r { flat = flat * shape[d] + k[d]; }
                data[flat] as f64
            }).collect();
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
            let xi = row[idx[axis]];
            let want = if log { xi - lse } else { (xi - lse).exp() };
            prop_assert!((g as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "{g} vs {want}");
        }
    }

    #[test]
    fn matmul_matches_naive(
        m in 0usize..7, k in 0usize..7, n in 0usize..7,
        batch_a in prop::collection::vec(1usize..3, 0..2),
        b_batched in any::<bool>(),
        va in view(), vb in view(),
        pool in prop::collection::vec(-2.0f32..2.0, 400),
    ) {
        let mut sa = batch_a.clone();
        sa.extend([m, k]);
        let mut sb = if b_batched { batch_a.iter().map(|_| 1).collect() } else { vec![] };
        sb.extend([k, n]);
        let (na, nb) = (count(&sa), count(&sb));
        let (a_data, b_data) = (&pool[..na], &pool[na..na + nb]);
        let a = make(a_data, &sa, va, 99.0);
        let b = make(b_data, &sb, vb, 99.0);
        let c = ops::matmul(&a, &b).unwrap();
        let mut out = batch_a.clone();
        out.extend([m, n]);
        prop_assert_eq!(c.dims(), &out[..]);
        let got = c.to_vec::<f32>().unwrap();
        let nbatch = count(&batch_a);
        for bi in 0..nbatch {
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| {
                        a_data[bi * m * k + i * k + p] as f64 * b_data[p * n + j] as f64
                    }).sum();
                    let g = got[bi * m * n + i * n + j] as f64;
                    prop_assert!((g - want).abs() <= 1e-5 * (k as f64 + 1.0) * 4.0, "{g} vs {want}");
                }
            }
        }
    }

    #[test]
    fn concat_index_select_roundtrip(
        rows in 1usize..6, cols in 0usize..5, split_at in 0usize..6,
        v in view(),
        pool in prop::collection::vec(-5.0f32..5.0, 30),
    ) {
        let data = &pool[..rows * cols];
        let x = make(data, &[rows, cols], v, 7.0);
        let s = split_at.min(rows);
        let parts = ops::split_sizes(&x, &[s, rows - s], 0).unwrap();
        let back = ops::concat(&[&parts[0], &parts[1]], 0).unwrap();
        prop_assert_eq!(back.to_vec::<f32>().unwrap(), data.to_vec());
        // Reversed rows through index_select.
        let ids: Vec<i32> = (0..rows as i32).rev().collect();
        let rev = ops::index_select(&x, &Tensor::from_vec(ids, rows).unwrap(), 0).unwrap();
        let rv = rev.to_vec::<f32>().unwrap();
        for r in 0..rows {
            prop_assert_eq!(&rv[r * cols..(r + 1) * cols], &data[(rows - 1 - r) * cols..(rows - r) * cols]);
        }
    }
}
