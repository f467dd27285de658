//! Chat templates from the GGUF files, rendered by minijinja, against transformers'
//! `apply_chat_template` (tests/fixtures/chat_templates.json, from ../shared/reference), and
//! `--chat-template` runs end to end.

use crate::common;
use std::fs;

use common::{gemma3, icl_eval, ids, qwen05, read_samples, root, smollm2, tmp};
use icl_eval::backend::Backend;
use icl_eval::backend::candle::{CandleBackend, WeightsChoice};
use icl_eval::chat::Message;
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(
        &fs::read_to_string(root().join("tests/fixtures/chat_templates.json")).unwrap(),
    )
    .unwrap()
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn gguf_chat_templates_render_like_transformers() {
    let f = fixture();
    for path in [smollm2(), qwen05()] {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let b = CandleBackend::load(&path, WeightsChoice::Quantized).unwrap();
        let t = b.chat_template().expect("the model ships a chat template");
        let want = &f["models"][&file];
        for (name, conv) in f["conversations"].as_object().unwrap() {
            let msgs: Vec<Message> = conv
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Message {
                    role: m["role"].as_str().unwrap().into(),
                    content: m["content"].as_str().unwrap().into(),
                })
                .collect();
            let got = t.render(&msgs).unwrap();
            assert_eq!(
                got,
                want["rendered"][name].as_str().unwrap(),
                "{file} {name}"
            );
            let want_ids = ids(&want["ids"][name]);
            assert_eq!(
                b.encode(&got).unwrap(),
                want_ids,
                "{file} {name}: token ids"
            );
        }
    }
    let g = CandleBackend::load(&gemma3(), WeightsChoice::Quantized).unwrap();
    assert!(g.chat_template().is_none(), "Gemma 3 270M is a base model");
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn chat_template_runs_fold_or_split_the_demonstrations() {
    let d = tmp("chat-run");
    let task = root().join("tasks/sentiment_reviews.yaml");
    let task = task.to_str().unwrap();
    let mut prompts = Vec::new();
    for (mode, extra) in [
        ("folded", vec![]),
        ("multiturn", vec!["--fewshot-as-multiturn"]),
    ] {
        let out = d.join(mode);
        let mut a = vec![
            "run",
            "--tasks",
            task,
            "--models",
            "smollm2-135m",
            "--shots",
            "0,2",
            "--limit",
            "2",
            "--chat-template",
            "--output",
            out.to_str().unwrap(),
        ];
        a.extend(extra.iter().copied());
        let o = icl_eval(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let samples = read_samples(&out);
        assert_eq!(samples.len(), 4);
        assert!(samples.iter().all(|s| s.logprobs.is_some()));
        let cfg: Value =
            serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["chat"], mode);
        // config.json records every prompt flag, and `icl-eval prompt` given them prints the
        // exact prompt the run sent (its hash is the sample's).
        let flags = &cfg["protocol"]["flags"];
        assert_eq!(flags["chat_template"], true);
        assert_eq!(flags["fewshot_as_multiturn"], mode == "multiturn");
        let s = samples.iter().find(|s| s.doc_id == 1 && s.k == 2).unwrap();
        let mut p = vec![
            "prompt",
            "--task",
            task,
            "--shots",
            "2",
            "--doc",
            "1",
            "--model",
            "smollm2-135m",
            "--chat-template",
        ];
        p.extend(extra.iter().copied());
        let o = icl_eval(&p);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            Some(icl_eval::hash::short_hash(&String::from_utf8_lossy(
                &o.stdout
            ))),
            s.prompt_hash,
            "{mode}"
        );
        prompts.push(samples[1].prompt_hash.clone());
    }
    assert_ne!(
        prompts[0], prompts[1],
        "folded and multi-turn prompts differ"
    );
    let o = icl_eval(&[
        "run",
        "--tasks",
        task,
        "--models",
        "gemma3-270m",
        "--shots",
        "0",
        "--limit",
        "1",
        "--chat-template",
        "--output",
        d.join("gemma").to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("ships no chat template"),
        "{e}"
    );
}
