//! Causal scaled dot-product attention with grouped KV heads over a KV cache, on the CPU.
//!
//! Follows transformers' eager attention (`softmax(q·kᵀ·d^-½ + causal mask)·v`, softmax in
//! f32). The cache holds keys and values as `[kv_head][position][head_dim]` so that one
//! head's keys are contiguous; the element type is f32 or f16 ([`KvElem`]).

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

/// An element type the KV cache can store.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// Convert a row to f32 (SIMD where the type allows).
    fn load_row(src: &[Self], dst: &mut [f32]);
    /// Convert a row from f32.
    fn store_row(src: &[f32], dst: &mut [Self]);
}

impl KvElem for f32 {
    #[inline]
    fn load_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline]
    fn store_row(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    #[inline]
    fn load_row(src: &[f16], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }
    #[inline]
    fn store_row(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
}

/// Shapes of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache has room for (the stride between kv heads).
    pub max_ctx: usize,
}

/// Query tokens per task: each task converts its KV head's keys and values to f32 once
/// and reuses them for this many queries (and every head of the group).
const QUERY_CHUNK: usize = 16;

/// The output pointer shared by tasks that write disjoint `(token, head)` rows.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint rows (see `causal_attention`); the pointer outlives them.
unsafe impl Sync for OutPtr {}

/// Attention for `m` query tokens at positions `pos0 .. pos0+m`, whose keys and values are
/// already in the cache. `q` is `m × n_heads·head_dim`; `out` has the same shape. Token `i`
/// attends to cache positions `0 ..= pos0+i`.
pub fn causal_attention<T: KvElem>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    m: usize,
    pos0: usize,
    s: AttnShape,
    out: &mut [f32],
) -> crate::Result<()> {
    let hd = s.head_dim;
    let qdim = s.n_heads * hd;
    if s.n_kv_heads == 0 || !s.n_heads.is_multiple_of(s.n_kv_heads) {
        return Err(crate::Error::shape(
            "attention",
            format!("{} heads cannot share {} kv heads", s.n_heads, s.n_kv_heads),
        ));
    }
    let cache_len = s.n_kv_heads * s.max_ctx * hd;
    if q.len() != m * qdim
        || out.len() != m * qdim
        || keys.len() != cache_len
        || values.len() != cache_len
    {
        return Err(crate::Error::shape(
            "attention",
            format!(
                "q {} / out {} for {m} tokens of {qdim}; cache {} / {} for {cache_len}",
                q.len(),
                out.len(),
                keys.len(),
                values.len()
            ),
        ));
    }
    if pos0 + m > s.max_ctx {
        return Err(crate::Error::OutOfRange {
            op: "attention",
            index: pos0 + m - 1,
            size: s.max_ctx,
        });
    }
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let chunks = m.div_ceil(QUERY_CHUNK);
    let out_ptr = OutPtr(out.as_mut_ptr());
    let out_ptr = &out_ptr;
    // One task per (kv head, block of queries): it writes the rows (token i, head h) for
    // its tokens and the heads of its group, which no other task writes.
    (0..s.n_kv_heads * chunks).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new(), Vec::<f32>::new()),
        |(kf, vf, scores), task| {
            let (kvh, c) = (task / chunks, task % chunks);
            let (i0, i1) = (c * QUERY_CHUNK, ((c + 1) * QUERY_CHUNK).min(m));
            let n_keys = pos0 + i1;
            let base = kvh * s.max_ctx * hd;
            let (k, v) = (
                &keys[base..base + n_keys * hd],
                &values[base..base + n_keys * hd],
            );
            kf.resize(n_keys * hd, 0.0);
            vf.resize(n_keys * hd, 0.0);
            T::load_row(k, kf);
            T::load_row(v, vf);
            scores.resize((i1 - i0) * group * n_keys, 0.0);
            let b = Block {
                q,
                kf,
                vf,
                out: out_ptr,
                i0,
                i1,
                pos0,
                kvh,
                group,
                qdim,
                hd,
                scale,
            };
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is available (checked just above).
                unsafe { attend_block_avx2(&b, scores) };
                return;
            }
            attend_block(&b, scores, dot4);
        },
    );
    Ok(())
}

