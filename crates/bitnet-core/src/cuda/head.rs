//! Wrappers of `head.cu`: the LM head with its fused arg-max, the head's input (the final
//! RMSNorm, quantized like llama.cpp's Q8_K for a Q6_K head), and a stand-alone arg-max.
//!
//! How a head is held on the device ([`DevHead`]):
//! * **Q6_K** (what bitnet.cpp and `bitnet convert` write) keeps its 6-bit codes, regrouped
//!   so that a warp's lanes read consecutive 16-byte words (0.83 bytes per weight), and
//!   multiplies them with Q8_K activations exactly as the CPU's `q6_k::dot_q8k` does: the
//!   logits are bit-identical to the CPU's for the same activations.
//! * **Q8_0 and int8 rows**: int8 codes with one f32 scale per 16 weights (exact values,
//!   1.25 bytes per weight), f32 activations.
//! * **float heads**: f16, f32 activations.

use rayon::prelude::*;

use super::ops::{need, rmsnorm};
use super::{Arg, CudaDevice, DevBuf, Stream, K};
use crate::error::{Error, Result};
use crate::quant::dense::DenseMatrix;
use crate::quant::q6_k;

/// Widest row the Q6_K kernel takes (`Q6_MAXNB` blocks of 256 in head.cu); wider Q6_K heads
/// are held as int8 + f32 scales.
const Q6_MAX_COLS: usize = 32 * q6_k::QK_K;
/// Rows of x per pass over the head (`HEAD_MAXR` in head.cu).
const MAX_ROWS: usize = 8;

/// Decode an arg-max slot: the index of the largest value (smallest index among ties).
pub fn argmax_index(key: u64) -> Option<u32> {
    if key == 0 {
        None
    } else {
        Some(0xffff_ffffu32 - (key & 0xffff_ffff) as u32)
    }
}

/// An LM head on the device (see the module documentation).
pub enum DevHead {
    F16(DevBuf<u16>),
    I8 {
        q: DevBuf<i8>,
        scales: DevBuf<f32>,
    },
    /// Q6_K regrouped in tasks of 64 weights (layout in head.cu): low nibbles of groups 0-1
    /// and 2-3, high bits, the four group scales (a byte each), one f32 scale per 256.
    Q6 {
        lo0: DevBuf<u32>,
        lo1: DevBuf<u32>,
        hi: DevBuf<u32>,
        sc: DevBuf<u32>,
        d: DevBuf<f32>,
    },
}

/// One Q6_K row into the planes of [`DevHead::Q6`] (`row`: `cols/256` super-blocks).
fn pack_q6_row(
    row: &[u8],
    lo0: &mut [u32],
    lo1: &mut [u32],
    hi: &mut [u32],
    sc: &mut [u32],
    d: &mut [f32],
) {
    let mut q = [0u8; q6_k::QK_K];
    let mut s = [0i8; q6_k::QK_K / 16];
    for (b, blk) in row.chunks_exact(q6_k::BLOCK_BYTES).enumerate() {
        d[b] = q6_k::block_parts(blk, &mut q, &mut s);
        for tl in 0..4 {
            let t = 4 * b + tl;
            let mut scw = 0u32;
            for j in 0..4 {
                let g = 4 * tl + j;
                let qg = &q[16 * g..16 * g + 16];
                // bytes i: weight base+i in the low nibble, weight base+4+i in the high one
                let nibbles = |base: usize| {
                    (0..4).fold(0u32, |w, i| {
                        let b = (qg[base + i] & 15) | ((qg[base + 4 + i] & 15) << 4);
                        w | (b as u32) << (8 * i)
                    })
                };
                let lo = if j < 2 { &mut *lo0 } else { &mut *lo1 };
                lo[4 * t + 2 * (j % 2)] = nibbles(0);
                lo[4 * t + 2 * (j % 2) + 1] = nibbles(8);
                hi[4 * t + j] = (0..16).fold(0u32, |w, k| {
                    w | ((qg[k] >> 4) as u32) << (8 * (k % 4) + 2 * (k / 4))
                });
                scw |= (s[g] as u8 as u32) << (8 * j);
            }
            sc[t] = scw;
        }
    }
}

