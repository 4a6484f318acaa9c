//! Tokenizer: Hugging Face `tokenizer.json` files and GGUF vocabularies (`tokenizer.ggml.*`).
//!
//! Both paths end in a [`tokenizers::Tokenizer`], so encoding is HF's code in both cases; the
//! GGUF path only has to rebuild what `tokenizer.json` would have said (model, pre-tokenizer,
//! decoder, special tokens) from the GGUF metadata.
//!
//! Semantics, fixed here once for all callers:
//! - [`Tokenizer::encode`]`(text, false)` is HF's `encode(text, add_special_tokens=False)`:
//!   special tokens written in `text` (e.g. `<|eot_id|>`) are matched as specials, nothing is
//!   added. `encode(text, true)` is exactly `[bos] + encode(text, false)`; the file's
//!   post-processor is never run, so BOS handling does not depend on how a file spells it.
//!   A text that itself starts with the BOS string therefore gets two BOS, as in HF.
//! - [`Tokenizer::decode`] is HF's `decode(ids, skip_special_tokens=False)` with no space
//!   clean-up, so `decode(encode(t, false)) == t` for byte-level BPE.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::error::{Error, Result};

/// The Llama-3 pre-tokenizer split regex (tiktoken's `cl100k`-style pattern with `\p{N}{1,3}`).
pub const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Token strings that end generation when a model lists them, besides its EOS/EOT ids.
const EOG_NAMES: &[&str] = &["<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"];

/// What a GGUF file stores about its tokenizer (`tokenizer.ggml.*`), filled by the GGUF loader.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`; only `"gpt2"` (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`; bitnet.cpp's converter writes none.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id, in GPT-2 byte-level form (`Ġ` for space, ...).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 3 control, 4 user-defined, ...); empty = all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`, highest priority first.
    pub merges: Vec<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// A text tokenizer with the model's special ids and chat template. `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    /// Every id that ends generation (sorted, deduplicated).
    eog: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
    /// The decoder is GPT-2 byte-level: every token maps to exact bytes, which lets
    /// [`DecodeStream`] work on bytes instead of re-decoding text windows.
    byte_level: bool,
    note: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("byte_level", &self.byte_level)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

/// Runs tokenizers-crate code that might panic on malformed input and turns a panic into an
/// error, so a bad file can never take the process down.
fn no_panic<T>(context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::Tokenizer(format!(
            "{context}: {}",
            bitnet_core::error::panic_message(&*p)
        ))),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `"bos_token": "<s>"` or `"bos_token": {"content": "<s>", ...}`.
fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `"eos_token_id": 2` or `"eos_token_id": [128001, 128009]`.
fn id_list(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .into_iter()
            .collect(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect(),
        _ => vec![],
    }
}

/// `chat_template` is a string, or (newer HF files) a list of `{name, template}`.
fn template_from_config(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => {
            let named = |want: &str| {
                list.iter().find_map(|e| {
                    (e.get("name")?.as_str()? == want)
                        .then(|| e.get("template")?.as_str().map(str::to_string))
                        .flatten()
                })
            };
            named("default").or_else(|| list.first()?.get("template")?.as_str().map(str::to_string))
        }
        _ => None,
    }
}

/// GPT-2's `bytes_to_unicode` table inverted: the char a byte-level token uses → the byte.
fn byte_level_char_to_byte() -> &'static HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        // Printable bytes stand for themselves; the other 68 bytes are moved to U+0100.. in
        // order, so that no token contains whitespace or control characters.
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut map = HashMap::with_capacity(256);
        let mut n = 0u32;
        for b in 0..=255u8 {
            let c = if printable(b) {
                char::from(b)
            } else {
                n += 1;
                char::from_u32(255 + n).expect("valid char")
            };
            map.insert(c, b);
        }
        map
    })
}

