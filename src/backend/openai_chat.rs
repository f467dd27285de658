//! Backend `openai-chat`: a model behind an OpenAI-compatible chat-completions endpoint
//! (OpenAI, vLLM, SGLang, llama.cpp's server, TGI, Ollama), `openai-chat:http://HOST:PORT/v1#MODEL`.
//!
//! Such endpoints return no prompt log-probabilities, so a choice's text cannot be scored as a
//! continuation. Multiple choice is asked in `mcqa` form instead (the choices lettered in the
//! prompt) and answered by the model's first answer token: each letter's log-probability among
//! that token's `top_logprobs` (as many as the server gives), a letter not listed counting as not
//! chosen ([`super::UNLISTED`]); or, where the server returns no log-probabilities, the letter
//! read from the generated answer. Prompts arrive as chat messages (`prompt::Format::Messages`):
//! the endpoint applies the model's own chat template.

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::openai::{Endpoint, Options, Server};
use super::{Backend, ChoiceRequest, GenerateRequest, LogLikelihood, ModelInfo, UNLISTED};
use crate::chat::{Message, parse_messages};

const PREFIX: &str = "openai-chat:";

/// `openai-chat:` references.
pub const SCHEME: super::Scheme = super::Scheme {
    prefix: PREFIX,
    usage: "openai-chat:http://HOST:PORT/v1#MODEL (an OpenAI-compatible chat-completions endpoint)",
    name: |reference| Ok(Endpoint::parse_as(reference, PREFIX)?.model),
    connect: |reference, opts| {
        Ok(Box::new(ChatBackend::connect(
            Endpoint::parse_as(reference, PREFIX)?,
            opts.clone(),
        )?))
    },
    chat: true,
};

/// How the answer letter is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Letters {
    /// From the first answer token's top log-probabilities, asking for this many.
    TopLogprobs(usize),
    /// From the generated text (the endpoint returns no log-probabilities).
    Generated,
}

/// How many top log-probabilities to ask for, most first: OpenAI allows 20, vLLM 20 by default
/// (`--max-logprobs`), llama.cpp's servers more.
const TOP_LOGPROBS: [usize; 4] = [100, 20, 10, 5];

/// Tokens a chat template adds around each message (role header, end-of-turn), as counted for
/// fitting prompts: ChatML spends 5, Llama 3 about 5, Gemma 4; an endpoint cannot say.
const MESSAGE_OVERHEAD: usize = 8;

/// Tokens generated when the letter is read from text: room for "(B)", "B." or "Answer: B".
const LETTER_TOKENS: usize = 8;

/// A model behind a chat-completions endpoint.
pub struct ChatBackend {
    server: Server,
    letters: Letters,
}

impl ChatBackend {
    /// Connects as [`Server::connect`] does, then asks the endpoint once how many top
    /// log-probabilities it gives, which decides how letters are read (recorded in the model's
    /// `scoring` and its fingerprint, so cached answers of the other path are never reused).
    pub fn connect(endpoint: Endpoint, opts: Options) -> Result<Self> {
        let mut server = Server::connect(endpoint, opts, PREFIX, "openai-chat")?;
        let probe = [Message {
            role: "user".into(),
            content: "Answer with one letter: A or B?".into(),
        }];
        let (mut letters, mut given) = (Letters::Generated, 0);
        for n in TOP_LOGPROBS {
            let body = json!({
                "model": server.endpoint.model,
                "messages": probe,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": true,
                "top_logprobs": n,
            });
            // A refusal (400: more than the server allows) tries fewer; no field means none.
            let Ok(choice) = server.first_choice("chat/completions", body) else {
                continue;
            };
            given = first_token(&choice)
                .and_then(|t| t["top_logprobs"].as_array())
                .map_or(0, Vec::len);
            if given > 0 {
                letters = Letters::TopLogprobs(n);
            }
            break;
        }
        server.info.scoring = match letters {
            Letters::TopLogprobs(n) => format!(
                "chat: answer letters from the first answer token's top log-probabilities ({n} \
                 asked, {given} given)"
            ),
            Letters::Generated => "chat: answer letters read from the generated answer (the \
                                   endpoint returns no log-probabilities)"
                .into(),
        };
        server.info.sha256 =
            crate::hash::sha256_str(&format!("{}\n{}", server.info.sha256, server.info.scoring));
        Ok(Self { server, letters })
    }

