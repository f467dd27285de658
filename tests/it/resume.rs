//! Interrupted runs resume to the uninterrupted result; shards merge into the unsharded run.
//! Real binary, real model (SmolLM2), a multiple-choice and a generation task.

use crate::common;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{icl_eval, root, smollm2, tmp};

/// The binary with a request cache of its own (`Some`) or none.
fn command(run_args: &[&str], cache: Option<&Path>) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_icl-eval"));
    c.args(run_args)
        .current_dir(root())
        .env_remove("ICL_EVAL_DATA_DIR")
        .env_remove("ICL_EVAL_CACHE");
    match cache {
        Some(p) => c.arg("--cache").arg(p).env_remove("ICL_EVAL_NO_CACHE"),
        None => c.env("ICL_EVAL_NO_CACHE", "1"),
    };
    c
}

/// Requests the run computed and answered from the cache, over all its sessions.
fn requests(dir: &Path) -> (u64, u64) {
    let r = &config(dir)["prompt_tokens"][0]["requests"];
    (
        r["computed"].as_u64().unwrap(),
        r["cached"].as_u64().unwrap(),
    )
}

fn args<'a>(model: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec![
        "run",
        "--tasks",
        "sentiment_reviews,two_digit_addition",
        "--models",
        model,
        "--shots",
        "0,1,3",
        "--seeds",
        "2",
        "--limit",
        "4",
        "--output",
        out,
    ];
    a.extend_from_slice(extra);
    a
}