/// The bytes a token string stands for under the ByteLevel decoder, exactly as
/// `tokenizers::decoders::ByteLevel` computes them: map every char through the GPT-2 table,
/// and if any char is not in it (e.g. an added token with a raw space), use the raw UTF-8.
fn byte_level_bytes(token: &str) -> Vec<u8> {
    let table = byte_level_char_to_byte();
    token
        .chars()
        .map(|c| table.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

fn llama3_pre_tokenizer() -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(LLAMA3_SPLIT_REGEX.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| tok_err("Llama-3 split regex", e))?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        // use_regex=false: the split above already did the word splitting.
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])))
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. Reads `tokenizer_config.json` beside it when present
    /// (bos/eos tokens, `add_bos_token`, `chat_template`), then `chat_template.jinja`, and
    /// `generation_config.json` / `config.json` for ids the tokenizer config does not name.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut inner = no_panic(&path.display().to_string(), || {
            tokenizers::Tokenizer::from_bytes(&bytes)
                .map_err(|e| Error::bad_file(path, format!("not a valid tokenizer.json: {e}")))
        })?;
        // A tokenizer.json may carry truncation/padding for training; inference wants neither.
        inner
            .with_truncation(None)
            .map_err(|e| tok_err("disabling truncation", e))?;
        inner.with_padding(None);

        let dir = path.parent().unwrap_or(Path::new("."));
        let cfg = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
        let gen_cfg = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
        let model_cfg = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);

        let by_name = |v: Option<&Json>| token_content(v).and_then(|s| inner.token_to_id(&s));
        let first_id = |key: &str| {
            id_list(gen_cfg.get(key))
                .into_iter()
                .chain(id_list(model_cfg.get(key)))
                .next()
        };
        let bos = by_name(cfg.get("bos_token")).or_else(|| first_id("bos_token_id"));
        let eos = by_name(cfg.get("eos_token")).or_else(|| first_id("eos_token_id"));
        // generation_config's eos list (e.g. Llama-3 instruct: end_of_text, eom, eot) all stop.
        let mut extra_eog = id_list(gen_cfg.get("eos_token_id"));
        extra_eog.extend(id_list(model_cfg.get("eos_token_id")));

        // HF's own rule: `add_bos_token` in tokenizer_config wins; otherwise whatever the
        // post-processor does (Llama-3's TemplateProcessing prepends BOS).
        let add_bos = match cfg.get("add_bos_token").and_then(Json::as_bool) {
            Some(b) => b,
            None => match bos {
                Some(b) => inner
                    .encode_fast("", true)
                    .map(|e| e.get_ids().first() == Some(&b))
                    .unwrap_or(false),
                None => false,
            },
        };

        let mut chat_template = template_from_config(cfg.get("chat_template"));
        if chat_template.is_none() {
            let jinja = dir.join("chat_template.jinja");
            match std::fs::read_to_string(&jinja) {
                Ok(s) => chat_template = Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(jinja, e)),
            }
        }

        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Ok(Self::finish_build(
            inner,
            bos,
            eos,
            None,
            &extra_eog,
            add_bos,
            chat_template,
            byte_level,
            None,
        ))
    }

    /// Loads the tokenizer of a Hugging Face model directory (`dir/tokenizer.json` + configs).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path: PathBuf = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::bad_file(
                dir,
                "no tokenizer.json in this model directory",
            ));
        }
        Self::from_file(&path)
    }

    /// Builds a GPT-2-style byte-level BPE tokenizer from a GGUF vocabulary.
    ///
    /// Pre-tokenizer by `tokenizer.ggml.pre`:
    /// - `"llama-bpe"`, `"llama3"` or **missing**: the Llama-3 split regex, BPE with
    ///   `ignore_merges = true`. bitnet.cpp's converter writes no `pre`, and llama.cpp then falls
    ///   back to its "default" regex, which splits punctuation runs differently from the
    ///   `tokenizer.json` the model was trained with; we do not copy that defect
    ///   (see [`Tokenizer::pre_tokenizer_note`]).
    /// - `"gpt2"`, `"default"`: the GPT-2 regex (ByteLevel with `use_regex`), `ignore_merges = false`.
    /// - anything else: an error naming the value.
    ///
    /// `ignore_merges` (a word that is itself a vocab token is emitted whole, before any merge)
    /// is what tiktoken-derived vocabularies such as Llama-3's need: some of their tokens are
    /// not reachable through the merge list. A GGUF does not record the flag, so it follows
    /// `pre` like llama.cpp does (`LLAMA3` → ignore merges). For BPE vocabularies trained by HF
    /// with `ignore_merges = false` the flag makes no difference as long as every token is
    /// produced by merging its own string, which the tests check for the tiny model.
    ///
    /// Token types 3 (control) and 4 (user-defined) become added tokens (control = special),
    /// matched verbatim in the input text before pre-tokenization, as HF does.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model {:?} is not supported (only \"gpt2\" byte-level BPE)",
                v.model
            )));
        }
        let n = v.tokens.len();
        if n == 0 {
            return Err(Error::Tokenizer("GGUF vocabulary has no tokens".into()));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::Tokenizer(format!("GGUF vocabulary too large: {n}")));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(Error::Tokenizer(format!(
                "GGUF token_type has {} entries for {n} tokens",
                v.token_types.len()
            )));
        }
        for (name, id) in [("bos", v.bos), ("eos", v.eos), ("eot", v.eot)] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(Error::Tokenizer(format!(
                        "GGUF {name} id {id} is outside the vocabulary ({n} tokens)"
                    )));
                }
            }
        }

        let (pre_tokenizer, ignore_merges, llama3_style, note) = match v.pre.as_deref() {
            None => (
                llama3_pre_tokenizer()?,
                true,
                true,
                Some(
                    "tokenizer.ggml.pre missing: using the Llama-3 split regex \
                     (llama.cpp would fall back to its 'default' regex)"
                        .to_string(),
                ),
            ),
            Some("llama-bpe" | "llama3") => (llama3_pre_tokenizer()?, true, true, None),
            Some(p @ ("gpt2" | "default")) => (
                PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
                false,
                false,
                (p == "default").then(|| {
                    "tokenizer.ggml.pre 'default': using the GPT-2 split regex".to_string()
                }),
            ),
            Some(other) => {
                return Err(Error::Tokenizer(format!(
                    "GGUF pre-tokenizer {other:?} is not supported \
                     (supported: llama-bpe, llama3, gpt2, default)"
                )))
            }
        };

        let mut vocab: HashMap<String, u32> = HashMap::with_capacity(n);
        for (id, tok) in v.tokens.iter().enumerate() {
            if let Some(prev) = vocab.insert(tok.clone(), id as u32) {
                // Two ids for one string: one of them could never be produced or decoded
                // consistently, so refuse rather than tokenize subtly wrong.
                return Err(Error::Tokenizer(format!(
                    "GGUF vocabulary has token {tok:?} twice (ids {prev} and {id})"
                )));
            }
        }
        // Byte-level BPE can only encode arbitrary text if all 256 byte symbols exist; a
        // missing one would silently drop bytes.
        for c in byte_level_char_to_byte().keys() {
            if !vocab.contains_key(c.encode_utf8(&mut [0; 4]) as &str) {
                return Err(Error::Tokenizer(format!(
                    "GGUF byte-level vocabulary lacks the byte symbol {c:?}"
                )));
            }
        }
        let merges = v
            .merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut parts = m.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => {
                        Ok((a.to_string(), b.to_string()))
                    }
                    _ => Err(Error::Tokenizer(format!(
                        "GGUF merge #{i} {m:?} is not two tokens separated by one space"
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;

        let bpe = no_panic("building BPE from GGUF vocabulary", || {
            BPE::builder()
                .vocab_and_merges(vocab.into_iter().collect::<Vocab>(), merges)
                .ignore_merges(ignore_merges)
                .byte_fallback(false)
                .build()
                .map_err(|e| tok_err("building BPE from GGUF vocabulary", e))
        })?;

        let mut inner = tokenizers::Tokenizer::new(ModelWrapper::BPE(bpe));
        inner.with_normalizer(None::<NormalizerWrapper>);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_post_processor(None::<PostProcessorWrapper>);
        inner.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));

        // Every added token is already in the BPE vocab (all GGUF tokens are), so the
        // added vocabulary reuses the GGUF ids instead of appending new ones.
        let typed = |want: i32| -> Vec<AddedToken> {
            v.token_types
                .iter()
                .zip(&v.tokens)
                .filter(|(t, _)| **t == want)
                .map(|(_, s)| {
                    AddedToken::from(s.clone(), want == TOKEN_TYPE_CONTROL).normalized(false)
                })
                .collect()
        };
        inner.add_special_tokens(&typed(TOKEN_TYPE_CONTROL));
        inner.add_tokens(&typed(TOKEN_TYPE_USER_DEFINED));

        let eot = v.eot.or_else(|| inner.token_to_id("<|eot_id|>"));
        // llama.cpp's default for BPE vocabularies: add BOS for Llama-3-style ones unless the
        // file says otherwise.
        let add_bos = v.add_bos.unwrap_or(llama3_style) && v.bos.is_some();
        Ok(Self::finish_build(
            inner,
            v.bos,
            v.eos,
            eot,
            &[],
            add_bos,
            v.chat_template.clone(),
            true,
            note,
        ))
    }

    fn finish_build(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        eot: Option<u32>,
        extra_eog: &[u32],
        add_bos: bool,
        chat_template: Option<String>,
        byte_level: bool,
        note: Option<String>,
    ) -> Self {
        let eot = eot.or_else(|| inner.token_to_id("<|eot_id|>"));
        let mut eog: Vec<u32> = eos
            .into_iter()
            .chain(eot)
            .chain(extra_eog.iter().copied())
            .collect();
        eog.extend(EOG_NAMES.iter().filter_map(|s| inner.token_to_id(s)));
        // Only ids the tokenizer knows; a config may list ids of a larger, padded embedding.
        eog.retain(|&id| inner.id_to_token(id).is_some());
        eog.sort_unstable();
        eog.dedup();
        Self {
            inner,
            bos,
            eos,
            eot,
            eog,
            add_bos,
            chat_template,
            byte_level,
            note,
        }
    }

    /// A remark on how the pre-tokenizer was chosen, for `inspect` (GGUF vocabularies only).
    pub fn pre_tokenizer_note(&self) -> Option<String> {
        self.note.clone()
    }

    /// Encodes `text`. See the module docs: `encode(t, true) == [bos] + encode(t, false)`.
    /// `add_bos` with no BOS token known is an error rather than a silent no-op.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| tok_err("encode", e))?;
        let ids = enc.get_ids();
        if !add_bos {
            return Ok(ids.to_vec());
        }
        let bos = self.bos.ok_or_else(|| {
            Error::Tokenizer("encode with BOS requested, but the tokenizer has no BOS token".into())
        })?;
        let mut out = Vec::with_capacity(ids.len() + 1);
        out.push(bos);
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Decodes ids to text, keeping special tokens. Ids outside the vocabulary are an error
    /// (HF would silently drop them, hiding a model/tokenizer mismatch).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| tok_err("decode", e))
    }

    fn check_id(&self, id: u32) -> Result<()> {
        if self.inner.id_to_token(id).is_none() {
            return Err(Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary ({} tokens)",
                self.vocab_size()
            )));
        }
        Ok(())
    }

    /// The vocabulary string of `id` as stored (byte-level form, e.g. `"Ġhello"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The exact bytes `id` contributes to decoded text. A single token may hold part of a
    /// UTF-8 character, so this is bytes, not a `String`.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let tok = self.inner.id_to_token(id)?;
        if self.byte_level {
            Some(byte_level_bytes(&tok))
        } else {
            self.inner.decode(&[id], false).ok().map(String::into_bytes)
        }
    }

    /// The text of one token (incomplete UTF-8 shown as U+FFFD), e.g. `" hello"` for `Ġhello`.
    pub fn token_to_piece(&self, id: u32) -> Option<String> {
        self.token_bytes(id)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Number of ids, including added/special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// Whether the model wants BOS at the start of a prompt (tokenizer config / GGUF
    /// `add_bos_token`, else the file's post-processor, else the Llama-3 default for GGUF).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// End of generation: EOS, EOT (`<|eot_id|>`), `<|end_of_text|>`, `<|eom_id|>`, and every
    /// `eos_token_id` a HF generation config lists.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The model's own chat template (Jinja source), if it ships one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Starts a streaming decoder over this tokenizer.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream::new(self)
    }

    /// The wrapped HF tokenizer, for callers that need something this type does not expose.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

