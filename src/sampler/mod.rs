//! Demonstration selection: which few-shot docs a test doc's prompt shows, in what order, with what
//! labels. Every choice is seeded by stable hashes of (task, seed, doc ids), never by processing
//! order, so a doc's prompt is the same whatever `--limit`, order or thread count.

pub mod bm25;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::seed::{combine, hash_str};
pub use crate::task::fewshot::{DemoOrder, Sampler};
use crate::task::{Answer, Item, OutputType, Task};

/// What answer each demonstration shows (Min et al. 2022).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum DemoLabels {
    /// The gold answer.
    #[default]
    Gold,
    /// A label drawn uniformly from the doc's choices (seeded per seed and demonstration).
    Random,
    /// The next choice after the gold one (the other label of a binary task).
    Flipped,
    /// No answer: the demonstration shows its input only.
    None,
}

impl DemoLabels {
    /// The CLI / results spelling.
    pub fn name(self) -> &'static str {
        match self {
            DemoLabels::Gold => "gold",
            DemoLabels::Random => "random",
            DemoLabels::Flipped => "flipped",
            DemoLabels::None => "none",
        }
    }
}

/// One demonstration as a prompt shows it.
#[derive(Debug, Clone)]
pub struct Demo<'t> {
    pub item: &'t Item,
    /// The answer shown after the target delimiter; `None` shows the input alone.
    pub answer: Option<&'t str>,
    /// Its place in the sampler's ranking (0 = preferred): the context cuts the highest first.
    pub rank: usize,
}

impl PartialEq for Demo<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.item.id == other.item.id && self.answer == other.answer
    }
}

impl<'t> Demo<'t> {
    /// A demonstration with its gold answer, unranked (rank 0).
    pub fn gold(item: &'t Item) -> Self {
        Self {
            answer: Some(item.target_text()),
            item,
            rank: 0,
        }
    }
}

/// Embeddings for `knn`: one unit vector per test doc and per few-shot doc, in split order.
#[derive(Debug, Clone, Default)]
pub struct Embeddings {
    pub test: Vec<Vec<f32>>,
    pub fewshot: Vec<Vec<f32>>,
}

/// Chooses demonstrations for one task under one sampler.
pub struct Selector<'t> {
    task: &'t Task,
    sampler: Sampler,
    order: DemoOrder,
    bm25: Option<bm25::Bm25>,
    embeddings: Option<Embeddings>,
}

impl<'t> Selector<'t> {
    /// Checks that `sampler` applies to `task` and builds what it needs (a BM25 index; `knn` needs
    /// `embeddings` of both splits).
    pub fn new(
        task: &'t Task,
        sampler: Sampler,
        order: DemoOrder,
        embeddings: Option<Embeddings>,
    ) -> Result<Self> {
        if order == DemoOrder::ByLabel && task.output_type != OutputType::MultipleChoice {
            bail!(
                "task `{}`: demonstration order `by_label` groups demonstrations by label, but \
                 the task is {}, which has none; use the sampler's own order",
                task.name,
                task.output_type.name()
            );
        }
        if sampler == Sampler::Balanced && task.output_type != OutputType::MultipleChoice {
            bail!(
                "task `{}`: sampler `balanced` draws by label, but the task is {}; use random, \
                 fixed, first_n, bm25 or knn",
                task.name,
                task.output_type.name()
            );
        }
        let bm25 = (sampler == Sampler::Bm25)
            .then(|| bm25::Bm25::new(task.fewshot.iter().map(|d| d.text.as_str())));
        let embeddings = match (sampler, embeddings) {
            (Sampler::Knn, None) => bail!(
                "task `{}`: sampler `knn` needs sentence embeddings, but no encoder was loaded",
                task.name
            ),
            (Sampler::Knn, Some(e)) => {
                if e.test.len() != task.test.len() || e.fewshot.len() != task.fewshot.len() {
                    bail!(
                        "task `{}`: embeddings cover {} test and {} few-shot docs, the task has {} \
                         and {}",
                        task.name,
                        e.test.len(),
                        e.fewshot.len(),
                        task.test.len(),
                        task.fewshot.len()
                    );
                }
                Some(e)
            }
            (_, _) => None,
        };
        Ok(Self {
            task,
            sampler,
            order,
            bm25,
            embeddings,
        })
    }

