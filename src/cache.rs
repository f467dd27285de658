//! The persistent request cache: every answer a backend gives, kept in SQLite under a key that
//! names the model exactly (weights' sha256, how they are held, the backend's numerics revision)
//! and the exact request, so a finished run re-run costs near nothing and a cache never answers
//! for another model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::{Backend, ChoiceRequest, GenerateRequest, LogLikelihood, ModelInfo};

/// The cache file used when none is named: `$XDG_CACHE_HOME/icl-eval/requests.sqlite`, else
/// `~/.cache/icl-eval/requests.sqlite`.
pub fn default_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("icl-eval").join("requests.sqlite")
}

/// An open request cache.
pub struct RequestCache {
    conn: Connection,
    path: PathBuf,
}

/// Entries per model, for `icl-eval cache stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntries {
    pub model: String,
    pub entries: u64,
    pub bytes: u64,
}

impl RequestCache {
    /// Opens (creating if needed) the cache at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("--cache: cannot create {}", dir.display()))?;
        }
        let shown = path.display();
        let conn =
            Connection::open(path).with_context(|| format!("--cache: cannot open {shown}"))?;
        // Several runs (shards) may share one cache: wait for each other's writes.
        conn.busy_timeout(std::time::Duration::from_secs(60))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .with_context(|| {
                format!(
                    "--cache: {shown} is not a usable SQLite file{}",
                    corrupt(path)
                )
            })?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS requests (
                 key BLOB PRIMARY KEY,
                 model TEXT NOT NULL,
                 value TEXT NOT NULL
             );",
        )
        .with_context(|| {
            format!(
                "--cache: {shown} is not an icl-eval request cache{}",
                corrupt(path)
            )
        })?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The file behind the cache.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get(&self, key: &[u8; 32]) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value FROM requests WHERE key = ?1",
                params![&key[..]],
                |r| r.get(0),
            )
            .optional()
            .with_context(|| {
                format!(
                    "cannot read the request cache {}{}",
                    self.path.display(),
                    corrupt(&self.path)
                )
            })
    }

    fn put(&self, key: &[u8; 32], model: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO requests (key, model, value) VALUES (?1, ?2, ?3)",
                params![&key[..], model, value],
            )
            .with_context(|| {
                format!(
                    "cannot write the request cache {}{}",
                    self.path.display(),
                    corrupt(&self.path)
                )
            })?;
        Ok(())
    }

    /// Entries and stored bytes per model name.
    pub fn stats(&self) -> Result<Vec<ModelEntries>> {
        let mut st = self.conn.prepare(
            "SELECT model, COUNT(*), SUM(LENGTH(value) + LENGTH(key)) FROM requests \
             GROUP BY model ORDER BY model",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ModelEntries {
                model: r.get(0)?,
                entries: r.get::<_, i64>(1)? as u64,
                bytes: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Deletes the entries of one model name, or all; returns how many went.
    pub fn clear(&self, model: Option<&str>) -> Result<usize> {
        let n = match model {
            Some(m) => self
                .conn
                .execute("DELETE FROM requests WHERE model = ?1", params![m])?,
            None => self.conn.execute("DELETE FROM requests", [])?,
        };
        self.conn.execute_batch("VACUUM;")?;
        Ok(n)
    }
}

/// What to do about a cache file that cannot be read: it only saves work, so clearing it loses
/// nothing a rerun cannot compute again.
fn corrupt(path: &Path) -> String {
    format!(
        " (the file may be damaged); clear it with `icl-eval cache clear --cache {}` (it only \
         saves recomputation), or run with --no-cache",
        path.display()
    )
}

/// Deletes a cache file that cannot be opened, with SQLite's side files; returns whether there
/// was one.
pub fn remove_file(path: &Path) -> Result<bool> {
    let mut any = false;
    for suffix in ["", "-wal", "-shm"] {
        let p = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot delete {}", p.display()))?;
            any = true;
        }
    }
    Ok(any)
}

/// What identifies a model's answers: its weights, how they are held, and the backend's
/// numerics revision (bumped whenever a change to the forward pass changes any number).
pub fn fingerprint(info: &ModelInfo, numerics: u32) -> String {
    format!(
        "{}|{}|{}|{}",
        info.sha256, info.weights, info.architecture, numerics
    )
}

/// sha256 of a request's parts, each length-prefixed (so no two part lists collide): a small
/// key whatever the prompt's size.
pub fn request_key(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// How many requests a model answered from the cache and how many it computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Requests the backend computed.
    pub computed: u64,
    /// Requests answered from the persistent cache.
    pub cached: u64,
}

/// A backend whose answers go through the request cache (or only counted, without one).
pub struct Cached<'a> {
    inner: &'a mut dyn Backend,
    cache: Option<&'a RequestCache>,
    fingerprint: String,
    /// Requests computed and requests answered from the cache so far.
    pub counts: RequestCounts,
}

