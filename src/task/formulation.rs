//! How a multiple-choice task asks its question: `cloze` (each choice's text scored as the
//! continuation, the task as written) or `mcqa` (the choices shown lettered, the letter scored),
//! the two formulations lm-eval's development branch and the literature name so.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::{Answer, CONTENT_FREE, Item, OutputType, Task};

/// A multiple-choice formulation (`format:` in a task, `--format` on a run).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Formulation {
    /// Each choice's text scored as the continuation of the prompt (the task as written).
    #[default]
    Cloze,
    /// The question, the choices lettered `A.`, `B.`, …, then `Answer:`; the letters scored.
    Mcqa,
}

impl Formulation {
    /// The name in flags, files and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Formulation::Cloze => "cloze",
            Formulation::Mcqa => "mcqa",
        }
    }

    /// Whether this is the default (what samples leave unwritten).
    pub fn is_cloze(&self) -> bool {
        *self == Formulation::Cloze
    }
}

/// `task` in the formulation a run asks (`--format`), else in its own `format:`.
pub fn formulate_as(task: Task, asked: Option<Formulation>) -> Result<Task> {
    let f = asked.unwrap_or(task.format);
    formulate(task, f)
}

/// The cue an `mcqa` prompt ends with, after the lettered choices.
pub const MCQA_CUE: &str = "Answer:";

/// Letters of the choices, in order.
const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// `task` asked in `formulation`: unchanged for `cloze`, for a task that is not multiple choice,
/// and for one whose choices already are the letters `A`, `B`, … (an MMLU-style task); otherwise
/// every test and few-shot doc rewritten by [`mcqa_text`] with the letters as its choices, the
/// content-free inputs likewise (their choices content-free too).
pub fn formulate(mut task: Task, formulation: Formulation) -> Result<Task> {
    task.format = formulation;
    if formulation == Formulation::Cloze
        || task.output_type != OutputType::MultipleChoice
        || already_lettered(&task)
    {
        return Ok(task);
    }
    for item in task.test.iter_mut().chain(task.fewshot.iter_mut()) {
        to_mcqa(&task.name, item)?;
    }
    if !task.content_free.is_empty() {
        let n = task
            .test
            .first()
            .and_then(Item::options)
            .map_or(0, <[_]>::len);
        task.content_free = task
            .content_free
            .iter()
            .zip(CONTENT_FREE)
            .map(|(text, cf)| mcqa_text(text, &vec![cf.to_string(); n]))
            .collect();
    }
    Ok(task)
}

/// Whether every test doc's choices are already `A`, `B`, … in order.
pub fn already_lettered(task: &Task) -> bool {
    task.test.iter().all(|item| match &item.answer {
        Answer::Choice { choices, .. } => choices
            .iter()
            .zip(LETTERS.chars())
            .all(|(c, l)| c.trim().len() == 1 && c.trim().starts_with(l)),
        _ => false,
    })
}

/// One doc in `mcqa` form: its text by [`mcqa_text`], its choices the letters (the gold stays).
fn to_mcqa(task: &str, item: &mut Item) -> Result<()> {
    let Answer::Choice { choices, .. } = &mut item.answer else {
        return Ok(());
    };
    if choices.len() > LETTERS.len() {
        bail!(
            "task `{task}`, doc {}: {} choices, more than the 26 letters `mcqa` can show; run \
             the task with --format cloze",
            item.id,
            choices.len()
        );
    }
    item.text = mcqa_text(&item.text, choices);
    *choices = LETTERS
        .chars()
        .take(choices.len())
        .map(String::from)
        .collect();
    Ok(())
}

/// The `mcqa` prompt of a doc whose cloze prompt is `text`: the question (the text without a
/// last line that is only a short cue ending in a colon, such as `Answer:` or `Sentiment:`, the
/// line a cloze answer would follow), then one line per choice, `A. text`, then `Answer:`.
pub fn mcqa_text(text: &str, choices: &[String]) -> String {
    let mut s = question(text).to_string();
    for (letter, choice) in LETTERS.chars().zip(choices) {
        if !s.is_empty() {
            s.push('\n');
        }
        s.push(letter);
        s.push_str(". ");
        s.push_str(choice.trim());
    }
    s.push('\n');
    s.push_str(MCQA_CUE);
    s
}

