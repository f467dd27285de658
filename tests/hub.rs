//! `hf:` model references against a local server that answers the way the Hugging Face hub does
//! (`/api/models/ORG/REPO/revision/main`, `/ORG/REPO/resolve/main/FILE` with ETag, X-Repo-Commit and
//! Content-Range), then again offline from the cache it filled.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub serving one repository's files; records every request path.
struct FakeHub {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(repo: &str, files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let repo = repo.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &repo, &files, &log);
            }
        });
        Self { port, requests }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn serve(
    mut stream: TcpStream,
    repo: &str,
    files: &HashMap<String, Vec<u8>>,
    log: &Mutex<Vec<String>>,
) {
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
    let info = format!("/api/models/{repo}/revision/main");
    let resolve = format!("/{repo}/resolve/main/");
    let (status, headers, body): (&str, Vec<String>, Vec<u8>) = if path == info {
        let siblings: Vec<String> = files
            .keys()
            .map(|f| format!("{{\"rfilename\":\"{f}\"}}"))
            .collect();
        let json = format!(
            "{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}",
            siblings.join(",")
        );
        ("200 OK", vec![], json.into_bytes())
    } else if let Some(file) = path.strip_prefix(&resolve)
        && let Some(data) = files.get(file)
    {
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

fn tiny_llama_files() -> HashMap<String, Vec<u8>> {
    let dir = common::reference_dir().join("tiny-hf/llama");
    ["config.json", "tokenizer.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

fn run_with_hub(endpoint: &str, cache: &Path, offline: bool, model: &str, out: &Path) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
    c.args([
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        model,
        "--shots",
        "0,1",
        "--limit",
        "3",
        "--output",
    ])
    .arg(out)
    .current_dir(common::root())
    .env("ICL_EVAL_NO_CACHE", "1")
    .env("HF_ENDPOINT", endpoint)
    .env("HF_HUB_CACHE", cache)
    .env("NO_PROXY", "127.0.0.1")
    .env_remove("HF_TOKEN")
    .env_remove("ICL_EVAL_DATA_DIR");
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    } else {
        c.env_remove("HF_HUB_OFFLINE");
    }
    c.output().unwrap()
}

fn snapshot(cache: &Path) -> PathBuf {
    cache.join(format!("models--tiny--llama/snapshots/{COMMIT}"))
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn hub_checkpoint_downloads_then_runs_offline_from_the_cache() {
    let hub = FakeHub::start("tiny/llama", tiny_llama_files());
    let tmp = common::tmp("hub");
    let cache = tmp.join("cache");
    let o = run_with_hub(
        &hub.endpoint(),
        &cache,
        false,
        "hf:tiny/llama",
        &tmp.join("online"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(snapshot(&cache).join(f).is_file(), "{f} not in the cache");
    }
    let served = hub.requests.lock().unwrap().clone();
    assert!(
        served.contains(&"/api/models/tiny/llama/revision/main".to_string()),
        "{served:?}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("online/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["models"][0]["name"], "llama");
    assert_eq!(config["models"][0]["reference"], "hf:tiny/llama");
    assert_eq!(config["models"][0]["parameters"], 139_584);

    // Offline, with no server at all: the cache answers, and the results are the same.
    let o = run_with_hub(
        "http://127.0.0.1:9",
        &cache,
        true,
        "hf:tiny/llama",
        &tmp.join("offline"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |d: &str| std::fs::read_to_string(tmp.join(d).join("samples.jsonl")).unwrap();
    assert_eq!(read("online"), read("offline"));
}

#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn hub_single_file_and_missing_files() {
    let hub = FakeHub::start("tiny/llama", tiny_llama_files());
    let tmp = common::tmp("hub-file");
    let cache = tmp.join("cache");
    let mut opts = icl_eval::models::HubOptions::from_env();
    opts.endpoint = hub.endpoint();
    opts.cache_dir = cache.clone();
    opts.offline = false;
    opts.token = None;
    let r = icl_eval::models::resolve("hf:tiny/llama/config.json", None, &opts).unwrap();
    assert_eq!(r.path, snapshot(&cache).join("config.json"));
    assert_eq!(
        std::fs::read(&r.path).unwrap(),
        tiny_llama_files()["config.json"]
    );
    let e = icl_eval::models::resolve("hf:tiny/llama/absent.gguf", None, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hf:tiny/llama/absent.gguf") && e.contains("404"),
        "{e}"
    );
    opts.offline = true;
    let e = icl_eval::models::resolve("hf:tiny/other", None, &opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("offline"), "{e}");
}
