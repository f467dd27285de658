//! Backend `openai`: a model behind an OpenAI-compatible server (vLLM, llama.cpp's server, TGI),
//! referenced as `openai:http://HOST:PORT/v1#MODEL`.
//!
//! Log-likelihoods come from `/completions` with `echo` and `logprobs` (the prompt's own token
//! log-probabilities, as lm-eval's `local-completions` reads them); generation from `/completions`
//! with `stop`. Connection errors, time-outs, 429 (honouring `Retry-After`) and 5xx are retried with
//! exponential backoff. The API key is read from an environment variable and only ever sent as a
//! header: it is in no record, message or cache key.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Backend, LogLikelihood, ModelInfo, cut_at_stop, split_trailing_whitespace};

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
        let usage = "write it as openai:http://HOST:PORT/v1#MODEL";
        let rest = reference
            .strip_prefix("openai:")
            .with_context(|| format!("`{reference}`: not an openai: reference; {usage}"))?;
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

/// How to talk to the server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Per-request time limit.
    pub timeout: Duration,
    /// Attempts after the first, on connection errors, time-outs, 429 and 5xx.
    pub retries: u32,
    /// First backoff; doubled on each retry, capped at 60 s.
    pub backoff: Duration,
    /// Environment variable holding the API key (sent as `Authorization: Bearer`).
    pub api_key_env: String,
    /// The model's context length, when the server does not report it.
    pub context_length: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retries: 6,
            backoff: Duration::from_millis(500),
            api_key_env: "OPENAI_API_KEY".into(),
            context_length: None,
        }
    }
}

/// How the server counts tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokenize {
    /// llama.cpp's server: `POST /tokenize {"content"}`.
    LlamaCpp,
    /// vLLM: `POST /tokenize {"model", "prompt"}`.
    Vllm,
    /// llama-cpp-python's server: `POST /v1/extras/tokenize {"input"}`.
    Extras,
}

/// A model served over the OpenAI completions API.
pub struct OpenAiBackend {
    endpoint: Endpoint,
    agent: ureq::Agent,
    key: Option<String>,
    opts: Options,
    tokenize: Tokenize,
    info: ModelInfo,
}

/// Why one attempt failed, and whether another may succeed.
enum Failure {
    Retry(String, Option<Duration>),
    Fatal(String),
}

impl OpenAiBackend {
    /// Connects: checks the server serves `endpoint.model`, finds its context length and how it
    /// counts tokens. Fails with what to do when any of these is missing.
    pub fn connect(endpoint: Endpoint, opts: Options) -> Result<Self> {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .build();
        let key = std::env::var(&opts.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let mut b = Self {
            agent: config.into(),
            key,
            tokenize: Tokenize::LlamaCpp,
            info: ModelInfo {
                name: endpoint.model.clone(),
                reference: format!("openai:{}#{}", endpoint.base, endpoint.model),
                path: endpoint.base.clone(),
                sha256: String::new(),
                architecture: "openai-server".into(),
                parameters: 0,
                non_embedding_parameters: 0,
                quantization: String::new(),
                context_length: 0,
                weights: "server".into(),
            },
            endpoint,
            opts,
        };
        let models = b.call("GET", &format!("{}/models", b.endpoint.base), None)?;
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
        b.info.sha256 = crate::backend::candle::sha256_str(&format!(
            "{}\n{}\n{}",
            b.endpoint.base, b.endpoint.model, entry
        ));
        b.info.context_length = match b.opts.context_length.or_else(|| context_length(&b, &entry)) {
            Some(n) => n,
            None => bail!(
                "{}: the server reports no context length for `{}`; give it with --context-length",
                b.endpoint.base,
                b.endpoint.model
            ),
        };
        b.tokenize = [Tokenize::LlamaCpp, Tokenize::Vllm, Tokenize::Extras]
            .into_iter()
            .find(|&t| {
                b.tokenize = t;
                b.count_tokens("Hello world").is_ok()
            })
            .with_context(|| {
                format!(
                    "{}: the server has no tokenize endpoint (llama.cpp's /tokenize, vLLM's \
                     /tokenize or /v1/extras/tokenize), which fitting prompts to the context needs",
                    b.endpoint.base
                )
            })?;
        Ok(b)
    }

    /// One request with retries; `body` `None` is a GET.
    fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
        let mut last = String::new();
        for attempt in 0..=self.opts.retries {
            let wait = match self.attempt(method, url, body) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(m)) => bail!("{url}: {m}"),
                Err(Failure::Retry(m, after)) => {
                    last = m;
                    after.unwrap_or_else(|| {
                        (self.opts.backoff * 2u32.saturating_pow(attempt))
                            .min(Duration::from_secs(60))
                    })
                }
            };
            if attempt < self.opts.retries {
                std::thread::sleep(wait);
            }
        }
        bail!(
            "{url}: gave up after {} attempts; last: {last}",
            self.opts.retries + 1
        )
    }

    fn attempt(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let auth = self.key.as_ref().map(|k| format!("Bearer {k}"));
        let sent = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (_, b) => {
                let mut r = self
                    .agent
                    .post(url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(b.map(Value::to_string).unwrap_or_default())
            }
        };
        let mut resp = match sent {
            Ok(r) => r,
            // Refused, reset, timed out: the server may come back.
            Err(e) => return Err(Failure::Retry(e.to_string(), None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 600.0)));
        let text = match resp.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Err(Failure::Retry(format!("reading the response: {e}"), None)),
        };
        let snippet: String = text.chars().take(300).collect();
        match status {
            200..=299 => serde_json::from_str(&text)
                .map_err(|e| Failure::Fatal(format!("response is not JSON ({e}): {snippet}"))),
            429 => Err(Failure::Retry(
                format!("HTTP 429 (rate limited): {snippet}"),
                retry_after,
            )),
            500..=599 => Err(Failure::Retry(
                format!("HTTP {status}: {snippet}"),
                retry_after,
            )),
            401 | 403 => Err(Failure::Fatal(format!(
                "HTTP {status}: the server refused the API key (set it in ${}): {snippet}",
                self.opts.api_key_env
            ))),
            _ => Err(Failure::Fatal(format!("HTTP {status}: {snippet}"))),
        }
    }

    fn completions(&self, body: Value) -> Result<Value> {
        let url = format!("{}/completions", self.endpoint.base);
        let v = self.call("POST", &url, Some(&body))?;
        v["choices"]
            .get(0)
            .cloned()
            .with_context(|| format!("{url}: the response has no choices"))
    }
}

