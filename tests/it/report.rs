//! Reports from real runs: merging run folders, comparing runs, and report.html in a real browser.

use crate::common;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{icl_eval, qwen05, smollm2, tmp};
use serde_json::{Value, json};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A finished run of one model on the two small built-in tasks.
fn small_run(dir: &Path, model: &Path, extra: &[&str]) {
    let mut args = vec![
        "run",
        "--tasks",
        "sentiment_reviews,two_digit_addition",
        "--models",
        model.to_str().unwrap(),
        "--shots",
        "0,1",
        "--limit",
        "6",
        "--output",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = icl_eval(&args);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m qwen2.5-coder-0.5b)"]
fn report_merges_run_folders_and_refuses_incompatible_ones() {
    let d = tmp("merge");
    let (a, b) = (d.join("a"), d.join("b"));
    small_run(&a, &smollm2(), &[]);
    small_run(&b, &qwen05(), &[]);
    for f in [
        "report.html",
        "summary.tex",
        "examples.json",
        "accuracy_vs_shots.svg",
    ] {
        assert!(a.join(f).is_file(), "run folder lacks {f}");
    }

    let merged = d.join("merged");
    let o = icl_eval(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--output",
        merged.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = fs::read_to_string(merged.join("summary.md")).unwrap();
    assert!(md.contains("SmolLM2-135M-Instruct.Q4_1") && md.contains("qwen2.5-coder"));
    // The merged summary table is exactly the rows of both runs (the predicted-label section
    // after the blank line has its own rows).
    let rows = |p: &Path| {
        fs::read_to_string(p.join("summary.md"))
            .unwrap()
            .lines()
            .take_while(|l| !l.is_empty())
            .count()
            - 2
    };
    assert!(md.contains("### Predicted labels"), "{md}");
    assert_eq!(rows(&merged), rows(&a) + rows(&b));
    let svg = fs::read_to_string(merged.join("accuracy_vs_model_size.svg")).unwrap();
    assert!(svg.contains("K = 0") && svg.contains("K = 1"));
    let tex = fs::read_to_string(merged.join("summary.tex")).unwrap();
    assert!(tex.contains("two\\_digit\\_addition") && tex.contains("\\bottomrule"));
    let html = fs::read_to_string(merged.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 2, "both charts inline");
    assert!(!html.contains("<script src") && !html.contains("<link rel=\"stylesheet\""));

    // A merge written into one of its runs would overwrite that run's own report.
    let o = icl_eval(&[
        "report",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--output",
        a.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is one of the runs merged"),
        "{}",
        stderr(&o)
    );

    // The same run twice: its cells would count double.
    let o = icl_eval(&[
        "report",
        a.to_str().unwrap(),
        a.to_str().unwrap(),
        "--output",
        d.join("twice").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is in both"), "{}", stderr(&o));

    // A task changed between the runs: refused, naming the task and both folders, unless allowed.
    let changed = d.join("b-changed");
    fs::create_dir_all(&changed).unwrap();
    for f in fs::read_dir(&b).unwrap() {
        let f = f.unwrap().path();
        fs::copy(&f, changed.join(f.file_name().unwrap())).unwrap();
    }
    let mut config: Value =
        serde_json::from_str(&fs::read_to_string(changed.join("config.json")).unwrap()).unwrap();
    config["tasks"][0]["hash"] = json!("0123456789abcdef");
    fs::write(changed.join("config.json"), config.to_string()).unwrap();
    let args = |allow: bool| {
        let mut v = vec![
            "report".to_string(),
            a.display().to_string(),
            changed.display().to_string(),
            "--output".to_string(),
            d.join("mixed").display().to_string(),
        ];
        if allow {
            v.push("--allow-mixed".into());
        }
        v
    };
    let refuse = args(false);
    let o = icl_eval(&refuse.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("task `sentiment_reviews` differs")
            && e.contains("b-changed")
            && e.contains("--allow-mixed"),
        "{e}"
    );
    let allow = args(true);
    let o = icl_eval(&allow.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));

    // A run stopped after scoring, while its report was written (`complete: true` comes last):
    // `report` on its folder writes the report and marks it complete.
    config["complete"] = json!(false);
    fs::write(changed.join("config.json"), config.to_string()).unwrap();
    fs::remove_file(changed.join("summary.csv")).unwrap();
    let o = icl_eval(&["report", changed.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(changed.join("summary.csv").is_file());
    let now: Value =
        serde_json::from_str(&fs::read_to_string(changed.join("config.json")).unwrap()).unwrap();
    assert_eq!(now["complete"], json!(true));
    // A run whose scoring did not finish is not reported as if whole.
    fs::rename(
        changed.join("samples.jsonl"),
        changed.join("samples.jsonl.partial"),
    )
    .unwrap();
    let o = icl_eval(&["report", changed.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("did not finish"), "{}", stderr(&o));
}

/// Parses the Markdown table `compare` prints into (task, K) → columns.
fn compare_rows(md: &str) -> Vec<Vec<String>> {
    md.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| task"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m qwen2.5-coder-0.5b)"]
fn compare_finds_no_difference_between_seeds_and_the_one_between_models() {
    let d = tmp("compare");
    let run = |name: &str, model: &Path, seed: &str, task: &str, shots: &str, limit: &str| {
        let dir = d.join(name);
        let o = icl_eval(&[
            "run",
            "--tasks",
            task,
            "--models",
            model.to_str().unwrap(),
            "--shots",
            shots,
            "--seed",
            seed,
            "--limit",
            limit,
            "--output",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        dir
    };
    // Same model, two demonstration seeds, 60 docs at K = 4.
    let sentiment =
        |name: &str, seed: &str| run(name, &smollm2(), seed, "sentiment_reviews", "4", "60");
    let s1 = sentiment("seed1", "1");
    let s2 = sentiment("seed2", "2");
    let csv = d.join("seeds.csv");
    let o = icl_eval(&[
        "compare",
        s1.to_str().unwrap(),
        s2.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    eprintln!("{md}");
    let rows = compare_rows(&md);
    assert_eq!(rows.len(), 1, "{md}");
    assert_eq!(rows[0][3], "60", "all 60 docs paired");
    assert_eq!(rows[0][10], "no significant difference", "{md}");
    assert!(md.contains("McNemar"));
    let csv = fs::read_to_string(csv).unwrap();
    assert!(
        csv.starts_with("task,k,metric,n_shared,value_a,value_b,diff,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 2);

    // Two models: the differences are those of the summaries, and the verdict follows p. Only
    // Qwen2.5-Coder-0.5B adds two-digit numbers (README: 0.95 against SmolLM2's 0.00 at K = 1),
    // so 20 docs make the difference plain.
    let add = |name: &str, model: &Path| run(name, model, "1", "two_digit_addition", "1", "20");
    let (small, q) = (add("small-add", &smollm2()), add("qwen-add", &qwen05()));
    let o = icl_eval(&["compare", small.to_str().unwrap(), q.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = stdout(&o);
    eprintln!("{md}");
    let row = &compare_rows(&md)[0];
    let acc = |dir: &Path| -> f64 {
        let s = fs::read_to_string(dir.join("summary.csv")).unwrap();
        let column = s
            .lines()
            .next()
            .unwrap()
            .split(',')
            .position(|c| c == "value")
            .unwrap();
        let line = s.lines().find(|l| l.contains(",exact_match,")).unwrap();
        line.split(',').nth(column).unwrap().parse().unwrap()
    };
    let (va, vb) = (acc(&small), acc(&q));
    assert_eq!(row[4], format!("{va:.4}"));
    assert_eq!(row[5], format!("{vb:.4}"));
    assert_eq!(row[6], format!("{:+.4}", vb - va));
    let p: f64 = row[9].parse().unwrap();
    assert!(
        p < 0.001,
        "Qwen2.5-Coder-0.5B adds better than SmolLM2-135M: {md}"
    );
    let want = if p >= 0.05 {
        "no significant difference"
    } else if vb > va {
        "B better"
    } else {
        "A better"
    };
    assert_eq!(row[10], want);

    // A side compared with itself is refused.
    let o = icl_eval(&["compare", s1.to_str().unwrap(), s1.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("both sides are model"),
        "{}",
        stderr(&o)
    );
}

/// A chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request to chromedriver; returns the JSON body's `value`.
fn webdriver(port: u16, method: &str, path: &str, body: Option<Value>) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut length = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut buf = Vec::new();
    match length {
        Some(n) => {
            buf.resize(n, 0);
            r.read_exact(&mut buf).unwrap();
        }
        None => {
            r.read_to_end(&mut buf).unwrap();
        }
    }
    let v: Value = serde_json::from_slice(&buf).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: {status} {e}: {}",
            String::from_utf8_lossy(&buf)
        )
    });
    assert!(
        status.contains(" 200"),
        "{method} {path}: {status} {}",
        v["value"]
    );
    v["value"].clone()
}

fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver on PATH (apt-get install chromium chromium-driver)");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Driver { child, port }
}

fn chromium_binary() -> PathBuf {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .expect("chromium is not installed (apt-get install chromium chromium-driver)")
}

#[test]
#[ignore = "needs models/ and chromium + chromedriver (apt-get install chromium chromium-driver)"]
fn report_html_opens_from_disk_without_errors_and_filters() {
    let d = tmp("browser");
    let run = d.join("run");
    small_run(&run, &smollm2(), &[]);
    let page = run.join("report.html").canonicalize().unwrap();

    let driver = start_driver();
    let port = driver.port;
    let session = webdriver(
        port,
        "POST",
        "/session",
        Some(json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        }}})),
    );
    let id = session["sessionId"].as_str().unwrap().to_string();
    let at = |p: &str| format!("/session/{id}{p}");
    webdriver(
        port,
        "POST",
        &at("/url"),
        Some(json!({"url": format!("file://{}", page.display())})),
    );
    let title = webdriver(port, "GET", &at("/title"), None);
    assert!(
        title.as_str().unwrap().starts_with("icl-eval report"),
        "{title}"
    );

    let script = |js: &str| {
        webdriver(
            port,
            "POST",
            &at("/execute/sync"),
            Some(json!({"script": js, "args": []})),
        )
    };
    let visible = "return Array.from(document.getElementById('items-1').tBodies[0].rows)\
                   .filter(r => !r.hidden).length;";
    // sentiment_reviews: 6 docs × 2 K.
    assert_eq!(script(visible), json!(12));
    assert_eq!(
        script("return document.querySelectorAll('.chart svg').length;"),
        json!(1),
        "one model: only the accuracy-vs-K chart"
    );

    // Type into the first table's filter: only rows with that gold label stay.
    let el = webdriver(
        port,
        "POST",
        &at("/element"),
        Some(json!({"using": "css selector", "value": "input.filter[data-table='items-1']"})),
    );
    let eid = el
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    webdriver(
        port,
        "POST",
        &at(&format!("/element/{eid}/value")),
        Some(json!({"text": "positive"})),
    );
    let shown = script(visible).as_u64().unwrap();
    let with_word = script(
        "return Array.from(document.getElementById('items-1').tBodies[0].rows)\
         .filter(r => r.textContent.toLowerCase().includes('positive')).length;",
    )
    .as_u64()
    .unwrap();
    assert_eq!(shown, with_word);
    assert!(shown > 0 && shown < 12, "filter kept {shown} of 12 rows");
    let count = script("return document.getElementById('count-items-1').textContent;");
    assert_eq!(count, json!(format!("{shown} of 12 rows")));

    // Sorting by the doc column puts doc 0 first.
    script("document.querySelector('#items-1 th:nth-child(4)').click(); return 0;");
    let first = script(
        "return document.getElementById('items-1').tBodies[0].rows[0].cells[3].textContent;",
    );
    assert_eq!(first, json!("0"));

    let shot = webdriver(port, "GET", &at("/screenshot"), None);
    let png = base64_decode(shot.as_str().unwrap());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    fs::write(d.join("report.png"), &png).unwrap();
    eprintln!("screenshot: {}", d.join("report.png").display());

    let log = webdriver(
        port,
        "POST",
        &at("/se/log"),
        Some(json!({"type": "browser"})),
    );
    let problems: Vec<&Value> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["level"] == "SEVERE" || e["level"] == "WARNING")
        .collect();
    assert!(problems.is_empty(), "console: {problems:?}");
    webdriver(port, "DELETE", &at(""), None);
}

/// Standard base64 (the screenshot chromedriver returns).
fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("base64 screenshot")
}
