//! Tokenizer tests against the fixtures (see fixtures/README.md §1, §2, §5).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bitnet_models::tokenizer::{GgufVocab, Tokenizer};
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn read_json(p: &Path) -> Json {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn cases() -> &'static [Case] {
    static C: OnceLock<Vec<Case>> = OnceLock::new();
    C.get_or_init(|| {
        let s = std::fs::read_to_string(fixtures().join("llama3-tokenizer/cases.jsonl")).unwrap();
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Json = serde_json::from_str(l).unwrap();
                Case {
                    text: v["text"].as_str().unwrap().to_string(),
                    ids: v["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_u64().unwrap() as u32)
                        .collect(),
                    decoded: v["decoded"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    })
}

/// What a GGUF converter stores for a HF byte-level BPE `tokenizer.json`: tokens ordered by
/// id, added tokens as control (special) or user-defined, merges as "a b" strings, and no
/// `tokenizer.ggml.pre` (bitnet.cpp's converter writes none).
fn gguf_vocab_from_tokenizer_json(path: &Path) -> GgufVocab {
    let t = read_json(path);
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let added = t["added_tokens"].as_array().unwrap();
    let n = vocab
        .values()
        .map(|v| v.as_u64().unwrap())
        .chain(added.iter().map(|a| a["id"].as_u64().unwrap()))
        .max()
        .unwrap() as usize
        + 1;
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (s, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = s.clone();
    }
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    assert!(tokens.iter().all(|t| !t.is_empty()), "ids are dense");
    let merges = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Json::String(s) => s.clone(),
            Json::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => panic!("merge {m:?}"),
        })
        .collect();
    let id_of = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
    GgufVocab {
        model: "gpt2".into(),
        pre: None,
        bos: id_of("<|begin_of_text|>"),
        eos: id_of("<|end_of_text|>"),
        eot: None,
        add_bos: Some(true),
        chat_template: None,
        token_types: types,
        merges,
        tokens,
    }
}

fn llama3() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_file(&fixtures().join("llama3-tokenizer/tokenizer.json")).unwrap()
    })
}

fn llama3_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let v = gguf_vocab_from_tokenizer_json(&fixtures().join("llama3-tokenizer/tokenizer.json"));
        Tokenizer::from_gguf_vocab(&v).unwrap()
    })
}

fn tiny() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_file(&fixtures().join("tiny-bitnet/tokenizer.json")).unwrap())
}

/// The tiny model's GGUF vocabulary as bitnet.cpp's converter writes it (all added tokens
/// are control tokens), with the metadata recorded in bitnetcpp.json.
fn tiny_gguf_vocab() -> GgufVocab {
    let mut v = gguf_vocab_from_tokenizer_json(&fixtures().join("tiny-bitnet/tokenizer.json"));
    let meta =
        &read_json(&fixtures().join("tiny-bitnet/gguf/bitnetcpp.json"))["files"][0]["metadata"];
    assert_eq!(meta["tokenizer.ggml.model"], "gpt2");
    assert!(meta.get("tokenizer.ggml.pre").is_none());
    assert_eq!(v.tokens.len(), 1024);
    assert_eq!(v.merges.len(), 760);
    v.bos = Some(meta["tokenizer.ggml.bos_token_id"].as_u64().unwrap() as u32);
    v.eos = Some(meta["tokenizer.ggml.eos_token_id"].as_u64().unwrap() as u32);
    v.add_bos = meta["tokenizer.ggml.add_bos_token"].as_bool();
    v.chat_template = meta["tokenizer.chat_template"].as_str().map(str::to_string);
    v
}

fn tiny_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf_vocab(&tiny_gguf_vocab()).unwrap())
}

#[test]
fn llama3_cases_from_tokenizer_json() {
    let tok = llama3();
    assert_eq!(cases().len(), 217);
    for c in cases() {
        let ids = tok.encode(&c.text, false).unwrap();
        assert_eq!(ids, c.ids, "encode {:?}", c.text);
        assert_eq!(
            tok.decode(&c.ids).unwrap(),
            c.decoded,
            "decode {:?}",
            c.text
        );
        let mut with_bos = vec![128000];
        with_bos.extend(&c.ids);
        assert_eq!(tok.encode(&c.text, true).unwrap(), with_bos);
    }
}

#[test]
fn llama3_cases_from_gguf_vocab() {
    let tok = llama3_gguf();
    let note = tok.pre_tokenizer_note().unwrap();
    assert!(
        note.contains("tokenizer.ggml.pre missing") && note.contains("Llama-3"),
        "{note}"
    );
    for c in cases() {
        assert_eq!(
            tok.encode(&c.text, false).unwrap(),
            c.ids,
            "encode {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&c.ids).unwrap(),
            c.decoded,
            "decode {:?}",
            c.text
        );
    }
}

