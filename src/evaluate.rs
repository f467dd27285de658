//! Scoring one task's docs with one model: each doc's prompts are built and fitted to the context,
//! the requests they need are deduplicated and handed to the backend in batches, and every sample
//! is scored from the answers.
//!
//! Docs are planned a few at a time (as many as the backend can work on at once), so a server
//! backend sees concurrent requests while results and their order stay those of a doc-by-doc run.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};

use crate::backend::{Backend, ChoiceRequest, GenerateRequest, LogLikelihood, Sampling};
use crate::cache::request_key;
use crate::hash::short_hash;
use crate::metric::choice::{self, hit};
use crate::metric::{Needs, PerDoc};
use crate::record::{ChatMode, Sample};
use crate::resume::Done;
use crate::sampler::{self, DemoLabels, Selector};
use crate::shard::Shard;
use crate::task::{Answer, Item, PMI_CONTEXT, Task};
use crate::{prompt, score};

/// What to evaluate of one task: shot counts, seeds, orderings, label studies, docs.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub shots: &'a [usize],
    pub seeds: Vec<u64>,
    pub permutations: usize,
    pub demo_labels: &'a [DemoLabels],
    /// Only the first N test docs.
    pub limit: Option<usize>,
    /// Through the model's chat template.
    pub chat: Option<ChatMode>,
    /// Only this share of the docs.
    pub shard: Option<Shard>,
    /// Cells already scored (a resumed run): skipped.
    pub done: Option<&'a Done>,
}

impl<'a> Plan<'a> {
    /// One seed, the sampler's order, gold labels.
    pub fn simple(shots: &'a [usize], seed: u64, limit: Option<usize>) -> Self {
        Self {
            shots,
            seeds: vec![seed],
            permutations: 1,
            demo_labels: &[DemoLabels::Gold],
            limit,
            chat: None,
            shard: None,
            done: None,
        }
    }
}

/// The test docs a run scores of `task`: the first `limit`, those of `shard`'s positions.
pub fn planned_docs(
    task: &Task,
    limit: Option<usize>,
    shard: Option<Shard>,
) -> impl Iterator<Item = &Item> {
    let n = limit.map_or(task.test.len(), |l| l.min(task.test.len()));
    task.test[..n]
        .iter()
        .enumerate()
        .filter(move |(pos, _)| shard.is_none_or(|s| s.holds(*pos)))
        .map(|(_, item)| item)
}

/// How many docs of `task` a run evaluates: the first `limit`, then the shard's share of them.
pub fn doc_count(task: &Task, limit: Option<usize>, shard: Option<Shard>) -> usize {
    let n = limit.map_or(task.test.len(), |l| l.min(task.test.len()));
    shard.map_or(n, |s| s.share(n))
}

/// Key of one request in the memo: the exact context and continuations (or stop sequences).
type Key = [u8; 32];

/// Answers already computed in this task, keyed by the exact request, so identical prompts (the
/// 0-shot prompt under every seed; content-free and neutral-prefix prompts shared by many docs) are
/// scored once.
#[derive(Default)]
struct Memo {
    choices: HashMap<Key, Vec<LogLikelihood>>,
    generated: HashMap<Key, String>,
    /// `loglikelihood_rolling`: each document's log-likelihood.
    documents: HashMap<Key, f64>,
    /// K's whose prompts were already reported cut to fit the context.
    cut_noted: std::cell::RefCell<HashSet<usize>>,
}

/// Requests a block of docs needs that the memo cannot answer yet, each once, in first-need order.
#[derive(Default)]
struct Pending {
    queued: HashSet<Key>,
    choices: Vec<(Key, ChoiceRequest)>,
    generate: Vec<(Key, GenerateRequest)>,
    documents: Vec<(Key, String)>,
}

impl Memo {
    /// The key of a scoring request, queued in `pending` unless already answered or queued.
    fn need_choices(
        &self,
        pending: &mut Pending,
        context: &str,
        breaks: Vec<usize>,
        continuations: &[String],
    ) -> Key {
        let mut parts = vec![context];
        parts.extend(continuations.iter().map(String::as_str));
        let key = request_key(&parts);
        if !self.choices.contains_key(&key) && pending.queued.insert(key) {
            pending.choices.push((
                key,
                ChoiceRequest {
                    context: context.into(),
                    breaks,
                    continuations: continuations.to_vec(),
                },
            ));
        }
        key
    }

    /// The key of a generation request, queued like [`Memo::need_choices`].
    fn need_generation(&self, pending: &mut Pending, request: GenerateRequest) -> Key {
        let seed = request
            .sampling
            .map(|s| s.seed.to_string())
            .unwrap_or_default();
        let key = request_key(&[&request.context, &seed]);
        if !self.generated.contains_key(&key) && pending.queued.insert(key) {
            pending.generate.push((key, request));
        }
        key
    }

