//! Ternary weights on the GPU and the ternary × int8 products (`ternary.cu`).
//!
//! Layout: each weight as the 2-bit code `w + 1`, 16 per `u32`; weight `k` of a 16-weight
//! group at bit `8·(k % 4) + 2·(k / 4)`, so one shift and mask gives four codes as the four
//! bytes of a `__dp4a`/MMA operand in activation order. Rows are padded with zero weights to
//! a multiple of 64 columns (one 16-byte load). The kernels compute `Σ c·x` and subtract
//! `Σ x`, which the quantizer stores per row.

use rayon::prelude::*;

use super::{Arg, CudaDevice, DevBuf, Stream, K};
use crate::error::{Error, Result};
use crate::nn::bitlinear::BitLinear;

/// Columns of a packed row (a multiple of 64).
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(64) * 64
}

/// Pack `rows × cols` trits (row-major, values −1, 0, +1) into the GPU layout:
/// `rows × padded_cols(cols) / 16` words.
pub fn pack_trits(trits: &[i8], rows: usize, cols: usize) -> Result<Vec<u32>> {
    if trits.len() != rows * cols {
        return Err(Error::shape(
            "cuda::pack_trits",
            format!("{} trits for {rows}×{cols}", trits.len()),
        ));
    }
    let wpr = padded_cols(cols) / 16;
    let mut out = vec![0u32; rows * wpr];
    if rows == 0 || wpr == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(wpr)
        .enumerate()
        .try_for_each(|(r, dst)| -> Result<()> {
            let src = &trits[r * cols..(r + 1) * cols];
            for (wi, word) in dst.iter_mut().enumerate() {
                let mut v = 0u32;
                for kk in 0..16 {
                    let k = wi * 16 + kk;
                    let code = if k < cols {
                        let t = src[k];
                        if !(-1..=1).contains(&t) {
                            return Err(Error::format(
                                "cuda ternary",
                                format!("trit {t} at ({r}, {k})"),
                            ));
                        }
                        (t + 1) as u32
                    } else {
                        1
                    };
                    v |= code << (8 * (kk % 4) + 2 * (kk / 4));
                }
                *word = v;
            }
            Ok(())
        })?;
    Ok(out)
}

/// How a product's result is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `out = W·x`
    Store = 0,
    /// `out += W·x` (the residual add of o_proj and down_proj)
    Add = 1,
    /// rows `2j, 2j+1` are gate `j`, up `j`: `out[j] = relu(gate)²·up` (`n/2` outputs)
    Relu2 = 2,
}

/// A ternary matrix on the device: packed codes, one scale per row (fused matrices keep
/// each part's scale), optional bias.
pub struct DevTernary {
    w: DevBuf<u32>,
    scales: DevBuf<f32>,
    bias: Option<DevBuf<f32>>,
    rows: usize,
    cols: usize,
}

impl DevTernary {
    /// Upload from trits with a scale per row.
    pub fn from_trits(
        dev: &CudaDevice,
        stream: &Stream,
        trits: &[i8],
        rows: usize,
        cols: usize,
        row_scales: &[f32],
        bias: Option<&[f32]>,
    ) -> Result<Self> {
        if row_scales.len() != rows || bias.is_some_and(|b| b.len() != rows) {
            return Err(Error::shape(
                "DevTernary::from_trits",
                format!("{} scales / bias for {rows} rows", row_scales.len()),
            ));
        }
        let packed = pack_trits(trits, rows, cols)?;
        let w = dev.upload_exact(stream, &packed)?;
        let scales = dev.upload_exact(stream, row_scales)?;
        let bias = match bias {
            Some(b) => Some(dev.upload_exact(stream, b)?),
            None => None,
        };
        stream.sync()?;
        Ok(DevTernary {
            w,
            scales,
            bias,
            rows,
            cols,
        })
    }