/// The context length the server reports: llama.cpp's `/props`, else fields of the model entry
/// (vLLM's `max_model_len`, llama.cpp's `meta.n_ctx_train`).
fn context_length(b: &OpenAiBackend, entry: &Value) -> Option<usize> {
    let from_entry = entry["max_model_len"]
        .as_u64()
        .or_else(|| entry["meta"]["n_ctx"].as_u64())
        .or_else(|| entry["meta"]["n_ctx_train"].as_u64());
    if let Some(n) = from_entry {
        return Some(n as usize);
    }
    let props = b
        .call("GET", &format!("{}/props", b.endpoint.root()), None)
        .ok()?;
    props["default_generation_settings"]["n_ctx"]
        .as_u64()
        .or_else(|| props["n_ctx"].as_u64())
        .map(|n| n as usize)
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
    Ok(out)
}

impl Backend for OpenAiBackend {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        let (url, body) = match self.tokenize {
            Tokenize::LlamaCpp => (
                format!("{}/tokenize", self.endpoint.root()),
                json!({"content": text, "add_special": true}),
            ),
            Tokenize::Vllm => (
                format!("{}/tokenize", self.endpoint.root()),
                json!({"model": self.endpoint.model, "prompt": text}),
            ),
            Tokenize::Extras => (
                format!("{}/extras/tokenize", self.endpoint.base),
                json!({"model": self.endpoint.model, "input": text}),
            ),
        };
        let v = self.call("POST", &url, Some(&body))?;
        v["tokens"]
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("{url}: the response has no `tokens`"))
    }

    fn loglikelihood(
        &mut self,
        context: &str,
        _breaks: &[usize],
        continuations: &[String],
    ) -> Result<Vec<LogLikelihood>> {
        continuations
            .iter()
            .map(|c| {
                let (ctx, cont) = split_trailing_whitespace(context, c);
                let prompt = format!("{ctx}{cont}");
                // One generated token, as lm-eval asks: some servers refuse max_tokens 0.
                let choice = self.completions(json!({
                    "model": self.endpoint.model,
                    "prompt": prompt,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "echo": true,
                    "logprobs": 1,
                }))?;
                continuation_score(&choice, &prompt, ctx)
                    .with_context(|| format!("{}/completions", self.endpoint.base))
            })
            .collect()
    }

    fn generate_until(
        &mut self,
        context: &str,
        _breaks: &[usize],
        until: &[String],
        max_tokens: usize,
    ) -> Result<String> {
        // OpenAI's API takes at most four stop sequences; the rest are cut here.
        let stop: Vec<&String> = until.iter().take(4).collect();
        let choice = self.completions(json!({
            "model": self.endpoint.model,
            "prompt": context,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stop": stop,
        }))?;
        let text = choice["text"].as_str().with_context(|| {
            format!("{}/completions: the choice has no text", self.endpoint.base)
        })?;
        Ok(cut_at_stop(text, until).0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
