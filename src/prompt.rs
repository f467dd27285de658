//! Prompt assembly: description, K demonstrations, query; and fitting a prompt to a context window.

use anyhow::Result;

use crate::chat::{self, ChatTemplate};
use crate::sampler::Demo;
use crate::task::{Answer, Item, OutputType, Task};

/// How a prompt is laid out: the task's plain text, or through a model's chat template.
#[derive(Debug, Clone, Copy)]
pub enum Format<'a> {
    Plain,
    /// Demonstrations as user/assistant exchanges when `multiturn`, else folded into one user turn.
    Chat {
        template: &'a ChatTemplate,
        multiturn: bool,
    },
    /// Chat messages for an endpoint that applies its own template (`openai-chat:`), as JSON:
    /// the description as the system message, the rest folded into one user turn or, when
    /// `multiturn`, each demonstration a user and an assistant turn.
    Messages {
        multiturn: bool,
    },
}

impl<'a> Format<'a> {
    /// Through `template` when there is one (demonstrations as turns when `multiturn`), else
    /// plain text.
    pub fn of(template: Option<&'a ChatTemplate>, multiturn: bool) -> Self {
        match template {
            Some(template) => Format::Chat {
                template,
                multiturn,
            },
            None => Format::Plain,
        }
    }

    /// What goes between a prompt and its answer: the task's target delimiter in plain text,
    /// nothing after a chat template's assistant header.
    pub fn target_delimiter<'t>(&self, task: &'t Task) -> &'t str {
        match self {
            Format::Plain => &task.target_delimiter,
            Format::Chat { .. } | Format::Messages { .. } => "",
        }
    }
}

/// The prompt in `format`, with the byte offsets where shared prefixes end (see
/// [`build_with_query`]; none for multi-turn chat, whose turns the template wraps).
pub fn render(
    task: &Task,
    description: &str,
    demos: &[Demo],
    query: &str,
    format: Format,
) -> Result<(String, Vec<usize>)> {
    let (plain, breaks) = build_with_query(task, description, demos, query);
    // Built only for chat: a plain prompt (rendered many times while fitting) needs no pairs.
    let pairs = || -> Vec<(&str, Option<&str>)> {
        demos
            .iter()
            .map(|d| (d.item.text.as_str(), d.answer))
            .collect()
    };
    let (template, multiturn) = match format {
        Format::Plain => return Ok((plain, breaks)),
        Format::Messages { multiturn } => {
            let m = chat::api_messages(&plain, description, &pairs(), query, multiturn);
            return Ok((serde_json::to_string(&m)?, Vec::new()));
        }
        Format::Chat {
            template,
            multiturn,
        } => (template, multiturn),
    };
    let folded = !multiturn || demos.is_empty();
    let text = template.render(&chat::messages(
        &plain,
        description,
        &pairs(),
        query,
        multiturn,
    ))?;
    // Folded, the plain prompt sits whole inside the user turn: its breaks shift with it.
    let breaks = match text.find(&plain) {
        Some(at) if folded => breaks.iter().map(|b| b + at).collect(),
        _ => Vec::new(),
    };
    Ok((text, breaks))
}

/// The exact prompt for `item` after `demos`: description, then each demonstration (input, target
/// delimiter, answer — or the input alone when it shows none) joined by the few-shot delimiter,
/// then the query.
pub fn build(task: &Task, item: &Item, demos: &[Demo]) -> String {
    build_with_query(task, &item.description, demos, &item.text).0
}