type HfDecodeStream<'a> = tokenizers::DecodeStream<
    'a,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

enum StreamState<'a> {
    /// Byte-level tokenizers: the text is exactly the concatenated token bytes, decoded as
    /// UTF-8 with invalid sequences replaced, so we keep only the undecided tail bytes.
    Bytes { pending: Vec<u8> },
    /// Any other decoder (e.g. SentencePiece Metaspace): HF's window-based stream decoder, plus
    /// what was emitted so far so that `finish` can return whatever it held back.
    Generic {
        hf: Box<HfDecodeStream<'a>>,
        ids: Vec<u32>,
        emitted: String,
    },
}

/// Incremental detokenizer for streaming output. `push` returns only complete UTF-8 text and
/// holds back the bytes of a character split across tokens; `finish` flushes the rest.
/// The concatenation of everything returned equals [`Tokenizer::decode`] of all pushed ids.
pub struct DecodeStream<'a> {
    tok: &'a Tokenizer,
    state: StreamState<'a>,
}

impl<'a> DecodeStream<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        let state = if tok.byte_level {
            StreamState::Bytes { pending: vec![] }
        } else {
            StreamState::Generic {
                hf: Box::new(tok.inner.decode_stream(false)),
                ids: vec![],
                emitted: String::new(),
            }
        };
        Self { tok, state }
    }

    /// Adds one token; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.tok.check_id(id)?;
        match &mut self.state {
            StreamState::Bytes { pending } => {
                pending.extend(self.tok.token_bytes(id).unwrap_or_default());
                let text = take_complete_utf8(pending);
                Ok((!text.is_empty()).then_some(text))
            }
            StreamState::Generic { hf, ids, emitted } => {
                ids.push(id);
                let out = hf.step(id).map_err(|e| tok_err("stream decode", e))?;
                if let Some(s) = &out {
                    emitted.push_str(s);
                }
                Ok(out)
            }
        }
    }

    /// Ends the stream and returns the text still held back (incomplete UTF-8 becomes U+FFFD).
    pub fn finish(self) -> Result<String> {
        match self.state {
            StreamState::Bytes { pending } => Ok(String::from_utf8_lossy(&pending).into_owned()),
            StreamState::Generic { ids, emitted, .. } => {
                let full = self.tok.decode(&ids)?;
                Ok(full
                    .strip_prefix(emitted.as_str())
                    .map(str::to_string)
                    .unwrap_or_default())
            }
        }
    }
}

/// Removes and returns the longest prefix of `buf` that can be decided now: valid UTF-8, with
/// sequences that can never become valid replaced by U+FFFD (the same replacement
/// `String::from_utf8_lossy` makes over the whole text). Leaves an incomplete trailing
/// character in `buf`.
fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..start + valid]).expect("validated"));
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_level_char_to_byte();
        assert_eq!(t.len(), 256);
        let bytes: HashSet<u8> = t.values().copied().collect();
        assert_eq!(bytes.len(), 256);
        assert_eq!(t[&'Ġ'], b' ');
        assert_eq!(t[&'Ċ'], b'\n');
        assert_eq!(t[&'a'], b'a');
    }

    #[test]
    fn utf8_split_points() {
        let mut b = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_complete_utf8(&mut b), "");
        b.push("é".as_bytes()[1]);
        b.push(b'x');
        assert_eq!(take_complete_utf8(&mut b), "éx");
        assert!(b.is_empty());
        let mut b = vec![0xFF, b'a', 0xE2, 0x82];
        assert_eq!(take_complete_utf8(&mut b), "\u{FFFD}a");
        assert_eq!(b, vec![0xE2, 0x82]);
    }

    #[test]
    fn tokenizer_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tokenizer>();
    }
}
