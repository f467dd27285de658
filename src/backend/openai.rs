//! Backend `openai`: a model behind an OpenAI-compatible server (vLLM, llama.cpp's server, TGI),
//! referenced as `openai:http://HOST:PORT/v1#MODEL`.
//!
//! Log-likelihoods come from `/completions` with `echo` and `logprobs` (the prompt's own token
//! log-probabilities, as lm-eval's `local-completions` reads them); generation from `/completions`
//! with `stop`. Connection errors, time-outs, 429 (honouring `Retry-After`) and 5xx are retried with
//! exponential backoff. The API key is read from an environment variable and only ever sent as a
//! header: it is in no record, message or cache key.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::http::Client;
pub use super::http::Options;
use super::{
    Backend, ChoiceRequest, GenerateRequest, LogLikelihood, ModelInfo, cut_at_stop,
    split_trailing_whitespace,
};

/// `openai:` references.
pub const SCHEME: super::Scheme = super::Scheme {
    prefix: "openai:",
    usage: "openai:http://HOST:PORT/v1#MODEL (an OpenAI-compatible completions server)",
    name: |reference| Ok(Endpoint::parse_as(reference, "openai:")?.model),
    connect: |reference, opts| {
        Ok(Box::new(OpenAiBackend::connect(
            Endpoint::parse(reference)?,
            opts.clone(),
        )?))
    },
    chat: false,
};

/// Where the model is served: `openai:BASE#MODEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The API root, e.g. `http://127.0.0.1:8080/v1` (no trailing slash).
    pub base: String,
    /// The model id the server knows it by.
    pub model: String,
}

impl Endpoint {
    /// Parses `openai:http://HOST:PORT/v1#MODEL`.
    pub fn parse(reference: &str) -> Result<Self> {
        Self::parse_as(reference, "openai:")
    }

    /// Parses `PREFIXhttp://HOST:PORT/v1#MODEL` for the scheme `prefix` (`openai-chat:`).
    pub fn parse_as(reference: &str, prefix: &str) -> Result<Self> {
        let usage = format!("write it as {prefix}http://HOST:PORT/v1#MODEL");
        let rest = reference.strip_prefix(prefix).with_context(|| {
            format!(
                "`{reference}`: not an {} reference; {usage}",
                prefix.trim_end_matches(':')
            )
        })?;
        let (base, model) = rest
            .split_once('#')
            .with_context(|| format!("`{reference}`: no model id after `#`; {usage}"))?;
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("`{reference}`: the server address must start with http:// or https://; {usage}");
        }
        if model.trim().is_empty() {
            bail!("`{reference}`: empty model id after `#`; {usage}");
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            model: model.to_string(),
        })
    }

    /// The server root without the API version path (`/v1`), where llama.cpp and vLLM put
    /// `/tokenize` and `/props`.
    fn root(&self) -> &str {
        self.base.strip_suffix("/v1").unwrap_or(&self.base)
    }
}

/// How the server counts tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokenize {
    /// llama.cpp's server: `POST /tokenize {"content"}`.
    LlamaCpp,
    /// vLLM: `POST /tokenize {"model", "prompt"}`.
    Vllm,
    /// llama-cpp-python's server: `POST /extras/tokenize {"input"}`.
    Extras,
    /// A tokenizer the user named (`--tokenizer`).
    Local,
}

/// A model served over the OpenAI completions API.
pub struct OpenAiBackend {
    server: Server,
    /// Whether the server's echoed log-probabilities were found aligned with their tokens.
    aligned: bool,
}

impl OpenAiBackend {
    /// Connects: checks the server serves `endpoint.model`, finds its context length and how it
    /// counts tokens. Fails with what to do when any of these is missing.
    pub fn connect(endpoint: Endpoint, opts: Options) -> Result<Self> {
        Ok(Self {
            server: Server::connect(endpoint, opts, "openai:", "openai-server")?,
            aligned: false,
        })
    }

    fn completions(&self, body: Value) -> Result<Value> {
        self.server.first_choice("completions", body)
    }
}

/// A model behind an OpenAI-compatible server, whatever endpoint scores it: where it is, the
/// client that reaches it, how it counts tokens, and what the run records about it.
pub(super) struct Server {
    pub(super) endpoint: Endpoint,
    pub(super) client: Client,
    tokenize: Tokenize,
    local: Option<tokenizers::Tokenizer>,
    pub(super) info: ModelInfo,
}