/// `text` without its trailing answer cue (see [`mcqa_text`]) and trailing whitespace.
fn question(text: &str) -> &str {
    let body = text.trim_end();
    let (head, last) = body.rsplit_once('\n').unwrap_or(("", body));
    if is_cue(last) { head.trim_end() } else { body }
}

/// A line that only cues the answer: one to three words, then a colon.
fn is_cue(line: &str) -> bool {
    let Some(words) = line.trim().strip_suffix(':') else {
        return false;
    };
    let n = words.split_whitespace().count();
    (1..=3).contains(&n)
        && words
            .chars()
            .all(|c| c.is_alphanumeric() || c == ' ' || c == '-' || c == '\'')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metric::Metric;

    fn item(id: usize, text: &str, choices: &[&str], gold: usize) -> Item {
        Item {
            id,
            text: text.into(),
            answer: Answer::Choice {
                choices: choices.iter().map(|c| c.to_string()).collect(),
                gold,
            },
            description: String::new(),
        }
    }

    #[test]
    fn the_cue_line_gives_way_to_lettered_choices() {
        let c = ["dog".to_string(), " a cat ".to_string()];
        assert_eq!(
            mcqa_text("Question: What purrs?\nAnswer:", &c),
            "Question: What purrs?\nA. dog\nB. a cat\nAnswer:"
        );
        assert_eq!(
            mcqa_text("Review: fine.\nSentiment: ", &c),
            "Review: fine.\nA. dog\nB. a cat\nAnswer:"
        );
        // No cue line: the text stays whole (a hellaswag-style context).
        assert_eq!(
            mcqa_text("A man sits on a roof. He", &c),
            "A man sits on a roof. He\nA. dog\nB. a cat\nAnswer:"
        );
        // A last line that says more than a cue is part of the question.
        assert_eq!(
            mcqa_text("Context\nWhich one is right, given all this:", &c),
            "Context\nWhich one is right, given all this:\nA. dog\nB. a cat\nAnswer:"
        );
        assert_eq!(mcqa_text("Answer:", &c), "A. dog\nB. a cat\nAnswer:");
    }

    #[test]
    fn docs_become_letters_with_the_gold_kept_and_lettered_tasks_stay() {
        let docs = vec![
            item(0, "Q: 1+1?\nA:", &["2", "3", "4"], 0),
            item(1, "Q: 2+2?\nA:", &["3", "4", "5"], 1),
        ];
        let mut t = Task::for_tests(OutputType::MultipleChoice, vec![Metric::Acc], docs);
        t.content_free = vec![
            "Q: N/A\nA:".into(),
            "Q: \nA:".into(),
            "Q: [MASK]\nA:".into(),
        ];
        let m = formulate(t.clone(), Formulation::Mcqa).unwrap();
        assert_eq!(m.format, Formulation::Mcqa);
        assert_eq!(m.test[1].text, "Q: 2+2?\nA. 3\nB. 4\nC. 5\nAnswer:");
        assert_eq!(
            m.test[1].answer,
            Answer::Choice {
                choices: vec!["A".into(), "B".into(), "C".into()],
                gold: 1
            }
        );
        assert_eq!(m.fewshot[0].text, "Q: 1+1?\nA. 2\nB. 3\nC. 4\nAnswer:");
        assert_eq!(m.content_free[0], "Q: N/A\nA. N/A\nB. N/A\nC. N/A\nAnswer:");
        assert_eq!(m.content_free[1], "Q:\nA. \nB. \nC. \nAnswer:");
        // Formulated twice, or an MMLU-style task: no second lettering.
        let again = formulate(m.clone(), Formulation::Mcqa).unwrap();
        assert_eq!(again.test[1].text, m.test[1].text);
        let cloze = formulate(t, Formulation::Cloze).unwrap();
        assert_eq!(cloze.test[1].text, "Q: 2+2?\nA:");
    }

    #[test]
    fn more_choices_than_letters_is_an_error_naming_task_and_doc() {
        let many: Vec<String> = (0..27).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let t = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc],
            vec![item(4, "Pick:", &refs, 0)],
        );
        let e = formulate(t, Formulation::Mcqa).unwrap_err().to_string();
        assert!(
            e.contains("task `t`, doc 4") && e.contains("--format cloze"),
            "{e}"
        );
    }
}
