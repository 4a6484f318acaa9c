//! Chat templates: the model's own Jinja `chat_template`, rendered with minijinja the way
//! Hugging Face's `apply_chat_template` renders it with Jinja2.
//!
//! What HF provides and we mirror:
//! - environment: `trim_blocks` and `lstrip_blocks` on, trailing newline dropped;
//! - variables: `messages` (`[{role, content}]`), `bos_token`, `eos_token`,
//!   `add_generation_prompt`, and `tools` / `documents` set to `none` (HF passes them
//!   explicitly, so `tools is not none` is false rather than true for undefined);
//! - `raise_exception(msg)` (an error carrying `msg`) and a `tojson` filter with Python's
//!   `json.dumps` spacing (`", "`, `": "`, no HTML escaping, optional `indent`);
//! - the Python string/dict methods HF templates call (`strip`, `lstrip`, `rstrip`, `split`,
//!   `startswith`, `endswith`, `upper`, `lower`, `title`, `capitalize`, `replace`, `find`,
//!   `count`, `join`, `items`, `keys`, `values`, `get`), through minijinja's unknown-method
//!   hook; minijinja-contrib's `pycompat` is not a dependency.
//!
//! `{% break %}` and `{% continue %}` work (Jinja2's loop-controls extension, which HF
//! enables). Not supported: `{% generation %}`, `strftime_now`; templates using them fail
//! with an error, not silently.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind, State};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Meta-Llama-3-8B-Instruct's chat template, used when a model ships none. BitNet b1.58
/// 2B-4T uses the Llama-3 tokenizer and its header tokens, so this is the format its tokens
/// know; it needs `<|start_header_id|>`, `<|end_header_id|>` and `<|eot_id|>` in the vocabulary.
pub const LLAMA3_FALLBACK_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// Template instructions one rendering may execute (minijinja's fuel): ample for any real
/// conversation, and a bound of well under a second for a template that never ends.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// Wall-clock limit of one rendering. Fuel counts instructions, and a single instruction
/// can run for hours: `join`, `sum` or `list` over `range(100000) * 100000` (a lazy
/// sequence of 10¹⁰ items). Real templates render in milliseconds.
pub const RENDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Heap bytes one rendering may hold at once. Fuel and the timeout bound time, not memory:
/// `(range(100000) * 100000) | list` asks for 240 GB in one instruction, and a failed
/// allocation aborts the process. Real templates hold a few kilobytes plus the
/// conversation. Enforced only in programs that install [`TemplateAllocator`] as their
/// global allocator (the `bitnet` CLI does).
pub const TEMPLATE_MEMORY: usize = 512 << 20;

thread_local! {
    /// Set on a rendering thread only: its live heap bytes and the flag it raises when
    /// they pass [`TEMPLATE_MEMORY`] (owned by an `Arc` the thread keeps alive).
    static RENDER_HEAP: Cell<(isize, *const AtomicBool)> =
        const { Cell::new((0, std::ptr::null())) };
}

/// The system allocator, plus a memory limit for chat-template rendering threads.
///
/// Other threads pay one thread-local read per allocation. A rendering thread that asks
/// for more than [`TEMPLATE_MEMORY`] raises its flag and sleeps for good instead of
/// receiving the memory (an allocator may neither fail loudly nor unwind);
/// [`ChatTemplate::render`] sees the flag and returns an error, and the sleeping thread
/// ends with the process.
pub struct TemplateAllocator;

impl TemplateAllocator {
    fn charge(delta: isize) {
        let _ = RENDER_HEAP.try_with(|h| {
            let (live, flag) = h.get();
            if flag.is_null() {
                return;
            }
            let live = live.saturating_add(delta);
            h.set((live, flag));
            if delta > 0 && live > TEMPLATE_MEMORY as isize {
                // SAFETY: the flag's Arc lives in this thread's closure, which is running.
                unsafe { (*flag).store(true, Ordering::Release) };
                loop {
                    std::thread::sleep(Duration::from_secs(3600));
                }
            }
        });
    }
}