    /// Upload BitLinear layers with the same input width as one matrix: their rows one after
    /// another, or (`interleave`, two parts of equal shape) alternating, row `j` of part 0
    /// then row `j` of part 1, for the [`Epilogue::Relu2`] gate/up fusion.
    pub fn from_bitlinear(
        dev: &CudaDevice,
        stream: &Stream,
        parts: &[&BitLinear],
        interleave: bool,
    ) -> Result<Self> {
        let cols = parts.first().map(|p| p.weight.cols()).unwrap_or(0);
        if parts.is_empty() || parts.iter().any(|p| p.weight.cols() != cols) {
            return Err(Error::shape(
                "DevTernary::from_bitlinear",
                "parts must be non-empty and share their input width",
            ));
        }
        if interleave && (parts.len() != 2 || parts[0].weight.rows() != parts[1].weight.rows()) {
            return Err(Error::shape(
                "DevTernary::from_bitlinear",
                "interleaving needs two parts of equal shape",
            ));
        }
        let rows: usize = parts.iter().map(|p| p.weight.rows()).sum();
        let has_bias = parts.iter().any(|p| p.bias.is_some());
        let trits: Vec<Vec<i8>> = parts.iter().map(|p| p.weight.to_trits()).collect();
        let mut all = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(rows);
        let mut bias = Vec::with_capacity(if has_bias { rows } else { 0 });
        let mut push = |pi: usize, r: usize| {
            let p = parts[pi];
            all.extend_from_slice(&trits[pi][r * cols..(r + 1) * cols]);
            scales.push(p.weight.scale());
            if has_bias {
                bias.push(p.bias.as_ref().map_or(0.0, |b| b[r]));
            }
        };
        if interleave {
            for r in 0..parts[0].weight.rows() {
                push(0, r);
                push(1, r);
            }
        } else {
            for (pi, p) in parts.iter().enumerate() {
                for r in 0..p.weight.rows() {
                    push(pi, r);
                }
            }
        }
        let b = if has_bias { Some(&bias[..]) } else { None };
        Self::from_trits(dev, stream, &all, rows, cols, &scales, b)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Padded columns (the activation row stride this matrix expects).
    pub fn kp(&self) -> usize {
        padded_cols(self.cols)
    }

    /// Bytes of packed weights (what one product streams from memory).
    pub fn nbytes(&self) -> usize {
        self.w.nbytes()
    }

    /// Device addresses of the codes, the row scales and the bias (0 when there is none).
    pub(crate) fn ptrs(&self) -> [u64; 3] {
        [
            self.w.ptr(),
            self.scales.ptr(),
            self.bias.as_ref().map_or(0, |b| b.ptr()),
        ]
    }
}

/// Int8 activations on the device: `rows × kp` codes, the factor `1/a` and `Σq` per row.
pub struct DevActs {
    pub(crate) q: DevBuf<i8>,
    pub(crate) f: DevBuf<f32>,
    pub(crate) s: DevBuf<i32>,
    pub(crate) kp: usize,
    pub(crate) k: usize,
    pub(crate) rows: usize,
    /// Whether `s` holds Σq of the rows (the one-token products compute it themselves, so
    /// the norm of a single row does not write it).
    pub(crate) sums: bool,
}

impl DevActs {
    /// Room for `max_rows` rows of up to `max_k` values.
    pub fn new(dev: &CudaDevice, max_rows: usize, max_k: usize) -> Result<Self> {
        Ok(DevActs {
            q: dev.alloc(max_rows * padded_cols(max_k))?,
            f: dev.alloc(max_rows)?,
            s: dev.alloc(max_rows)?,
            kp: padded_cols(max_k),
            k: max_k,
            rows: 0,
            sums: false,
        })
    }

    /// Upload host-quantized activations (`rows × k` codes and their factors).
    pub fn upload(
        dev: &CudaDevice,
        stream: &Stream,
        q: &[i8],
        factors: &[f32],
        k: usize,
    ) -> Result<Self> {
        let rows = factors.len();
        if q.len() != rows * k {
            return Err(Error::shape(
                "DevActs::upload",
                format!("{} codes for {rows}×{k}", q.len()),
            ));
        }
        let kp = padded_cols(k);
        let mut qp = vec![0i8; rows * kp];
        let mut sums = vec![0i32; rows];
        for r in 0..rows {
            qp[r * kp..r * kp + k].copy_from_slice(&q[r * k..(r + 1) * k]);
            sums[r] = q[r * k..(r + 1) * k].iter().map(|&v| v as i32).sum();
        }
        let mut a = DevActs::new(dev, rows.max(1), k)?;
        a.q.copy_from(stream, &qp)?;
        a.f.copy_from(stream, factors)?;
        a.s.copy_from(stream, &sums)?;
        a.rows = rows;
        a.sums = true;
        Ok(a)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Read back (codes without padding, factors, sums).
    pub fn read(&self, stream: &Stream) -> Result<(Vec<i8>, Vec<f32>, Vec<i32>)> {
        let qp = self.q.read(stream, self.rows * self.kp)?;
        let mut q = Vec::with_capacity(self.rows * self.k);
        for r in 0..self.rows {
            q.extend_from_slice(&qp[r * self.kp..r * self.kp + self.k]);
        }
        Ok((
            q,
            self.f.read(stream, self.rows)?,
            self.s.read(stream, self.rows)?,
        ))
    }
}

/// How the one-token products (`tern_gemv_*`, `tern_gemv_qkv_*`) cover `n` rows of `kw`
/// 16-byte words: four rows per warp, and rows longer than 2048 weights split over two
/// warps (one 16-byte column step each per round up to 4096 weights, two beyond) when the
/// doubled warp count still fits on the GPU at once (28 warps of 72 registers per SM):
/// split, the fused gate/up product (13,824 rows) would not fit and gets slower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemvSplit {
    /// One warp per four rows.
    None,
    /// Two warps, one column step each per round.
    TwoU1,
    /// Two warps, two column steps each per round.
    TwoU2,
}

impl GemvSplit {
    pub(crate) fn choose(dev: &CudaDevice, n: usize, kw: usize) -> GemvSplit {
        let fits = n.div_ceil(4) * 2 <= 28 * dev.sm_count();
        match kw {
            33..=64 if fits => GemvSplit::TwoU1,
            65.. if fits => GemvSplit::TwoU2,
            _ => GemvSplit::None,
        }
    }