/// A stored answer with its checksum (16 hex digits of the sha256 of key and answer), so a value
/// altered on disk (a flipped bit, a hand edit) is recomputed rather than believed.
fn seal(key: &[u8; 32], json: &str) -> String {
    format!("{} {json}", checksum(key, json))
}

/// The answer of a sealed value whose checksum holds; `None` for a damaged one or one stored
/// before answers were sealed (both are computed again and stored sealed).
fn unseal<'a>(key: &[u8; 32], text: &'a str) -> Option<&'a str> {
    let (sum, json) = text.split_once(' ')?;
    (sum.len() == 16 && sum == checksum(key, json)).then_some(json)
}

fn checksum(key: &[u8; 32], json: &str) -> String {
    crate::hash::short_hash(&format!("{}\n{json}", hex::encode(key)))
}

impl<'a> Cached<'a> {
    /// Wraps `inner`; `cache: None` only counts requests.
    pub fn new(inner: &'a mut dyn Backend, cache: Option<&'a RequestCache>) -> Self {
        let fingerprint = fingerprint(inner.info(), inner.numerics());
        Self {
            inner,
            cache,
            fingerprint,
            counts: RequestCounts::default(),
        }
    }

    fn key(&self, kind: &str, parts: &[&str], numbers: &[usize]) -> [u8; 32] {
        let numbers = format!("{numbers:?}");
        let mut all = vec![self.fingerprint.as_str(), kind, numbers.as_str()];
        all.extend_from_slice(parts);
        request_key(&all)
    }

    fn choice_key(&self, r: &ChoiceRequest) -> [u8; 32] {
        let mut parts = vec![r.context.as_str()];
        parts.extend(r.continuations.iter().map(String::as_str));
        // Where the prompt is cut into cached chunks can change the last bits, so it is part of
        // the request.
        self.key("loglikelihood", &parts, &r.breaks)
    }

    fn generate_key(&self, r: &GenerateRequest) -> [u8; 32] {
        let mut parts = vec![r.context.as_str()];
        parts.extend(r.until.iter().map(String::as_str));
        let mut numbers = r.breaks.clone();
        numbers.push(r.max_tokens);
        numbers.push(r.until.len());
        match r.sampling {
            None => self.key("generate_until", &parts, &numbers),
            Some(s) => {
                let settings = format!("{} {} {}", s.temperature, s.top_p, s.seed);
                parts.push(&settings);
                self.key("generate_sampled", &parts, &numbers)
            }
        }
    }

    /// The stored answers where the cache has them; the others computed by `compute` in one
    /// batch, in request order, and stored.
    fn through<R: Clone, T: Serialize + for<'de> Deserialize<'de>>(
        &mut self,
        requests: &[R],
        key: impl Fn(&Self, &R) -> [u8; 32],
        compute: impl FnOnce(&mut dyn Backend, &[R]) -> Result<Vec<T>>,
    ) -> Result<Vec<T>> {
        let keys: Vec<[u8; 32]> = requests.iter().map(|r| key(self, r)).collect();
        let mut answers: Vec<Option<T>> = Vec::with_capacity(requests.len());
        for k in &keys {
            let stored = match self.cache {
                Some(cache) => cache
                    .get(k)?
                    .and_then(|text| unseal(k, &text).and_then(|j| serde_json::from_str(j).ok())),
                None => None,
            };
            self.counts.cached += u64::from(stored.is_some());
            answers.push(stored);
        }
        let missing: Vec<usize> = (0..requests.len())
            .filter(|&i| answers[i].is_none())
            .collect();
        if !missing.is_empty() {
            let todo: Vec<R> = missing.iter().map(|&i| requests[i].clone()).collect();
            let computed = compute(&mut *self.inner, &todo)?;
            if computed.len() != todo.len() {
                bail!(
                    "model `{}`: the backend returned {} answers to a batch of {} requests",
                    self.inner.info().name,
                    computed.len(),
                    todo.len()
                );
            }
            self.counts.computed += computed.len() as u64;
            for (&i, v) in missing.iter().zip(computed) {
                if let Some(cache) = self.cache {
                    cache.put(
                        &keys[i],
                        &self.inner.info().name,
                        &seal(&keys[i], &serde_json::to_string(&v)?),
                    )?;
                }
                answers[i] = Some(v);
            }
        }
        answers
            .into_iter()
            .map(|a| a.context("the backend returned fewer answers than requests"))
            .collect()
    }
}