    /// The key of a whole document to score (`loglikelihood_rolling`), queued like the others.
    fn need_document(&self, pending: &mut Pending, text: &str) -> Key {
        let key = request_key(&["loglikelihood_rolling", text]);
        if !self.documents.contains_key(&key) && pending.queued.insert(key) {
            pending.documents.push((key, text.to_string()));
        }
        key
    }

    /// Computes everything `pending` holds, in batches, and remembers the answers.
    fn answer(&mut self, backend: &mut dyn Backend, pending: Pending) -> Result<()> {
        for (key, text) in pending.documents {
            let ll = backend.loglikelihood_rolling(&text)?;
            if !crate::backend::possible_logprob(ll) {
                bail!(
                    "model `{}`: the backend returned an impossible log-likelihood ({ll:?}) for a \
                     document; its weights are broken, and nothing of it was recorded",
                    backend.info().name
                );
            }
            self.documents.insert(key, ll);
        }
        let (keys, requests): (Vec<Key>, Vec<ChoiceRequest>) = pending.choices.into_iter().unzip();
        if !requests.is_empty() {
            let answers = backend.loglikelihood_batch(&requests)?;
            crate::backend::check_answers(&backend.info().name, &requests, &answers)?;
            self.choices.extend(keys.into_iter().zip(answers));
        }
        let (keys, requests): (Vec<Key>, Vec<GenerateRequest>) =
            pending.generate.into_iter().unzip();
        if !requests.is_empty() {
            let answers = backend.generate_batch(&requests)?;
            if answers.len() != requests.len() {
                bail!(
                    "model `{}`: the backend returned {} generations for {} requests",
                    backend.info().name,
                    answers.len(),
                    requests.len()
                );
            }
            self.generated.extend(keys.into_iter().zip(answers));
        }
        Ok(())
    }

    fn scores(&self, key: &Key) -> Result<&[LogLikelihood]> {
        self.choices
            .get(key)
            .map(Vec::as_slice)
            .context("internal: a scoring request was planned but not answered")
    }

    /// The log-probabilities of a scoring request's continuations.
    fn choices(&self, key: &Key) -> Result<Vec<f64>> {
        Ok(self.scores(key)?.iter().map(|l| l.logprob).collect())
    }

    /// The one continuation's score of a single-continuation request.
    fn single(&self, key: &Key) -> Result<&LogLikelihood> {
        self.scores(key)?
            .first()
            .context("internal: a scoring request came back without its continuation")
    }
}

/// What scoring one cell needs from the memo.
enum Need {
    /// Skipped: the 0-shot prompt does not fit (recorded in the sample).
    Nothing,
    Choices(ChoiceKeys),
    /// `generate_until`: one generation per repeat (greedy repeats share one request).
    Text(Vec<Key>),
    /// `multiple_input`: one request per input, each scoring the shared continuation.
    Inputs(Vec<Key>),
    /// `loglikelihood`: the continuation after the prompt.
    Continuation(Key),
    /// `loglikelihood_rolling`: the document alone.
    Document(Key),
}

/// A multiple-choice cell's requests.
struct ChoiceKeys {
    prompt: Key,
    /// `acc_calibrated`: the content-free prompts.
    content_free: Option<Vec<Key>>,
    /// `acc_pmi`: the choices after the neutral prefix.
    unconditional: Option<Key>,
    /// `acc_mutual_info`: the continuations after an empty context.
    mutual_info: Option<Key>,
}

/// One (doc, seed, label study, ordering, K) of a block, planned and waiting for its answers.
struct Cell<'t> {
    item: &'t Item,
    sample: Sample,
    need: Need,
}

