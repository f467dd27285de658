//! Prompt assembly: description, K demonstrations, query; and fitting a prompt to a context window.

use anyhow::Result;

use crate::sampler::Demo;
use crate::task::{Answer, Item, OutputType, Task};

/// The exact prompt for `item` after `demos`: description, then each demonstration (input, target
/// delimiter, answer — or the input alone when it shows none) joined by the few-shot delimiter,
/// then the query.
pub fn build(task: &Task, item: &Item, demos: &[Demo]) -> String {
    build_with_query(task, &item.description, demos, &item.text).0
}

/// The prompt for an arbitrary query text, and the byte offsets where the description and each
/// demonstration end: the points where prompts with the same demonstrations share their prefix.
pub fn build_with_query(
    task: &Task,
    description: &str,
    demos: &[Demo],
    query: &str,
) -> (String, Vec<usize>) {
    let mut s = description.to_string();
    let mut breaks = Vec::with_capacity(demos.len() + 1);
    if !s.is_empty() {
        breaks.push(s.len());
    }
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

/// The continuations a multiple-choice item scores (target delimiter included).
pub fn continuations(task: &Task, item: &Item) -> Vec<String> {
    match &item.answer {
        Answer::Choice { choices, .. } => choices
            .iter()
            .map(|c| format!("{}{c}", task.target_delimiter))
            .collect(),
        Answer::Text(_) => Vec::new(),
    }
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
) -> Result<Option<Fitted>> {
    for k in (0..=demos.len()).rev() {
        let (prompt, breaks) = build_with_query(task, &item.description, &demos[..k], &item.text);
        let tokens = match task.output_type {
            OutputType::MultipleChoice => {
                let mut longest = 0;
                for c in continuations(task, item) {
                    longest = longest.max(count_tokens(&format!("{prompt}{c}"))?);
                }
                longest
            }
            OutputType::GenerateUntil => count_tokens(&prompt)? + task.max_tokens,
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
        assert_eq!(continuations(&t, &d[0]), vec![" negative", " positive"]);
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
    }

    #[test]
    fn fit_drops_demonstrations_from_the_end() {
        let (t, d) = mc_task();
        // One "token" per byte: the 2-shot prompt is too long, the 1-shot one fits.
        let count = |s: &str| Ok(s.len());
        let both = [Demo::gold(&d[0]), Demo::gold(&d[1])];
        let two = build(&t, &d[2], &both).len() + " positive".len();
        let one = build(&t, &d[2], &both[..1]).len() + " positive".len();
        let f = fit(&t, &d[2], &both, two - 1, &count).unwrap().unwrap();
        assert_eq!((f.k, f.tokens), (1, one));
        assert_eq!(fit(&t, &d[2], &both, two, &count).unwrap().unwrap().k, 2);
        assert!(fit(&t, &d[2], &both[..1], 5, &count).unwrap().is_none());
    }
}
