//! A chat template (it comes from the model file) that asks for unbounded memory gets an
//! error, not an aborted process. Needs `TemplateAllocator` as the global allocator, as
//! the `bitnet` CLI installs it.

use std::time::{Duration, Instant};

use bitnet_models::chat::{ChatTemplate, Message, TemplateAllocator, RENDER_TIMEOUT};

#[global_allocator]
static ALLOCATOR: TemplateAllocator = TemplateAllocator;

fn render(src: &str) -> bitnet_models::Result<String> {
    ChatTemplate::new(src, "<s>", "</s>")?.render(&[Message::user("hi")], true)
}

#[test]
fn a_template_that_allocates_without_bound_is_an_error() {
    for src in [
        // 10¹⁰ values materialized by one filter: 240 GB.
        "{{ (range(100000) * 100000) | list | length }}",
        // A string doubled until it passes any memory.
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(64) %}\
         {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    ] {
        let t0 = Instant::now();
        let e = render(src).unwrap_err().to_string();
        assert!(e.contains("more than 512 MiB of memory"), "{src}: {e}");
        assert!(t0.elapsed() < RENDER_TIMEOUT, "{src}: {:?}", t0.elapsed());
    }
    // Rendering still works afterwards, and a large conversation stays inside the limit.
    let t = ChatTemplate::llama3_fallback("<s>", "</s>");
    let long = "word ".repeat(20_000);
    let msgs: Vec<Message> = (0..200).map(|_| Message::user(long.clone())).collect();
    let t0 = Instant::now();
    let out = t.render(&msgs, true).unwrap();
    assert!(out.len() > 200 * long.len());
    assert!(t0.elapsed() < Duration::from_secs(5));
}
