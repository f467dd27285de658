//! The `knn` sentence encoder against sentence-transformers' own outputs (tests/fixtures/minilm.json,
//! copied from ../shared/reference/minilm.json), and `knn` demonstrations end to end.

use crate::common;
use std::fs;

use common::{floats, icl_eval, ids, root, tmp};
use icl_eval::encoder::Encoder;
use serde_json::Value;

fn encoder() -> Encoder {
    let dir = root().join(icl_eval::encoder::DEFAULT_DIR);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-models.sh minilm first",
        dir.display()
    );
    Encoder::load(&dir).unwrap()
}

#[test]
#[ignore = "needs models/all-minilm-l6-v2 (scripts/fetch-models.sh minilm)"]
fn minilm_matches_sentence_transformers() {
    let e = encoder();
    let fixture: Value = serde_json::from_str(
        &fs::read_to_string(root().join("tests/fixtures/minilm.json")).unwrap(),
    )
    .unwrap();
    let (mut worst_raw, mut worst_unit) = (0.0f32, 0.0f32);
    for s in fixture["sentences"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        let want_ids = ids(&s["ids"]);
        assert_eq!(e.ids(text).unwrap(), want_ids, "token ids of {text:?}");
        let raw = e.embed_raw(text).unwrap();
        for (a, b) in raw.iter().zip(floats(&s["embedding"])) {
            worst_raw = worst_raw.max((a - b).abs());
        }
        let unit = e.embed(text).unwrap();
        for (a, b) in unit.iter().zip(floats(&s["embedding_normalized"])) {
            worst_unit = worst_unit.max((a - b).abs());
        }
    }
    eprintln!("minilm: max |Δ| raw {worst_raw:.2e}, normalised {worst_unit:.2e}");
    // The reference's own batched-vs-unbatched difference is 1.4e-6 on raw vectors of norm up to 6.4.
    assert!(worst_raw < 2e-5, "raw embeddings differ by {worst_raw}");
    assert!(
        worst_unit < 5e-6,
        "normalised embeddings differ by {worst_unit}"
    );
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh)"]
fn knn_shows_the_nearest_demonstrations_last() {
    let d = tmp("knn-prompt");
    let data = d.join("docs.jsonl");
    let docs = [
        (
            "train",
            "The soup was cold and the waiter was rude.",
            "negative",
        ),
        (
            "train",
            "A thrilling space adventure with stunning visuals.",
            "positive",
        ),
        (
            "train",
            "The hotel room smelled of smoke and mould.",
            "negative",
        ),
        (
            "train",
            "The spaceship battles in this film are breathtaking.",
            "positive",
        ),
        (
            "test",
            "An astronaut drama with gorgeous scenes of space.",
            "positive",
        ),
    ];
    let body: String = docs
        .iter()
        .map(|(s, t, l)| format!("{{\"split\": \"{s}\", \"text\": \"{t}\", \"label\": \"{l}\"}}\n"))
        .collect();
    fs::write(&data, body).unwrap();
    let y = d.join("t.yaml");
    fs::write(
        &y,
        "task: t\ndataset: {path: docs.jsonl, split_column: split}\ntest_split: test\n\
         fewshot_split: train\ndoc_to_text: \"{{ text }}\"\ndoc_to_target: \"{{ label }}\"\n\
         doc_to_choice: [negative, positive]\noutput_type: multiple_choice\n\
         fewshot: {sampler: knn}\n",
    )
    .unwrap();
    let o = icl_eval(&["prompt", "--task", y.to_str().unwrap(), "--shots", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let p = String::from_utf8_lossy(&o.stdout);
    // The two space films are the nearest; the closer of them comes right before the query.
    let e = encoder();
    let q = e.embed(docs[4].1).unwrap();
    let sim = |t: &str| icl_eval::sampler::cosine(&q, &e.embed(t).unwrap());
    let (a, b) = (docs[1].1, docs[3].1);
    let (far, near) = if sim(a) < sim(b) { (a, b) } else { (b, a) };
    for other in [docs[0].1, docs[2].1] {
        assert!(
            sim(other) < sim(far),
            "fixture: {other:?} should be less similar"
        );
        assert!(!p.contains(other), "{p}");
    }
    assert!(
        p.find(far).expect(&p) < p.find(near).expect(&p),
        "nearest last:\n{p}"
    );
    let o = icl_eval(&[
        "prompt",
        "--task",
        y.to_str().unwrap(),
        "--shots",
        "2",
        "--encoder",
        "/nonexistent",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("fetch-models.sh minilm"),
        "{e}"
    );
}
