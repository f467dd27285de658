//! The model interface scoring talks to, and its implementations (one folder each).

pub mod candle;
pub mod http;
pub mod openai;
pub mod openai_chat;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A kind of model reference a backend serves, `SCHEME:…` (`openai:http://HOST:PORT/v1#MODEL`):
/// one entry of [`SCHEMES`] per backend behind an API. References without a scheme are local
/// weights (the embedded backend).
pub struct Scheme {
    /// The prefix, colon included.
    pub prefix: &'static str,
    /// How to write a reference, for help and errors.
    pub usage: &'static str,
    /// The model's name in tables, from the reference alone (nothing contacted), checking it.
    pub name: fn(&str) -> Result<String>,
    /// Connects to the model the reference names, with the run's server options.
    pub connect: fn(&str, &http::Options) -> Result<Box<dyn Backend>>,
    /// A chat endpoint: prompts go as chat messages ([`Backend::takes_messages`]), and it scores
    /// only the answer letters of multiple choice in `mcqa` form, besides generating.
    pub chat: bool,
}

/// Every backend reached by a reference's scheme.
pub static SCHEMES: &[Scheme] = &[openai::SCHEME, openai_chat::SCHEME];

/// The log-likelihood a chat endpoint gives an answer letter it did not list among its top
/// log-probabilities: below any listed one, so a listed letter is always picked before it, and
/// the same for every unlisted letter, so a doc none of whose letters is listed is unanswered.
pub const UNLISTED: f64 = -1.0e4;

/// Whether a choice's log-likelihoods say no choice was answered (every one [`UNLISTED`]).
pub fn unanswered(logprobs: &[f64]) -> bool {
    !logprobs.is_empty() && logprobs.iter().all(|&l| l <= UNLISTED)
}

/// The scheme a model reference names, if any.
pub fn scheme_of(reference: &str) -> Option<&'static Scheme> {
    SCHEMES.iter().find(|s| reference.starts_with(s.prefix))
}

/// What a run records about a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Short name used in tables and charts (models.yaml name, file stem or folder name).
    pub name: String,
    /// What `--models` said (path, models-file name or `hf:` reference).
    #[serde(default)]
    pub reference: String,
    /// The file or folder the weights were loaded from.
    pub path: String,
    pub sha256: String,
    pub architecture: String,
    /// The family the size chart draws one line for: the models file's `family`, else the
    /// architecture (`gemma3_text` as `gemma3`).
    #[serde(default)]
    pub family: String,
    /// Parameters counted from the weights (every tensor once, tied embeddings once).
    pub parameters: u64,
    /// Parameters without the token embedding and an untied output projection.
    #[serde(default)]
    pub non_embedding_parameters: u64,
    /// GGUF file type (`Q4_K_M`, ...) or checkpoint dtype (`float32`, `bfloat16`).
    #[serde(default)]
    pub quantization: String,
    pub context_length: usize,
    /// Storage of the weights in memory (`f32` or `quantized`).
    pub weights: String,
    /// How an API backend scores (a chat endpoint: the answer letters from the first token's
    /// top log-probabilities, or from generated text); empty in process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scoring: String,
}

#[cfg(test)]
impl ModelInfo {
    /// A float32 llama model of `parameters` parameters, for unit tests.
    pub(crate) fn for_tests(name: &str, parameters: u64) -> Self {
        Self {
            name: name.into(),
            reference: String::new(),
            path: String::new(),
            sha256: String::new(),
            architecture: "llama".into(),
            family: "llama".into(),
            parameters,
            non_embedding_parameters: parameters,
            quantization: "F32".into(),
            context_length: 8192,
            weights: "f32".into(),
            scoring: String::new(),
        }
    }
}

/// Score of one continuation after a context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLikelihood {
    /// Sum of the continuation tokens' log-probabilities (nats).
    pub logprob: f64,
    /// Whether every continuation token was the argmax at its position.
    pub is_greedy: bool,
    /// Number of continuation tokens.
    pub n_tokens: usize,
}

/// One scoring request: continuations after a shared context (see [`Backend::loglikelihood`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceRequest {
    pub context: String,
    pub breaks: Vec<usize>,
    pub continuations: Vec<String>,
}