/// The prompt for an arbitrary query text, and the byte offsets where the description (index 0)
/// and each demonstration (index i) end: the points where prompts with the same demonstrations
/// share their prefix.
pub fn build_with_query(
    task: &Task,
    description: &str,
    demos: &[Demo],
    query: &str,
) -> (String, Vec<usize>) {
    let mut s = description.to_string();
    // breaks[0] ends the description (0 when there is none), breaks[i] the i-th demonstration.
    let mut breaks = Vec::with_capacity(demos.len() + 1);
    breaks.push(s.len());
    for d in demos {
        s.push_str(&d.item.text);
        if let Some(a) = d.answer {
            // After a `gen_prefix`, lm-eval joins the answer with a space only where neither
            // side has whitespace.
            if !task.gen_prefix {
                s.push_str(&task.target_delimiter);
            } else if crate::task::needs_delimiter(&d.item.text, a) {
                s.push(' ');
            }
            s.push_str(a);
        }
        s.push_str(&task.fewshot_delimiter);
        breaks.push(s.len());
    }
    s.push_str(query);
    (s, breaks)
}

/// The continuations an item scores after its prompt (target delimiter included): each choice of a
/// multiple-choice item; the one shared continuation of a multiple-input or log-likelihood item.
pub fn continuations(task: &Task, item: &Item, format: Format) -> Vec<String> {
    let delimiter = format.target_delimiter(task);
    match &item.answer {
        Answer::Choice { choices, .. } => {
            choices.iter().map(|c| format!("{delimiter}{c}")).collect()
        }
        Answer::Inputs { continuation, .. } | Answer::Continuation(continuation) => {
            vec![format!("{delimiter}{continuation}")]
        }
        // A document is scored alone, without a prompt (`evaluate.rs`).
        Answer::Text(_) | Answer::Document(_) => Vec::new(),
    }
}

/// The queries an item is asked as: one per input of a multiple-input item, else its text.
pub fn queries(item: &Item) -> &[String] {
    match &item.answer {
        Answer::Inputs { inputs, .. } => inputs,
        _ => std::slice::from_ref(&item.text),
    }
}

/// The breaks worth a cache entry in a sweep over `shots`: the description's end and the end of the
/// K-th demonstration for each K of the sweep — the only prefixes other prompts of the sweep share
/// (nested draws) — so the cache holds a few entries per demonstration set, not one per
/// demonstration. The same breaks whatever the prompt, so chunking never depends on the cache.
///
/// A prompt cut to fit the context shows a K no one asked for, a little different per doc: its
/// docs also share the prefix up to the last multiple of [`CUT_STEP`] before it, so each computes
/// at most that many demonstrations of its own, not everything after the largest K that fit. Not
/// where an asked-for K lies between: that K's prompts end a chunk there too, and must be chunked
/// alike before it (a different chunking could round differently, and which one the cache held
/// would then decide the bits).
pub fn kept_breaks(breaks: &[usize], shots: &[usize]) -> Vec<usize> {
    let shown = breaks.len().saturating_sub(1);
    let step = shown / CUT_STEP * CUT_STEP;
    let cut_at =
        (!shots.contains(&shown) && !shots.iter().any(|&k| k > step && k < shown)).then_some(step);
    breaks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || shots.contains(i) || cut_at == Some(*i))
        .map(|(_, b)| *b)
        .collect()
}

/// Demonstrations between the shared prefixes of prompts cut to fit a context.
pub const CUT_STEP: usize = 64;

/// A prompt that fits the model's context, and which demonstrations it kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub prompt: String,
    /// Byte offsets in `prompt` where the description and each demonstration end.
    pub breaks: Vec<usize>,
    /// Demonstrations actually used (≤ requested when the context was too short).
    pub k: usize,
    /// Positions (in the demonstrations given to `fit`) of those kept, in prompt order.
    pub kept: Vec<usize>,
    /// Tokens of the prompt plus the longest continuation or the generation budget.
    pub tokens: usize,
}