#[test]
fn llama3_pre_named_llama_bpe_is_the_same() {
    let mut v = gguf_vocab_from_tokenizer_json(&fixtures().join("llama3-tokenizer/tokenizer.json"));
    v.pre = Some("llama-bpe".into());
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    assert_eq!(tok.pre_tokenizer_note(), None);
    for c in cases().iter().step_by(5) {
        assert_eq!(
            tok.encode(&c.text, false).unwrap(),
            c.ids,
            "encode {:?}",
            c.text
        );
    }
}

#[test]
fn llama3_special_ids() {
    for tok in [llama3(), llama3_gguf()] {
        assert_eq!(tok.vocab_size(), 128256);
        assert_eq!(tok.bos_id(), Some(128000));
        assert_eq!(tok.eos_id(), Some(128001));
        assert_eq!(tok.eot_id(), Some(128009));
        assert!(tok.add_bos());
        assert!(tok.is_eog(128001) && tok.is_eog(128009));
        assert!(!tok.is_eog(128000) && !tok.is_eog(128006) && !tok.is_eog(13));
        assert_eq!(tok.id_to_token(128009).as_deref(), Some("<|eot_id|>"));
        assert_eq!(tok.token_to_id("<|eot_id|>"), Some(128009));
        let hello = tok.encode(" hello", false).unwrap();
        assert_eq!(hello.len(), 1);
        assert_eq!(tok.id_to_token(hello[0]).as_deref(), Some("Ġhello"));
        assert_eq!(tok.token_to_piece(hello[0]).as_deref(), Some(" hello"));
        assert!(tok.id_to_token(128256).is_none());
        assert!(tok.decode(&[128256]).is_err());
    }
}

