//! Hugging Face checkpoint folders against transformers: the tiny random checkpoints of all eleven
//! families in `../shared/reference/tiny-hf` (reference vectors copied to `tests/fixtures/tiny-hf/`).
//! Token ids exact, float32 log-probs within 1e-4 nats at every position, greedy generations
//! identical token for token, choices off a shared KV cache equal to full passes (the sliding
//! windows of mistral, gemma2 and gemma3 cross the cache boundary), prefix reuse and batch
//! packing bit for bit.

use crate::common;
use std::path::PathBuf;

use icl_eval::backend::Backend;
use icl_eval::backend::candle::{CandleBackend, WeightsChoice};
use serde_json::{Value, json};

fn checkpoint(arch: &str) -> PathBuf {
    let dir = common::reference_dir().join("tiny-hf").join(arch);
    assert!(
        dir.join("config.json").is_file(),
        "{} is missing: set ICL_EVAL_REFERENCE_DIR to the shared reference folder",
        dir.display()
    );
    dir
}

fn fixture(arch: &str) -> Value {
    let p = common::root().join(format!("tests/fixtures/tiny-hf/{arch}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(arch: &str, parameters: u64) {
    let r = fixture(arch);
    let b = CandleBackend::load(&checkpoint(arch), WeightsChoice::Auto).unwrap();
    assert_eq!(b.info().parameters, parameters, "parameters of {arch}");
    let mut worst = 0f32;
    for p in r["prompts"].as_array().unwrap() {
        let text = p["prompt"].as_str().unwrap();
        let ids = u32s(&p["ids_with_special"]);
        assert_eq!(
            b.encode(text).unwrap(),
            ids,
            "{arch}: token ids of {text:?}"
        );
        let (got, _) = b.next_token_logprobs(&ids).unwrap();
        let want: Vec<f64> = p["next_token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), want.len());
        for (t, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (*g as f64 - w).abs() as f32;
            worst = worst.max(d);
            assert!(d <= 1e-4, "{arch} {text:?} position {t}: {g} vs {w}");
        }
    }
    for g in r["generations"].as_array().unwrap() {
        let prompt = u32s(&g["prompt_ids"]);
        let want = u32s(&g["new_ids"]);
        let got = b.greedy(&prompt, want.len(), |_| Ok(false)).unwrap();
        let ids: Vec<u32> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(ids, want, "{arch}: greedy tokens after {:?}", g["prompt"]);
        for (step, ((_, lp), top)) in got
            .iter()
            .zip(g["step_top5"].as_array().unwrap())
            .enumerate()
        {
            let w = top[0][1].as_f64().unwrap() as f32;
            assert!(
                (lp - w).abs() <= 1e-4,
                "{arch}: step {step} log-prob {lp} vs {w} (KV-cache decoding)"
            );
        }
    }
    eprintln!("tiny-hf/{arch}: max |Δ logprob| = {worst:.2e} nats");
    let b = branching_equals_full_passes(b);
    prefix_reuse_is_exact(b);
    common::check_batch_invariance(&checkpoint(arch), WeightsChoice::Auto);
}

/// Prompts sharing demonstrations reuse their prefix's KV cache, and the numbers are bit for bit
/// those computed without any cache.
fn prefix_reuse_is_exact(b: CandleBackend) {
    let demos = "Q: red?\nA: yes\n\nQ: blue sky at night?\nA: no\n\nQ: green grass in the morning?\nA: yes\n\n";
    let breaks = [
        demos.find("Q: blue").unwrap(),
        demos.find("Q: green").unwrap(),
        demos.len(),
    ];
    let queries = [
        "Q: a cat sat down?\nA:",
        "Q: over the lazy dog?\nA:",
        "Q: yes or no?\nA:",
    ];
    let conts = vec![" yes".to_string(), " no".to_string()];
    let score = |b: &mut CandleBackend| -> Vec<(Vec<f64>, String)> {
        queries
            .iter()
            .map(|q| {
                let ctx = format!("{demos}{q}");
                let lls = b.loglikelihood(&ctx, &breaks, &conts).unwrap();
                let generated = b.generate_until(&ctx, &breaks, &["\n".into()], 4).unwrap();
                (lls.iter().map(|l| l.logprob).collect(), generated)
            })
            .collect()
    };
    let mut b = b.with_kv_cache_mb(64);
    let cached = score(&mut b);
    let (reused, computed) = b.token_counts();
    assert!(
        reused > 0,
        "the shared demonstrations must come from the cache"
    );
    let mut b = b.with_kv_cache_mb(0);
    let fresh = score(&mut b);
    assert_eq!(cached, fresh, "reuse must not change a single bit");
    let (reused_after, computed_after) = b.token_counts();
    assert_eq!(reused_after, reused, "no reuse without a budget");
    assert!(computed_after - computed > computed / 2);
}

/// Scoring choices off a shared context's KV cache equals scoring context + choice in one pass;
/// with the 8-token windows, the context is long enough for the window to slide across the
/// cache boundary.
fn branching_equals_full_passes(mut b: CandleBackend) -> CandleBackend {
    let ctx = "The quick brown fox jumps over the lazy dog, and then it sat down in the shade:";
    let conts = vec![
        " yes".to_string(),
        " no".to_string(),
        " the end of a long story".to_string(),
    ];
    let got = b.loglikelihood(ctx, &[], &conts).unwrap();
    let n_ctx = b.encode(ctx).unwrap().len();
    assert!(n_ctx > 16);
    for (c, g) in conts.iter().zip(&got) {
        let (want, _, _) = common::one_pass_score(&b, ctx, c);
        assert!(
            (g.logprob - want).abs() < 1e-4,
            "{c:?}: {} vs {want}",
            g.logprob
        );
    }
    b
}

/// A sliding-window layer keeps only the keys a later query can see (window − 1), a global
/// layer every key: tiny gemma3 has one of each, 1 key/value head of 16 dims, an 8-token window.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn sliding_layers_keep_only_their_window() {
    let b = CandleBackend::load(&checkpoint("gemma3"), WeightsChoice::F32).unwrap();
    let text = "The quick brown fox jumps over the lazy dog, and then it sat down in the shade.";
    let n = b.encode(text).unwrap().len();
    assert!(n > 20);
    let per_token = 2 * 16 * 4;
    let (held, every) = b.cache_footprint(text).unwrap();
    assert_eq!(every, 2 * n * per_token);
    assert_eq!(
        held,
        (n + 7) * per_token,
        "global: all {n} keys; sliding: the last 7"
    );
    // Mistral slides on every layer: its cache stops growing at the window.
    let m = CandleBackend::load(&checkpoint("mistral"), WeightsChoice::F32).unwrap();
    let short = m.cache_footprint("a").unwrap().0;
    let long = m.cache_footprint(text).unwrap().0;
    let longer = m.cache_footprint(&format!("{text} {text}")).unwrap().0;
    assert!(short < long && long == longer, "{short} {long} {longer}");
}

/// The operations the long-context benchmark divides by, counted by hand for tiny gemma3 (hidden
/// 64, 4 query heads and 1 key/value head of 16, MLP 128, vocabulary 512, a sliding layer with an
/// 8-token window and a global one) over 20 tokens: per token and layer 34,816 multiply-adds in
/// the projections (q 64·64, k and v 64·16, o 64·64, gate, up and down 64·128); attention
/// 2 · 2 · 64 per key seen (132 keys seen in the sliding layer, 210 in the global one); the
/// vocabulary projection at the last position, 2 · 64 · 512.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn prefill_operations_are_counted_by_what_each_position_sees() {
    let b = CandleBackend::load(&checkpoint("gemma3"), WeightsChoice::F32).unwrap();
    let want = 2.0 * 34_816.0 * 20.0 * 2.0 + 256.0 * (132.0 + 210.0) + 2.0 * 64.0 * 512.0;
    assert_eq!(b.prefill_flops(20), want);
    assert_eq!(want, 2_938_368.0);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_llama_checkpoint_matches_transformers() {
    check("llama", 139_584);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_qwen2_checkpoint_matches_transformers() {
    check("qwen2", 107_072);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_gemma3_checkpoint_matches_transformers() {
    check("gemma3", 103_040);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_gpt2_checkpoint_matches_transformers() {
    check("gpt2", 149_248);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_gpt_neox_checkpoint_matches_transformers() {
    check("gpt_neox", 165_632);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_opt_checkpoint_matches_transformers() {
    check("opt", 149_376);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_qwen3_checkpoint_matches_transformers() {
    check("qwen3", 131_520);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_mistral_checkpoint_matches_transformers() {
    check("mistral", 139_584);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_phi3_checkpoint_matches_transformers() {
    check("phi3", 139_584);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_gemma2_checkpoint_matches_transformers() {
    check("gemma2", 181_056);
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn tiny_olmo2_checkpoint_matches_transformers() {
    check("olmo2", 139_776);
}

#[test]
fn folder_without_config_is_a_clear_error() {
    let dir = common::tmp("no-config");
    std::fs::write(dir.join("model.safetensors"), b"").unwrap();
    let err = CandleBackend::load(&dir, WeightsChoice::Auto)
        .err()
        .expect("a folder without config.json must not load")
        .to_string();
    assert!(err.contains("no config.json"), "{err}");
}

/// A copy of a tiny checkpoint folder in a fresh temporary folder, to break.
fn copy_checkpoint(arch: &str, name: &str) -> PathBuf {
    let to = common::tmp(name);
    for e in std::fs::read_dir(checkpoint(arch)).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "ref.json" {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    to
}

/// Edits `config.json` of a checkpoint folder.
fn edit_config(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load_error(dir: &std::path::Path) -> String {
    let e = CandleBackend::load(dir, WeightsChoice::Auto)
        .err()
        .expect("the broken checkpoint must not load");
    format!("{e:#}")
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_sharded_checkpoint_loads_as_one_file_and_a_missing_shard_is_named() {
    let dir = copy_checkpoint("mistral", "sharded");
    let whole = dir.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&whole, &candle_core::Device::Cpu).unwrap();
    std::fs::remove_file(&whole).unwrap();
    let (first, second): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(n, _)| n.starts_with("model.layers.0."));
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        for (n, _) in &part {
            weight_map.insert(n.clone(), Value::from(file));
        }
        let part: std::collections::HashMap<_, _> = part.into_iter().collect();
        candle_core::safetensors::save(&part, dir.join(file)).unwrap();
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let sharded = CandleBackend::load(&dir, WeightsChoice::Auto).unwrap();
    let single = CandleBackend::load(&checkpoint("mistral"), WeightsChoice::Auto).unwrap();
    let ids = single
        .encode("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    assert_eq!(
        sharded.next_token_logprobs(&ids).unwrap(),
        single.next_token_logprobs(&ids).unwrap()
    );
    assert_eq!(sharded.info().parameters, single.info().parameters);
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_error(&dir);
    assert!(
        e.contains("model-00002-of-00002.safetensors") && e.contains("missing"),
        "{e}"
    );
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_bad_checkpoint_gets_one_line_naming_the_field_or_tensor() {
    let dir = copy_checkpoint("gemma2", "bad-config");
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "mamba".into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("`mamba`") && e.contains("gpt_neox") && e.contains("olmo2"),
        "an unknown model_type lists the supported ones: {e}"
    );
    edit_config(&dir, |c| {
        c.insert("model_type".into(), "gemma2".into());
        c.remove("query_pre_attn_scalar");
    });
    let e = load_error(&dir);
    assert!(e.contains("query_pre_attn_scalar"), "{e}");
    edit_config(&dir, |c| {
        c.insert("query_pre_attn_scalar".into(), 16.into());
        c.insert("num_key_value_heads".into(), 1.into());
    });
    let e = load_error(&dir);
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight") && e.contains("[64, 64]"),
        "a shape the config does not imply names the tensor: {e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn add_bos_token_prepends_what_the_post_processor_does_not() {
    // gpt2's tokenizer.json adds nothing; opt's adds <bos> itself: neither gets two.
    let dir = copy_checkpoint("gpt2", "add-bos");
    let cfg = dir.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"add_bos_token\": false", "\"add_bos_token\": true"),
    )
    .unwrap();
    let plain = CandleBackend::load(&checkpoint("gpt2"), WeightsChoice::Auto).unwrap();
    let with_bos = CandleBackend::load(&dir, WeightsChoice::Auto).unwrap();
    let ids = plain.encode("Hello").unwrap();
    assert_ne!(ids[0], 0);
    let mut want = vec![0];
    want.extend(&ids);
    assert_eq!(with_bos.encode("Hello").unwrap(), want);
    let opt = CandleBackend::load(&checkpoint("opt"), WeightsChoice::Auto).unwrap();
    let ids = opt.encode("Hello").unwrap();
    assert_eq!((ids[0], ids[1] != 0), (0, true), "{ids:?}");
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn a_run_over_several_families_records_them_and_draws_a_line_per_family() {
    // Two checkpoints the models file puts in one family, one left to its architecture.
    let d = common::tmp("families-run");
    let tiny = common::reference_dir().join("tiny-hf");
    std::fs::write(
        d.join("models.yaml"),
        format!(
            "models:\n  tiny-llama:\n    source: {0}/llama\n    family: tiny\n  \
             tiny-gemma2:\n    source: {0}/gemma2\n    family: tiny\n  tiny-gpt2:\n    source: {0}/gpt2\n",
            tiny.display()
        ),
    )
    .unwrap();
    let out = d.join("run");
    let tasks = common::root().join("tasks");
    let o = common::icl_eval_in(
        &d,
        &[
            "run",
            "--tasks-dir",
            tasks.to_str().unwrap(),
            "--tasks",
            "two_digit_addition",
            "--models",
            "tiny-llama,tiny-gemma2,tiny-gpt2",
            "--shots",
            "0,1",
            "--limit",
            "3",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let families: Vec<&str> = config["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["family"].as_str().unwrap())
        .collect();
    assert_eq!(families, ["tiny", "tiny", "gpt2"]);
    let svg = std::fs::read_to_string(out.join("accuracy_vs_model_size.svg")).unwrap();
    for line in ["tiny, K = 0", "tiny, K = 1", "gpt2, K = 0"] {
        assert!(svg.contains(line), "{line}");
    }
    let listing = common::icl_eval_in(&d, &["models"]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("| tiny-gpt2 | gpt2 | gpt2 |") && listing.contains("| gemma2 | tiny |"),
        "{listing}"
    );
}

/// A configuration declaring absurd sizes (`num_hidden_layers: 1e9`) is an error naming the key
/// before anything is allocated for it, and one declaring more layers than its weights hold
/// names the first missing layer.
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn absurd_layer_counts_are_errors_not_allocations() {
    let dir = copy_checkpoint("llama", "absurd-layers");
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), json!(1_000_000_000u64));
    });
    let e = load_error(&dir);
    assert!(e.contains("layer count") && e.contains("1000000000"), "{e}");
    for arch in ["gemma3", "mistral"] {
        let dir = copy_checkpoint(arch, &format!("absurd-{arch}"));
        edit_config(&dir, |c| {
            c.insert("num_hidden_layers".into(), json!(1_000_000_000u64));
        });
        let e = load_error(&dir);
        assert!(e.contains("layer count"), "{arch}: {e}");
    }
    let dir = copy_checkpoint("llama", "extra-layers");
    let n = {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        v["num_hidden_layers"].as_u64().unwrap()
    };
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), json!(n + 3));
    });
    let e = load_error(&dir);
    assert!(e.contains(&format!("layer {n} of the {}", n + 3)), "{e}");
}