impl DevHead {
    /// Upload `m` (`vocab × hidden`), converting rows in parallel.
    pub fn upload(dev: &CudaDevice, stream: &Stream, m: &DenseMatrix) -> Result<DevHead> {
        let (rows, cols) = (m.rows(), m.cols());
        if rows == 0 || !cols.is_multiple_of(8) {
            return Err(Error::shape(
                "cuda::DevHead",
                format!("head {rows}×{cols} (columns must be a multiple of 8)"),
            ));
        }
        if m.q6k_row(0).is_some() && cols <= Q6_MAX_COLS {
            let t = cols / 64; // tasks per row
            let nb = cols / q6_k::QK_K;
            let mut lo0 = vec![0u32; rows * t * 4];
            let mut lo1 = vec![0u32; rows * t * 4];
            let mut hi = vec![0u32; rows * t * 4];
            let mut sc = vec![0u32; rows * t];
            let mut d = vec![0f32; rows * nb];
            lo0.par_chunks_mut(t * 4)
                .zip(lo1.par_chunks_mut(t * 4))
                .zip(hi.par_chunks_mut(t * 4))
                .zip(sc.par_chunks_mut(t))
                .zip(d.par_chunks_mut(nb))
                .enumerate()
                .for_each(|(r, ((((l0, l1), h), s), dd))| {
                    if let Some(row) = m.q6k_row(r) {
                        pack_q6_row(row, l0, l1, h, s, dd);
                    }
                });
            let head = DevHead::Q6 {
                lo0: dev.upload_exact(stream, &lo0)?,
                lo1: dev.upload_exact(stream, &lo1)?,
                hi: dev.upload_exact(stream, &hi)?,
                sc: dev.upload_exact(stream, &sc)?,
                d: dev.upload_exact(stream, &d)?,
            };
            stream.sync()?;
            return Ok(head);
        }
        let mut probe_q = vec![0i8; cols];
        let mut probe_s = vec![0f32; cols / 16];
        let int8 = cols.is_multiple_of(16) && m.row_i8_groups16(0, &mut probe_q, &mut probe_s)?;
        let head = if int8 {
            let mut q = vec![0i8; rows * cols];
            let mut s = vec![0f32; rows * cols / 16];
            q.par_chunks_mut(cols)
                .zip(s.par_chunks_mut(cols / 16))
                .enumerate()
                .try_for_each(|(r, (qr, sr))| m.row_i8_groups16(r, qr, sr).map(|_| ()))?;
            DevHead::I8 {
                q: dev.upload_exact(stream, &q)?,
                scales: dev.upload_exact(stream, &s)?,
            }
        } else {
            let mut h = vec![0u16; rows * cols];
            h.par_chunks_mut(cols).enumerate().try_for_each_init(
                || vec![0f32; cols],
                |f, (r, hr)| -> Result<()> {
                    m.row_f32(r, f)?;
                    for (o, &v) in hr.iter_mut().zip(f.iter()) {
                        *o = half::f16::from_f32(v).to_bits();
                    }
                    Ok(())
                },
            )?;
            DevHead::F16(dev.upload_exact(stream, &h)?)
        };
        stream.sync()?;
        Ok(head)
    }

    /// Bytes one pass over the head reads.
    pub fn nbytes(&self) -> usize {
        match self {
            DevHead::F16(w) => w.nbytes(),
            DevHead::I8 { q, scales } => q.nbytes() + scales.nbytes(),
            DevHead::Q6 {
                lo0,
                lo1,
                hi,
                sc,
                d,
            } => lo0.nbytes() + lo1.nbytes() + hi.nbytes() + sc.nbytes() + d.nbytes(),
        }
    }

    /// How the head is held, in words.
    pub fn describe(&self) -> &'static str {
        match self {
            DevHead::F16(_) => "f16",
            DevHead::I8 { .. } => "int8 + f32 scale per 16 (exact)",
            DevHead::Q6 { .. } => "Q6_K, 6-bit codes (exact), Q8_K activations",
        }
    }

    /// Weights held.
    fn len(&self) -> usize {
        match self {
            DevHead::F16(w) => w.len(),
            DevHead::I8 { q, .. } => q.len(),
            DevHead::Q6 { d, .. } => d.len() * q6_k::QK_K,
        }
    }
}