impl Server {
    /// Connects: checks the server serves `endpoint.model`, finds its context length and how it
    /// counts tokens. Fails with what to do when any of these is missing. `prefix` is the
    /// reference's scheme, `architecture` what the run records as the model's.
    pub(super) fn connect(
        endpoint: Endpoint,
        opts: Options,
        prefix: &str,
        architecture: &str,
    ) -> Result<Self> {
        let mut b = Self {
            client: Client::new(opts),
            tokenize: Tokenize::LlamaCpp,
            local: None,
            info: ModelInfo {
                name: endpoint.model.clone(),
                reference: format!("{prefix}{}#{}", endpoint.base, endpoint.model),
                path: endpoint.base.clone(),
                sha256: String::new(),
                architecture: architecture.into(),
                family: String::new(),
                parameters: 0,
                non_embedding_parameters: 0,
                quantization: String::new(),
                context_length: 0,
                weights: "server".into(),
                scoring: String::new(),
            },
            endpoint,
        };
        let models = b
            .client
            .call("GET", &format!("{}/models", b.endpoint.base), None)?;
        let entry = models["data"]
            .as_array()
            .and_then(|d| d.iter().find(|m| m["id"] == b.endpoint.model.as_str()))
            .cloned()
            .with_context(|| {
                let ids: Vec<String> = models["data"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .filter_map(|m| m["id"].as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                format!(
                    "{}: the server does not serve model `{}` (it serves: {})",
                    b.endpoint.base,
                    b.endpoint.model,
                    if ids.is_empty() {
                        "none listed".into()
                    } else {
                        ids.join(", ")
                    }
                )
            })?;
        // The fingerprint the request cache keys on: the address, the id and everything the
        // server says about the model (a different file behind the same id changes it).
        b.info.sha256 = crate::hash::sha256_str(&format!(
            "{}\n{}\n{}",
            b.endpoint.base, b.endpoint.model, entry
        ));
        b.info.context_length = match b
            .client
            .opts
            .context_length
            .or_else(|| context_length(&b, &entry))
        {
            Some(n) => n,
            None => bail!(
                "{}: the server reports no context length for `{}`; give it with --context-length",
                b.endpoint.base,
                b.endpoint.model
            ),
        };
        if let Some(path) = &b.client.opts.tokenizer {
            let t = tokenizers::Tokenizer::from_file(path).map_err(|e| {
                anyhow::anyhow!("--tokenizer {}: not a tokenizer.json ({e})", path.display())
            })?;
            b.local = Some(t);
            b.tokenize = Tokenize::Local;
            return Ok(b);
        }
        let found = [Tokenize::LlamaCpp, Tokenize::Vllm, Tokenize::Extras]
            .into_iter()
            .find(|&t| {
                b.tokenize = t;
                b.count_tokens("Hello world").is_ok()
            });
        b.tokenize = found.with_context(|| {
            format!(
                "{}: the server has no tokenize endpoint (llama.cpp's /tokenize, vLLM's \
                 /tokenize or llama-cpp-python's /extras/tokenize), which fitting prompts to the context needs; \
                 name the model's tokenizer.json with --tokenizer",
                b.endpoint.base
            )
        })?;
        Ok(b)
    }

    /// The first choice of the answer to `body` POSTed to the API's `path` (`completions`,
    /// `chat/completions`).
    pub(super) fn first_choice(&self, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/{path}", self.endpoint.base);
        let v = self.client.call("POST", &url, Some(&body))?;
        v["choices"]
            .get(0)
            .cloned()
            .with_context(|| format!("{url}: the response has no choices"))
    }

    /// Requests kept in flight at once (`--concurrency`).
    pub(super) fn concurrency(&self) -> usize {
        self.client.opts.concurrency.max(1)
    }

    /// Prompt tokens of `text` as the server (or `--tokenizer`) counts them.
    pub(super) fn count_tokens(&self, text: &str) -> Result<usize> {
        if let Some(t) = &self.local {
            let enc = t
                .encode(text, true)
                .map_err(|e| anyhow::anyhow!("--tokenizer: {e}"))?;
            return Ok(enc.len());
        }
        let (url, body) = match self.tokenize {
            Tokenize::Local => bail!("internal: no local tokenizer loaded"),
            Tokenize::LlamaCpp => (
                format!("{}/tokenize", self.endpoint.root()),
                json!({"content": text, "add_special": true}),
            ),
            Tokenize::Vllm => (
                format!("{}/tokenize", self.endpoint.root()),
                json!({"model": self.endpoint.model, "prompt": text}),
            ),
            Tokenize::Extras => (
                format!("{}/extras/tokenize", self.endpoint.root()),
                json!({"model": self.endpoint.model, "input": text}),
            ),
        };
        let v = self.client.call("POST", &url, Some(&body))?;
        v["tokens"]
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("{url}: the response has no `tokens`"))
    }
}

/// A generation request's sampling settings in `body`: on the server, its own generator, seeded
/// per request (vLLM and llama.cpp honour `seed`), so answers are repeatable on the same server,
/// not equal to candle's. Greedy requests keep `temperature: 0`.
pub(super) fn sampled(body: &mut Value, r: &GenerateRequest) {
    if let Some(s) = r.sampling {
        body["temperature"] = json!(s.temperature);
        body["top_p"] = json!(s.top_p);
        body["seed"] = json!(s.seed);
    }
}

/// The context length the server reports: llama.cpp's `/props`, else fields of the model entry
/// (vLLM's `max_model_len`, llama.cpp's `meta.n_ctx_train`).
fn context_length(b: &Server, entry: &Value) -> Option<usize> {
    let from_entry = entry["max_model_len"]
        .as_u64()
        .or_else(|| entry["meta"]["n_ctx"].as_u64())
        .or_else(|| entry["meta"]["n_ctx_train"].as_u64());
    if let Some(n) = from_entry {
        return Some(n as usize);
    }
    let props = b
        .client
        .call("GET", &format!("{}/props", b.endpoint.root()), None)
        .ok()?;
    props["default_generation_settings"]["n_ctx"]
        .as_u64()
        .or_else(|| props["n_ctx"].as_u64())
        .map(|n| n as usize)
}

/// Whether the top log-probabilities at each prompt position rank the *next* token among their
/// best `n` more often than the token at that position: the distributions are one step ahead.
fn shifted_by_one(logprobs: &Value, n: usize) -> bool {
    let tokens: Vec<&str> = logprobs["tokens"]
        .as_array()
        .map(|t| t.iter().map(|t| t.as_str().unwrap_or("")).collect())
        .unwrap_or_default();
    let tops = logprobs["top_logprobs"].as_array();
    // A server adds the scored token to the top entries even when it is not among them; only a
    // token with fewer than `n` better ones is really there.
    let ranks_high = |i: usize, token: &str| {
        let top = tops.and_then(|t| t.get(i)).and_then(Value::as_object);
        top.and_then(|m| {
            let v = m.get(token)?.as_f64()?;
            Some(
                m.values()
                    .filter_map(Value::as_f64)
                    .filter(|&x| x > v)
                    .count()
                    < n,
            )
        })
        .unwrap_or(false)
    };
    let here = (0..tokens.len())
        .filter(|&i| ranks_high(i, tokens[i]))
        .count();
    let next = (0..tokens.len().saturating_sub(1))
        .filter(|&i| ranks_high(i, tokens[i + 1]))
        .count();
    next > here && next >= 3
}

/// Offsets in `text_offset` count bytes on some servers and characters on others; the unit is the
/// one in which consecutive offsets step by each token's length.
fn offsets_in_bytes(tokens: &[&str], offsets: &[usize]) -> bool {
    tokens
        .iter()
        .zip(offsets.windows(2))
        .all(|(t, w)| w[1] - w[0] == t.len())
}

/// The summed log-probability of the prompt's tokens from `start` (in the server's offset unit)
/// to the end of the prompt, and whether each was the top token, from an echoed completion.
fn continuation_score(choice: &Value, prompt: &str, context_len: &str) -> Result<LogLikelihood> {
    let lp = &choice["logprobs"];
    let missing = || {
        anyhow::anyhow!(
            "the server returned no prompt log-probabilities (`echo` with `logprobs`); scoring \
             needs them: vLLM and llama-cpp-python's server give them, llama.cpp's own server \
             does not"
        )
    };
    let tokens: Vec<&str> = lp["tokens"]
        .as_array()
        .ok_or_else(missing)?
        .iter()
        .map(|t| t.as_str().unwrap_or(""))
        .collect();
    let offsets: Vec<usize> = lp["text_offset"]
        .as_array()
        .ok_or_else(missing)?
        .iter()
        .map(|o| o.as_u64().unwrap_or(0) as usize)
        .collect();
    let logprobs = lp["token_logprobs"].as_array().ok_or_else(missing)?;
    if tokens.len() != offsets.len() || tokens.len() != logprobs.len() {
        bail!("the server's logprobs arrays differ in length");
    }
    let bytes = offsets_in_bytes(&tokens, &offsets);
    let unit = |s: &str| if bytes { s.len() } else { s.chars().count() };
    let (ctx_end, prompt_end) = (unit(context_len), unit(prompt));
    let mut out = LogLikelihood {
        logprob: 0.0,
        is_greedy: true,
        n_tokens: 0,
    };
    for (i, (&tok, &off)) in tokens.iter().zip(&offsets).enumerate() {
        // A token ending inside the context belongs to it; one that starts at the prompt's end is
        // the generated one.
        if off + unit(tok) <= ctx_end || off >= prompt_end {
            continue;
        }
        let l = logprobs[i].as_f64().ok_or_else(missing)?;
        out.logprob += l;
        out.n_tokens += 1;
        let top = lp["top_logprobs"].get(i).and_then(Value::as_object);
        let best = top.and_then(|m| {
            m.iter()
                .filter_map(|(t, v)| v.as_f64().map(|v| (t, v)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
        });
        out.is_greedy &= best.is_some_and(|(t, v)| t == tok || v <= l);
    }
    if out.n_tokens == 0 {
        bail!("the continuation got no token of its own in the server's tokenization");
    }
    // The echo must reach the prompt's end: a server that echoes one token short would score a
    // shorter continuation as if it were the whole.
    let covered = tokens
        .iter()
        .zip(&offsets)
        .filter(|&(_, &off)| off < prompt_end)
        .map(|(t, off)| off + unit(t))
        .max()
        .unwrap_or(0);
    if covered < prompt_end {
        bail!(
            "the server echoed {covered} of the prompt's {prompt_end} {}; scoring needs the whole \
             prompt echoed with its log-probabilities",
            if bytes { "bytes" } else { "characters" }
        );
    }
    Ok(out)
}

impl Backend for OpenAiBackend {
    fn info(&self) -> &ModelInfo {
        &self.server.info
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.server.count_tokens(text)
    }

    fn concurrency(&self) -> usize {
        self.server.concurrency()
    }

    fn loglikelihood_batch(
        &mut self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<Vec<LogLikelihood>>> {
        if !self.aligned {
            self.check_alignment()?;
            self.aligned = true;
        }
        // One completion per continuation: the server sees them all at once.
        let jobs: Vec<(&str, &String)> = requests
            .iter()
            .flat_map(|r| r.continuations.iter().map(|c| (r.context.as_str(), c)))
            .collect();
        let mut scores = self
            .server
            .client
            .in_parallel(&jobs, |&(context, c)| self.score(context, c))?
            .into_iter();
        Ok(requests
            .iter()
            .map(|r| scores.by_ref().take(r.continuations.len()).collect())
            .collect())
    }

    fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
        self.server
            .client
            .in_parallel(requests, |r| self.generate(r))
    }
}

/// A prompt whose every next token any language model predicts well: counting.
pub const ALIGNMENT_PROBE: &str = "One, two, three, four, five, six, seven, eight, nine, ten";

impl OpenAiBackend {
    /// Refuses a server whose echoed log-probabilities are shifted by one token, which would make
    /// every score wrong: llama-cpp-python scores each prompt token with the distribution *after*
    /// it when the model adds no BOS token (abetlen/llama-cpp-python#1983).
    fn check_alignment(&self) -> Result<()> {
        let choice = self.completions(json!({
            "model": self.server.endpoint.model,
            "prompt": ALIGNMENT_PROBE,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": true,
            "logprobs": 5,
        }))?;
        // The score call names a missing logprobs field the way scoring would.
        continuation_score(&choice, ALIGNMENT_PROBE, "One,")
            .with_context(|| format!("{}/completions", self.server.endpoint.base))?;
        if shifted_by_one(&choice["logprobs"], 5) {
            bail!(
                "{}: the server's echoed log-probabilities are shifted by one token: each prompt \
                 token is scored with the distribution that predicts the token after it \
                 (llama-cpp-python does this for models that add no BOS token, \
                 abetlen/llama-cpp-python#1983), so every score would be wrong. Serve the model \
                 with a server that scores prompts correctly (vLLM), or use it for generation \
                 tasks only",
                self.server.endpoint.base
            );
        }
        Ok(())
    }

    /// One continuation's log-likelihood after `context`.
    fn score(&self, context: &str, continuation: &str) -> Result<LogLikelihood> {
        let (ctx, cont) = split_trailing_whitespace(context, continuation);
        let prompt = format!("{ctx}{cont}");
        // One generated token, as lm-eval asks: some servers refuse max_tokens 0.
        let choice = self.completions(json!({
            "model": self.server.endpoint.model,
            "prompt": prompt,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": true,
            "logprobs": 1,
        }))?;
        continuation_score(&choice, &prompt, ctx)
            .with_context(|| format!("{}/completions", self.server.endpoint.base))
    }

    /// Greedy generation for one request.
    fn generate(&self, r: &GenerateRequest) -> Result<String> {
        // OpenAI's API takes at most four stop sequences; the rest are cut here.
        let stop: Vec<&String> = r.until.iter().take(4).collect();
        let mut body = json!({
            "model": self.server.endpoint.model,
            "prompt": r.context,
            "max_tokens": r.max_tokens,
            "temperature": 0.0,
            "stop": stop,
            // Greedy means no penalty: llama-cpp-python's server applies repeat_penalty 1.1
            // unless told otherwise (vLLM ignores the field; its own default is 1.0).
            "repeat_penalty": 1.0,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
        });
        sampled(&mut body, r);
        let choice = self.completions(body)?;
        let text = choice["text"].as_str().with_context(|| {
            format!(
                "{}/completions: the choice has no text",
                self.server.endpoint.base
            )
        })?;
        Ok(cut_at_stop(text, &r.until).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_that_stops_short_of_the_prompt_is_refused() {
        // "ab cd" after "ab": the echo holds "a", "b", " c" and no "d".
        let choice = json!({"logprobs": {
            "tokens": ["a", "b", " c"],
            "text_offset": [0, 1, 2],
            "token_logprobs": [null, -1.0, -2.0],
            "top_logprobs": [null, {"b": -1.0}, {" c": -2.0}],
        }});
        let e = continuation_score(&choice, "ab cd", "ab")
            .unwrap_err()
            .to_string();
        assert!(e.contains("echoed 4 of the prompt's 5"), "{e}");
        let whole = json!({"logprobs": {
            "tokens": ["a", "b", " c", "d", "!"],
            "text_offset": [0, 1, 2, 4, 5],
            "token_logprobs": [null, -1.0, -2.0, -0.5, -3.0],
            "top_logprobs": [null, {"b": -1.0}, {" c": -2.0}, {"d": -0.5}, {"!": -3.0}],
        }});
        let ll = continuation_score(&whole, "ab cd", "ab").unwrap();
        assert_eq!((ll.logprob, ll.n_tokens), (-2.5, 2));
    }

    #[test]
    fn references_parse_and_bad_ones_say_how_to_write_them() {
        let e = Endpoint::parse("openai:http://h:8/v1/#org/model#2").unwrap();
        assert_eq!(
            (e.base.as_str(), e.model.as_str()),
            ("http://h:8/v1", "org/model#2")
        );
        for bad in [
            "openai:h:8/v1#m",
            "openai:http://h:8/v1",
            "openai:http://h/v1#",
            "x",
        ] {
            let m = Endpoint::parse(bad).unwrap_err().to_string();
            assert!(m.contains("openai:http://HOST:PORT/v1#MODEL"), "{m}");
        }
    }

    #[test]
    fn distributions_one_step_ahead_are_recognised() {
        let tokens = ["One", ",", " two", ",", " three", ","];
        // Aligned: position i's top entries predict token i.
        let aligned: Vec<Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match i {
                0 => Value::Null,
                _ => json!({ *t: -0.1, " of": -3.0 }),
            })
            .collect();
        // Shifted: position i's top entries predict token i + 1, plus token i's own entry.
        let shifted: Vec<Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| match (i, tokens.get(i + 1)) {
                (0, _) => Value::Null,
                (_, Some(next)) => json!({ *next: -0.1, " of": -2.0, *t: -9.0 }),
                (_, None) => json!({ ".": -0.1, " of": -2.0, *t: -9.0 }),
            })
            .collect();
        let lp = |tops: Vec<Value>| json!({"tokens": tokens, "top_logprobs": tops});
        assert!(!shifted_by_one(&lp(aligned), 2));
        assert!(shifted_by_one(&lp(shifted), 2));
    }

    #[test]
    fn offsets_in_characters_are_recognised() {
        // "é" is 2 bytes, 1 character: a server counting characters.
        let choice = json!({"logprobs": {
            "tokens": ["é", "t", "é", "!"],
            "text_offset": [0, 1, 2, 3],
            "token_logprobs": [null, -1.0, -2.0, -4.0],
            "top_logprobs": [null, {"t": -1.0}, {"é": -2.0}, {"!": -4.0}],
        }});
        let ll = continuation_score(&choice, "été", "ét").unwrap();
        assert_eq!((ll.logprob, ll.n_tokens, ll.is_greedy), (-2.0, 1, true));
    }
}