    /// The task it selects for.
    pub fn task(&self) -> &'t Task {
        self.task
    }

    /// The sampler in use.
    pub fn sampler(&self) -> Sampler {
        self.sampler
    }

    /// The order demonstrations are shown in.
    pub fn order(&self) -> DemoOrder {
        self.order
    }

    /// Few-shot docs for `item` under `seed`, best first, at most `k_max`: the K-shot prompt draws
    /// from the first K, so demonstration sets are nested across K. Never the test doc itself.
    pub fn ranking(&self, item: &Item, seed: u64, k_max: usize) -> Vec<&'t Item> {
        let task = self.task;
        let eligible = |c: &&Item| !(task.fewshot_is_test && c.id == item.id);
        let tagged = |tag: &str, per_doc: bool| {
            let doc = if per_doc { item.id as u64 } else { u64::MAX };
            combine(&[hash_str(&task.name), seed, doc, hash_str(tag)])
        };
        // Lower key = preferred; ties go to the lower doc id.
        let keyed: Vec<(f64, u64, &'t Item)> = match self.sampler {
            // Random keeps its original key, so draws from earlier versions stay the same.
            Sampler::Random => {
                let base = combine(&[hash_str(&task.name), seed, item.id as u64]);
                self.keyed(|c| (0.0, combine(&[base, c.id as u64])))
            }
            Sampler::Fixed => {
                let base = tagged("fixed", false);
                self.keyed(|c| (0.0, combine(&[base, c.id as u64])))
            }
            Sampler::FirstN => self.keyed(|c| (0.0, c.id as u64)),
            Sampler::Balanced => {
                let base = tagged("balanced", true);
                return balanced(task.fewshot.iter().filter(eligible), base, k_max);
            }
            Sampler::Bm25 => {
                let scores = self.bm25.as_ref().map(|b| b.scores(&item.text));
                self.keyed(|c| (-scores.as_ref().map_or(0.0, |s| s[c.id]), c.id as u64))
            }
            Sampler::Knn => {
                let e = self.embeddings.as_ref();
                self.keyed(|c| {
                    let sim = e.map_or(0.0, |e| cosine(&e.test[item.id], &e.fewshot[c.id]));
                    (-sim, c.id as u64)
                })
            }
        };
        let mut keyed: Vec<_> = keyed.into_iter().filter(|(_, _, c)| eligible(c)).collect();
        let k = k_max.min(keyed.len());
        let cmp = |a: &(f64, u64, &Item), b: &(f64, u64, &Item)| {
            a.0.total_cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.id.cmp(&b.2.id))
        };
        if k < keyed.len() && k > 0 {
            keyed.select_nth_unstable_by(k - 1, cmp);
        }
        keyed.truncate(k);
        keyed.sort_unstable_by(cmp);
        keyed.into_iter().map(|(_, _, c)| c).collect()
    }

    fn keyed(&self, key: impl Fn(&Item) -> (f64, u64)) -> Vec<(f64, u64, &'t Item)> {
        self.task
            .fewshot
            .iter()
            .map(|c| {
                let (a, b) = key(c);
                (a, b, c)
            })
            .collect()
    }

    /// The K demonstrations of a prompt: the first K of `ranking`, ordered (nearest last for the
    /// similarity samplers unless told otherwise; `permutation` p > 0 is a seeded reordering of the
    /// same set; `by_label` then groups them by the label shown, stably), each showing the answer
    /// `labels` asks for.
    pub fn demos(
        &self,
        ranking: &[&'t Item],
        k: usize,
        item: &Item,
        seed: u64,
        permutation: usize,
        labels: DemoLabels,
    ) -> Vec<Demo<'t>> {
        let mut set: Vec<(usize, &'t Item)> = ranking[..k.min(ranking.len())]
            .iter()
            .copied()
            .enumerate()
            .collect();
        if matches!(self.sampler, Sampler::Bm25 | Sampler::Knn)
            && self.order != DemoOrder::NearestFirst
        {
            set.reverse();
        }
        if permutation > 0 {
            let doc = if self.sampler.shared() {
                u64::MAX
            } else {
                item.id as u64
            };
            let base = combine(&[
                hash_str(&self.task.name),
                seed,
                doc,
                permutation as u64,
                hash_str("permutation"),
            ]);
            set.sort_by_key(|(_, c)| (combine(&[base, c.id as u64]), c.id));
        }
        let mut demos: Vec<Demo<'t>> = set
            .into_iter()
            .map(|(rank, d)| Demo {
                item: d,
                answer: shown_answer(&self.task.name, d, seed, labels),
                rank,
            })
            .collect();
        if self.order == DemoOrder::ByLabel {
            // Shown labels in choice order; a demonstration showing none goes last.
            demos.sort_by_key(|d| match (&d.item.answer, d.answer) {
                (Answer::Choice { choices, .. }, Some(a)) => {
                    choices.iter().position(|c| c == a).unwrap_or(usize::MAX)
                }
                _ => usize::MAX,
            });
        }
        demos
    }
}