/// The LM head's input rows on the device: f32 for f16 and int8 heads, Q8_K codes (with
/// one f32 scale per 256 and the sum of each 16 codes) for the Q6_K head.
pub enum HeadInput {
    F32(DevBuf<f32>),
    Q8K {
        /// Codes, four per word.
        q: DevBuf<u32>,
        d: DevBuf<f32>,
        sums: DevBuf<i32>,
    },
}

impl HeadInput {
    /// Room for `rows` rows of `h` values, in the form `head` takes.
    pub fn alloc(dev: &CudaDevice, head: &DevHead, rows: usize, h: usize) -> Result<HeadInput> {
        Ok(match head {
            DevHead::Q6 { .. } => HeadInput::Q8K {
                q: dev.alloc(rows * h / 4)?,
                d: dev.alloc(rows * h / q6_k::QK_K)?,
                sums: dev.alloc(rows * h / 16)?,
            },
            _ => HeadInput::F32(dev.alloc(rows * h)?),
        })
    }

    /// Rows of `h` values it holds.
    fn rows(&self, h: usize) -> usize {
        match self {
            HeadInput::F32(f) => f.len() / h.max(1),
            HeadInput::Q8K { d, .. } => d.len() * q6_k::QK_K / h.max(1),
        }
    }
}

/// The final RMSNorm (weight `w`) of rows `row0 .. row0+m` of `x` (rows of `h`) into the
/// first `m` rows of `out`, quantized like llama.cpp's Q8_K when `out` is for a Q6_K head.
#[allow(clippy::too_many_arguments)]
pub fn head_norm(
    dev: &CudaDevice,
    stream: &Stream,
    x: &DevBuf<f32>,
    row0: usize,
    m: usize,
    h: usize,
    w: &DevBuf<f32>,
    eps: f32,
    out: &mut HeadInput,
) -> Result<()> {
    need("cuda::head_norm", out.rows(h) >= m, || {
        format!("the head input holds {} rows of {h}, not {m}", out.rows(h))
    })?;
    match out {
        HeadInput::F32(f) => rmsnorm(dev, stream, x, row0, m, h, w, eps, f),
        HeadInput::Q8K { q, d, sums } => {
            need(
                "cuda::head_norm",
                h.is_multiple_of(q6_k::QK_K) && w.len() == h && x.len() >= (row0 + m) * h,
                || {
                    format!(
                        "x holds {}, norm weight {}, for rows {row0}+{m} of {h} (a multiple of 256)",
                        x.len(),
                        w.len()
                    )
                },
            )?;
            dev.launch(
                K::RmsnormQ8k,
                stream,
                (m as u32, 1, 1),
                (256, 1, 1),
                0,
                &[
                    Arg::P(x.ptr_at(row0 * h)),
                    Arg::P(w.ptr()),
                    Arg::I(h as i32),
                    Arg::F(eps),
                    Arg::P(q.ptr()),
                    Arg::P(d.ptr()),
                    Arg::P(sums.ptr()),
                ],
            )
        }
    }
}