// SAFETY: every call goes to `System` with the caller's arguments; `charge` only does
// bookkeeping (or never returns), and allocates nothing.
unsafe impl GlobalAlloc for TemplateAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::charge(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::charge(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        Self::charge(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::charge(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A compiled chat template plus the BOS/EOS strings it is rendered with.
pub struct ChatTemplate {
    env: Arc<Environment<'static>>,
    source: String,
    bos: String,
    eos: String,
    is_fallback: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("is_fallback", &self.is_fallback)
            .finish()
    }
}

fn template_err(e: minijinja::Error) -> Error {
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::Template(format!(
            "the chat template did not finish within {TEMPLATE_FUEL} instructions \
             (minijinja ran out of fuel): a loop that never ends?"
        ));
    }
    // minijinja's Display omits the detail chain; include it so template bugs are findable.
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compiles `src` (syntax errors are reported here, not at render time).
    pub fn new(src: &str, bos: impl Into<String>, eos: impl Into<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // Templates come from model files: a loop nest such as two `range(100000)` would
        // otherwise run for hours. Real templates use tens of instructions per message.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.set_unknown_method_callback(python_method);
        env.add_template_owned(TEMPLATE_NAME, src.to_string())
            .map_err(template_err)?;
        Ok(Self {
            env: Arc::new(env),
            source: src.to_string(),
            bos: bos.into(),
            eos: eos.into(),
            is_fallback: false,
        })
    }

    /// The built-in Llama-3 template ([`LLAMA3_FALLBACK_TEMPLATE`]).
    pub fn llama3_fallback(bos: impl Into<String>, eos: impl Into<String>) -> Self {
        let mut t =
            Self::new(LLAMA3_FALLBACK_TEMPLATE, bos, eos).expect("built-in template compiles");
        t.is_fallback = true;
        t
    }

    /// The tokenizer's own template, or the Llama-3 fallback when it has none. BOS/EOS
    /// strings come from the tokenizer's BOS/EOS ids (empty when unknown).
    pub fn from_tokenizer(tok: &Tokenizer) -> Result<Self> {
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        let (bos, eos) = (name(tok.bos_id()), name(tok.eos_id()));
        match tok.chat_template() {
            Some(src) => Self::new(src, bos, eos),
            None => Ok(Self::llama3_fallback(bos, eos)),
        }
    }

    /// Renders the conversation. With `add_generation_prompt` the template appends the
    /// header that starts the assistant's reply.
    ///
    /// Rendering runs on its own thread; past [`RENDER_TIMEOUT`], or past [`TEMPLATE_MEMORY`]
    /// where [`TemplateAllocator`] is installed, this returns an error and leaves that thread
    /// behind (a command line tool then exits, which ends it).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let ctx = minijinja::context! {
            messages => messages,
            bos_token => &self.bos,
            eos_token => &self.eos,
            add_generation_prompt => add_generation_prompt,
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let env = Arc::clone(&self.env);
        let over = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&over);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("chat-template".into())
            .spawn(move || {
                RENDER_HEAP.with(|h| h.set((0, Arc::as_ptr(&flag))));
                let out = env.get_template(TEMPLATE_NAME).and_then(|t| t.render(ctx));
                RENDER_HEAP.with(|h| h.set((0, std::ptr::null())));
                // The receiver is gone only after a timeout; nothing is left to tell.
                let _ = tx.send(out);
                drop(flag);
            })
            .map_err(|e| Error::Template(format!("cannot start the template thread: {e}")))?;
        let deadline = Instant::now() + RENDER_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(out) => return out.map_err(template_err),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Error::Template(
                        "the chat template's rendering thread panicked".into(),
                    ))
                }
            }
            if over.load(Ordering::Acquire) {
                return Err(Error::Template(format!(
                    "the chat template needed more than {} MiB of memory (one operation over \
                     a huge list or string?); the template comes from the model file",
                    TEMPLATE_MEMORY >> 20
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::Template(format!(
                    "the chat template did not finish rendering within {} s (one operation \
                     over a huge list or string?); the template comes from the model file",
                    RENDER_TIMEOUT.as_secs()
                )));
            }
        }
    }

    /// The Jinja source in use.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this is the built-in fallback rather than the model's own template.
    pub fn is_fallback(&self) -> bool {
        self.is_fallback
    }
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// Python's `json.dumps` separators: `", "` between items and `": "` after keys.
struct PyCompactFormatter;