/// Drops demonstrations until the prompt, plus what will be scored or generated after it, fits
/// `context_length`: always the one the sampler ranked lowest (highest `Demo::rank`; of equal
/// ranks the later one), so a similarity sampler loses its farthest demonstrations first and a
/// cut K-shot prompt shows the (K−1)-shot set. The kept ones stay in the order given. `None`
/// when even the 0-shot prompt does not fit.
///
/// The number to drop is found by bisection over whole demonstrations (a prompt's tokens fall as
/// demonstrations go), so a 2,048-shot prompt that overflows costs a dozen renders, not one per
/// demonstration dropped.
pub fn fit(
    task: &Task,
    item: &Item,
    demos: &[Demo],
    context_length: usize,
    count_tokens: &dyn Fn(&str) -> Result<usize>,
    format: Format,
) -> Result<Option<Fitted>> {
    // Positions in the order they are dropped: the lowest-ranked first.
    let mut drop_order: Vec<usize> = (0..demos.len()).collect();
    drop_order.sort_by_key(|&i| (std::cmp::Reverse(demos[i].rank), std::cmp::Reverse(i)));
    let attempt = |dropped: usize| -> Result<Option<Fitted>> {
        let mut kept: Vec<usize> = drop_order[dropped..].to_vec();
        kept.sort_unstable();
        let shown: Vec<Demo> = kept.iter().map(|&i| demos[i].clone()).collect();
        let ((prompt, breaks), tokens) = prompt_tokens(task, item, &shown, count_tokens, format)?;
        Ok((tokens <= context_length).then_some(Fitted {
            prompt,
            breaks,
            k: kept.len(),
            kept,
            tokens,
        }))
    };
    if let Some(f) = attempt(0)? {
        return Ok(Some(f));
    }
    // `fits` holds the fewest drops known to fit; `lo` drops are known not to.
    let (mut lo, mut hi) = (0, demos.len());
    let Some(mut fits) = (if hi == 0 { None } else { attempt(hi)? }) else {
        return Ok(None);
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match attempt(mid)? {
            Some(f) => (hi, fits) = (mid, f),
            None => lo = mid,
        }
    }
    Ok(Some(fits))
}

