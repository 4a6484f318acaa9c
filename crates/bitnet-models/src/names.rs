//! The one table of tensor names and metadata keys, for both file families.
//!
//! Hugging Face names follow transformers' `BitNetForCausalLM`; GGUF names follow
//! llama.cpp's `llama-arch.cpp` as written by bitnet.cpp's converter (checked against the
//! fixtures in `fixtures/tiny-bitnet/gguf`).

/// GGUF architecture names that map to the BitNet b1.58 model.
pub const GGUF_ARCHS: &[&str] = &["bitnet-b1.58", "bitnet-25", "bitnet"];

/// The arch name our GGUF writer uses (bitnet.cpp's, so its tools read our files).
pub const GGUF_ARCH_WRITE: &str = "bitnet-25";

/// A weight of the model, independent of the file's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Embed,
    OutputNorm,
    Output,
    AttnNorm,
    Q,
    K,
    V,
    O,
    AttnSubNorm,
    FfnNorm,
    Gate,
    Up,
    Down,
    FfnSubNorm,
}

impl Slot {
    /// The seven ternary projections of a block, in file order.
    pub const PROJECTIONS: [Slot; 7] = [
        Slot::Q,
        Slot::K,
        Slot::V,
        Slot::O,
        Slot::Gate,
        Slot::Up,
        Slot::Down,
    ];

    /// The four norms of a block.
    pub const BLOCK_NORMS: [Slot; 4] = [
        Slot::AttnNorm,
        Slot::AttnSubNorm,
        Slot::FfnNorm,
        Slot::FfnSubNorm,
    ];

    /// The transformers name (`layer` is ignored for global tensors).
    pub fn hf_name(self, layer: usize) -> String {
        let l = format!("model.layers.{layer}");
        match self {
            Slot::Embed => "model.embed_tokens.weight".into(),
            Slot::OutputNorm => "model.norm.weight".into(),
            Slot::Output => "lm_head.weight".into(),
            Slot::AttnNorm => format!("{l}.input_layernorm.weight"),
            Slot::Q => format!("{l}.self_attn.q_proj.weight"),
            Slot::K => format!("{l}.self_attn.k_proj.weight"),
            Slot::V => format!("{l}.self_attn.v_proj.weight"),
            Slot::O => format!("{l}.self_attn.o_proj.weight"),
            Slot::AttnSubNorm => format!("{l}.self_attn.attn_sub_norm.weight"),
            Slot::FfnNorm => format!("{l}.post_attention_layernorm.weight"),
            Slot::Gate => format!("{l}.mlp.gate_proj.weight"),
            Slot::Up => format!("{l}.mlp.up_proj.weight"),
            Slot::Down => format!("{l}.mlp.down_proj.weight"),
            Slot::FfnSubNorm => format!("{l}.mlp.ffn_sub_norm.weight"),
        }
    }

    /// The per-tensor scale of a projection in the HF packed checkpoint.
    pub fn hf_scale_name(self, layer: usize) -> String {
        self.hf_name(layer).replace(".weight", ".weight_scale")
    }

    /// The GGUF name (`layer` is ignored for global tensors).
    pub fn gguf_name(self, layer: usize) -> String {
        let b = format!("blk.{layer}");
        match self {
            Slot::Embed => "token_embd.weight".into(),
            Slot::OutputNorm => "output_norm.weight".into(),
            Slot::Output => "output.weight".into(),
            Slot::AttnNorm => format!("{b}.attn_norm.weight"),
            Slot::Q => format!("{b}.attn_q.weight"),
            Slot::K => format!("{b}.attn_k.weight"),
            Slot::V => format!("{b}.attn_v.weight"),
            Slot::O => format!("{b}.attn_output.weight"),
            Slot::AttnSubNorm => format!("{b}.attn_sub_norm.weight"),
            Slot::FfnNorm => format!("{b}.ffn_norm.weight"),
            Slot::Gate => format!("{b}.ffn_gate.weight"),
            Slot::Up => format!("{b}.ffn_up.weight"),
            Slot::Down => format!("{b}.ffn_down.weight"),
            Slot::FfnSubNorm => format!("{b}.ffn_sub_norm.weight"),
        }
    }
}

/// GGUF hyper-parameter keys, prefixed with the architecture name.
pub mod gguf_keys {
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const RMS_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    pub const ROPE_DIMS: &str = "rope.dimension_count";
    pub const VOCAB_SIZE: &str = "vocab_size";
}
