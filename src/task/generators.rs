//! Built-in, seeded data generators: tasks whose data the project makes itself.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::seed::{SeededRng, combine, hash_str};

/// Names of the generators `dataset.generator.name` accepts.
pub const GENERATORS: &[&str] = &["two_digit_addition"];

/// Docs per split for generator `name`, or an error naming the known generators.
pub fn generate(
    name: &str,
    splits: &BTreeMap<String, usize>,
    seed: u64,
) -> Result<BTreeMap<String, Vec<Value>>, String> {
    match name {
        "two_digit_addition" => Ok(splits
            .iter()
            .map(|(split, &n)| {
                (
                    split.clone(),
                    two_digit_addition(n, combine(&[seed, hash_str(split)])),
                )
            })
            .collect()),
        other => Err(format!(
            "unknown generator `{other}` (known: {})",
            GENERATORS.join(", ")
        )),
    }
}

/// GPT-3's two-digit addition (Brown et al. 2020, §3.9.1): operands uniform in 10..=99.
fn two_digit_addition(n: usize, seed: u64) -> Vec<Value> {
    let mut rng = SeededRng::new(seed);
    (0..n)
        .map(|_| {
            let (a, b) = (rng.range(10, 99), rng.range(10, 99));
            json!({ "a": a, "b": b, "answer": a + b })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addition_is_seeded_and_splits_differ() {
        let splits = BTreeMap::from([("train".to_string(), 50), ("test".to_string(), 50)]);
        let a = generate("two_digit_addition", &splits, 0).unwrap();
        let b = generate("two_digit_addition", &splits, 0).unwrap();
        assert_eq!(a, b);
        assert_ne!(a["train"], a["test"]);
        for doc in &a["test"] {
            let (x, y, s) = (
                doc["a"].as_u64().unwrap(),
                doc["b"].as_u64().unwrap(),
                doc["answer"].as_u64().unwrap(),
            );
            assert!((10..=99).contains(&x) && (10..=99).contains(&y));
            assert_eq!(x + y, s);
        }
        assert!(
            generate("nope", &splits, 0)
                .unwrap_err()
                .contains("two_digit_addition")
        );
    }
}