    fn chat(&self, body: Value) -> Result<Value> {
        self.server.first_choice("chat/completions", body)
    }

    /// The request's messages, as `prompt::Format::Messages` wrote them.
    fn messages(&self, context: &str) -> Result<Vec<Message>> {
        parse_messages(context).with_context(|| {
            format!(
                "model `{}`: `openai-chat:` takes prompts as chat messages, and this one is plain \
                 text ({:?}…); it asks for a context-free or neutral prompt, which a chat endpoint \
                 cannot score",
                self.server.info.name,
                context.chars().take(40).collect::<String>()
            )
        })
    }

    /// Each continuation's log-likelihood: the answer letters of one `mcqa` prompt.
    fn letters(&self, r: &ChoiceRequest) -> Result<Vec<LogLikelihood>> {
        let letters = r
            .continuations
            .iter()
            .map(|c| letter_of(c))
            .collect::<Option<Vec<char>>>()
            .with_context(|| {
                format!(
                    "model `{}`: `openai-chat:` scores only lettered choices (`--format mcqa`); \
                     this request's continuations are {:?}",
                    self.server.info.name, r.continuations
                )
            })?;
        let messages = self.messages(&r.context)?;
        let url = format!("{}/chat/completions", self.server.endpoint.base);
        match self.letters {
            Letters::TopLogprobs(n) => {
                let choice = self.chat(json!({
                    "model": self.server.endpoint.model,
                    "messages": messages,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "logprobs": true,
                    "top_logprobs": n,
                }))?;
                let top = first_token(&choice)
                    .and_then(|t| t["top_logprobs"].as_array())
                    .with_context(|| {
                        format!(
                            "{url}: the answer has no top log-probabilities, which it gave before"
                        )
                    })?;
                letter_scores(top, &letters).with_context(|| url.clone())
            }
            Letters::Generated => {
                let choice = self.chat(json!({
                    "model": self.server.endpoint.model,
                    "messages": messages,
                    "max_tokens": LETTER_TOKENS,
                    "temperature": 0.0,
                }))?;
                let text = choice["message"]["content"].as_str().unwrap_or_default();
                let picked = extract_letter(text, &letters);
                Ok(letters
                    .iter()
                    .map(|&l| LogLikelihood {
                        logprob: if Some(l) == picked { 0.0 } else { UNLISTED },
                        is_greedy: Some(l) == picked,
                        n_tokens: 1,
                    })
                    .collect())
            }
        }
    }

    /// One generation, greedy unless the request samples.
    fn generate(&self, r: &GenerateRequest) -> Result<String> {
        let stop: Vec<&String> = r.until.iter().filter(|u| !u.is_empty()).take(4).collect();
        let mut body = json!({
            "model": self.server.endpoint.model,
            "messages": self.messages(&r.context)?,
            "max_tokens": r.max_tokens,
            "temperature": 0.0,
            "stop": stop,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        });
        super::openai::sampled(&mut body, r);
        let choice = self.chat(body)?;
        let text = choice["message"]["content"].as_str().with_context(|| {
            format!(
                "{}/chat/completions: the answer has no message content",
                self.server.endpoint.base
            )
        })?;
        Ok(super::cut_at_stop(text, &r.until).0)
    }
}

/// The first answer token's entry of a chat completion choice's `logprobs.content`.
fn first_token(choice: &Value) -> Option<&Value> {
    choice["logprobs"]["content"].get(0)
}

/// The letter a continuation stands for (`"A"` or `" A"`).
fn letter_of(continuation: &str) -> Option<char> {
    let mut chars = continuation.trim().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some(c),
        _ => None,
    }
}

/// Each letter's log-probability among the first answer token's top entries: the tokens that
/// are the letter, whitespace aside (`"B"`, `" B"`), summed in probability; [`UNLISTED`] when none
/// is listed. Greedy: the letter is the likeliest token.
fn letter_scores(top: &[Value], letters: &[char]) -> Result<Vec<LogLikelihood>> {
    let mut entries = Vec::with_capacity(top.len());
    for e in top {
        let token = e["token"]
            .as_str()
            .context("a top log-probability has no token")?;
        let lp = e["logprob"]
            .as_f64()
            .context("a top log-probability has no logprob")?;
        entries.push((token.trim(), lp));
    }
    let best = entries
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|e| e.0);
    Ok(letters
        .iter()
        .map(|&l| {
            let mut s = String::new();
            s.push(l);
            let lps: Vec<f64> = entries.iter().filter(|e| e.0 == s).map(|e| e.1).collect();
            let logprob = if lps.is_empty() {
                UNLISTED
            } else {
                let m = lps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                m + lps.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
            };
            LogLikelihood {
                logprob: logprob.min(0.0),
                is_greedy: best == Some(s.as_str()),
                n_tokens: 1,
            }
        })
        .collect())
}

