//! `icl-eval tasks validate`: every problem with a task file, including the ones only the layers
//! above the task can see (a sampler that does not suit the task, an empty prompt).

use std::path::Path;

use crate::prompt;
use crate::sampler::{Demo, Selector};
use crate::task::fewshot::Sampler;
use crate::task::load_with_problems_with;

/// Every problem with a task file (empty when it is fine), including rendering a 0- and a 1-shot
/// prompt of its first doc.
pub fn validate_task(path: &Path, data_dir: Option<&Path>, python: Option<&Path>) -> Vec<String> {
    let (task, mut problems) = load_with_problems_with(path, data_dir, python);
    let Some(task) = task else {
        return problems;
    };
    // The sampler must suit the task (knn's encoder is checked when a run loads it).
    if task.sampler != Sampler::Knn
        && let Err(e) = Selector::new(&task, task.sampler, task.demo_order, None)
    {
        problems.push(format!("{}: field `fewshot.sampler`: {e}", path.display()));
    }
    if task.test.is_empty() {
        problems.push(format!("{}: test split has no docs", path.display()));
    } else if task.fewshot.len() < 1 + usize::from(task.fewshot_is_test) {
        problems.push(format!(
            "{}: few-shot split has no doc to use as a demonstration",
            path.display()
        ));
    } else {
        let draw: Vec<_> = task
            .fewshot
            .iter()
            .filter(|d| !(task.fewshot_is_test && d.id == task.test[0].id))
            .take(1)
            .map(Demo::gold)
            .collect();
        for k in [0, 1] {
            if prompt::build(&task, &task.test[0], &draw[..k]).is_empty() {
                problems.push(format!(
                    "{}: the {k}-shot prompt of doc 0 is empty",
                    path.display()
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn names_a_sampler_that_does_not_suit_the_task() {
        let d = std::env::temp_dir().join(format!("icl-eval-validate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("all.csv"),
            "Class Index,Title\n1,alpha\n2,beta\n1,gamma\n2,delta\n",
        )
        .unwrap();
        let y = d.join("g.yaml");
        fs::write(
            &y,
            "task: g\ndataset: {path: all.csv, split_rows: {test: [0, 3], train: [3, 4]}}\n\
             fewshot_split: train\ndoc_to_text: x\ndoc_to_target: y\noutput_type: generate_until\n\
             fewshot: {sampler: balanced}\n",
        )
        .unwrap();
        let all = validate_task(&y, None, None).join("\n");
        assert!(
            all.contains("fewshot.sampler") && all.contains("balanced"),
            "{all}"
        );
        // Loading alone cannot see it: the problem belongs to the sampler.
        assert!(crate::task::load_with_problems(&y, None).1.is_empty());
        let ok = d.join("ok.yaml");
        fs::write(
            &ok,
            "task: ok\ndataset: {path: all.csv, split_rows: {test: [0, 3], train: [3, 4]}}\n\
             fewshot_split: train\ndoc_to_text: \"{{ doc['Title'] }}\"\ndoc_to_target: y\n\
             output_type: generate_until\n",
        )
        .unwrap();
        assert_eq!(validate_task(&ok, None, None), Vec::<String>::new());
        fs::remove_dir_all(&d).unwrap();
    }
}
