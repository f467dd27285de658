//! Demonstration draws: seeded per test doc, nested across K, never the test doc itself.

use crate::seed::{combine, hash_str};
use crate::task::{Item, Task};

/// The first `k_max` demonstrations for `item` under `seed`: the K-shot prompt uses the first K.
///
/// Every few-shot candidate gets a key hashed from (task, seed, test doc id, candidate id); the draw
/// is the `k_max` smallest keys in key order. It depends on nothing else, so results are identical
/// whatever the order of docs, `--limit`, batching or thread count.
pub fn draw<'t>(task: &'t Task, item: &Item, seed: u64, k_max: usize) -> Vec<&'t Item> {
    let base = combine(&[hash_str(&task.name), seed, item.id as u64]);
    let mut keyed: Vec<(u64, &Item)> = task
        .fewshot
        .iter()
        .filter(|c| !(task.fewshot_is_test && c.id == item.id))
        .map(|c| (combine(&[base, c.id as u64]), c))
        .collect();
    let k = k_max.min(keyed.len());
    if k < keyed.len() && k > 0 {
        keyed.select_nth_unstable_by_key(k - 1, |(key, c)| (*key, c.id));
    }
    keyed.truncate(k);
    keyed.sort_unstable_by_key(|(key, c)| (*key, c.id));
    keyed.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Answer, Metric, OutputType};

    fn item(id: usize) -> Item {
        Item {
            id,
            text: format!("q{id}"),
            answer: Answer::Text(format!("a{id}")),
            description: String::new(),
        }
    }

    fn task(n: usize, fewshot_is_test: bool) -> Task {
        let mut t = Task::for_tests(
            OutputType::GenerateUntil,
            vec![Metric::ExactMatch],
            (0..n).map(item).collect(),
        );
        t.fewshot_is_test = fewshot_is_test;
        t
    }

    #[test]
    fn draws_are_nested_seeded_and_exclude_the_doc() {
        let t = task(50, true);
        for doc in &t.test {
            let big: Vec<usize> = draw(&t, doc, 3, 32).iter().map(|d| d.id).collect();
            let small: Vec<usize> = draw(&t, doc, 3, 4).iter().map(|d| d.id).collect();
            assert_eq!(
                &big[..4],
                &small[..],
                "K=4 must be the first 4 of the K=32 draw"
            );
            assert!(!big.contains(&doc.id));
            let mut uniq = big.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 32);
        }
        let a: Vec<usize> = draw(&t, &t.test[0], 1, 8).iter().map(|d| d.id).collect();
        let b: Vec<usize> = draw(&t, &t.test[0], 2, 8).iter().map(|d| d.id).collect();
        assert_ne!(a, b, "different seeds give different draws");
        assert_ne!(
            a,
            draw(&t, &t.test[1], 1, 8)
                .iter()
                .map(|d| d.id)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn small_pool_gives_what_it_has() {
        let t = task(3, true);
        assert_eq!(draw(&t, &t.test[0], 0, 32).len(), 2);
        let t = task(3, false);
        assert_eq!(draw(&t, &t.test[0], 0, 32).len(), 3);
        assert!(draw(&t, &t.test[0], 0, 0).is_empty());
    }
}