/// The answer letter of generated text, with lm-eval's `multi_choice_regex` fallbacks: the text
/// itself when it starts with a letter standing alone (`B`, `B.`, `B)`), else the first `(B)`,
/// else the first letter after a colon (`Answer: B`); `None` when none is one of `letters`.
pub fn extract_letter(text: &str, letters: &[char]) -> Option<char> {
    let ok = |c: char| letters.contains(&c);
    let alone = |s: &str| {
        let mut it = s.chars();
        let c = it.next()?;
        let next = it.next();
        (ok(c) && next.is_none_or(|n| !n.is_alphanumeric())).then_some(c)
    };
    let t = text.trim_start();
    if let Some(c) = alone(t) {
        return Some(c);
    }
    let chars: Vec<char> = text.chars().collect();
    if let Some(c) = chars
        .windows(3)
        .find(|w| w[0] == '(' && ok(w[1]) && w[2] == ')')
        .map(|w| w[1])
    {
        return Some(c);
    }
    text.match_indices(':')
        .find_map(|(i, _)| alone(text[i + 1..].trim_start()))
}

impl Backend for ChatBackend {
    fn info(&self) -> &ModelInfo {
        &self.server.info
    }

    /// A prompt's tokens as the endpoint will see them, estimated: the messages' contents
    /// counted together, plus [`MESSAGE_OVERHEAD`] per message for the template's wrapping.
    fn count_tokens(&self, text: &str) -> Result<usize> {
        match parse_messages(text) {
            Some(messages) => {
                let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
                Ok(self.server.count_tokens(&contents.join("\n"))?
                    + MESSAGE_OVERHEAD * (messages.len() + 1))
            }
            None => self.server.count_tokens(text),
        }
    }

    fn concurrency(&self) -> usize {
        self.server.concurrency()
    }

    fn takes_messages(&self) -> bool {
        true
    }

    fn loglikelihood_batch(
        &mut self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<Vec<LogLikelihood>>> {
        self.server
            .client
            .in_parallel(requests, |r| self.letters(r))
    }

    fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
        self.server
            .client
            .in_parallel(requests, |r| self.generate(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_read_from_the_top_log_probabilities() {
        let top = json!([
            {"token": "B", "logprob": -0.5},
            {"token": " B", "logprob": -2.0},
            {"token": "A", "logprob": -1.5},
            {"token": "The", "logprob": -3.0},
        ]);
        let s = letter_scores(top.as_array().unwrap(), &['A', 'B', 'C']).unwrap();
        let b = (-0.5f64).exp() + (-2.0f64).exp();
        assert!((s[1].logprob - b.ln()).abs() < 1e-12, "{s:?}");
        assert_eq!(s[0].logprob, -1.5);
        assert_eq!(s[2].logprob, UNLISTED, "C is not listed");
        assert_eq!(
            s.iter().map(|l| l.is_greedy).collect::<Vec<_>>(),
            [false, true, false]
        );
        let none = json!([{"token": "The", "logprob": -0.1}]);
        let s = letter_scores(none.as_array().unwrap(), &['A', 'B']).unwrap();
        assert!(super::super::unanswered(
            &s.iter().map(|l| l.logprob).collect::<Vec<_>>()
        ));
    }

    #[test]
    fn letters_are_extracted_from_text_as_lm_eval_falls_back() {
        let l = ['A', 'B', 'C', 'D'];
        assert_eq!(extract_letter("B", &l), Some('B'));
        assert_eq!(extract_letter(" C. Paris", &l), Some('C'));
        assert_eq!(extract_letter("The answer is (D).", &l), Some('D'));
        assert_eq!(extract_letter("Answer: A", &l), Some('A'));
        assert_eq!(
            extract_letter("Because of this", &l),
            None,
            "B of `Because` is no answer"
        );
        assert_eq!(extract_letter("E", &l), None, "not a choice");
        assert_eq!(letter_of(" A"), Some('A'));
        assert_eq!(letter_of(" positive"), None);
    }
}