    /// Thread blocks (4 warps each) for `n` rows.
    pub(crate) fn blocks(self, n: usize) -> u32 {
        let groups_per_block = if self == GemvSplit::None { 4 } else { 2 };
        n.div_ceil(4).div_ceil(groups_per_block) as u32
    }
}

/// `out ⟵ W · x` for the first `m` rows of `x`, with epilogue `epi`: the matrix-vector
/// kernel for one row, the tensor-core kernel for more (or when `force_gemm`).
pub fn matmul(
    dev: &CudaDevice,
    stream: &Stream,
    w: &DevTernary,
    x: &DevActs,
    m: usize,
    out: &mut DevBuf<f32>,
    epi: Epilogue,
    force_gemm: bool,
) -> Result<()> {
    if x.kp != w.kp() || x.k != w.cols || m > x.rows {
        return Err(Error::shape(
            "cuda::matmul",
            format!(
                "weight is {}×{} (row stride {}), activations are {} rows of {} (stride {})",
                w.rows,
                w.cols,
                w.kp(),
                x.rows,
                x.k,
                x.kp
            ),
        ));
    }
    let n = w.rows;
    let n_out = if epi == Epilogue::Relu2 {
        if !n.is_multiple_of(2) {
            return Err(Error::shape(
                "cuda::matmul",
                "relu² fusion needs an even row count",
            ));
        }
        n / 2
    } else {
        n
    };
    if out.len() < m * n_out {
        return Err(Error::shape(
            "cuda::matmul",
            format!("output holds {} values, need {m}×{n_out}", out.len()),
        ));
    }
    if m == 0 {
        return Ok(());
    }
    let bias = w.bias.as_ref().map_or(0, |b| b.ptr());
    let kw = (w.kp() / 64) as i32;
    let (wp, xq, xf, sp, op) = (w.w.ptr(), x.q.ptr(), x.f.ptr(), w.scales.ptr(), out.ptr());
    if m == 1 && !force_gemm {
        // (The one-token product sums the token itself: no Σq argument.)
        let split = GemvSplit::choose(dev, n, kw as usize);
        let k = match split {
            GemvSplit::None => K::TernGemv4,
            GemvSplit::TwoU1 => K::TernGemv4S2U1,
            GemvSplit::TwoU2 => K::TernGemv4S2,
        };
        let blocks = split.blocks(n);
        let args = [
            Arg::P(wp),
            Arg::P(xq),
            Arg::P(xf),
            Arg::P(sp),
            Arg::P(bias),
            Arg::P(op),
            Arg::I(n as i32),
            Arg::I(kw),
            Arg::I(epi as i32),
        ];
        dev.launch(k, stream, (blocks, 1, 1), (128, 1, 1), 0, &args)
    } else {
        if !x.sums {
            return Err(Error::shape(
                "cuda::matmul",
                "the tensor-core product needs the activations' Σq, which a one-row norm does not write",
            ));
        }
        let grid = (n.div_ceil(128) as u32, m.div_ceil(64) as u32, 1);
        let args = [
            Arg::P(wp),
            Arg::P(xq),
            Arg::P(xf),
            Arg::P(x.s.ptr()),
            Arg::P(sp),
            Arg::P(bias),
            Arg::P(op),
            Arg::I(m as i32),
            Arg::I(n as i32),
            Arg::I(kw),
            Arg::I(epi as i32),
        ];
        dev.launch(K::TernGemm, stream, grid, (256, 1, 1), 0, &args)
    }
}