/// Scores the plan's test docs of one task at every (seed, label study, ordering, K), handing each
/// sample to `emit` as soon as it is scored: doc by doc, in that order within a doc.
pub fn evaluate_task(
    backend: &mut dyn Backend,
    selector: &Selector,
    plan: &Plan,
    emit: &mut dyn FnMut(Sample) -> Result<()>,
) -> Result<()> {
    let task = selector.task();
    let template = match plan.chat {
        _ if backend.takes_messages() => None,
        Some(_) => Some(backend.chat_template().with_context(|| {
            format!(
                "--chat-template: model `{}` ships no chat template (tokenizer.chat_template); \
                 run it without --chat-template",
                backend.info().name
            )
        })?),
        None => None,
    };
    let multiturn = plan.chat == Some(ChatMode::Multiturn);
    let format = match backend.takes_messages() {
        true => prompt::Format::Messages { multiturn },
        false => prompt::Format::of(template.as_ref(), multiturn),
    };
    let docs: Vec<&Item> = planned_docs(task, plan.limit, plan.shard).collect();
    let mut memo = Memo::default();
    let (mut unanswered, mut answered) = (0usize, 0usize);
    for block in docs.chunks(backend.concurrency().max(1)) {
        let mut pending = Pending::default();
        let mut cells = Vec::new();
        for &item in block {
            plan_doc(
                backend,
                selector,
                plan,
                format,
                &memo,
                &mut pending,
                item,
                &mut cells,
            )?;
        }
        let first = block.first().map_or(0, |i| i.id);
        let last = block.last().map_or(0, |i| i.id);
        memo.answer(backend, pending).with_context(|| {
            if first == last {
                format!("task {}, doc {first}", task.name)
            } else {
                format!("task {}, docs {first}–{last}", task.name)
            }
        })?;
        for cell in cells {
            let s = finish(task, &memo, cell)?;
            if s.logprobs
                .as_deref()
                .is_some_and(crate::backend::unanswered)
            {
                unanswered += 1;
            } else if s.logprobs.is_some() {
                answered += 1;
            }
            emit(s)?;
        }
    }
    if unanswered > 0 {
        eprintln!(
            "note: task {}, {}: {unanswered} of {} answers ({:.1}%) listed none of the letters \
             among their top log-probabilities (or named none); they count as wrong",
            task.name,
            backend.info().name,
            unanswered + answered,
            100.0 * unanswered as f64 / (unanswered + answered) as f64
        );
    }
    Ok(())
}

/// Plans every cell of one doc: fits its prompts and queues the requests they need.
#[allow(clippy::too_many_arguments)]
fn plan_doc<'t>(
    backend: &dyn Backend,
    selector: &Selector<'t>,
    plan: &Plan,
    format: prompt::Format,
    memo: &Memo,
    pending: &mut Pending,
    item: &'t Item,
    cells: &mut Vec<Cell<'t>>,
) -> Result<()> {
    let task = selector.task();
    let k_max = plan.shots.iter().copied().max().unwrap_or(0);
    let ctx_len = backend.info().context_length;
    for &seed in &plan.seeds {
        let ranking = selector.ranking(item, seed, k_max);
        for &labels in plan.demo_labels {
            for permutation in 0..plan.permutations {
                for &k in plan.shots {
                    let mut s = Sample {
                        sampler: selector.sampler(),
                        seed,
                        permutation,
                        demo_labels: labels,
                        format: task.format,
                        ..Sample::unscored(
                            &backend.info().name,
                            &task.name,
                            item.id,
                            k,
                            item.gold_text(),
                        )
                    };
                    if plan.done.is_some_and(|d| d.contains(&s)) {
                        continue;
                    }
                    // A whole document is scored alone, as lm-eval does: no prompt, no
                    // demonstrations, the same request at every K.
                    if let Answer::Document(text) = &item.answer {
                        s.k_effective = Some(0);
                        let need = Need::Document(memo.need_document(pending, text));
                        cells.push(Cell {
                            item,
                            sample: s,
                            need,
                        });
                        continue;
                    }
                    let demos = selector.demos(&ranking, k, item, seed, permutation, labels);
                    let fitted = prompt::fit(
                        task,
                        item,
                        &demos,
                        ctx_len,
                        &|s| backend.count_tokens(s),
                        format,
                    )
                    .with_context(|| {
                        format!("task {}, doc {}, {k}-shot, seed {seed}", task.name, item.id)
                    })?;
                    let need = match fitted {
                        None => {
                            s.skipped = Some(format!(
                                "the 0-shot prompt does not fit the context of {ctx_len} tokens"
                            ));
                            Need::Nothing
                        }
                        Some(f) if f.prompt.is_empty() => bail!(
                            "task `{}`, doc {}: the {k}-shot prompt is empty (no description, \
                             and `doc_to_text` rendered nothing); check the task's template",
                            task.name,
                            item.id
                        ),
                        Some(f) => {
                            if f.k < demos.len() && memo.cut_noted.borrow_mut().insert(k) {
                                eprintln!(
                                    "note: task {}, {}: {k} demonstrations do not fit the \
                                     {ctx_len}-token context; doc {}'s prompt holds {} (each \
                                     sample records the K it used)",
                                    task.name,
                                    backend.info().name,
                                    item.id,
                                    f.k
                                );
                            }
                            s.k_effective = Some(f.k);
                            s.prompt_hash = Some(short_hash(&f.prompt));
                            s.tokens = Some(f.tokens);
                            let kept: Vec<_> = f.kept.iter().map(|&i| demos[i].clone()).collect();
                            if f.k < demos.len() {
                                s.kept_demos = Some(kept.iter().map(|d| d.item.id).collect());
                            }
                            let requests = Requests {
                                task,
                                item,
                                demos: &kept,
                                format,
                                shots: plan.shots,
                                seed,
                            };
                            requests.plan(memo, pending, &f)?
                        }
                    };
                    cells.push(Cell {
                        item,
                        sample: s,
                        need,
                    });
                }
            }
        }
    }
    Ok(())
}