impl serde_json::ser::Formatter for PyCompactFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// `tojson` as HF's Jinja environment defines it: `json.dumps(x, ensure_ascii=False,
/// indent=indent)`. With an indent, Python's item separator is `","` + newline, which is
/// serde_json's pretty format.
fn tojson(
    value: Value,
    indent: Option<usize>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, fmt))
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(
            &mut out,
            PyCompactFormatter,
        )),
    };
    res.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let s = String::from_utf8(out).expect("serde_json writes UTF-8");
    Ok(Value::from_safe_string(s))
}

fn arg_str(args: &[Value], i: usize) -> std::result::Result<Option<String>, minijinja::Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => match v.as_str() {
            Some(s) => Ok(Some(s.to_string())),
            None => Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("expected a string argument, got {}", v.kind()),
            )),
        },
    }
}

fn check_argc(
    method: &str,
    args: &[Value],
    max: usize,
) -> std::result::Result<(), minijinja::Error> {
    if args.len() > max {
        return Err(minijinja::Error::new(
            ErrorKind::TooManyArguments,
            format!("{method}() takes at most {max} arguments"),
        ));
    }
    Ok(())
}

/// Python `str.strip([chars])`-family: no argument strips whitespace, else any of `chars`.
fn py_strip(s: &str, chars: Option<&str>, left: bool, right: bool) -> String {
    let pred = |c: char| match chars {
        Some(set) => set.contains(c),
        None => c.is_whitespace(),
    };
    let mut t = s;
    if left {
        t = t.trim_start_matches(pred);
    }
    if right {
        t = t.trim_end_matches(pred);
    }
    t.to_string()
}