#[test]
fn tiny_golden_prompts() {
    let golden = read_json(&fixtures().join("tiny-bitnet/golden.json"));
    let prompts = golden["prompts"].as_array().unwrap();
    assert_eq!(prompts.len(), 3);
    for (name, tok) in [("tokenizer.json", tiny()), ("gguf", tiny_gguf())] {
        assert_eq!(tok.bos_id(), Some(1016), "{name}");
        assert_eq!(tok.eos_id(), Some(1017), "{name}");
        assert_eq!(tok.eot_id(), Some(1020), "{name}");
        assert!(tok.add_bos(), "{name}");
        assert_eq!(tok.vocab_size(), 1024, "{name}");
        for p in prompts {
            let text = p["text"].as_str().unwrap();
            let ids: Vec<u32> = p["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text, true).unwrap(), ids, "{name}: {text:?}");
            assert_eq!(tok.decode(&ids[1..]).unwrap(), text);
        }
    }
    assert_eq!(
        tiny().encode("Permission is granted to", true).unwrap(),
        [1016, 47, 412, 627, 439, 933, 362]
    );
    assert!(tiny_gguf()
        .chat_template()
        .unwrap()
        .contains("BITNETAssistant"));
}

/// The GGUF path uses `ignore_merges = true` for a vocabulary without `pre` (right for
/// Llama-3). The tiny tokenizer was trained with `ignore_merges = false`; that choice only
/// matters for words that are whole vocab tokens yet merge to something else, so check
/// that no such token exists and that both tokenizers agree on a lot of text.
#[test]
fn tiny_gguf_agrees_with_tokenizer_json() {
    let (a, b) = (tiny(), tiny_gguf());
    for id in 0..1016u32 {
        let piece = a.token_bytes(id).unwrap();
        if let Ok(text) = String::from_utf8(piece) {
            assert_eq!(
                a.encode(&text, false).unwrap(),
                b.encode(&text, false).unwrap(),
                "token {id} {text:?}"
            );
        }
    }
    for c in cases() {
        assert_eq!(
            a.encode(&c.text, false).unwrap(),
            b.encode(&c.text, false).unwrap(),
            "{:?}",
            c.text
        );
    }
    let ppl = std::fs::read_to_string(fixtures().join("tiny-bitnet/gguf/ppl.txt")).unwrap();
    let ids = b.encode(&ppl, true).unwrap();
    assert_eq!(ids, a.encode(&ppl, true).unwrap());
    assert_eq!(b.decode(&ids[1..]).unwrap(), ppl);
    // bitnetcpp.json: HF tokenizes ppl.txt to 1935 tokens (llama.cpp's default regex: 1952),
    // and at position 176 HF has '.\n\n', 'A', 't', ' the'.
    assert_eq!(ids.len(), 1935);
    let pieces: Vec<String> = ids[176..180]
        .iter()
        .map(|&i| b.token_to_piece(i).unwrap())
        .collect();
    assert_eq!(pieces, [".\n\n", "A", "t", " the"]);
}

fn stream_all(tok: &Tokenizer, ids: &[u32]) -> (String, Vec<String>) {
    let mut s = tok.decode_stream();
    let mut chunks = vec![];
    for &id in ids {
        if let Some(c) = s.push(id).unwrap() {
            chunks.push(c);
        }
    }
    let rest = s.finish().unwrap();
    if !rest.is_empty() {
        chunks.push(rest);
    }
    (chunks.concat(), chunks)
}

#[test]
fn decode_stream_multibyte() {
    let text = "Hi 👋🏽 family 👨‍👩‍👧‍👦, 日本語のテキスト, 한국어, 🇫🇷 and é (e\u{301}) ✓";
    for tok in [llama3(), llama3_gguf(), tiny(), tiny_gguf()] {
        let ids = tok.encode(text, false).unwrap();
        let (full, chunks) = stream_all(tok, &ids);
        assert_eq!(full, text);
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
        // The tiny vocabulary splits most non-ASCII characters across byte tokens, so some
        // pushes must have returned nothing.
        if tok.vocab_size() == 1024 {
            assert!(chunks.len() < ids.len());
        }
    }
    for c in cases() {
        assert_eq!(stream_all(llama3(), &c.ids).0, c.decoded, "{:?}", c.text);
    }
}

#[test]
fn decode_stream_incomplete_tail_is_flushed() {
    let tok = tiny();
    // "€" is three bytes; the tiny vocabulary has no token for it, so it is three byte tokens.
    let ids = tok.encode("€", false).unwrap();
    assert_eq!(ids.len(), 3);
    let mut s = tok.decode_stream();
    assert_eq!(s.push(ids[0]).unwrap(), None);
    assert_eq!(s.push(ids[1]).unwrap(), None);
    assert_eq!(s.finish().unwrap(), "\u{FFFD}");
    assert_eq!(tok.decode(&ids[..2]).unwrap(), "\u{FFFD}");
    let mut s = tok.decode_stream();
    assert!(s.push(5000).is_err());
}

/// A SentencePiece-style tokenizer.json (Metaspace + byte fallback) takes the generic
/// streaming path.
#[test]
fn decode_stream_generic_decoder() {
    let dir = temp_dir("generic");
    let json = r#"{
      "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null,
      "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false},
      "post_processor": null,
      "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
        {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
      "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": true, "ignore_merges": false,
        "vocab": {"▁hi": 0, "<0xC3>": 1, "<0xA9>": 2, "▁": 3, "h": 4, "i": 5, "▁h": 6},
        "merges": [["▁", "h"], ["▁h", "i"]]}
    }"#;
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    let ids = [0, 1, 2, 0];
    let want = tok.decode(&ids).unwrap();
    assert_eq!(want, "hié hi");
    let (full, _) = stream_all(&tok, &ids);
    assert_eq!(full, want);
    assert_eq!(tok.bos_id(), None);
    assert!(tok.encode("hi", true).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitnet-tok-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn from_dir_reads_config_and_template() {
    let dir = temp_dir("fromdir");
    std::fs::copy(
        fixtures().join("tiny-bitnet/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let cfg = serde_json::json!({
        "bos_token": {"content": "<|begin_of_text|>"},
        "eos_token": "<|eot_id|>",
        "add_bos_token": false,
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [1017, 1020, 1021]}"#,
    )
    .unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.bos_id(), Some(1016));
    assert_eq!(tok.eos_id(), Some(1020));
    assert!(!tok.add_bos());
    assert_eq!(tok.chat_template(), Some("D"));
    assert!(tok.is_eog(1017) && tok.is_eog(1020) && tok.is_eog(1021) && !tok.is_eog(1016));
    assert_eq!(tok.eog_ids(), [1017, 1020, 1021]);

    // Real fixture dir: no template, BOS added by the post-processor / config.
    let t = Tokenizer::from_dir(&fixtures().join("tiny-bitnet")).unwrap();
    assert!(t.chat_template().is_none());
    assert!(Tokenizer::from_dir(&dir.join("nope")).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_tokenizer_json_is_an_error() {
    let dir = temp_dir("bad");
    let path = dir.join("tokenizer.json");
    let full = std::fs::read(fixtures().join("tiny-bitnet/tokenizer.json")).unwrap();
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json".to_vec(),
        b"{}".to_vec(),
        b"[1,2,3]".to_vec(),
        full[..full.len() / 2].to_vec(),
        vec![0xFF, 0xFE, 0x00],
        br#"{"version":"1.0","model":{"type":"BPE","vocab":{"a":0},"merges":[["a","zz"]]}}"#
            .to_vec(),
    ];
    for b in bad {
        std::fs::write(&path, &b).unwrap();
        assert!(
            Tokenizer::from_file(&path).is_err(),
            "{:?}",
            String::from_utf8_lossy(&b)
        );
    }
    assert!(Tokenizer::from_file(&dir.join("missing.json")).is_err());
    // A broken tokenizer_config.json beside a good tokenizer.json is reported too.
    std::fs::write(&path, &full).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{oops").unwrap();
    assert!(Tokenizer::from_file(&path).is_err());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_gguf_vocab_is_an_error() {
    let good = tiny_gguf_vocab();
    let mut cases: Vec<(&str, GgufVocab)> = vec![];
    let mut v = good.clone();
    v.model = "llama".into();
    cases.push(("spm model", v));
    let mut v = good.clone();
    v.pre = Some("qwen2".into());
    cases.push(("unknown pre", v));
    let mut v = good.clone();
    v.tokens.clear();
    v.token_types.clear();
    cases.push(("empty", v));
    let mut v = good.clone();
    v.token_types.pop();
    cases.push(("type count", v));
    let mut v = good.clone();
    v.merges[3] = "abc".into();
    cases.push(("merge without space", v));
    let mut v = good.clone();
    v.merges[3] = "zzzz qqqq".into();
    cases.push(("merge out of vocab", v));
    let mut v = good.clone();
    v.bos = Some(5000);
    cases.push(("bos range", v));
    let mut v = good.clone();
    v.tokens[5] = v.tokens[6].clone();
    cases.push(("duplicate", v));
    let mut v = good.clone();
    let pos = v.tokens.iter().position(|t| t == "Ġ").unwrap();
    v.tokens[pos] = "Ġ-renamed".into();
    cases.push(("missing byte", v));
    for (what, v) in cases {
        let r = Tokenizer::from_gguf_vocab(&v);
        assert!(r.is_err(), "{what}");
    }
    let mut v = good;
    v.pre = Some("gpt2".into());
    let t = Tokenizer::from_gguf_vocab(&v).unwrap();
    // The GPT-2 regex keeps " hello" one word and splits "'s" like Llama-3; decoding is exact.
    let text = "It's 12345 dollars,\n\n  ok?";
    assert_eq!(t.decode(&t.encode(text, false).unwrap()).unwrap(), text);
    assert!(!t.add_bos() || v.add_bos == Some(true));
}

#[test]
fn encode_matches_specials_in_text() {
    let tok = tiny_gguf();
    let ids = tok
        .encode(
            "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
            false,
        )
        .unwrap();
    assert_eq!(ids[0], 1018);
    assert!(ids.contains(&1019));
    assert_eq!(*ids.last().unwrap(), 1020);
    assert_eq!(
        tok.encode("<|eot_id|>", false).unwrap(),
        tiny().encode("<|eot_id|>", false).unwrap()
    );
}

/// The tiny GGUF's own template (bitnet.cpp's) rendered and tokenized: the specials come out
/// as single ids; a tokenizer without a template gets the Llama-3 fallback.
#[test]
fn chat_template_from_tokenizer() {
    use bitnet_models::chat::{ChatTemplate, Message};
    let tok = tiny_gguf();
    let t = ChatTemplate::from_tokenizer(tok).unwrap();
    assert!(!t.is_fallback());
    let text = t.render(&[Message::user("hi")], true).unwrap();
    assert_eq!(
        text,
        "<|begin_of_text|>Human: hi\n\nBITNETAssistant: <|end_of_text|>"
    );
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[0], 1016);
    assert_eq!(*ids.last().unwrap(), 1017);
    assert_eq!(ids.iter().filter(|&&i| i >= 1016).count(), 2);

    let t = ChatTemplate::from_tokenizer(llama3()).unwrap();
    assert!(t.is_fallback());
    let text = t.render(&[Message::user("Hello")], true).unwrap();
    let ids = llama3().encode(&text, false).unwrap();
    assert_eq!(&ids[..3], [128000, 128006, 882]); // <|begin_of_text|><|start_header_id|>user
    assert_eq!(&ids[ids.len() - 4..], [128006, 78191, 128007, 271]); // ...assistant<|end_header_id|>\n\n
}
