//! The KV cache: keys and values of every layer for the positions seen so far.
//!
//! Layout per layer: `[kv_head][position][head_dim]`, so one head's keys are contiguous for
//! the attention kernel. f16 by default (as llama.cpp and bitnet.cpp), f32 on request.

use bitnet_core::nn::attention::{causal_attention, AttnShape, KvElem};
use half::f16;

use crate::{Error, Result};

/// Element type of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDType {
    #[default]
    F16,
    F32,
}

impl std::str::FromStr for KvDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f16" => Ok(KvDType::F16),
            "f32" => Ok(KvDType::F32),
            _ => Err(Error::InvalidArgument(format!(
                "unknown KV cache type `{s}` (expected f16 or f32)"
            ))),
        }
    }
}

struct Store<T> {
    keys: Vec<Vec<T>>,
    values: Vec<Vec<T>>,
}

enum Data {
    F16(Store<f16>),
    F32(Store<f32>),
}

/// Keys and values of all layers, for up to `max_ctx` positions.
pub struct KvCache {
    data: Data,
    n_kv_heads: usize,
    head_dim: usize,
    max_ctx: usize,
    len: usize,
}

fn store<T: KvElem + Default + Clone>(layers: usize, per_layer: usize) -> Store<T> {
    Store {
        keys: (0..layers).map(|_| vec![T::default(); per_layer]).collect(),
        values: (0..layers).map(|_| vec![T::default(); per_layer]).collect(),
    }
}

impl KvCache {
    pub fn new(
        layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        max_ctx: usize,
        dtype: KvDType,
    ) -> Self {
        let per_layer = n_kv_heads * max_ctx * head_dim;
        let data = match dtype {
            KvDType::F16 => Data::F16(store(layers, per_layer)),
            KvDType::F32 => Data::F32(store(layers, per_layer)),
        };
        KvCache {
            data,
            n_kv_heads,
            head_dim,
            max_ctx,
            len: 0,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn max_ctx(&self) -> usize {
        self.max_ctx
    }

    /// Forget everything (positions restart at 0).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drop positions from `len` on (for re-using a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by the cache.
    pub fn nbytes(&self) -> usize {
        let (layers, elem) = match &self.data {
            Data::F16(s) => (s.keys.len(), 2),
            Data::F32(s) => (s.keys.len(), 4),
        };
        2 * layers * self.n_kv_heads * self.max_ctx * self.head_dim * elem
    }

    /// Mark `m` more positions as filled, after every layer has written them.
    pub fn advance(&mut self, m: usize) {
        self.len += m;
    }

    /// Write keys and values of `m` tokens at positions `len .. len+m` for one layer.
    /// `k` and `v` are `m × n_kv_heads·head_dim`, token-major.
    pub fn write(&mut self, layer: usize, k: &[f32], v: &[f32], m: usize) -> Result<()> {
        if self.len + m > self.max_ctx {
            return Err(Error::ContextFull {
                needed: self.len + m,
                limit: self.max_ctx,
            });
        }
        let (hd, nkv, max_ctx, pos0) = (self.head_dim, self.n_kv_heads, self.max_ctx, self.len);
        fn put<T: KvElem>(
            dst: &mut [T],
            src: &[f32],
            m: usize,
            pos0: usize,
            hd: usize,
            nkv: usize,
            max_ctx: usize,
        ) {
            for i in 0..m {
                for h in 0..nkv {
                    let s = &src[(i * nkv + h) * hd..][..hd];
                    let d = &mut dst[(h * max_ctx + pos0 + i) * hd..][..hd];
                    T::store_row(s, d);
                }
            }
        }
        match &mut self.data {
            Data::F16(s) => {
                put(&mut s.keys[layer], k, m, pos0, hd, nkv, max_ctx);
                put(&mut s.values[layer], v, m, pos0, hd, nkv, max_ctx);
            }
            Data::F32(s) => {
                put(&mut s.keys[layer], k, m, pos0, hd, nkv, max_ctx);
                put(&mut s.values[layer], v, m, pos0, hd, nkv, max_ctx);
            }
        }
        Ok(())
    }

    /// Attention of `m` query tokens (at positions `len .. len+m`, already written) of
    /// one layer over the cache.
    pub fn attend(
        &self,
        layer: usize,
        q: &[f32],
        m: usize,
        n_heads: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let shape = AttnShape {
            n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            max_ctx: self.max_ctx,
        };
        match &self.data {
            Data::F16(s) => {
                causal_attention(q, &s.keys[layer], &s.values[layer], m, self.len, shape, out)?
            }
            Data::F32(s) => {
                causal_attention(q, &s.keys[layer], &s.values[layer], m, self.len, shape, out)?
            }
        }
        Ok(())
    }
}
