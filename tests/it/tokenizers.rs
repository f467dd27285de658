//! The three bundled tokenizers (built from GGUF metadata) give text back unchanged, and SmolLM2
//! isolates Unicode numerals the way the original tokenizer does.

use crate::common;
use common::{gemma3, qwen05, smollm2};
use icl_eval::backend::candle::load_tokenizer;

/// Fragments covering what prompts hold: words, digits, numbers, punctuation, code, several scripts,
/// emoji, Unicode numerals, and every kind of whitespace run.
const FRAGMENTS: &[&str] = &[
    "The quick brown fox",
    "jumps over the lazy dog.",
    "Q: What is 48 plus 76?\nA:",
    "12345",
    "3.14159",
    "-0.5e-3",
    "1,000,000",
    "sea otter => loutre de mer",
    "naïve café résumé",
    "Straße",
    "日本語のテキスト",
    "中文字符",
    "Ελληνικά",
    "русский текст",
    "עברית",
    "العربية",
    "हिन्दी",
    "😀🎉👍🏽",
    " ½",
    "²³",
    "Ⅻ",
    "fn main() { println!(\"hi\"); }",
    "<div class=\"x\">&amp;</div>",
    "don't won't it's",
    "  two leading spaces",
    "trailing spaces   ",
    "\ttab\tseparated",
    "\n\nblank lines\n\n\n",
    "\r\nwindows line",
    "    indented code",
    "!!!???...",
    "a",
    " ",
    "\n",
    "Review: great.\nSentiment: positive",
];

const SEPARATORS: &[&str] = &["", " ", "  ", "\n", "\n\n", "\t", " \n "];

/// A few hundred strings built from the fragments by a fixed linear congruential sequence.
fn corpus() -> Vec<String> {
    let mut out: Vec<String> = FRAGMENTS.iter().map(|s| s.to_string()).collect();
    let mut state: u64 = 0x1234_5678;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) as usize) % n
    };
    for _ in 0..300 {
        let parts = 1 + next(5);
        let mut s = String::new();
        for i in 0..parts {
            if i > 0 {
                s.push_str(SEPARATORS[next(SEPARATORS.len())]);
            }
            s.push_str(FRAGMENTS[next(FRAGMENTS.len())]);
        }
        out.push(s);
    }
    out
}

fn round_trip(model: &std::path::Path) {
    let (tok, _) = load_tokenizer(model).unwrap();
    let texts = corpus();
    assert!(texts.len() > 300);
    let mut bad = Vec::new();
    for t in &texts {
        let ids = tok.encode(t).unwrap();
        let back = tok.decode(&ids).unwrap();
        // The model's own <bos>, when it adds one, is not part of the text.
        let back = back.strip_prefix("<bos>").unwrap_or(&back);
        if back != t {
            bad.push(format!("{t:?} -> {back:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} strings changed:\n{}",
        bad.len(),
        texts.len(),
        bad.join("\n")
    );
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m)"]
fn smollm2_round_trips_and_isolates_unicode_numerals() {
    round_trip(&smollm2());
    let (tok, _) = load_tokenizer(&smollm2()).unwrap();
    // The original tokenizer splits every \p{N} character off: "Ġ" + "½" (../shared/reference/README.md).
    assert_eq!(tok.encode(" ½").unwrap(), vec![216, 16738]);
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh gemma3-270m)"]
fn gemma3_round_trips() {
    round_trip(&gemma3());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh qwen2.5-coder-0.5b)"]
fn qwen2_round_trips() {
    round_trip(&qwen05());
}