/// Python methods on strings and dicts that HF chat templates call.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> std::result::Result<Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        return match method {
            "strip" | "lstrip" | "rstrip" => {
                check_argc(method, args, 1)?;
                let chars = arg_str(args, 0)?;
                Ok(Value::from(py_strip(
                    s,
                    chars.as_deref(),
                    method != "rstrip",
                    method != "lstrip",
                )))
            }
            "upper" => Ok(Value::from(s.to_uppercase())),
            "lower" => Ok(Value::from(s.to_lowercase())),
            "title" | "capitalize" => state.apply_filter(method, std::slice::from_ref(value)),
            "startswith" | "endswith" => {
                check_argc(method, args, 1)?;
                // Python also accepts a tuple of candidates.
                let candidates: Vec<String> = match args.first() {
                    Some(v) if v.kind() == ValueKind::Seq => v
                        .try_iter()?
                        .map(|x| x.as_str().map(str::to_string).unwrap_or_default())
                        .collect(),
                    _ => arg_str(args, 0)?.into_iter().collect(),
                };
                let hit = candidates.iter().any(|c| {
                    if method == "startswith" {
                        s.starts_with(c.as_str())
                    } else {
                        s.ends_with(c.as_str())
                    }
                });
                Ok(Value::from(hit))
            }
            "split" => {
                check_argc(method, args, 2)?;
                let sep = arg_str(args, 0)?;
                let maxsplit = match args.get(1) {
                    Some(v) => i64::try_from(v.clone())?,
                    None => -1,
                };
                let limit = if maxsplit < 0 {
                    usize::MAX
                } else {
                    maxsplit as usize + 1
                };
                let parts: Vec<Value> = match sep {
                    Some(sep) if sep.is_empty() => {
                        return Err(minijinja::Error::new(
                            ErrorKind::InvalidOperation,
                            "empty separator",
                        ))
                    }
                    Some(sep) => s.splitn(limit, sep.as_str()).map(Value::from).collect(),
                    // No separator: split on whitespace runs, dropping empty strings.
                    None => s.split_whitespace().take(limit).map(Value::from).collect(),
                };
                Ok(Value::from(parts))
            }
            "replace" => {
                check_argc(method, args, 3)?;
                let old = arg_str(args, 0)?.unwrap_or_default();
                let new = arg_str(args, 1)?.unwrap_or_default();
                let out = match args.get(2) {
                    Some(n) => s.replacen(old.as_str(), &new, usize::try_from(n.clone())?),
                    None => s.replace(old.as_str(), &new),
                };
                Ok(Value::from(out))
            }
            "find" => {
                check_argc(method, args, 1)?;
                let needle = arg_str(args, 0)?.unwrap_or_default();
                // Python counts characters, not bytes.
                Ok(Value::from(
                    s.find(needle.as_str())
                        .map(|b| s[..b].chars().count() as i64)
                        .unwrap_or(-1),
                ))
            }
            "count" => {
                check_argc(method, args, 1)?;
                let needle = arg_str(args, 0)?.unwrap_or_default();
                let n = if needle.is_empty() {
                    s.chars().count() + 1
                } else {
                    s.matches(needle.as_str()).count()
                };
                Ok(Value::from(n))
            }
            "join" => {
                check_argc(method, args, 1)?;
                let items = args.first().ok_or_else(|| {
                    minijinja::Error::new(ErrorKind::MissingArgument, "join() needs an iterable")
                })?;
                let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
                Ok(Value::from(parts.join(s)))
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    if value.kind() == ValueKind::Map {
        return match method {
            "items" => {
                check_argc(method, args, 0)?;
                state.apply_filter("items", std::slice::from_ref(value))
            }
            "keys" => {
                check_argc(method, args, 0)?;
                Ok(Value::from(value.try_iter()?.collect::<Vec<_>>()))
            }
            "values" => {
                check_argc(method, args, 0)?;
                let vals = value
                    .try_iter()?
                    .map(|k| value.get_item(&k))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Ok(Value::from(vals))
            }
            "get" => {
                check_argc(method, args, 2)?;
                let key = args.first().ok_or_else(|| {
                    minijinja::Error::new(ErrorKind::MissingArgument, "get() needs a key")
                })?;
                let v = value.get_item(key)?;
                Ok(if v.is_undefined() {
                    args.get(1).cloned().unwrap_or(Value::from(()))
                } else {
                    v
                })
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        };
    }
    Err(minijinja::Error::from(ErrorKind::UnknownMethod))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> Result<String> {
        ChatTemplate::new(src, "<s>", "</s>")?.render(&[Message::user(" hi ")], false)
    }

    #[test]
    fn python_methods() {
        assert_eq!(render("{{ messages[0].content.strip() }}|").unwrap(), "hi|");
        assert_eq!(
            render("{{ messages[0].content.lstrip() }}|").unwrap(),
            "hi |"
        );
        assert_eq!(render("{{ 'xxhixx'.strip('x') }}").unwrap(), "hi");
        assert_eq!(
            render("{{ 'a b  c'.split() | join(',') }}").unwrap(),
            "a,b,c"
        );
        assert_eq!(
            render("{{ 'a,b,c'.split(',', 1) | join('|') }}").unwrap(),
            "a|b,c"
        );
        assert_eq!(
            render("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }}").unwrap(),
            "True True"
        );
        assert_eq!(
            render("{{ 'aXa'.replace('a', 'b') }} {{ 'Hi'.upper() }}{{ 'Hi'.lower() }}").unwrap(),
            "bXb HIhi"
        );
        assert_eq!(
            render("{{ '-'.join(['a', 'b']) }} {{ 'héllo'.find('l') }}").unwrap(),
            "a-b 2"
        );
        assert_eq!(
            render("{% for k, v in {'a': 1}.items() %}{{ k }}={{ v }}{% endfor %}").unwrap(),
            "a=1"
        );
        assert_eq!(
            render("{{ {'a': 1}.get('a') }} {{ {'a': 1}.get('b', 7) }} {{ {'a': 1}.get('b') }}")
                .unwrap(),
            "1 7 None"
        );
        assert!(render("{{ 'x'.nosuchmethod() }}").is_err());
    }

    #[test]
    fn a_template_that_never_ends_is_an_error() {
        // 10¹⁰ iterations without the fuel limit.
        let t0 = std::time::Instant::now();
        let e = render(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("did not finish within 20000000 instructions"),
            "{e}"
        );
        assert!(t0.elapsed().as_secs() < 30);
        // One instruction that would run for hours: `sum` over 10¹⁰ items (it allocates
        // nothing, so the thread left behind only spins until the test process ends).
        let t0 = std::time::Instant::now();
        let e = render("{{ (range(100000) | list * 100000) | sum }}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish rendering within 10 s"), "{e}");
        assert!(t0.elapsed() < RENDER_TIMEOUT + Duration::from_secs(5));
        // A long conversation stays far inside the limit.
        let t = ChatTemplate::llama3_fallback("<s>", "</s>");
        let msgs: Vec<Message> = (0..2000)
            .map(|i| Message::user(format!("message {i}")))
            .collect();
        assert!(t.render(&msgs, true).is_ok());
    }

    #[test]
    fn loop_controls() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}\
             {{ m.content }};{% if m.content == 'stop' %}{% break %}{% endif %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let msgs = [
            Message::system("sys"),
            Message::user("a"),
            Message::assistant("stop"),
            Message::user("never"),
        ];
        assert_eq!(t.render(&msgs, false).unwrap(), "a;stop;");
    }

    #[test]
    fn tojson_is_python_style() {
        assert_eq!(
            render(r#"{{ {"a": [1, "é<"], "b": none} | tojson }}"#).unwrap(),
            r#"{"a": [1, "é<"], "b": null}"#
        );
        assert_eq!(render("{{ [1] | tojson(indent=2) }}").unwrap(), "[\n  1\n]");
    }

    #[test]
    fn undefined_tools_is_none() {
        assert_eq!(
            render("{{ tools is none }} {{ documents is none }}").unwrap(),
            "True True"
        );
    }

    /// tokenizer.chat_template of the tiny model's GGUFs (fixtures/tiny-bitnet/gguf/bitnetcpp.json),
    /// i.e. what bitnet.cpp's converter writes for BitNet models.
    const BITNET_CPP_TEMPLATE: &str = r"{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{% if message['role'] == 'user' %}{{ 'Human: ' + message['content'] + '\n\nBITNETAssistant: ' + eos_token }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

    /// Meta-Llama-3-8B-Instruct's tokenizer_config.json chat_template, as published.
    const LLAMA3_INSTRUCT_TEMPLATE: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

    #[test]
    fn bitnet_cpp_template() {
        let t =
            ChatTemplate::new(BITNET_CPP_TEMPLATE, "<|begin_of_text|>", "<|end_of_text|>").unwrap();
        assert_eq!(
            t.render(&[Message::user("hi")], true).unwrap(),
            "<|begin_of_text|>Human: hi\n\nBITNETAssistant: <|end_of_text|>"
        );
        let conv = [
            Message::system("ignored by this template"),
            Message::user("hi"),
            Message::assistant("Hello!"),
            Message::user("bye"),
        ];
        assert_eq!(
            t.render(&conv, true).unwrap(),
            "<|begin_of_text|>Human: hi\n\nBITNETAssistant: <|end_of_text|>Hello!<|end_of_text|>\
             Human: bye\n\nBITNETAssistant: <|end_of_text|>"
        );
        assert!(!t.is_fallback());
        assert_eq!(t.source(), BITNET_CPP_TEMPLATE);
    }

    #[test]
    fn llama3_instruct_template() {
        let t =
            ChatTemplate::new(LLAMA3_INSTRUCT_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let conv = [
            Message::system("You are helpful."),
            Message::user("  Hi!\n"),
        ];
        let want = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>\
                    <|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>";
        assert_eq!(t.render(&conv, false).unwrap(), want);
        assert_eq!(
            t.render(&conv, true).unwrap(),
            format!("{want}<|start_header_id|>assistant<|end_header_id|>\n\n")
        );
        // The fallback is this very template.
        let f = ChatTemplate::llama3_fallback("<|begin_of_text|>", "<|eot_id|>");
        assert!(f.is_fallback());
        assert_eq!(
            f.render(&conv, true).unwrap(),
            t.render(&conv, true).unwrap()
        );
        assert_eq!(t.render(&[], false).unwrap(), "");
    }

    #[test]
    fn template_errors() {
        // Syntax errors surface at construction.
        assert!(matches!(
            ChatTemplate::new("{% for m in messages %}", "", ""),
            Err(Error::Template(_))
        ));
        assert!(matches!(
            ChatTemplate::new("{{ 1 + }}", "", ""),
            Err(Error::Template(_))
        ));
        // raise_exception carries the template's message.
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('Conversation must start with system') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        match t.render(&[Message::user("x")], false) {
            Err(Error::Template(m)) => {
                assert!(m.contains("Conversation must start with system"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.render(&[Message::system("x")], false).unwrap(), "ok");
        // Runtime errors: attribute of undefined, index out of a string op, unknown filter.
        let t = ChatTemplate::new("{{ nothing.attr }}", "", "").unwrap();
        assert!(t.render(&[], false).is_err());
        assert!(ChatTemplate::new("{{ 'x' | nosuchfilter }}", "", "")
            .and_then(|t| t.render(&[], false))
            .is_err());
    }
}