/// The requests of one fitted prompt of one doc.
struct Requests<'a> {
    task: &'a Task,
    item: &'a Item,
    /// The demonstrations the fitted prompt kept.
    demos: &'a [sampler::Demo<'a>],
    format: prompt::Format<'a>,
    /// The sweep's shot counts: prefixes worth caching end after K demonstrations.
    shots: &'a [usize],
    /// The cell's seed, which sampled generations draw from too.
    seed: u64,
}

impl Requests<'_> {
    fn breaks(&self, all: &[usize]) -> Vec<usize> {
        prompt::kept_breaks(all, self.shots)
    }

    fn plan(&self, memo: &Memo, pending: &mut Pending, fitted: &prompt::Fitted) -> Result<Need> {
        let task = self.task;
        Ok(match &self.item.answer {
            Answer::Choice { .. } => {
                let conts = prompt::continuations(task, self.item, self.format);
                let prompt =
                    memo.need_choices(pending, &fitted.prompt, self.breaks(&fitted.breaks), &conts);
                let content_free = if task.needs(Needs::ContentFree) {
                    let mut keys = Vec::with_capacity(task.content_free.len());
                    for query in &task.content_free {
                        let (p, breaks) = prompt::render(
                            task,
                            &self.item.description,
                            self.demos,
                            query,
                            self.format,
                        )?;
                        keys.push(memo.need_choices(pending, &p, self.breaks(&breaks), &conts));
                    }
                    Some(keys)
                } else {
                    None
                };
                let unconditional = task
                    .needs(Needs::Neutral)
                    .then(|| memo.need_choices(pending, PMI_CONTEXT, Vec::new(), &conts));
                // lm-eval scores ("", continuation): the start token alone as context.
                let mutual_info = task
                    .needs(Needs::EmptyContext)
                    .then(|| memo.need_choices(pending, "", Vec::new(), &conts));
                Need::Choices(ChoiceKeys {
                    prompt,
                    content_free,
                    unconditional,
                    mutual_info,
                })
            }
            Answer::Inputs { inputs, .. } => {
                let conts = prompt::continuations(task, self.item, self.format);
                let mut keys = Vec::with_capacity(inputs.len());
                for input in inputs {
                    let (p, breaks) = prompt::render(
                        task,
                        &self.item.description,
                        self.demos,
                        input,
                        self.format,
                    )?;
                    keys.push(memo.need_choices(pending, &p, self.breaks(&breaks), &conts));
                }
                Need::Inputs(keys)
            }
            Answer::Document(_) => {
                bail!("internal: a document is planned before its prompt is fitted (plan_doc)")
            }
            Answer::Continuation(_) => {
                let conts = prompt::continuations(task, self.item, self.format);
                Need::Continuation(memo.need_choices(
                    pending,
                    &fitted.prompt,
                    self.breaks(&fitted.breaks),
                    &conts,
                ))
            }
            Answer::Text(_) => {
                let draws = if task.sampling.is_some() {
                    task.repeats
                } else {
                    1
                };
                let keys = (0..draws)
                    .map(|r| {
                        let sampling = task.sampling.map(|(temperature, top_p)| Sampling {
                            temperature,
                            top_p,
                            // Keyed by what the answer depends on, never by order or batch.
                            seed: crate::seed::combine(&[
                                self.seed,
                                crate::seed::hash_str(&fitted.prompt),
                                r as u64,
                            ]),
                        });
                        memo.need_generation(
                            pending,
                            GenerateRequest {
                                context: fitted.prompt.clone(),
                                breaks: self.breaks(&fitted.breaks),
                                until: task.until.clone(),
                                max_tokens: task.max_tokens,
                                sampling,
                            },
                        )
                    })
                    .collect();
                Need::Text(keys)
            }
        })
    }
}

/// Scores a planned cell from the memo's answers.
fn finish(task: &Task, memo: &Memo, cell: Cell) -> Result<Sample> {
    let Cell {
        item,
        sample: mut s,
        need,
    } = cell;
    match (need, &item.answer) {
        (Need::Nothing, _) => {}
        (Need::Choices(keys), Answer::Choice { choices, gold }) => {
            finish_choices(task, memo, &mut s, keys, choices, *gold)?
        }
        (Need::Inputs(keys), Answer::Inputs { inputs, gold, .. }) => {
            finish_inputs(task, memo, &mut s, &keys, inputs, *gold)?
        }
        (Need::Continuation(key), Answer::Continuation(_)) => {
            finish_continuation(task, memo, &mut s, &key)?
        }
        (Need::Document(key), Answer::Document(text)) => {
            finish_document(task, memo, &mut s, &key, text)?
        }
        (Need::Text(keys), Answer::Text(target)) => {
            finish_text(task, memo, &mut s, item, &keys, target)?
        }
        _ => anyhow::bail!("internal: a cell's requests do not match its answer type"),
    }
    Ok(s)
}