/// One generation request (see [`Backend::generate_until`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub context: String,
    pub breaks: Vec<usize>,
    pub until: Vec<String>,
    pub max_tokens: usize,
    /// Sample instead of decoding greedily (see [`Sampling`]).
    pub sampling: Option<Sampling>,
}

/// Sampled decoding (lm-eval's `do_sample: true`): each next token drawn from the softmax of the
/// logits over `temperature`, cut to the smallest set whose probability reaches `top_p`, by a
/// generator seeded with `seed` alone, so an answer depends on its request only.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    /// Draws a token index from next-token log-probabilities `logprobs` with `rng`.
    pub fn draw(&self, logprobs: &[f32], rng: &mut crate::seed::SeededRng) -> usize {
        // log-softmax differs from the logits by a constant, so this is softmax(logits / T).
        let max = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut p: Vec<(usize, f64)> = logprobs
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l as f64 - max) / self.temperature).exp()))
            .collect();
        let z: f64 = p.iter().map(|x| x.1).sum();
        // Most probable first, ties by index, so the nucleus does not depend on sort stability.
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0;
        let mut mass = 0.0;
        while kept < p.len() && (kept == 0 || mass < self.top_p * z) {
            mass += p[kept].1;
            kept += 1;
        }
        // A uniform draw in [0, mass) from the top 53 bits.
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * mass;
        let mut acc = 0.0;
        for &(i, w) in &p[..kept] {
            acc += w;
            if u < acc {
                return i;
            }
        }
        p[kept - 1].0
    }
}

impl ChoiceRequest {
    /// The request for [`Backend::loglikelihood`]'s arguments.
    pub fn new(context: &str, breaks: &[usize], continuations: &[String]) -> Self {
        Self {
            context: context.into(),
            breaks: breaks.to_vec(),
            continuations: continuations.to_vec(),
        }
    }
}

impl GenerateRequest {
    /// The request for [`Backend::generate_until`]'s arguments.
    pub fn new(context: &str, breaks: &[usize], until: &[String], max_tokens: usize) -> Self {
        Self {
            context: context.into(),
            breaks: breaks.to_vec(),
            until: until.to_vec(),
            max_tokens,
            sampling: None,
        }
    }
}

/// Checks that a backend answered each request once and each continuation once, each with a
/// possible log-likelihood (finite, not above 0): a server or a cache that returns more or fewer
/// would otherwise pick the wrong answer, and a NaN or an absurd value (broken weights, a
/// misbehaving server) would be scored as if it meant something.
pub fn check_answers(
    model: &str,
    requests: &[ChoiceRequest],
    answers: &[Vec<LogLikelihood>],
) -> Result<()> {
    if answers.len() != requests.len() {
        anyhow::bail!(
            "model `{model}`: the backend returned {} answers to a batch of {} scoring requests",
            answers.len(),
            requests.len()
        );
    }
    for (r, a) in requests.iter().zip(answers) {
        if a.len() != r.continuations.len() {
            anyhow::bail!(
                "model `{model}`: the backend returned {} log-likelihoods for a request with {} \
                 continuations ({:?}) after the prompt ending {:?}",
                a.len(),
                r.continuations.len(),
                r.continuations,
                tail(&r.context, 60)
            );
        }
        if let Some((c, l)) = r
            .continuations
            .iter()
            .zip(a)
            .find(|(_, l)| !possible_logprob(l.logprob))
        {
            anyhow::bail!(
                "model `{model}`: the backend returned an impossible log-likelihood ({:?}) for the \
                 continuation {c:?} after the prompt ending {:?}; its weights or its server are \
                 broken, and nothing of this batch was recorded",
                l.logprob,
                tail(&r.context, 60)
            );
        }
    }
    Ok(())
}

/// Whether `logprob` can be a log-probability: finite and not above 0 (beyond rounding).
pub fn possible_logprob(logprob: f64) -> bool {
    logprob.is_finite() && logprob <= 1e-3
}

/// The last `n` characters of `s`, to name a prompt in an error.
fn tail(s: &str, n: usize) -> &str {
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map_or(0, |(i, _)| i);
    &s[start..]
}

