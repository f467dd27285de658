//! Tokenizer and logit parity with Hugging Face transformers (`tests/fixtures/ref_*.json`).
//! Needs the real model: `scripts/fetch-models.sh`. Run with `cargo test -- --include-ignored`.

use crate::common;
use common::{floats, ids};
use icl_eval::backend::candle::{CandleBackend, WeightsChoice};
use serde_json::Value;

fn reference(fixture: &str) -> Value {
    let text =
        std::fs::read_to_string(common::root().join("tests/fixtures").join(fixture)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Token ids equal the reference on every prompt, and float32 log-probs are within 1e-3 nats at
/// every position.
fn check_f32(fixture: &str, model: &std::path::Path) {
    let r = reference(fixture);
    let b = CandleBackend::load(model, WeightsChoice::F32).unwrap();
    let mut worst = 0f32;
    for p in r["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        let want = ids(&p["ids_with_special"]);
        assert_eq!(b.encode(text).unwrap(), want, "token ids of {text:?}");
        // The reference decodes without special tokens; ours keeps them, so drop a leading <bos>.
        let decoded = b.decode(&want).unwrap();
        assert_eq!(
            decoded.strip_prefix("<bos>").unwrap_or(&decoded),
            p["decoded_roundtrip"].as_str().unwrap()
        );
        let (got, _) = b.next_token_logprobs(&want).unwrap();
        let refl = floats(&p["next_token_logprobs"]);
        assert_eq!(got.len(), refl.len());
        for (t, (g, e)) in got.iter().zip(&refl).enumerate() {
            let d = (g - e).abs();
            worst = worst.max(d);
            assert!(
                d <= 1e-3,
                "{text:?} position {t}: {g} vs reference {e} (diff {d})"
            );
        }
    }
    eprintln!("{fixture} f32: max |Δ logprob| = {worst:.2e} nats");
}

/// Quantized weights: mean |Δ| ≤ 0.05 and max ≤ 0.5 nats against the float32 reference.
fn check_quantized(fixture: &str, model: &std::path::Path) {
    let r = reference(fixture);
    let b = CandleBackend::load(model, WeightsChoice::Quantized).unwrap();
    let (mut sum, mut n, mut max) = (0f64, 0usize, 0f32);
    for p in r["prompts"].as_array().unwrap() {
        let want = ids(&p["ids_with_special"]);
        let (got, _) = b.next_token_logprobs(&want).unwrap();
        for (g, e) in got.iter().zip(floats(&p["next_token_logprobs"])) {
            let d = (g - e).abs();
            sum += d as f64;
            n += 1;
            max = max.max(d);
        }
    }
    let mean = sum / n as f64;
    eprintln!(
        "{fixture} quantized: mean |Δ| = {mean:.4}, max |Δ| = {max:.4} nats over {n} positions"
    );
    assert!(mean <= 0.05, "mean abs diff {mean}");
    assert!(max <= 0.5, "max abs diff {max}");
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn smollm2_tokens_and_f32_logprobs_match_transformers() {
    check_f32("ref_smollm2.json", &common::smollm2());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn smollm2_quantized_logprobs_stay_close() {
    check_quantized("ref_smollm2.json", &common::smollm2());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh qwen2.5-coder-0.5b)"]
fn qwen2_tokens_and_f32_logprobs_match_transformers() {
    check_f32("ref_qwen2.5-coder-0.5b.json", &common::qwen05());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh qwen2.5-coder-0.5b)"]
fn qwen2_quantized_logprobs_stay_close() {
    check_quantized("ref_qwen2.5-coder-0.5b.json", &common::qwen05());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh gemma3-270m)"]
fn gemma3_tokens_and_f32_logprobs_match_transformers() {
    check_f32("ref_gemma3.json", &common::gemma3());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh gemma3-270m)"]
fn gemma3_quantized_logprobs_stay_close() {
    check_quantized("ref_gemma3.json", &common::gemma3());
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn loglikelihood_from_kv_cache_equals_one_full_pass() {
    use icl_eval::backend::Backend;
    // Scoring continuations off a shared context cache must give the same sums as scoring each
    // context + continuation in one pass.
    let mut b = CandleBackend::load(&common::smollm2(), WeightsChoice::F32).unwrap();
    let ctx = "Review: A wonderful, moving film.\nSentiment:";
    let conts = vec![
        " positive".to_string(),
        " negative".to_string(),
        " utterly forgettable".to_string(),
    ];
    let got = b.loglikelihood(ctx, &[], &conts).unwrap();
    for (c, g) in conts.iter().zip(&got) {
        let (want, greedy, n_tokens) = common::one_pass_score(&b, ctx, c);
        assert!(
            (g.logprob - want).abs() < 1e-3,
            "{c:?}: {} vs {want}",
            g.logprob
        );
        assert_eq!(g.n_tokens, n_tokens);
        assert_eq!(g.is_greedy, greedy, "{c:?}");
    }
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn batched_requests_score_as_each_alone_smollm2() {
    common::check_batch_invariance(&common::smollm2(), WeightsChoice::F32);
    common::check_batch_invariance(&common::smollm2(), WeightsChoice::Quantized);
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh gemma3-270m)"]
fn batched_requests_score_as_each_alone_gemma3() {
    common::check_batch_invariance(&common::gemma3(), WeightsChoice::F32);
}