/// The answer a demonstration shows under `labels`.
fn shown_answer<'t>(task: &str, d: &'t Item, seed: u64, labels: DemoLabels) -> Option<&'t str> {
    match (labels, &d.answer) {
        (DemoLabels::Gold, _) => Some(d.target_text()),
        (DemoLabels::None, _) => None,
        (DemoLabels::Flipped, Answer::Choice { choices, gold }) => {
            Some(&choices[(gold + 1) % choices.len()])
        }
        (DemoLabels::Random, Answer::Choice { choices, .. }) => {
            let key = combine(&[hash_str(task), seed, d.id as u64, hash_str("label")]);
            Some(&choices[(key % choices.len() as u64) as usize])
        }
        // Only multiple-choice tasks have a label set; `check_labels` rejects these before a run.
        (DemoLabels::Flipped | DemoLabels::Random, _) => Some(d.target_text()),
    }
}

/// Rejects label studies that need a label set on a task without one.
pub fn check_labels(task: &Task, labels: &[DemoLabels]) -> Result<()> {
    if task.output_type != OutputType::MultipleChoice
        && let Some(l) = labels
            .iter()
            .find(|l| matches!(l, DemoLabels::Random | DemoLabels::Flipped))
    {
        bail!(
            "--demo-labels {}: task `{}` is {}, which has no label set to draw or flip; use \
             gold or none",
            l.name(),
            task.name,
            task.output_type.name()
        );
    }
    Ok(())
}