/// The one answer of a batch of one request (for backends whose batch method does the work).
pub fn one<T>(answers: Vec<T>) -> Result<T> {
    answers
        .into_iter()
        .next()
        .context("the backend returned no answer to a request")
}

/// A language model that can score and generate text.
pub trait Backend {
    /// Identity and size of the model.
    fn info(&self) -> &ModelInfo;

    /// Number of tokens `text` takes as a prompt (special tokens the model adds included).
    fn count_tokens(&self, text: &str) -> Result<usize>;

    /// Tokens run through the model so far and prompt tokens reused from a cache instead, as
    /// (reused, computed); (0, 0) for a backend that does not count.
    fn token_counts(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Revision of the backend's numerics: part of every request-cache key, bumped whenever a
    /// change to the backend changes any number it returns.
    fn numerics(&self) -> u32 {
        0
    }

    /// The model's own chat template, if it ships one.
    fn chat_template(&self) -> Option<crate::chat::ChatTemplate> {
        None
    }

    /// Whether prompts reach the model as chat messages (JSON, `prompt::Format::Messages`)
    /// that the endpoint renders with its own template, rather than as text.
    fn takes_messages(&self) -> bool {
        false
    }

    /// lm-eval's `loglikelihood_rolling`: the log-likelihood of the whole of `text` after the
    /// model's start token, in disjoint windows of the context length. Backends that cannot
    /// score a document whole say so.
    fn loglikelihood_rolling(&mut self, text: &str) -> Result<f64> {
        let _ = text;
        anyhow::bail!(
            "model `{}`: this backend cannot score whole documents (output_type \
             loglikelihood_rolling); run the task on the embedded backend",
            self.info().name
        )
    }

    /// How many docs the run plans at once, answering all their requests in one batch: requests
    /// in flight for a server, docs whose forward passes are packed together in process. 1 for a
    /// backend that computes one request at a time.
    fn concurrency(&self) -> usize {
        1
    }

    /// Scores each request's continuations after its shared context, computing the context
    /// once; answers in request order, one per continuation. `breaks` are byte offsets in the
    /// context where prompts sharing a prefix part (after the description and each
    /// demonstration); a backend may reuse work there, never change results. The answers must
    /// not depend on how requests are grouped into batches.
    fn loglikelihood_batch(
        &mut self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<Vec<LogLikelihood>>>;

    /// Generates for each request until one of its `until` appears (cut off), its `max_tokens`
    /// or end of sequence: greedily, or sampled where the request says so (a backend that
    /// decodes greedily only refuses such a request, naming the task's `do_sample`); answers in
    /// request order, whatever the grouping.
    fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>>;

    /// [`Backend::loglikelihood_batch`] of one request.
    fn loglikelihood(
        &mut self,
        context: &str,
        breaks: &[usize],
        continuations: &[String],
    ) -> Result<Vec<LogLikelihood>> {
        let r = ChoiceRequest::new(context, breaks, continuations);
        one(self.loglikelihood_batch(std::slice::from_ref(&r))?)
    }

    /// [`Backend::generate_batch`] of one greedy request.
    fn generate_until(
        &mut self,
        context: &str,
        breaks: &[usize],
        until: &[String],
        max_tokens: usize,
    ) -> Result<String> {
        let r = GenerateRequest::new(context, breaks, until, max_tokens);
        one(self.generate_batch(std::slice::from_ref(&r))?)
    }
}

/// Moves the context's trailing whitespace to the start of each continuation, as lm-eval does, so that
/// the boundary token (e.g. `" positive"`) is scored as one piece.
pub fn split_trailing_whitespace<'a>(context: &'a str, continuation: &str) -> (&'a str, String) {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    (trimmed, format!("{moved}{continuation}"))
}

/// Cuts generated text at the first stop sequence; returns whether one was found.
pub fn cut_at_stop(text: &str, until: &[String]) -> (String, bool) {
    let first = until
        .iter()
        .filter(|u| !u.is_empty())
        .filter_map(|u| text.find(u.as_str()))
        .min();
    match first {
        Some(i) => (text[..i].to_string(), true),
        None => (text.to_string(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_log_likelihoods_are_refused_before_anything_uses_them() {
        let r = [ChoiceRequest::new(
            "Q: 1+1=",
            &[],
            &[" 2".into(), " 3".into()],
        )];
        let ll = |logprob| LogLikelihood {
            logprob,
            is_greedy: false,
            n_tokens: 1,
        };
        assert!(check_answers("m", &r, &[vec![ll(-0.5), ll(0.0)]]).is_ok());
        for bad in [f64::NAN, 1e308, f64::NEG_INFINITY, 0.5] {
            let e = check_answers("m", &r, &[vec![ll(-0.5), ll(bad)]])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("model `m`")
                    && e.contains("impossible log-likelihood")
                    && e.contains("\" 3\""),
                "{e}"
            );
        }
    }

    /// Draws follow softmax(logits / T) (checked against the exact shares), cut to the nucleus,
    /// and depend on the seed alone.
    #[test]
    fn sampling_draws_from_the_tempered_nucleus() {
        let lp: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let count = |s: Sampling, n: usize| {
            let mut rng = crate::seed::SeededRng::new(s.seed);
            let mut c = [0usize; 4];
            for _ in 0..n {
                c[s.draw(&lp, &mut rng)] += 1;
            }
            c
        };
        let plain = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let c = count(plain, 40_000);
        for (i, p) in [0.5, 0.3, 0.15, 0.05].iter().enumerate() {
            assert!((c[i] as f64 / 40_000.0 - p).abs() < 0.01, "{c:?}");
        }
        assert_eq!(c, count(plain, 40_000), "same seed, same draws");
        // T = 0.5 squares the probabilities: 0.25, 0.09, 0.0225, 0.0025 over their sum.
        let hot = count(
            Sampling {
                temperature: 0.5,
                ..plain
            },
            40_000,
        );
        let z = 0.25 + 0.09 + 0.0225 + 0.0025;
        assert!(
            (hot[0] as f64 / 40_000.0 - 0.25 / z).abs() < 0.01,
            "{hot:?}"
        );
        // top_p 0.7: the two likeliest (0.8 of the mass) remain, renormalised.
        let nucleus = count(
            Sampling {
                top_p: 0.7,
                ..plain
            },
            40_000,
        );
        assert_eq!((nucleus[2], nucleus[3]), (0, 0), "{nucleus:?}");
        assert!(
            (nucleus[0] as f64 / 40_000.0 - 0.625).abs() < 0.01,
            "{nucleus:?}"
        );
        assert_eq!(
            count(
                Sampling {
                    top_p: 0.3,
                    ..plain
                },
                100
            ),
            [100, 0, 0, 0]
        );
    }

    #[test]
    fn trailing_whitespace_moves_to_continuation() {
        assert_eq!(
            split_trailing_whitespace("Sentiment: \n", "positive"),
            ("Sentiment:", " \npositive".to_string())
        );
        assert_eq!(
            split_trailing_whitespace("A:", " 12"),
            ("A:", " 12".to_string())
        );
    }

    #[test]
    fn stop_sequences_cut_at_the_earliest() {
        let until = vec!["\n".to_string(), "Q:".to_string()];
        assert_eq!(
            cut_at_stop(" 124 Q: x\ny", &until),
            (" 124 ".to_string(), true)
        );
        assert_eq!(cut_at_stop(" 124", &until), (" 124".to_string(), false));
    }

    #[test]
    fn answers_of_the_wrong_count_are_errors_naming_model_and_request() {
        let r = ChoiceRequest::new("Q: is it good?\nA:", &[], &[" yes".into(), " no".into()]);
        let ll = |p| LogLikelihood {
            logprob: p,
            is_greedy: false,
            n_tokens: 1,
        };
        assert!(check_answers("m", std::slice::from_ref(&r), &[vec![ll(-1.0), ll(-2.0)]]).is_ok());
        let e = check_answers("m", std::slice::from_ref(&r), &[vec![ll(-1.0)]])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model `m`") && e.contains("1 log-likelihoods") && e.contains("A:"),
            "{e}"
        );
        let three = vec![ll(-1.0), ll(-2.0), ll(-3.0)];
        assert!(check_answers("m", std::slice::from_ref(&r), &[three]).is_err());
        let e = check_answers("m", std::slice::from_ref(&r), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 answers to a batch of 1"), "{e}");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("ab", 3), "ab");
    }
}