/// `icl-eval merge SHARDS --output OUT`, which must succeed.
fn merge(out: &Path, shards: &[String]) {
    let out_s = out.display().to_string();
    let mut m = vec!["merge", "--output", out_s.as_str()];
    m.extend(shards.iter().map(String::as_str));
    ok(&icl_eval(&m));
}

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn lines(p: &Path) -> usize {
    fs::read_to_string(p).map_or(0, |s| s.matches('\n').count())
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Starts a run and sends `signal` once its partial file holds at least `after` samples; returns
/// the exit code and stderr.
fn interrupt(
    run_args: &[&str],
    cache: Option<&Path>,
    dir: &Path,
    after: usize,
    signal: &str,
) -> (Option<i32>, String) {
    let mut child = command(run_args, cache)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.join("samples.jsonl.partial");
    let t = Instant::now();
    while lines(&partial) < after {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "run made no progress"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before {after} samples: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs the SmolLM2 model (scripts/fetch-models.sh)"]
fn killed_runs_resume_to_the_uninterrupted_result_and_shards_merge_into_it() {
    let model = smollm2().display().to_string();
    let d = tmp("resume");
    // The uninterrupted run fills a fresh request cache, used again below.
    let cache_whole = d.join("whole.sqlite");
    let whole = d.join("whole");
    let whole_s = whole.display().to_string();
    ok(&command(&args(&model, &whole_s, &[]), Some(&cache_whole))
        .output()
        .unwrap());
    // 2 tasks × 4 docs × 3 K × 2 seeds.
    assert_eq!(lines(&whole.join("samples.jsonl")), 48);

    // SIGKILL at three points, then Ctrl-C (SIGINT), then a run to the end.
    let cut = d.join("cut");
    let cut_s = cut.display().to_string();
    let run_args = args(&model, &cut_s, &["--threads", "1", "--batch-size", "1"]);
    for after in [1, 14, 27] {
        let (code, _) = interrupt(&run_args, None, &cut, after, "-KILL");
        assert_eq!(code, None, "killed by a signal");
        assert!(!cut.join("samples.jsonl").exists());
        assert_eq!(config(&cut)["complete"], false);
    }
    let (code, err) = interrupt(&run_args, None, &cut, 37, "-INT");
    assert_eq!(code, Some(130), "{err}");
    assert!(
        err.contains("interrupted:") && err.contains("run the same command again"),
        "{err}"
    );
    let o = icl_eval(&run_args);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("Resuming"));
    assert_eq!(
        fs::read(cut.join("samples.jsonl")).unwrap(),
        fs::read(whole.join("samples.jsonl")).unwrap(),
        "the resumed run's samples equal the uninterrupted run's, in the same order"
    );
    assert_eq!(
        fs::read_to_string(cut.join("summary.csv")).unwrap(),
        fs::read_to_string(whole.join("summary.csv")).unwrap()
    );
    // Each resume found at least what the kill left, and finished samples were never redone:
    // the counts only grow, and the last session started from the Ctrl-C's 37 or more.
    let resumed: Vec<u64> = config(&cut)["resumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["samples"].as_u64().unwrap())
        .collect();
    assert_eq!(resumed.len(), 4, "{resumed:?}");
    assert!(resumed.windows(2).all(|w| w[0] <= w[1]), "{resumed:?}");
    assert!(resumed[0] >= 1 && resumed[3] >= 37, "{resumed:?}");

    // A finished folder is never overwritten, and an unfinished one of another command is not
    // resumed by mistake.
    let o = icl_eval(&run_args);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already holds a finished run"));
    let other = d.join("other");
    let other_s = other.display().to_string();
    let (_, _) = interrupt(&args(&model, &other_s, &[]), None, &other, 1, "-KILL");
    let o = icl_eval(&args(&model, &other_s, &["--seed", "7"]));
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unfinished run of a different command"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // With the request cache, interrupted sessions together compute each request once: exactly
    // what the uninterrupted run computes. A second identical run computes nothing.
    let (w_computed, w_cached) = requests(&whole);
    assert!(w_computed > 0 && w_cached == 0);
    let again = d.join("again");
    let again_s = again.display().to_string();
    ok(&command(&args(&model, &again_s, &[]), Some(&cache_whole))
        .output()
        .unwrap());
    assert_eq!(
        requests(&again),
        (0, w_computed),
        "nothing computed the second time"
    );
    assert_eq!(
        fs::read(again.join("samples.jsonl")).unwrap(),
        fs::read(whole.join("samples.jsonl")).unwrap()
    );
    let cache_cut = d.join("cut.sqlite");
    let cut2 = d.join("cut2");
    let cut2_s = cut2.display().to_string();
    let run2 = args(&model, &cut2_s, &["--batch-size", "1"]);
    for after in [7, 27] {
        let (code, err) = interrupt(&run2, Some(&cache_cut), &cut2, after, "-INT");
        assert_eq!(code, Some(130), "{err}");
    }
    ok(&command(&run2, Some(&cache_cut)).output().unwrap());
    assert_eq!(requests(&cut2).0, w_computed, "no request computed twice");
    assert_eq!(
        fs::read(cut2.join("samples.jsonl")).unwrap(),
        fs::read(whole.join("samples.jsonl")).unwrap()
    );

    // Three shards, merged, are the unsharded run.
    let mut shards = Vec::new();
    let mut sizes = Vec::new();
    for i in 1..=3 {
        let s = d.join(format!("shard{i}"));
        let s_str = s.display().to_string();
        let spec = format!("{i}/3");
        ok(&icl_eval(&args(&model, &s_str, &["--shard", &spec])));
        sizes.push(lines(&s.join("samples.jsonl")));
        shards.push(s_str);
    }
    // Whole docs per shard: 4 docs split 2, 1, 1, each 12 samples.
    assert_eq!(sizes, [24, 12, 12]);
    let merged = d.join("merged");
    let merged_s = merged.display().to_string();
    let mut merge = vec!["merge", "--output", merged_s.as_str()];
    merge.extend(shards.iter().rev().map(String::as_str));
    ok(&icl_eval(&merge));
    for f in ["samples.jsonl", "summary.csv", "summary.md", "labels.csv"] {
        assert_eq!(
            fs::read_to_string(merged.join(f)).unwrap(),
            fs::read_to_string(whole.join(f)).unwrap(),
            "{f}"
        );
    }
    // A missing shard is named.
    let o = icl_eval(&[
        "merge",
        "--output",
        &d.join("m2").display().to_string(),
        &shards[0],
        &shards[2],
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("shard 2/3 missing"));
}

/// Two identical commands on one folder: the second stops at once, naming the run that holds it,
/// and the first finishes with every sample once.
#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m)"]
fn a_second_run_on_a_folder_being_written_is_refused() {
    let d = tmp("locked");
    let out = d.join("run");
    let out_s = out.display().to_string();
    let args = [
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        "smollm2-135m",
        "--shots",
        "0,32",
        "--limit",
        "24",
        "--no-cache",
        "--output",
        out_s.as_str(),
    ];
    let mut first = common::command_in(&common::root(), &args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !out.join("config.json").is_file() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the first run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = icl_eval(&args);
    let e = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        e.contains("is being written by another icl-eval run (process "),
        "{e}"
    );
    assert!(first.wait().unwrap().success());
    let samples = common::read_samples(&out);
    assert_eq!(samples.len(), 48, "each (doc, K) once");
}

/// A partial file holding a sample twice, or a sample of a doc the run does not score, is refused
/// on resume, naming the line, instead of being counted in the summary (n = 301 for 300 docs).
#[test]
#[ignore = "needs ../shared/reference/tiny-hf"]
fn resume_refuses_rows_outside_the_plan_or_repeated() {
    let model = common::reference_dir().join("tiny-hf/llama");
    let d = tmp("resume-plan");
    let out = d.join("run");
    let out_s = out.display().to_string();
    let args = [
        "run",
        "--tasks",
        "sentiment_reviews",
        "--models",
        model.to_str().unwrap(),
        "--shots",
        "0,1",
        "--limit",
        "3",
        "--output",
        out_s.as_str(),
    ];
    let o = icl_eval(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> = fs::read_to_string(out.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 6);
    // Made unfinished again, with a doctored partial file.
    let unfinish = |partial: &[String]| {
        let config = out.join("config.json");
        let mut c: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&config).unwrap()).unwrap();
        c["complete"] = serde_json::json!(false);
        fs::write(&config, c.to_string()).unwrap();
        let _ = fs::remove_file(out.join("samples.jsonl"));
        fs::write(out.join("samples.jsonl.partial"), partial.join("\n") + "\n").unwrap();
    };
    let repeated = vec![lines[0].clone(), lines[1].clone(), lines[0].clone()];
    unfinish(&repeated);
    let o = icl_eval(&args);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("line 3 repeats an earlier sample"),
        "{e}"
    );
    let mut outside: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    outside["doc_id"] = serde_json::json!(99999);
    unfinish(&[lines[0].clone(), outside.to_string()]);
    let o = icl_eval(&args);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("line 2 is not a cell of this run"),
        "{e}"
    );
    // The honest part of it resumes to the whole run.
    unfinish(&lines[..4]);
    let o = icl_eval(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        fs::read_to_string(out.join("samples.jsonl"))
            .unwrap()
            .lines()
            .count(),
        6
    );
}

/// `--shard auto` under a simulated Slurm array (stepped ids), `srun` tasks and a Kubernetes
/// Indexed Job: each worker finds its shard in the scheduler's variables and writes
/// OUTPUT/shard-I-of-N, and `merge OUTPUT/shard-*` gives the folder `--shard I/N` by hand gives;
/// outside any cluster, or with numbers that do not add up, one line names the fix.
#[test]
#[ignore = "needs models/ (scripts/fetch-models.sh smollm2-135m)"]
fn shard_auto_finds_slurm_and_kubernetes_workers_and_merges_like_shards_by_hand() {
    let d = tmp("shard-auto");
    let model = smollm2().display().to_string();
    let run_args = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "run",
            "--tasks",
            "sentiment_reviews",
            "--models",
            &model,
            "--shots",
            "0,2",
            "--limit",
            "5",
            "--output",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let scheduler_free = |c: &mut Command| {
        for v in [
            "SLURM_ARRAY_TASK_ID",
            "SLURM_ARRAY_TASK_COUNT",
            "SLURM_ARRAY_TASK_MIN",
            "SLURM_ARRAY_TASK_MAX",
            "SLURM_ARRAY_TASK_STEP",
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "JOB_COMPLETION_INDEX",
            "ICL_EVAL_SHARDS",
        ] {
            c.env_remove(v);
        }
    };
    let by_hand = d.join("by-hand");
    let mut folders = Vec::new();
    for i in 1..=3 {
        let out = by_hand.join(format!("{i}")).display().to_string();
        let a = run_args(&out, &["--shard", &format!("{i}/3")]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut c = command(&a, None);
        scheduler_free(&mut c);
        ok(&c.output().unwrap());
        folders.push(out);
    }
    merge(&d.join("merged-by-hand"), &folders);
    // Each scheduler's workers, in reverse order, with the variables it sets.
    let slurm_array = |i: usize| {
        vec![
            ("SLURM_ARRAY_TASK_ID", (10 + 10 * i).to_string()),
            ("SLURM_ARRAY_TASK_COUNT", "3".into()),
            ("SLURM_ARRAY_TASK_MIN", "10".into()),
            ("SLURM_ARRAY_TASK_MAX", "30".into()),
            ("SLURM_ARRAY_TASK_STEP", "10".into()),
            ("SLURM_NTASKS", "1".into()),
            ("SLURM_PROCID", "0".into()),
        ]
    };
    let srun = |i: usize| {
        vec![
            ("SLURM_PROCID", i.to_string()),
            ("SLURM_NTASKS", "3".into()),
        ]
    };
    let k8s = |i: usize| {
        vec![
            ("JOB_COMPLETION_INDEX", i.to_string()),
            ("ICL_EVAL_SHARDS", "3".into()),
        ]
    };
    type Vars = Vec<(&'static str, String)>;
    let schedulers: [(&str, &dyn Fn(usize) -> Vars); 3] = [
        ("slurm-array", &slurm_array),
        ("srun", &srun),
        ("k8s", &k8s),
    ];
    for (name, vars) in schedulers {
        let out = d.join(name);
        let out_s = out.display().to_string();
        for i in (0..3).rev() {
            let a = run_args(&out_s, &["--shard", "auto"]);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let mut c = command(&a, None);
            scheduler_free(&mut c);
            c.envs(vars(i));
            ok(&c.output().unwrap());
        }
        let mut shards: Vec<String> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        shards.sort();
        assert_eq!(shards.len(), 3, "{name}: {shards:?}");
        assert!(shards[0].ends_with("shard-1-of-3"), "{shards:?}");
        let merged = d.join(format!("merged-{name}"));
        merge(&merged, &shards);
        for f in ["samples.jsonl", "summary.csv"] {
            assert_eq!(
                fs::read_to_string(merged.join(f)).unwrap(),
                fs::read_to_string(d.join("merged-by-hand").join(f)).unwrap(),
                "{name}: {f}"
            );
        }
    }
    // Outside a cluster, a Kubernetes worker without a count, numbers that do not add up.
    let out = d.join("refused").display().to_string();
    for (vars, says) in [
        (vec![], "--shard I/N"),
        (vec![("JOB_COMPLETION_INDEX", "0")], "--shards N"),
        (
            vec![("SLURM_PROCID", "3"), ("SLURM_NTASKS", "3")],
            "do not add up",
        ),
    ] {
        let a = run_args(&out, &["--shard", "auto"]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut c = command(&a, None);
        scheduler_free(&mut c);
        c.envs(vars);
        let o = c.output().unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains(says), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    }
}

/// A real Slurm job array (the one-node cluster of `scripts/slurm-one-node.sh`): `sbatch
/// --array=0-2` runs three workers with `--shard auto`, and their merged folder is the one three
/// shards given by hand merge into.
#[test]
#[ignore = "needs a Slurm cluster (scripts/slurm-one-node.sh, as root) and models/ (scripts/fetch-models.sh smollm2-135m)"]
fn a_slurm_job_array_shards_itself_and_merges_like_shards_by_hand() {
    let d = tmp("slurm-array");
    let model = smollm2().display().to_string();
    let bin = env!("CARGO_BIN_EXE_icl-eval");
    let run = |out: &Path, shard: &str| {
        format!(
            "{bin} run --tasks sentiment_reviews --models {model} --shots 0,2 --limit 5 \
             --shard {shard} --output {}",
            out.display()
        )
    };
    let mut by_hand = Vec::new();
    for i in 1..=3 {
        let out = d.join(format!("by-hand-{i}"));
        let cmd = run(&out, &format!("{i}/3"));
        let args: Vec<&str> = cmd.split(' ').skip(1).collect();
        ok(&command(&args, None).output().unwrap());
        by_hand.push(out.display().to_string());
    }
    merge(&d.join("merged-by-hand"), &by_hand);
    let out = d.join("array");
    let script = d.join("job.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/bash\nexport ICL_EVAL_NO_CACHE=1\nexec {}\n",
            run(&out, "auto")
        ),
    )
    .unwrap();
    let o = Command::new("sbatch")
        .args([
            "--array=0-2",
            "--wait",
            "--job-name=icl-eval-test",
            "--output",
        ])
        .arg(d.join("slurm-%a.log"))
        .arg("--chdir")
        .arg(root())
        .arg(&script)
        .output()
        .expect("sbatch: run scripts/slurm-one-node.sh first");
    let logs: String = (0..3)
        .map(|i| fs::read_to_string(d.join(format!("slurm-{i}.log"))).unwrap_or_default())
        .collect();
    assert!(
        o.status.success(),
        "{}\n{logs}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut shards: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    shards.sort();
    assert_eq!(shards.len(), 3, "{shards:?}\n{logs}");
    assert!(logs.contains("--shard auto: shard 3/3"), "{logs}");
    merge(&d.join("merged-array"), &shards);
    for f in ["samples.jsonl", "summary.csv"] {
        assert_eq!(
            fs::read_to_string(d.join("merged-array").join(f)).unwrap(),
            fs::read_to_string(d.join("merged-by-hand").join(f)).unwrap(),
            "{f}"
        );
    }
}
