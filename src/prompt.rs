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
}

impl Format<'_> {
    /// What goes between a prompt and its answer: the task's target delimiter in plain text,
    /// nothing after a chat template's assistant header.
    pub fn target_delimiter<'t>(&self, task: &'t Task) -> &'t str {
        match self {
            Format::Plain => &task.target_delimiter,
            Format::Chat { .. } => "",
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
    let Format::Chat {
        template,
        multiturn,
    } = format
    else {
        return Ok((plain, breaks));
    };
    let pairs: Vec<(&str, Option<&str>)> = demos
        .iter()
        .map(|d| (d.item.text.as_str(), d.answer))
        .collect();
    let folded = !multiturn || demos.is_empty();
    let text = template.render(&chat::messages(
        &plain,
        description,
        &pairs,
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
            s.push_str(&task.target_delimiter);
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
        Answer::Text(_) => Vec::new(),
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
pub fn kept_breaks(breaks: &[usize], shots: &[usize]) -> Vec<usize> {
    breaks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i == 0 || shots.contains(i))
        .map(|(_, b)| *b)
        .collect()
}

/// A prompt that fits the model's context, and how many demonstrations it kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    pub prompt: String,
    /// Byte offsets in `prompt` where the description and each demonstration end.
    pub breaks: Vec<usize>,
    /// Demonstrations actually used (≤ requested when the context was too short).
    pub k: usize,
    /// Tokens of the prompt plus the longest continuation or the generation budget.
    pub tokens: usize,
}

/// Drops demonstrations from the end of the draw until the prompt, plus what will be scored or
/// generated after it, fits `context_length`. `None` when even the 0-shot prompt does not fit.
pub fn fit(
    task: &Task,
    item: &Item,
    demos: &[Demo],
    context_length: usize,
    count_tokens: &dyn Fn(&str) -> Result<usize>,
    format: Format,
) -> Result<Option<Fitted>> {
    for k in (0..=demos.len()).rev() {
        let (prompt, breaks) = render(task, &item.description, &demos[..k], &item.text, format)?;
        let tokens = match task.output_type {
            OutputType::GenerateUntil => count_tokens(&prompt)? + task.max_tokens,
            _ => {
                let mut longest = 0;
                for query in queries(item) {
                    let p = if *query == item.text {
                        prompt.clone()
                    } else {
                        render(task, &item.description, &demos[..k], query, format)?.0
                    };
                    for c in continuations(task, item, format) {
                        longest = longest.max(count_tokens(&format!("{p}{c}"))?);
                    }
                }
                longest
            }
        };
        if tokens <= context_length {
            return Ok(Some(Fitted {
                prompt,
                breaks,
                k,
                tokens,
            }));
        }
    }
    Ok(None)
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
}