/// Cycles through the labels (in a seeded order), taking each label's docs in seeded order.
fn balanced<'t>(
    candidates: impl Iterator<Item = &'t Item>,
    base: u64,
    k_max: usize,
) -> Vec<&'t Item> {
    let mut by_label: Vec<(String, Vec<(u64, &'t Item)>)> = Vec::new();
    for c in candidates {
        let label = c.target_text().to_string();
        let key = combine(&[base, c.id as u64]);
        match by_label.iter_mut().find(|(l, _)| *l == label) {
            Some((_, v)) => v.push((key, c)),
            None => by_label.push((label, vec![(key, c)])),
        }
    }
    for (_, v) in &mut by_label {
        v.sort_unstable_by_key(|(k, c)| (*k, c.id));
    }
    by_label.sort_by_key(|(l, _)| combine(&[base, hash_str(l)]));
    let total: usize = by_label.iter().map(|(_, v)| v.len()).sum();
    let k_max = k_max.min(total);
    let mut out = Vec::with_capacity(k_max);
    let mut round = 0;
    while out.len() < k_max {
        let before = out.len();
        for (_, v) in &by_label {
            if out.len() == k_max {
                break;
            }
            if let Some((_, c)) = v.get(round) {
                out.push(*c);
            }
        }
        if out.len() == before {
            break;
        }
        round += 1;
    }
    out
}

/// Cosine similarity (the vectors need not be normalised).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += f64::from(x) * f64::from(y);
        aa += f64::from(x) * f64::from(x);
        bb += f64::from(y) * f64::from(y);
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
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

    /// A 3-label task: doc i has label i % 3 among "a", "b", "c", except that label "c" is rare.
    fn labelled(n: usize) -> Task {
        let docs = (0..n)
            .map(|id| Item {
                id,
                text: format!("text {id} word{}", id % 4),
                answer: Answer::Choice {
                    choices: vec!["a".into(), "b".into(), "c".into()],
                    gold: if id % 10 == 9 { 2 } else { id % 2 },
                },
                description: String::new(),
            })
            .collect();
        Task::for_tests(OutputType::MultipleChoice, vec![Metric::Acc], docs)
    }

    fn ids(v: &[&Item]) -> Vec<usize> {
        v.iter().map(|d| d.id).collect()
    }

    /// `by_label` shows the same set as the sampler's own order, grouped by the label each
    /// demonstration shows (choice order), each group in the sampler's order.
    #[test]
    fn by_label_groups_the_same_demonstrations_by_label() {
        let t = labelled(40);
        let own = Selector::new(&t, Sampler::Fixed, DemoOrder::default(), None).unwrap();
        let grouped = Selector::new(&t, Sampler::Fixed, DemoOrder::ByLabel, None).unwrap();
        let item = &t.test[0];
        let ranking = own.ranking(item, 7, 16);
        let plain = own.demos(&ranking, 16, item, 7, 0, DemoLabels::Gold);
        let by = grouped.demos(&ranking, 16, item, 7, 0, DemoLabels::Gold);
        let labels = |ds: &[Demo]| ds.iter().map(|d| d.answer.unwrap()).collect::<String>();
        let mut want: Vec<&Demo> = plain.iter().collect();
        want.sort_by_key(|d| d.answer.unwrap());
        assert_eq!(
            by.iter().map(|d| d.item.id).collect::<Vec<_>>(),
            want.iter().map(|d| d.item.id).collect::<Vec<_>>()
        );
        let shown = labels(&by);
        assert!(shown.starts_with('a') && shown.contains('b'), "{shown}");
        assert!(labels(&plain) != shown, "the draw was not already sorted");
        // Flipped labels group by what the prompt shows.
        let flipped = grouped.demos(&ranking, 16, item, 7, 0, DemoLabels::Flipped);
        let f = labels(&flipped);
        let mut sorted: Vec<char> = f.chars().collect();
        sorted.sort_unstable();
        assert_eq!(f, sorted.into_iter().collect::<String>());
        // A generation task has no labels to group by.
        let mut g = labelled(4);
        g.output_type = OutputType::GenerateUntil;
        let e = Selector::new(&g, Sampler::Random, DemoOrder::ByLabel, None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("`by_label`"), "{e}");
    }

    #[test]
    fn random_draws_are_nested_seeded_and_exclude_the_doc() {
        let t = task(50, true);
        let s = Selector::new(&t, Sampler::Random, DemoOrder::default(), None).unwrap();
        for doc in &t.test {
            let big = ids(&s.ranking(doc, 3, 32));
            let small = ids(&s.ranking(doc, 3, 4));
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
        let a = ids(&s.ranking(&t.test[0], 1, 8));
        assert_ne!(a, ids(&s.ranking(&t.test[0], 2, 8)), "seeds differ");
        assert_ne!(a, ids(&s.ranking(&t.test[1], 1, 8)), "docs differ");
        // Pinned: the random sampler keeps the draws of earlier versions.
        assert_eq!(ids(&s.ranking(&t.test[0], 1234, 3)), pinned_random_draw());
    }

    fn pinned_random_draw() -> Vec<usize> {
        let t = task(50, true);
        let base = combine(&[hash_str(&t.name), 1234, 0]);
        let mut c: Vec<(u64, usize)> = (1..50).map(|i| (combine(&[base, i as u64]), i)).collect();
        c.sort();
        c.into_iter().take(3).map(|(_, i)| i).collect()
    }

    #[test]
    fn fixed_and_first_n_share_demonstrations_across_docs() {
        let t = task(40, false);
        for sampler in [Sampler::Fixed, Sampler::FirstN] {
            let s = Selector::new(&t, sampler, DemoOrder::default(), None).unwrap();
            let first = ids(&s.ranking(&t.test[0], 5, 8));
            for doc in &t.test {
                assert_eq!(ids(&s.ranking(doc, 5, 8)), first, "{sampler:?}");
            }
            assert_eq!(&ids(&s.ranking(&t.test[3], 5, 3))[..], &first[..3]);
        }
        let s = Selector::new(&t, Sampler::FirstN, DemoOrder::default(), None).unwrap();
        assert_eq!(ids(&s.ranking(&t.test[0], 9, 4)), vec![0, 1, 2, 3]);
        let f = Selector::new(&t, Sampler::Fixed, DemoOrder::default(), None).unwrap();
        assert_ne!(
            ids(&f.ranking(&t.test[0], 1, 8)),
            ids(&f.ranking(&t.test[0], 2, 8))
        );
        // Drawn from the test split, a shared draw still never shows a doc its own answer.
        let t = task(40, true);
        let s = Selector::new(&t, Sampler::FirstN, DemoOrder::default(), None).unwrap();
        assert_eq!(ids(&s.ranking(&t.test[1], 0, 3)), vec![0, 2, 3]);
    }

    #[test]
    fn balanced_cycles_through_labels() {
        let t = labelled(100);
        let s = Selector::new(&t, Sampler::Balanced, DemoOrder::default(), None).unwrap();
        for doc in t.test.iter().take(10) {
            let r = s.ranking(doc, 7, 32);
            assert_eq!(r.len(), 32);
            for k in [3, 6, 9, 27] {
                let mut counts = [0; 3];
                for d in &r[..k] {
                    counts[match &d.answer {
                        Answer::Choice { gold, .. } => *gold,
                        _ => unreachable!(),
                    }] += 1;
                }
                assert_eq!(counts.iter().sum::<usize>(), k);
                // Label "c" has 10 docs (9 without doc 9 itself): up to K = 27 every label appears
                // exactly K/3 times.
                assert_eq!(counts, [k / 3; 3], "K={k}: {counts:?}");
            }
            assert!(!r.iter().any(|d| d.id == doc.id));
            assert_eq!(ids(&s.ranking(doc, 7, 5))[..], ids(&r)[..5]);
        }
        // Labels run out unevenly: "c" has 10 docs, so the draw continues with "a" and "b".
        let r = s.ranking(&t.test[0], 7, 60);
        assert_eq!(r.len(), 60);
    }

    #[test]
    fn bm25_picks_the_most_similar_and_orders_nearest_last() {
        let mut t = task(4, false);
        t.fewshot = [
            "apples and pears",
            "the stock market fell",
            "pears are sweet",
            "football",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| Item {
            text: s.to_string(),
            ..item(i)
        })
        .collect();
        t.test[0].text = "are pears sweet?".into();
        let s = Selector::new(&t, Sampler::Bm25, DemoOrder::NearestLast, None).unwrap();
        let r = s.ranking(&t.test[0], 0, 2);
        assert_eq!(ids(&r), vec![2, 0]);
        let shown: Vec<usize> = s
            .demos(&r, 2, &t.test[0], 0, 0, DemoLabels::Gold)
            .iter()
            .map(|d| d.item.id)
            .collect();
        assert_eq!(shown, vec![0, 2], "nearest last");
        let s = Selector::new(&t, Sampler::Bm25, DemoOrder::NearestFirst, None).unwrap();
        let shown: Vec<usize> = s
            .demos(&r, 2, &t.test[0], 0, 0, DemoLabels::Gold)
            .iter()
            .map(|d| d.item.id)
            .collect();
        assert_eq!(shown, vec![2, 0]);
    }

    #[test]
    fn knn_ranks_by_cosine_and_needs_embeddings() {
        let t = task(3, false);
        assert!(Selector::new(&t, Sampler::Knn, DemoOrder::default(), None).is_err());
        let e = Embeddings {
            test: vec![vec![1.0, 0.0]; 3],
            fewshot: vec![vec![0.0, 1.0], vec![1.0, 0.1], vec![1.0, 1.0]],
        };
        let s = Selector::new(&t, Sampler::Knn, DemoOrder::default(), Some(e)).unwrap();
        assert_eq!(ids(&s.ranking(&t.test[0], 0, 3)), vec![1, 2, 0]);
        let short = Embeddings {
            test: vec![],
            fewshot: vec![],
        };
        assert!(Selector::new(&t, Sampler::Knn, DemoOrder::default(), Some(short)).is_err());
    }

    #[test]
    fn permutations_reorder_the_same_set_and_labels_change_only_answers() {
        let t = labelled(30);
        let s = Selector::new(&t, Sampler::Random, DemoOrder::default(), None).unwrap();
        let doc = &t.test[0];
        let r = s.ranking(doc, 1, 8);
        let base = s.demos(&r, 8, doc, 1, 0, DemoLabels::Gold);
        assert_eq!(
            base.iter().map(|d| d.item.id).collect::<Vec<_>>(),
            ids(&r),
            "permutation 0 keeps the draw order"
        );
        let mut orders = std::collections::BTreeSet::new();
        for p in 1..5 {
            let d = s.demos(&r, 8, doc, 1, p, DemoLabels::Gold);
            let mut a: Vec<usize> = d.iter().map(|d| d.item.id).collect();
            orders.insert(a.clone());
            a.sort();
            let mut b = ids(&r);
            b.sort();
            assert_eq!(a, b, "same set");
        }
        assert!(orders.len() > 1);
        let flipped = s.demos(&r, 8, doc, 1, 0, DemoLabels::Flipped);
        for (f, g) in flipped.iter().zip(&base) {
            assert_eq!(f.item.id, g.item.id);
            assert_ne!(f.answer, g.answer);
        }
        assert!(
            s.demos(&r, 8, doc, 1, 0, DemoLabels::None)
                .iter()
                .all(|d| d.answer.is_none())
        );
        let random = s.demos(&r, 8, doc, 1, 0, DemoLabels::Random);
        assert_eq!(random, s.demos(&r, 8, doc, 1, 0, DemoLabels::Random));
        assert!(
            random
                .iter()
                .all(|d| ["a", "b", "c"].contains(&d.answer.unwrap()))
        );
    }

    #[test]
    fn label_samplers_and_studies_need_a_label_set() {
        let t = task(5, true);
        let e = Selector::new(&t, Sampler::Balanced, DemoOrder::default(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("balanced") && e.contains("generate_until"),
            "{e}"
        );
        assert!(check_labels(&t, &[DemoLabels::Gold, DemoLabels::None]).is_ok());
        let e = check_labels(&t, &[DemoLabels::Flipped])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--demo-labels flipped"), "{e}");
    }

    #[test]
    fn small_pool_gives_what_it_has() {
        let s_of = |t: &Task| {
            ids(
                &Selector::new(t, Sampler::Random, DemoOrder::default(), None)
                    .unwrap()
                    .ranking(&t.test[0], 0, 32),
            )
            .len()
        };
        assert_eq!(s_of(&task(3, true)), 2);
        assert_eq!(s_of(&task(3, false)), 3);
    }
}