/// A multiple-choice cell: every metric's value (and a corpus metric's statistics) from the
/// choices' log-likelihoods and the extra requests its metrics needed.
fn finish_choices(
    task: &Task,
    memo: &Memo,
    s: &mut Sample,
    keys: ChoiceKeys,
    choices: &[String],
    gold: usize,
) -> Result<()> {
    let ChoiceKeys {
        prompt,
        content_free,
        unconditional,
        mutual_info,
    } = keys;
    let primary = task.primary_metric().metric;
    let logprobs = memo.choices(&prompt)?;
    let prior = content_free
        .map(|keys| {
            let cf = keys
                .iter()
                .map(|k| memo.choices(k))
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, anyhow::Error>(choice::content_free_prior(&cf))
        })
        .transpose()?;
    let unconditional = unconditional.map(|k| memo.choices(&k)).transpose()?;
    let mut cs = choice::score_choices(
        &logprobs,
        choices,
        prior.as_deref(),
        unconditional.as_deref(),
    );
    if let Some(k) = mutual_info {
        cs.pred_mutual_info = Some(choice::pred_mutual_info(&logprobs, &memo.choices(&k)?));
    }
    record_choice_metrics(task, s, &cs, gold);
    let pred = primary.pick(&cs).unwrap_or(cs.pred);
    s.prediction = Some(choices[pred].clone());
    if crate::backend::unanswered(&logprobs) {
        // No letter was the answer: every pick is wrong, not the first of equal scores.
        for &m in &task.metrics {
            if m.choice_value(&cs, gold).is_some() && !matches!(m.spec().per_doc, PerDoc::Choice(_))
            {
                s.metrics.insert(m.name().to_string(), 0.0);
            }
        }
        s.prediction = None;
    }
    s.correct = Some(s.metrics.get(primary.name()).is_some_and(|&v| v > 0.5));
    s.logprobs = Some(logprobs);
    s.calibration = prior;
    s.unconditional = unconditional;
    Ok(())
}

/// Each metric's value of a doc scored as a choice (its choices, or a multiple-input doc's
/// inputs), and a corpus metric's statistics.
fn record_choice_metrics(task: &Task, s: &mut Sample, cs: &choice::ChoiceScore, gold: usize) {
    for &m in &task.metrics {
        if let PerDoc::ChoiceStats(stats) = m.spec().per_doc {
            s.stats.insert(m.name().to_string(), stats(cs, gold));
        }
        if let Some(v) = m.choice_value(cs, gold) {
            s.metrics.insert(m.name().to_string(), v);
        }
    }
}

/// A multiple-input cell: the inputs' log-likelihoods of the shared continuation.
fn finish_inputs(
    task: &Task,
    memo: &Memo,
    s: &mut Sample,
    keys: &[Key],
    inputs: &[String],
    gold: usize,
) -> Result<()> {
    let logprobs = keys
        .iter()
        .map(|k| Ok(memo.single(k)?.logprob))
        .collect::<Result<Vec<f64>>>()?;
    // Inputs are scored as one choice score over the inputs' log-likelihoods of the
    // shared continuation: `acc` picks the likeliest; lm-eval scores `f1`/`mcc` of
    // inputs on (gold input, predicted input).
    let cs = choice::score_choices(&logprobs, inputs, None, None);
    s.prediction = Some(inputs[cs.pred].clone());
    s.correct = Some(cs.pred == gold);
    record_choice_metrics(task, s, &cs, gold);
    s.logprobs = Some(logprobs);
    Ok(())
}

/// A `loglikelihood` cell: the continuation's log-likelihood and whether it is greedy.
fn finish_continuation(task: &Task, memo: &Memo, s: &mut Sample, key: &Key) -> Result<()> {
    let ll = memo.single(key)?;
    s.correct = Some(ll.is_greedy);
    s.metrics = task
        .metrics
        .iter()
        .map(|&m| {
            let v = match m.spec().per_doc {
                // The summary turns the mean log-likelihood into exp(−mean).
                PerDoc::LogLikelihood => ll.logprob,
                _ => hit(ll.is_greedy),
            };
            (m.name().to_string(), v)
        })
        .collect();
    s.logprobs = Some(vec![ll.logprob]);
    Ok(())
}

