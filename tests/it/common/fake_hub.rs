//! A local server answering the way the Hugging Face Hub does, for any number of repositories:
//! `/api/{kind}/ORG/NAME/revision/REV` lists a repository's files (with its commit), and
//! `/[{kind}/]ORG/NAME/resolve/REV/FILE` serves one with ETag, X-Repo-Commit and Content-Range.
//! [`FakeHub::datasets`] serves the fixture `scripts/make-fake-hub.py` converts from the shared
//! benchmark data: every dataset the task library reads, in the Hub's layout and schemas.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// The commit every repository of a fake hub is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The escaped revision of the Hub's parquet conversion, as clients send it.
const PARQUET: &str = "refs%2Fconvert%2Fparquet";

/// One repository at one revision: where its listing and its files are served.
pub struct Served {
    info: String,
    resolve: String,
    files: HashMap<String, Vec<u8>>,
}

impl Served {
    /// A model repository at `main`.
    pub fn model(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self {
            info: format!("/api/models/{repo}/revision/main"),
            resolve: format!("/{repo}/resolve/main/"),
            files,
        }
    }

    /// A dataset repository's parquet conversion (`refs/convert/parquet`).
    pub fn parquet(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self::dataset_at(repo, PARQUET, files)
    }

    /// A dataset repository's own files at `main`.
    pub fn dataset_main(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self::dataset_at(repo, "main", files)
    }

    fn dataset_at(repo: &str, revision: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self {
            info: format!("/api/datasets/{repo}/revision/{revision}"),
            resolve: format!("/datasets/{repo}/resolve/{revision}/"),
            files,
        }
    }
}

/// A running fake hub; records every request path.
pub struct FakeHub {
    port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    /// Serves `repos` until the test process ends.
    pub fn serving(repos: Vec<Served>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let repos = Arc::new(repos);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (repos, log) = (repos.clone(), log.clone());
                std::thread::spawn(move || serve(stream, &repos, &log));
            }
        });
        Self { port, requests }
    }

    /// A hub holding one model repository.
    pub fn model(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self::serving(vec![Served::model(repo, files)])
    }

    /// A hub holding one dataset's parquet conversion.
    pub fn dataset(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        Self::serving(vec![Served::parquet(repo, files)])
    }

    /// A hub holding every dataset of the task library's fixture (see the module doc).
    pub fn datasets() -> Self {
        let root = fixture();
        let mut repos = Vec::new();
        for org in dirs(&root) {
            for name in dirs(&org) {
                let repo = format!("{}/{}", file_name(&org), file_name(&name));
                for revision in dirs(&name) {
                    let mut files = HashMap::new();
                    read_tree(&revision, &revision, &mut files);
                    repos.push(match file_name(&revision).as_str() {
                        "parquet" => Served::parquet(&repo, files),
                        _ => Served::dataset_main(&repo, files),
                    });
                }
            }
        }
        Self::serving(repos)
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Hub settings for loading tasks in this process: this hub, online, with its cache at `cache`.
    pub fn options(&self, cache: &Path) -> icl_eval::hub::HubOptions {
        icl_eval::hub::HubOptions {
            endpoint: self.endpoint(),
            cache_dir: cache.to_path_buf(),
            offline: false,
            token: None,
        }
    }

    /// `command` pointed at this hub with a Hugging Face cache of its own at `cache`, online
    /// unless `offline`; no token, no data folder.
    pub fn env<'a>(
        &self,
        command: &'a mut Command,
        cache: &Path,
        offline: bool,
    ) -> &'a mut Command {
        hub_env(command, &self.endpoint(), cache, offline)
    }
}

/// `command` pointed at the hub at `endpoint` with a Hugging Face cache at `cache`, online unless
/// `offline`; no token, no data folder.
pub fn hub_env<'a>(
    command: &'a mut Command,
    endpoint: &str,
    cache: &Path,
    offline: bool,
) -> &'a mut Command {
    command
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_CACHE", cache)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HF_TOKEN")
        .env_remove("ICL_EVAL_DATA_DIR");
    if offline {
        command.env("HF_HUB_OFFLINE", "1")
    } else {
        command.env_remove("HF_HUB_OFFLINE")
    }
}

fn dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn read_tree(base: &Path, dir: &Path, files: &mut HashMap<String, Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            read_tree(base, &p, files);
        } else {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            files.insert(rel, std::fs::read(&p).unwrap());
        }
    }
}

/// The converted fixture, made once per version of the script (under `~/.cache/icl-eval/`) with
/// the Python that has `datasets`; once per process, whichever tests ask at the same time.
fn fixture() -> PathBuf {
    static FIXTURE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(build_fixture).clone()
}

fn build_fixture() -> PathBuf {
    let script = super::root().join("scripts/make-fake-hub.py");
    let hash = hex::encode(Sha256::digest(std::fs::read(&script).unwrap()));
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let done = home.join(format!(".cache/icl-eval/fake-hub-{}", &hash[..16]));
    if done.is_dir() {
        return done;
    }
    // Built aside and renamed, so test binaries running at once never read half a fixture.
    let building = done.with_extension(format!("building-{}", std::process::id()));
    let o = Command::new(super::hooks_python())
        .arg(&script)
        .arg(super::data_dir())
        .arg(&building)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "make-fake-hub.py failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if std::fs::rename(&building, &done).is_err() {
        // Another binary finished first.
        let _ = std::fs::remove_dir_all(&building);
    }
    done
}

fn serve(mut stream: TcpStream, repos: &[Served], log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if h.to_ascii_lowercase().starts_with("range: bytes=0-0") {
            range = true;
        }
    }
    log.lock().unwrap().push(path.clone());
    let listing = repos.iter().find(|r| r.info == path);
    let file = repos.iter().find_map(|r| {
        path.strip_prefix(r.resolve.as_str())
            .and_then(|f| r.files.get(f))
    });
    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if let Some(repo) = listing {
        let mut names: Vec<&String> = repo.files.keys().collect();
        names.sort();
        let siblings: Vec<String> = names
            .iter()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let json = format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        ("200 OK", vec![], json.into_bytes())
    } else if let Some(data) = file {
        let etag = hex::encode(Sha256::digest(data));
        let mut h = vec![
            format!("ETag: \"{etag}\""),
            format!("X-Repo-Commit: {COMMIT}"),
        ];
        if range {
            h.push(format!("Content-Range: bytes 0-0/{}", data.len()));
            ("206 Partial Content", h, data[..1].to_vec())
        } else {
            ("200 OK", h, data.clone())
        }
    } else {
        ("404 Not Found", vec![], b"Entry not found".to_vec())
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // The client may drop a metadata response unread: write errors are expected.
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}