/// The rendered prompt with its breaks, and its tokens plus the longest continuation (or the
/// generation budget).
fn prompt_tokens(
    task: &Task,
    item: &Item,
    demos: &[Demo],
    count_tokens: &dyn Fn(&str) -> Result<usize>,
    format: Format,
) -> Result<((String, Vec<usize>), usize)> {
    let (prompt, breaks) = render(task, &item.description, demos, &item.text, format)?;
    let tokens = match task.output_type {
        OutputType::GenerateUntil => count_tokens(&prompt)? + task.max_tokens,
        _ => {
            let mut longest = 0;
            for query in queries(item) {
                let p = if *query == item.text {
                    prompt.clone()
                } else {
                    render(task, &item.description, demos, query, format)?.0
                };
                for c in continuations(task, item, format) {
                    longest = longest.max(count_tokens(&format!("{p}{c}"))?);
                }
            }
            longest
        }
    };
    Ok(((prompt, breaks), tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::Metric;

    fn mc_task() -> (Task, Vec<Item>) {
        let mk = |id: usize, text: &str, gold: usize| Item {
            id,
            text: format!("Review: {text}\nSentiment:"),
            answer: Answer::Choice {
                choices: vec!["negative".into(), "positive".into()],
                gold,
            },
            description: "Classify.\n\n".into(),
        };
        let docs = vec![mk(0, "great", 1), mk(1, "awful", 0), mk(2, "nice", 1)];
        let mut t = Task::for_tests(OutputType::MultipleChoice, vec![Metric::Acc], docs.clone());
        t.max_tokens = 1;
        (t, docs)
    }

    /// After lm-eval's `gen_prefix` (ending the items' text), a demonstration's answer follows
    /// with a space only where neither side has whitespace (`maybe_delimit`); the query ends with
    /// the prefix and choices keep the target delimiter.
    #[test]
    fn gen_prefix_joins_answers_as_lm_eval() {
        let (mut t, mut d) = mc_task();
        t.gen_prefix = true;
        d[0].text = "Q: great The answer is".into();
        d[1].text = "Q: awful The answer is ".into();
        d[2].text = "Q: nice The answer is".into();
        t.target_delimiter = "\n".into();
        let p = build(&t, &d[2], &[Demo::gold(&d[0]), Demo::gold(&d[1])]);
        assert_eq!(
            p,
            "Classify.\n\nQ: great The answer is positive\n\nQ: awful The answer is negative\n\n\
             Q: nice The answer is"
        );
        assert_eq!(
            continuations(&t, &d[2], Format::Plain),
            vec!["\nnegative", "\npositive"]
        );
    }

    #[test]
    fn prompt_layout_matches_the_gpt3_format() {
        let (t, d) = mc_task();
        let p = build(&t, &d[2], &[Demo::gold(&d[0]), Demo::gold(&d[1])]);
        assert_eq!(
            p,
            "Classify.\n\nReview: great\nSentiment: positive\n\nReview: awful\nSentiment: negative\n\nReview: nice\nSentiment:"
        );
        assert_eq!(
            build(&t, &d[2], &[]),
            "Classify.\n\nReview: nice\nSentiment:"
        );
        assert_eq!(
            continuations(&t, &d[0], Format::Plain),
            vec![" negative", " positive"]
        );
        let hidden = Demo {
            item: &d[0],
            answer: None,
            rank: 0,
        };
        let (p, breaks) = build_with_query(&t, "D\n", &[hidden, Demo::gold(&d[1])], "Q");
        assert_eq!(
            p,
            "D\nReview: great\nSentiment:\n\nReview: awful\nSentiment: negative\n\nQ"
        );
        assert_eq!(breaks, vec![2, 28, 63]);
        assert_eq!(build_with_query(&t, "", &[], "Q").1, vec![0]);
        assert_eq!(kept_breaks(&breaks, &[0, 2]), vec![2, 63]);
        assert_eq!(kept_breaks(&breaks, &[1, 8]), vec![2, 28]);
    }

    /// A prompt cut to 200 demonstrations keeps a break at 192 as well, unless an asked-for K
    /// lies between 192 and 200, whose own prompts end a chunk there.
    #[test]
    fn a_cut_prompt_shares_its_prefix_at_the_last_multiple_of_the_step() {
        let breaks: Vec<usize> = (0..=200).map(|i| 10 * i).collect();
        assert_eq!(kept_breaks(&breaks, &[0, 16, 256]), vec![0, 160, 1920]);
        assert_eq!(kept_breaks(&breaks, &[0, 16, 195, 256]), vec![0, 160, 1950]);
        // Uncut: only the K's asked for.
        assert_eq!(kept_breaks(&breaks, &[0, 16, 200]), vec![0, 160, 2000]);
    }

    #[test]
    fn fit_drops_demonstrations_from_the_end() {
        let (t, d) = mc_task();
        // One "token" per byte: the 2-shot prompt is too long, the 1-shot one fits.
        let count = |s: &str| Ok(s.len());
        let both = [Demo::gold(&d[0]), Demo::gold(&d[1])];
        let two = build(&t, &d[2], &both).len() + " positive".len();
        let one = build(&t, &d[2], &both[..1]).len() + " positive".len();
        let f = fit(&t, &d[2], &both, two - 1, &count, Format::Plain)
            .unwrap()
            .unwrap();
        assert_eq!((f.k, f.tokens), (1, one));
        assert_eq!(
            fit(&t, &d[2], &both, two, &count, Format::Plain)
                .unwrap()
                .unwrap()
                .k,
            2
        );
        assert!(
            fit(&t, &d[2], &both[..1], 5, &count, Format::Plain)
                .unwrap()
                .is_none()
        );
    }

    /// The bisection finds what dropping one demonstration at a time finds, for every context
    /// length from too short for any prompt to long enough for all, and ranks in any order.
    #[test]
    fn fit_by_bisection_matches_dropping_one_at_a_time() {
        let (t, d) = mc_task();
        let count = |s: &str| Ok(s.len());
        let pool: Vec<Item> = (0..13)
            .map(|i| {
                let mut it = d[i % 2].clone();
                it.id = 10 + i;
                it.text = format!("Review: {}\nSentiment:", "x".repeat(1 + (i * 7) % 5));
                it
            })
            .collect();
        let demos: Vec<Demo> = pool
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let mut demo = Demo::gold(it);
                demo.rank = (i * 5) % 13;
                demo
            })
            .collect();
        let linear = |context: usize| -> Option<(usize, Vec<usize>, String)> {
            let mut order: Vec<usize> = (0..demos.len()).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(demos[i].rank), std::cmp::Reverse(i)));
            (0..=demos.len()).find_map(|dropped| {
                let mut kept = order[dropped..].to_vec();
                kept.sort_unstable();
                let shown: Vec<Demo> = kept.iter().map(|&i| demos[i].clone()).collect();
                let p = build(&t, &d[2], &shown);
                (p.len() + " positive".len() <= context).then_some((kept.len(), kept, p))
            })
        };
        let all = build(&t, &d[2], &demos).len() + " positive".len();
        let mut seen = std::collections::BTreeSet::new();
        for context in 0..=all + 1 {
            let f = fit(&t, &d[2], &demos, context, &count, Format::Plain).unwrap();
            let got = f.map(|f| (f.k, f.kept, f.prompt));
            assert_eq!(got, linear(context), "context {context}");
            seen.insert(got.map(|g| g.0));
        }
        assert_eq!(
            seen.len(),
            demos.len() + 2,
            "every K from none to all was reached"
        );
    }

    #[test]
    fn fit_drops_the_lowest_ranked_demonstration_and_keeps_the_order() {
        let (t, d) = mc_task();
        let count = |s: &str| Ok(s.len());
        // A similarity sampler's nearest-last order: the farthest (rank 1) is shown first.
        let mut far = Demo::gold(&d[0]);
        far.rank = 1;
        let mut near = Demo::gold(&d[1]);
        near.rank = 0;
        let shown = [far, near.clone()];
        let two = build(&t, &d[2], &shown).len() + " positive".len();
        let f = fit(&t, &d[2], &shown, two - 1, &count, Format::Plain)
            .unwrap()
            .unwrap();
        assert_eq!((f.k, f.kept.clone()), (1, vec![1]));
        assert_eq!(f.prompt, build(&t, &d[2], &[near]));
        // Nothing to cut: everything kept, in the order given.
        let f = fit(&t, &d[2], &shown, two, &count, Format::Plain)
            .unwrap()
            .unwrap();
        assert_eq!(f.kept, vec![0, 1]);
        assert_eq!(f.prompt, build(&t, &d[2], &shown));
    }

    #[test]
    fn an_overflowing_knn_prompt_keeps_its_nearest_demonstrations() {
        use crate::sampler::{DemoLabels, DemoOrder, Embeddings, Sampler, Selector};
        let (mut t, d) = mc_task();
        t.fewshot = d.clone();
        let e = Embeddings {
            test: vec![vec![1.0, 0.0]; 3],
            fewshot: vec![vec![0.0, 1.0], vec![1.0, 0.1], vec![1.0, 1.0]],
        };
        let s = Selector::new(&t, Sampler::Knn, DemoOrder::NearestLast, Some(e)).unwrap();
        let query = &d[2];
        let ranking = s.ranking(query, 0, 2);
        let demos = s.demos(&ranking, 2, query, 0, 0, DemoLabels::Gold);
        let ids = |ds: &[Demo]| ds.iter().map(|d| d.item.id).collect::<Vec<_>>();
        // Doc 1 is the nearest (cosine), doc 0 the other one allowed (doc 2 is the query).
        assert_eq!(ids(&demos), vec![0, 1], "nearest last");
        let count = |s: &str| Ok(s.len());
        let full = build(&t, query, &demos).len() + " positive".len();
        let f = fit(&t, query, &demos, full - 1, &count, Format::Plain)
            .unwrap()
            .unwrap();
        assert_eq!(f.kept, vec![1], "the nearest one stays");
        assert_eq!(f.prompt, build(&t, query, &demos[1..]));
    }
}