impl Backend for Cached<'_> {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }

    fn count_tokens(&self, text: &str) -> Result<usize> {
        self.inner.count_tokens(text)
    }

    fn token_counts(&self) -> (u64, u64) {
        self.inner.token_counts()
    }

    fn numerics(&self) -> u32 {
        self.inner.numerics()
    }

    fn chat_template(&self) -> Option<crate::chat::ChatTemplate> {
        self.inner.chat_template()
    }

    fn takes_messages(&self) -> bool {
        self.inner.takes_messages()
    }

    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }

    fn loglikelihood_batch(
        &mut self,
        requests: &[ChoiceRequest],
    ) -> Result<Vec<Vec<LogLikelihood>>> {
        let answers = self.through(requests, Self::choice_key, |b, todo| {
            // Checked before anything is stored, so a wrong answer never outlives this run.
            let computed = b.loglikelihood_batch(todo)?;
            crate::backend::check_answers(&b.info().name, todo, &computed)?;
            Ok(computed)
        })?;
        // A stored answer of another length (a damaged cache) is caught here too.
        crate::backend::check_answers(&self.inner.info().name, requests, &answers)?;
        Ok(answers)
    }

    fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
        self.through(requests, Self::generate_key, |b, todo| {
            b.generate_batch(todo)
        })
    }

    // Whole documents are scored once per run (every K asks the same), so they pass uncached.
    fn loglikelihood_rolling(&mut self, text: &str) -> Result<f64> {
        self.inner.loglikelihood_rolling(text)
    }
}

#[cfg(test)]
mod seal_tests {
    use super::*;