/// A `loglikelihood_rolling` cell: the document's statistics for each rolling metric.
fn finish_document(task: &Task, memo: &Memo, s: &mut Sample, key: &Key, text: &str) -> Result<()> {
    let ll = *memo
        .documents
        .get(key)
        .context("internal: a document was planned but not scored")?;
    for &m in &task.metrics {
        let PerDoc::DocumentStats(stats) = m.spec().per_doc else {
            bail!("internal: `{}` does not score documents", m.name());
        };
        let stats = stats(ll, text);
        // An empty document has no bytes: no per-doc value (JSON has no NaN), while its
        // statistics still add nothing to the cell's sums.
        let alone = m.corpus_score(&[&stats]);
        if alone.is_finite() {
            s.metrics.insert(m.name().to_string(), alone);
        }
        s.stats.insert(m.name().to_string(), stats);
    }
    s.logprobs = Some(vec![ll]);
    Ok(())
}

/// A generation cell: each answer (the generation, or each filter's) scored by every metric.
fn finish_text(
    task: &Task,
    memo: &Memo,
    s: &mut Sample,
    item: &Item,
    keys: &[Key],
    target: &str,
) -> Result<()> {
    let mut responses = keys
        .iter()
        .map(|k| {
            memo.generated
                .get(k)
                .cloned()
                .context("internal: a generation was planned but not answered")
        })
        .collect::<Result<Vec<String>>>()?;
    // Greedy repeats are one generation, shown `repeats` times as lm-eval would get it.
    while responses.len() < task.repeats {
        responses.push(responses[0].clone());
    }
    let text = responses[0].clone();
    // Each answer (the generation, or each filter's) is scored by every metric; the first
    // filter's answer is the prediction, and `correct` is its exact match.
    let answers: Vec<(Option<&str>, String)> = if task.filters.is_empty() {
        vec![(None, text.clone())]
    } else {
        let choices = task.doc_choices.get(item.id).map_or(&[][..], Vec::as_slice);
        task.filters
            .iter()
            .map(|f| (Some(f.name.as_str()), f.apply(&responses, choices)))
            .collect()
    };
    for (i, (filter, answer)) in answers.iter().enumerate() {
        let em = score::exact_match_with(&task.exact_match, answer, target);
        if i == 0 {
            s.prediction = Some(match filter {
                None => answer.trim().to_string(),
                Some(_) => answer.clone(),
            });
            s.correct = Some(em > 0.5);
        }
        for &m in &task.metrics {
            let name = crate::task::Reported::new(m, *filter).name().to_string();
            let value = match m.spec().per_doc {
                PerDoc::TextStats(stats) => {
                    let stats = stats(answer, target);
                    let alone = m.corpus_score(&[&stats]);
                    s.stats.insert(name.clone(), stats);
                    alone
                }
                _ => em,
            };
            s.metrics.insert(name, value);
        }
    }
    if !task.filters.is_empty() {
        s.filtered = Some(
            answers
                .into_iter()
                .filter_map(|(f, a)| Some((f?.to_string(), a)))
                .collect(),
        );
    }
    s.generated = Some(text);
    if responses.len() > 1 {
        s.generations = Some(responses);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{LogLikelihood, ModelInfo};
    use crate::metric::Metric;
    use crate::task::{Item, OutputType};

    /// Answers everything (generations: the text it holds); its context length is large.
    struct Echo(ModelInfo, &'static str);

    impl Backend for Echo {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.len())
        }
        fn loglikelihood_batch(
            &mut self,
            requests: &[ChoiceRequest],
        ) -> Result<Vec<Vec<LogLikelihood>>> {
            Ok(requests
                .iter()
                .map(|r| {
                    r.continuations
                        .iter()
                        .map(|_| LogLikelihood {
                            logprob: -1.0,
                            is_greedy: true,
                            n_tokens: 1,
                        })
                        .collect()
                })
                .collect())
        }
        fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
            Ok(requests.iter().map(|_| self.1.to_string()).collect())
        }
    }

    #[test]
    fn an_empty_prompt_is_an_error_naming_task_and_doc() {
        let docs = vec![
            Item {
                id: 0,
                text: "2 + 2 =".into(),
                answer: Answer::Text("4".into()),
                description: String::new(),
            },
            Item {
                id: 1,
                text: String::new(),
                answer: Answer::Text("4".into()),
                description: String::new(),
            },
        ];
        let t = Task::for_tests(OutputType::GenerateUntil, vec![Metric::ExactMatch], docs);
        let selector = Selector::new(&t, t.sampler, t.demo_order, None).unwrap();
        let mut backend = Echo(ModelInfo::for_tests("m", 1 << 20), "4");
        let mut emitted = Vec::new();
        let e = evaluate_task(
            &mut backend,
            &selector,
            &Plan::simple(&[0], 1, None),
            &mut |s| {
                emitted.push(s);
                Ok(())
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("task `t`, doc 1") && e.contains("prompt is empty"),
            "{e}"
        );
    }

    /// Each filter of `filter_list` scores its own answer, reported as `exact_match,NAME`; the
    /// first filter's answer is the prediction.
    #[test]
    fn every_filter_scores_its_own_answer() {
        let docs = vec![Item {
            id: 0,
            text: "Q: 9 * 2?".into(),
            answer: Answer::Text("18".into()),
            description: String::new(),
        }];
        let mut t = Task::for_tests(OutputType::GenerateUntil, vec![Metric::ExactMatch], docs);
        let specs: Vec<crate::task::filter::PipelineSpec> = serde_yaml::from_str(
            "- name: strict-match\n  filter:\n    - function: regex\n      regex_pattern: '#### (\\-?[0-9\\.\\,]+)'\n    - function: take_first\n\
             - name: flexible-extract\n  filter:\n    - function: regex\n      group_select: -1\n      regex_pattern: '(-?[$0-9.,]{2,})|(-?[0-9]+)'\n    - function: take_first\n",
        )
        .unwrap();
        t.filters = specs.iter().map(|s| s.compile().unwrap()).collect();
        let selector = Selector::new(&t, t.sampler, t.demo_order, None).unwrap();
        let mut backend = Echo(ModelInfo::for_tests("m", 1 << 20), " 9 * 2 = 18 eggs");
        let mut emitted = Vec::new();
        evaluate_task(
            &mut backend,
            &selector,
            &Plan::simple(&[0], 1, None),
            &mut |s| {
                emitted.push(s);
                Ok(())
            },
        )
        .unwrap();
        let s = &emitted[0];
        assert_eq!(s.metrics["exact_match,strict-match"], 0.0);
        assert_eq!(s.metrics["exact_match,flexible-extract"], 1.0);
        assert_eq!(s.prediction.as_deref(), Some("[invalid]"));
        assert_eq!(s.correct, Some(false));
        let f = s.filtered.as_ref().unwrap();
        assert_eq!(f["flexible-extract"], "18");
        assert_eq!(
            t.reported()
                .iter()
                .map(|r| r.name().to_string())
                .collect::<Vec<_>>(),
            ["exact_match,strict-match", "exact_match,flexible-extract"]
        );
    }

    /// `bleu`, `chrf` and `ter` score the generation (or each filter's answer) against the target: each
    /// sample records the sacreBLEU statistics the summary sums, and the doc's own score.
    #[test]
    fn corpus_metrics_record_their_statistics_per_answer() {
        let docs = vec![Item {
            id: 0,
            text: "Translate: le chat".into(),
            answer: Answer::Text("The cat sat on the mat.".into()),
            description: String::new(),
        }];
        let t = Task::for_tests(
            OutputType::GenerateUntil,
            vec![Metric::Bleu, Metric::Chrf, Metric::Ter, Metric::ExactMatch],
            docs,
        );
        let selector = Selector::new(&t, t.sampler, t.demo_order, None).unwrap();
        let mut backend = Echo(
            ModelInfo::for_tests("m", 1 << 20),
            " The cat is sitting on the mat.",
        );
        let mut emitted = Vec::new();
        evaluate_task(
            &mut backend,
            &selector,
            &Plan::simple(&[0], 1, None),
            &mut |s| {
                emitted.push(s);
                Ok(())
            },
        )
        .unwrap();
        let s = &emitted[0];
        // The statistics themselves are checked against sacreBLEU in corpus/
        let bleu = crate::metric::corpus::bleu_stats(
            " The cat is sitting on the mat.",
            "The cat sat on the mat.",
        );
        assert_eq!(s.stats["bleu"], bleu);
        assert_eq!(s.metrics["bleu"], Metric::Bleu.corpus_score(&[&bleu]));
        assert!(s.metrics["bleu"] > 0.2 && s.metrics["bleu"] < 0.9);
        assert_eq!(s.stats["chrf"].len(), 18);
        // "sat" → "is sitting": one substitution, one insertion, over 6 reference words.
        assert_eq!(s.stats["ter"], [2.0, 6.0]);
        assert!((s.metrics["ter"] - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.metrics["exact_match"], 0.0);
        assert_eq!(s.correct, Some(false), "`correct` is the exact match");
    }

    /// Generations answer with the last digit of their seed.
    struct ByDigit(ModelInfo);

    impl Backend for ByDigit {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.len())
        }
        fn loglikelihood_batch(&mut self, _: &[ChoiceRequest]) -> Result<Vec<Vec<LogLikelihood>>> {
            unreachable!("generation only")
        }
        fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
            Ok(requests
                .iter()
                .map(|r| match r.sampling {
                    Some(s) => format!("{}", s.seed % 3),
                    None => "greedy".into(),
                })
                .collect())
        }
    }

    /// `repeats` sampled generations, each seeded by its prompt and repeat alone: the majority
    /// vote sees all of them, and a run in other blocks gives the same samples; greedy repeats
    /// are one generation.
    #[test]
    fn sampled_repeats_feed_the_majority_vote_and_repeat_exactly() {
        let docs: Vec<Item> = (0..4)
            .map(|id| Item {
                id,
                text: format!("Q{id}"),
                answer: Answer::Text("1".into()),
                description: String::new(),
            })
            .collect();
        let mut t = Task::for_tests(OutputType::GenerateUntil, vec![Metric::ExactMatch], docs);
        t.repeats = 9;
        t.sampling = Some((0.7, 1.0));
        let specs: Vec<crate::task::filter::PipelineSpec> = serde_yaml::from_str(
            "- name: maj\n  filter:\n    - function: majority_vote\n    - function: take_first\n",
        )
        .unwrap();
        t.filters = specs.iter().map(|s| s.compile().unwrap()).collect();
        let run = |t: &Task, limit: Option<usize>| {
            let selector = Selector::new(t, t.sampler, t.demo_order, None).unwrap();
            let mut backend = ByDigit(ModelInfo::for_tests("m", 1 << 20));
            let mut out = Vec::new();
            evaluate_task(
                &mut backend,
                &selector,
                &Plan::simple(&[0, 1], 3, limit),
                &mut |s| {
                    out.push(s);
                    Ok(())
                },
            )
            .unwrap();
            out
        };
        let all = run(&t, None);
        assert_eq!(all.len(), 8);
        for s in &all {
            let g = s.generations.as_ref().unwrap();
            assert_eq!(g.len(), 9);
            let count = |x: &str| g.iter().filter(|y| *y == x).count();
            let best = ["0", "1", "2"].iter().map(|x| count(x)).max().unwrap();
            let vote = &s.filtered.as_ref().unwrap()["maj"];
            assert_eq!(count(vote), best, "{s:?}");
            assert_eq!(&g[0], s.generated.as_ref().unwrap());
        }
        assert!(
            all.iter()
                .any(|s| s.generations.as_ref().unwrap().iter().any(|x| x != "0"))
        );
        let first_two = run(&t, Some(2));
        assert_eq!(
            format!("{:?}", &all[..4]),
            format!("{first_two:?}"),
            "--limit changes no sampled answer"
        );
        t.sampling = None;
        let greedy = run(&t, Some(1));
        assert_eq!(greedy[0].generations.as_deref().unwrap(), vec!["greedy"; 9]);
    }

    /// Log-likelihoods that depend on the context: after the empty context, choice 1 is far less
    /// likely than choice 0; after any prompt, only a little.
    struct Unconditional(ModelInfo);

    impl Backend for Unconditional {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.len())
        }
        fn loglikelihood_batch(
            &mut self,
            requests: &[ChoiceRequest],
        ) -> Result<Vec<Vec<LogLikelihood>>> {
            Ok(requests
                .iter()
                .map(|r| {
                    let lps = if r.context.is_empty() {
                        [0.0, -5.0]
                    } else {
                        [-1.0, -2.0]
                    };
                    r.continuations
                        .iter()
                        .zip(lps)
                        .map(|(_, logprob)| LogLikelihood {
                            logprob,
                            is_greedy: false,
                            n_tokens: 1,
                        })
                        .collect()
                })
                .collect())
        }
        fn generate_batch(&mut self, _: &[GenerateRequest]) -> Result<Vec<String>> {
            unreachable!("scoring only")
        }
    }

    /// `acc_mutual_info` subtracts each choice's log-likelihood after the empty context (lm-eval's
    /// `("", continuation)` requests); `brier_score` is Σ (p − 1[gold])² over the softmaxed choices.
    #[test]
    fn mutual_info_scores_against_the_empty_context_and_brier_by_hand() {
        let docs = vec![Item {
            id: 0,
            text: "Q".into(),
            answer: Answer::Choice {
                choices: vec!["a".into(), "b".into()],
                gold: 1,
            },
            description: String::new(),
        }];
        let t = Task::for_tests(
            OutputType::MultipleChoice,
            vec![Metric::Acc, Metric::AccMutualInfo, Metric::BrierScore],
            docs,
        );
        let selector = Selector::new(&t, t.sampler, t.demo_order, None).unwrap();
        let mut backend = Unconditional(ModelInfo::for_tests("m", 1 << 20));
        let mut out = Vec::new();
        evaluate_task(
            &mut backend,
            &selector,
            &Plan::simple(&[0], 1, None),
            &mut |s| {
                out.push(s);
                Ok(())
            },
        )
        .unwrap();
        let m = &out[0].metrics;
        assert_eq!((m["acc"], m["acc_mutual_info"]), (0.0, 1.0));
        // p = softmax(-1, -2) = (0.7311, 0.2689); gold 1: 0.7311² + (0.2689 − 1)² = 2 · 0.7311².
        let p0 = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((m["brier_score"] - 2.0 * p0 * p0).abs() < 1e-12, "{m:?}");
    }
}