/// One task's work: queries `i0..i1` of every head of KV head `kvh`, over keys and values
/// already converted to f32.
struct Block<'a> {
    q: &'a [f32],
    kf: &'a [f32],
    vf: &'a [f32],
    out: &'a OutPtr,
    i0: usize,
    i1: usize,
    pos0: usize,
    kvh: usize,
    group: usize,
    qdim: usize,
    hd: usize,
    scale: f32,
}

/// [`attend_block`] compiled for AVX2: the same operations in the same order (no FMA), so
/// results are bit-identical to the portable build, with 8-wide vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attend_block_avx2(b: &Block<'_>, scores: &mut [f32]) {
    attend_block(b, scores, |a, k| dot4_avx2(a, k))
}

/// Positions per tile: a tile of keys (or values) is read from memory once for all the
/// (query, head) rows of the task instead of once per row.
const KEY_TILE: usize = 32;

#[inline(always)]
fn attend_block(b: &Block<'_>, scores: &mut [f32], dot4: impl Fn(&[f32], &[f32]) -> [f32; 4]) {
    let Block {
        q,
        kf,
        vf,
        i0,
        i1,
        pos0,
        kvh,
        group,
        qdim,
        hd,
        scale,
        ..
    } = *b;
    // Row r = (token i0 + r / group, head kvh·group + r % group); it attends n(r) positions.
    let rows = (i1 - i0) * group;
    let n_max = pos0 + i1;
    let n_of = |r: usize| pos0 + i0 + r / group + 1;
    let q_of = |r: usize| {
        let (i, h) = (i0 + r / group, kvh * group + r % group);
        &q[i * qdim + h * hd..i * qdim + (h + 1) * hd]
    };
    let sc = &mut scores[..rows * n_max];
    // Scores, a tile of keys at a time for every row; four keys per call where the row's
    // positions allow (each key's dot is the same however the keys are grouped).
    for t0 in (0..n_max).step_by(KEY_TILE) {
        for r in 0..rows {
            let t1 = (t0 + KEY_TILE).min(n_of(r));
            let (qh, row) = (q_of(r), &mut sc[r * n_max..(r + 1) * n_max]);
            let mut p = t0;
            while p + 4 <= t1 {
                let d = dot4(qh, &kf[p * hd..(p + 4) * hd]);
                for (s, d) in row[p..p + 4].iter_mut().zip(d) {
                    *s = d * scale;
                }
                p += 4;
            }
            while p < t1 {
                row[p] = dot(qh, &kf[p * hd..(p + 1) * hd]) * scale;
                p += 1;
            }
        }
    }
    // Softmax of each row, in position order.
    for r in 0..rows {
        let row = &mut sc[r * n_max..r * n_max + n_of(r)];
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0f32;
        for s in row.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        for s in row.iter_mut() {
            *s *= inv;
        }
    }
    // Outputs: each row's sum over a tile of values at a time, added into the output in
    // position order from 0 (the same additions as one pass over all positions).
    // SAFETY: rows (i, h) of this task lie inside `out` (checked lengths) and belong to
    // this task alone.
    let out_row = |r: usize| unsafe {
        let (i, h) = (i0 + r / group, kvh * group + r % group);
        std::slice::from_raw_parts_mut(b.out.0.add(i * qdim + h * hd), hd)
    };
    for r in 0..rows {
        out_row(r).fill(0.0);
    }
    for t0 in (0..n_max).step_by(KEY_TILE) {
        for r in 0..rows {
            let t1 = (t0 + KEY_TILE).min(n_of(r));
            if t0 < t1 {
                let w = &sc[r * n_max + t0..r * n_max + t1];
                weighted_sum_into(w, &vf[t0 * hd..t1 * hd], hd, out_row(r));
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorise without -ffast-math.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for j in 0..8 {
            acc[j] += a[c * 8 + j] * b[c * 8 + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for j in chunks * 8..a.len() {
        s += a[j] * b[j];
    }
    s
}

/// `dot(a, row)` for the four consecutive rows of `b` (each `a.len()` long), bit for bit.
#[inline(always)]
fn dot4(a: &[f32], b: &[f32]) -> [f32; 4] {
    let hd = a.len();
    let rows: [&[f32]; 4] = std::array::from_fn(|r| &b[r * hd..(r + 1) * hd]);
    let mut acc = [[0.0f32; 8]; 4];
    let chunks = hd / 8;
    for c in 0..chunks {
        let ac = &a[c * 8..c * 8 + 8];
        for r in 0..4 {
            let bc = &rows[r][c * 8..c * 8 + 8];
            for j in 0..8 {
                acc[r][j] += ac[j] * bc[j];
            }
        }
    }
    std::array::from_fn(|r| {
        let mut s: f32 = acc[r].iter().sum();
        for j in chunks * 8..hd {
            s += a[j] * rows[r][j];
        }
        s
    })
}

/// [`dot4`] with explicit AVX2 vectors (LLVM vectorises the portable one across the four
/// rows instead of along them); the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn dot4_avx2(a: &[f32], b: &[f32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let hd = a.len();
    assert!(b.len() >= 4 * hd);
    let chunks = hd / 8;
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in 0..chunks {
        // SAFETY: c·8 + 8 ≤ hd, and row r of b spans [r·hd, (r+1)·hd) (asserted above).
        unsafe {
            let av = _mm256_loadu_ps(a.as_ptr().add(c * 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let bv = _mm256_loadu_ps(b.as_ptr().add(r * hd + c * 8));
                *acc = _mm256_add_ps(*acc, _mm256_mul_ps(av, bv));
            }
        }
    }
    std::array::from_fn(|r| {
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r]) };
        let mut s: f32 = lanes.iter().sum();
        for j in chunks * 8..hd {
            s += a[j] * b[r * hd + j];
        }
        s
    })
}

/// Dimensions of the output kept in registers while `weighted_sum_into` walks the
/// positions (eight 8-lane accumulators under AVX2: with four, the adds wait on their
/// latency; 32 → 64 gave +3 % in a 512-token prompt on the Xeon).
const OUT_CHUNK: usize = 64;

/// `o += Σ_p w[p]·v[p]` over rows of `hd` values, each output adding the positions in
/// order, one chunk of `OUT_CHUNK` outputs at a time so that the running sums stay in
/// registers.
#[inline(always)]
fn weighted_sum_into(w: &[f32], v: &[f32], hd: usize, o: &mut [f32]) {
    let mut j0 = 0;
    while j0 + OUT_CHUNK <= hd {
        let mut acc = [0.0f32; OUT_CHUNK];
        acc.copy_from_slice(&o[j0..j0 + OUT_CHUNK]);
        for (p, &wp) in w.iter().enumerate() {
            let vr = &v[p * hd + j0..p * hd + j0 + OUT_CHUNK];
            for j in 0..OUT_CHUNK {
                acc[j] += wp * vr[j];
            }
        }
        o[j0..j0 + OUT_CHUNK].copy_from_slice(&acc);
        j0 += OUT_CHUNK;
    }
    if j0 < hd {
        for (p, &wp) in w.iter().enumerate() {
            for (oj, &vj) in o[j0..hd].iter_mut().zip(&v[p * hd + j0..(p + 1) * hd]) {
                *oj += wp * vj;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive attention in f64 over full (non-cached) tensors for comparison.
    fn naive(q: &[f32], k: &[f32], v: &[f32], m: usize, pos0: usize, s: AttnShape) -> Vec<f32> {
        let hd = s.head_dim;
        let mut out = vec![0.0f32; m * s.n_heads * hd];
        for i in 0..m {
            for h in 0..s.n_heads {
                let kvh = h / (s.n_heads / s.n_kv_heads);
                let n = pos0 + i + 1;
                let qh = &q[(i * s.n_heads + h) * hd..][..hd];
                let sc: Vec<f64> = (0..n)
                    .map(|p| {
                        let kr = &k[(kvh * s.max_ctx + p) * hd..][..hd];
                        qh.iter()
                            .zip(kr)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..hd {
                    let mut acc = 0.0;
                    for p in 0..n {
                        acc += e[p] / z * v[(kvh * s.max_ctx + p) * hd + j] as f64;
                    }
                    out[(i * s.n_heads + h) * hd + j] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_with_grouped_heads() {
        // One decode-sized call and one prefill that spans several query blocks.
        for (m, pos0) in [(3, 5), (1, 0), (37, 4)] {
            let s = AttnShape {
                n_heads: 4,
                n_kv_heads: 2,
                head_dim: 16,
                max_ctx: 48,
            };
            let cache = s.n_kv_heads * s.max_ctx * s.head_dim;
            let k: Vec<f32> = (0..cache)
                .map(|i| ((i * 7919) % 97) as f32 / 50.0 - 1.0)
                .collect();
            let v: Vec<f32> = (0..cache)
                .map(|i| ((i * 104729) % 89) as f32 / 40.0 - 1.0)
                .collect();
            let q: Vec<f32> = (0..m * 64)
                .map(|i| ((i * 31) % 53) as f32 / 26.0 - 1.0)
                .collect();
            let mut out = vec![f32::NAN; m * 64];
            causal_attention(&q, &k, &v, m, pos0, s, &mut out).unwrap();
            let r = naive(&q, &k, &v, m, pos0, s);
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            // The same through an f16 cache, within f16 rounding.
            let k16: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
            let v16: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
            out.fill(f32::NAN);
            causal_attention(&q, &k16, &v16, m, pos0, s, &mut out).unwrap();
            for (a, b) in out.iter().zip(&r) {
                assert!((a - b).abs() < 2e-3, "{a} vs {b}");
            }
        }
    }

    /// The AVX2 build of a task against the portable one, bit for bit: head sizes 128, 96
    /// and 40 (with tails), 1 to 45 keys (the 4-key and 1-key steps).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_block_is_bit_identical_to_portable() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2");
            return;
        }
        for hd in [128usize, 96, 40] {
            let (m, group) = (45usize, 2usize);
            let qdim = group * hd;
            let f = |i: usize, a: usize, b: usize| ((i * a) % b) as f32 / (b as f32 / 2.0) - 1.0;
            let q: Vec<f32> = (0..m * qdim).map(|i| f(i, 31, 53)).collect();
            let kf: Vec<f32> = (0..m * hd).map(|i| f(i, 7919, 97)).collect();
            let vf: Vec<f32> = (0..m * hd).map(|i| f(i, 104729, 89)).collect();
            let run = |avx2: bool| {
                let mut out = vec![f32::NAN; m * qdim];
                let mut scores = vec![0.0f32; m * group * m];
                let o = OutPtr(out.as_mut_ptr());
                let b = Block {
                    q: &q,
                    kf: &kf,
                    vf: &vf,
                    out: &o,
                    i0: 0,
                    i1: m,
                    pos0: 0,
                    kvh: 0,
                    group,
                    qdim,
                    hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                if avx2 {
                    // SAFETY: AVX2 is available (checked above).
                    unsafe { attend_block_avx2(&b, &mut scores) };
                } else {
                    attend_block(&b, &mut scores, dot4);
                }
                out
            };
            for (i, (x, y)) in run(false).iter().zip(&run(true)).enumerate() {
                assert_eq!(x.to_bits(), y.to_bits(), "hd {hd}, value {i}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let s = AttnShape {
            n_heads: 3,
            n_kv_heads: 2,
            head_dim: 4,
            max_ctx: 4,
        };
        let z = vec![0.0f32; 32];
        let mut out = vec![0.0f32; 12];
        assert!(causal_attention(&z[..12], &z, &z, 1, 0, s, &mut out).is_err());
    }
}