    #[test]
    fn altered_or_unsealed_answers_are_not_believed() {
        let key = [7u8; 32];
        let sealed = seal(&key, "[{\"logprob\":-1.5}]");
        assert_eq!(unseal(&key, &sealed), Some("[{\"logprob\":-1.5}]"));
        let altered = sealed.replace("-1.5", "-0.5");
        assert_eq!(unseal(&key, &altered), None);
        assert_eq!(
            unseal(&[8u8; 32], &sealed),
            None,
            "another request's answer"
        );
        assert_eq!(
            unseal(&key, "[{\"logprob\":-1.5}]"),
            None,
            "stored unsealed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose answers depend on its name, counting the calls that reach it.
    struct Fake {
        info: ModelInfo,
        calls: usize,
        /// Log-likelihoods returned beyond one per continuation (a faulty server).
        extra: usize,
    }

    impl Fake {
        fn new(name: &str, sha: &str) -> Self {
            let mut info = ModelInfo::for_tests(name, 1);
            info.sha256 = sha.into();
            Self {
                info,
                calls: 0,
                extra: 0,
            }
        }
    }

    impl Backend for Fake {
        fn info(&self) -> &ModelInfo {
            &self.info
        }
        fn count_tokens(&self, text: &str) -> Result<usize> {
            Ok(text.len())
        }
        fn loglikelihood_batch(
            &mut self,
            requests: &[ChoiceRequest],
        ) -> Result<Vec<Vec<LogLikelihood>>> {
            let salt = self.info.sha256.len() as f64 + 0.1;
            let mut out = Vec::new();
            for r in requests {
                self.calls += 1;
                out.push(
                    r.continuations
                        .iter()
                        .chain(r.continuations.iter().take(self.extra))
                        .map(|c| LogLikelihood {
                            logprob: -((r.context.len() + c.len()) as f64) / salt,
                            is_greedy: c.len() % 2 == 0,
                            n_tokens: c.len(),
                        })
                        .collect(),
                );
            }
            Ok(out)
        }
        fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Result<Vec<String>> {
            self.calls += requests.len();
            Ok(requests
                .iter()
                .map(|r| format!("{}:{}", self.info.sha256, r.context.len()))
                .collect())
        }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("icl-eval-cache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d.join("requests.sqlite")
    }

    #[test]
    fn a_second_identical_request_never_reaches_the_backend_and_gets_the_same_answer() {
        let cache = RequestCache::open(&tmp("hit")).unwrap();
        let conts = vec![" yes".to_string(), " no!".to_string()];
        let mut fake = Fake::new("a", "aaaa");
        let first = {
            let mut c = Cached::new(&mut fake, Some(&cache));
            let ll = c.loglikelihood("ctx", &[1], &conts).unwrap();
            let g = c.generate_until("ctx", &[], &["\n".into()], 5).unwrap();
            assert_eq!(
                c.counts,
                RequestCounts {
                    computed: 2,
                    cached: 0
                }
            );
            (ll, g)
        };
        let mut c = Cached::new(&mut fake, Some(&cache));
        assert_eq!(c.loglikelihood("ctx", &[1], &conts).unwrap(), first.0);
        assert_eq!(
            c.generate_until("ctx", &[], &["\n".into()], 5).unwrap(),
            first.1
        );
        assert_eq!(
            c.counts,
            RequestCounts {
                computed: 0,
                cached: 2
            }
        );
        // Any part of the request changed is another request.
        c.loglikelihood("ctx", &[2], &conts).unwrap();
        c.loglikelihood("ctx ", &[1], &conts).unwrap();
        c.generate_until("ctx", &[], &["\n".into()], 6).unwrap();
        assert_eq!(c.counts.computed, 3);
        drop(c);
        assert_eq!(fake.calls, 5);
    }

    #[test]
    fn two_models_never_share_entries() {
        let cache = RequestCache::open(&tmp("models")).unwrap();
        let conts = vec![" yes".to_string()];
        let mut a = Fake::new("same-name", "aaaa");
        let mut b = Fake::new("same-name", "bbbbbb");
        let la = Cached::new(&mut a, Some(&cache))
            .loglikelihood("ctx", &[], &conts)
            .unwrap();
        let mut cb = Cached::new(&mut b, Some(&cache));
        let lb = cb.loglikelihood("ctx", &[], &conts).unwrap();
        assert_eq!(
            cb.counts.computed, 1,
            "b's weights differ: a's answer is not b's"
        );
        assert_ne!(la, lb);
        // The same weights held differently are another model too.
        let mut q = Fake::new("same-name", "aaaa");
        q.info.weights = "quantized".into();
        let mut cq = Cached::new(&mut q, Some(&cache));
        cq.loglikelihood("ctx", &[], &conts).unwrap();
        assert_eq!(cq.counts.computed, 1);
        let stats = cache.stats().unwrap();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].entries, 3);
        assert_eq!(cache.clear(Some("other")).unwrap(), 0);
        assert_eq!(cache.clear(None).unwrap(), 3);
    }

    #[test]
    fn without_a_cache_requests_are_only_counted() {
        let mut fake = Fake::new("a", "aaaa");
        let mut c = Cached::new(&mut fake, None);
        c.generate_until("x", &[], &[], 1).unwrap();
        c.generate_until("x", &[], &[], 1).unwrap();
        assert_eq!(
            c.counts,
            RequestCounts {
                computed: 2,
                cached: 0
            }
        );
    }

    #[test]
    fn a_backend_answering_more_or_fewer_choices_is_an_error_naming_it() {
        let mut fake = Fake::new("faulty", "s");
        fake.extra = 1;
        let mut b = Cached::new(&mut fake, None);
        let e = b
            .loglikelihood("Q:", &[], &[" a".into(), " b".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model `faulty`")
                && e.contains("3 log-likelihoods")
                && e.contains("2 continuations"),
            "{e}"
        );
    }
}