/// LM head: `logits[r] = W·x[r]` for `rows` rows of `x` (`h` wide), `W` (`v × h`).
/// With `best` (and one row) the arg-max is folded into `*best` (cleared beforehand by the
/// caller, e.g. by [`super::ops::embed`]).
#[allow(clippy::too_many_arguments)]
pub fn head(
    dev: &CudaDevice,
    stream: &Stream,
    w: &DevHead,
    v: usize,
    h: usize,
    x: &HeadInput,
    rows: usize,
    logits: &mut DevBuf<f32>,
    best: Option<&DevBuf<u64>>,
) -> Result<()> {
    need(
        "cuda::head",
        h.is_multiple_of(8) && w.len() == v * h && x.rows(h) >= rows && logits.len() >= rows * v,
        || format!("head {}×{h} (h must be a multiple of 8), {rows} rows", v),
    )?;
    need("cuda::head", best.is_none() || rows == 1, || {
        "arg-max needs one row".into()
    })?;
    let blocks = v.div_ceil(32) as u32; // 8 warps × 4 vocabulary rows per block
    let mut r0 = 0;
    while r0 < rows {
        let nr = (rows - r0).min(MAX_ROWS);
        let (k, mut args) = match (w, x) {
            (DevHead::F16(w), HeadInput::F32(xf)) => (
                K::HeadGemv,
                vec![Arg::P(w.ptr()), Arg::P(xf.ptr_at(r0 * h))],
            ),
            (DevHead::I8 { q, scales }, HeadInput::F32(xf)) => (
                K::HeadI8,
                vec![
                    Arg::P(q.ptr()),
                    Arg::P(scales.ptr()),
                    Arg::P(xf.ptr_at(r0 * h)),
                ],
            ),
            (
                DevHead::Q6 {
                    lo0,
                    lo1,
                    hi,
                    sc,
                    d,
                },
                HeadInput::Q8K { q, d: xd, sums },
            ) => (
                if nr == 1 { K::HeadQ6R1 } else { K::HeadQ6R8 },
                vec![
                    Arg::P(lo0.ptr()),
                    Arg::P(lo1.ptr()),
                    Arg::P(hi.ptr()),
                    Arg::P(sc.ptr()),
                    Arg::P(d.ptr()),
                    Arg::P(q.ptr_at(r0 * h / 4)),
                    Arg::P(xd.ptr_at(r0 * h / q6_k::QK_K)),
                    Arg::P(sums.ptr_at(r0 * h / 16)),
                ],
            ),
            _ => {
                return Err(Error::shape(
                    "cuda::head",
                    format!(
                        "a {} head needs its own input form (HeadInput::alloc)",
                        w.describe()
                    ),
                ))
            }
        };
        args.extend([
            Arg::P(logits.ptr_at(r0 * v)),
            Arg::I(v as i32),
            Arg::I(h as i32),
            Arg::I(nr as i32),
            Arg::P(best.map_or(0, |b| b.ptr())),
        ]);
        dev.launch(k, stream, (blocks, 1, 1), (256, 1, 1), 0, &args)?;
        r0 += nr;
    }
    Ok(())
}

/// Arg-max of the first `n` values of `x` into `best` (cleared first).
pub fn argmax(
    dev: &CudaDevice,
    stream: &Stream,
    x: &DevBuf<f32>,
    n: usize,
    best: &mut DevBuf<u64>,
) -> Result<()> {
    need("cuda::argmax", x.len() >= n && n > 0, || {
        format!("{n} of {}", x.len())
    })?;
    best.fill_bytes(stream, 0)?;
    let blocks = n.div_ceil(256).min(1024) as u32;
    dev.launch(
        K::ArgmaxF32,
        stream,
        (blocks, 1, 1),
        (256, 1, 1),
        0,
        &[Arg::P(x.ptr()), Arg::I(n as i32), Arg::P(best.ptr())],
    )
}

/// Most candidates [`topk`] returns.
pub const TOPK_MAX: usize = 1024;

/// The `k` largest of the first `n` values of `x` (ties: lower indices first; NaN lowest)
/// as values and indices, in no particular order, into the first `min(k, n)` slots of
/// `vals` and `idx`, then the values at the first `m` indices of `extra` (NaN for an index
/// past `n`) with those indices: what a top-k sampler needs (with a repetition penalty's
/// recent tokens), without copying the logits back.
#[allow(clippy::too_many_arguments)]
pub fn topk(
    dev: &CudaDevice,
    stream: &Stream,
    x: &DevBuf<f32>,
    n: usize,
    k: usize,
    extra: Option<(&DevBuf<u32>, usize)>,
    vals: &mut DevBuf<f32>,
    idx: &mut DevBuf<u32>,
) -> Result<()> {
    let kk = k.min(n);
    let m = extra.map_or(0, |e| e.1);
    need(
        "cuda::topk",
        x.len() >= n
            && n <= i32::MAX as usize
            && k <= TOPK_MAX
            && m <= TOPK_MAX
            && extra.is_none_or(|(e, m)| e.len() >= m)
            && vals.len() >= kk + m
            && idx.len() >= kk + m,
        || {
            format!(
                "{k} of {n} values ({} in x) and {m} more into {} / {} slots",
                x.len(),
                vals.len(),
                idx.len()
            )
        },
    )?;
    if kk + m == 0 {
        return Ok(());
    }
    dev.launch(
        K::TopkF32,
        stream,
        (1, 1, 1),
        (1024, 1, 1),
        0,
        &[
            Arg::P(x.ptr()),
            Arg::I(n as i32),
            Arg::I(kk as i32),
            Arg::P(vals.ptr()),
            Arg::P(idx.ptr()),
            Arg::P(extra.map_or(0, |e| e.0.ptr())),
            Arg::I(m as i32),
        ],
    )
}
