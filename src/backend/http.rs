//! What every backend behind an HTTP API shares: its options (time-out, retries, API key,
//! concurrency), one request with retries and backoff (connection errors, time-outs, 429 with
//! `Retry-After`, 5xx), and a batch's requests sent with a bounded number in flight. The API key
//! is read from an environment variable and only ever sent as a header: it is in no record,
//! message or cache key, and any server text shown has it blanked.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;

/// How to talk to the server.
#[derive(Clone)]
pub struct Options {
    /// Per-request time limit.
    pub timeout: Duration,
    /// Attempts after the first, on connection errors, time-outs, 429 and 5xx.
    pub retries: u32,
    /// First backoff; doubled on each retry, capped at 60 s.
    pub backoff: Duration,
    /// Environment variable holding the API key (sent as `Authorization: Bearer`).
    pub api_key_env: String,
    /// The API key itself, for library callers: when given, `api_key_env` is not read.
    pub api_key: Option<String>,
    /// The model's context length, when the server does not report it.
    pub context_length: Option<usize>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// A local `tokenizer.json` to count prompt tokens with, for servers without a tokenize
    /// endpoint.
    pub tokenizer: Option<PathBuf>,
}

// By hand, so that no debug print of a configuration shows the key.
impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key.as_ref().map(|_| "<hidden>"))
            .field("context_length", &self.context_length)
            .field("concurrency", &self.concurrency)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retries: 6,
            backoff: Duration::from_millis(500),
            api_key_env: "OPENAI_API_KEY".into(),
            api_key: None,
            context_length: None,
            concurrency: 4,
            tokenizer: None,
        }
    }
}

/// Why one attempt failed, and whether another may succeed.
enum Failure {
    Retry(String, Option<Duration>),
    Fatal(String),
}

/// An HTTP client with the options' retries, time-out and key.
pub struct Client {
    agent: ureq::Agent,
    key: Option<String>,
    pub opts: Options,
}

impl Client {
    /// A client for `opts`, the key read from `opts.api_key` or its environment variable.
    pub fn new(opts: Options) -> Self {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(opts.timeout))
            .http_status_as_error(false)
            .build();
        let key = opts
            .api_key
            .clone()
            .or_else(|| std::env::var(&opts.api_key_env).ok())
            .filter(|k| !k.is_empty());
        Self {
            agent: config.into(),
            key,
            opts,
        }
    }

    /// One request with retries; `body` `None` is a GET.
    pub fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Value> {
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
        let snippet: String = self.redact(&text).chars().take(300).collect();
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

    /// `f` on every job, at most `concurrency` at a time; answers in job order. The first failure
    /// (in job order) is returned once the requests in flight have finished.
    pub fn in_parallel<J: Sync, T: Send>(
        &self,
        jobs: &[J],
        f: impl Fn(&J) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let workers = self.opts.concurrency.clamp(1, jobs.len().max(1));
        if workers == 1 {
            return jobs.iter().map(&f).collect();
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let done: Mutex<Vec<Option<Result<T>>>> =
            Mutex::new((0..jobs.len()).map(|_| None).collect());
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = jobs.get(i) else { break };
                        let r = f(job);
                        if r.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        done.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                    }
                });
            }
        });
        let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(jobs.len());
        for r in done {
            match r {
                Some(r) => out.push(r?),
                // Not started because an earlier job failed; that failure was returned above.
                None => bail!("internal: a request was neither sent nor failed"),
            }
        }
        Ok(out)
    }

    /// `text` with the API key blanked, for anything a server said that is shown.
    fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) => text.replace(k.as_str(), "<redacted>"),
            None => text.to_string(),
        }
    }
}
