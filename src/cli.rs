//! Command-line definitions and dispatch; every subcommand is a thin call into the library.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use icl_eval::backend::candle::{DeviceChoice, WeightsChoice, load_prompt_model};
use icl_eval::merge;
use icl_eval::models::{self, HubOptions, ModelsFile};
use icl_eval::run::{PromptFlags, Protocol, RunConfig, run};
use icl_eval::sampler::DemoLabels;
use icl_eval::shard::{Shard, ShardChoice};
use icl_eval::task::{self, discover};
use icl_eval::validate::validate_task;
use icl_eval::{cache, prompt, record, report};

/// Evaluate how language models learn from K demonstrations in their prompt.
#[derive(Parser, Debug)]
#[command(name = "icl-eval", version, about)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once per process: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Cmd {
    /// Score every test doc at every K, on every model; write a run folder.
    Run(RunArgs),
    /// List the tasks found, or import an lm-evaluation-harness task YAML.
    Tasks(TasksArgs),
    /// Print the exact prompt `run` would send for one doc.
    Prompt(PromptArgs),
    /// Check task YAMLs and report every problem.
    Validate(ValidateArgs),
    /// List the models of the models file: architecture, size, quantization, whether present.
    Models(ModelSource),
    /// Rebuild tables, charts and report.html from one or more finished run folders, merged.
    Report(ReportArgs),
    /// Compare two runs (or two models of a run) cell by cell, with a paired test.
    Compare(CompareArgs),
    /// Combine the folders of a run made with --shard I/N into the folder the unsharded run writes.
    Merge(MergeArgs),
    /// Inspect or empty the persistent request cache.
    Cache(CacheArgs),
    /// Measure prompt-processing speed against llama.cpp, prefix reuse in a sweep, and peak memory.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// GGUF models (paths or models-file names), comma-separated; the runs use the first.
    #[arg(long, value_delimiter = ',', default_value = "smollm2-135m")]
    models: Vec<String>,
    /// Threads for icl-eval and llama.cpp alike (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Tokens per prompt-processing pass.
    #[arg(long, default_value_t = 512)]
    tokens: usize,
    /// Timed passes per prompt-processing measurement; the fastest counts.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Python with llama-cpp-python (default: the one scripts/install-llama-server.sh installs).
    #[arg(long, value_name = "PYTHON", env = "ICL_EVAL_LLAMA_PYTHON")]
    llama_python: Option<PathBuf>,
    /// Task of the sweep and memory runs.
    #[arg(long, default_value = "sentiment_reviews")]
    task: String,
    /// Docs of that task per run.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Folder for the runs' outputs (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Measurements to make, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "speed,sweep,memory")]
    parts: Vec<icl_eval::bench::BenchPart>,
    /// Where icl-eval's forward passes run: cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceChoice::Cpu, value_name = "DEVICE")]
    device: DeviceChoice,
    /// `manyshot`: the K's of its `fixed` sweep.
    #[arg(long, default_value = "0,1,4,16,64,256,1024", value_name = "SHOTS")]
    manyshot_shots: String,
    /// `manyshot`: docs of the sweep.
    #[arg(long, default_value_t = 200, value_name = "N")]
    manyshot_limit: usize,
    /// `manyshot`: docs scored again without prefix reuse to compare answers (0: none).
    #[arg(long, default_value_t = 8, value_name = "N")]
    check_docs: usize,
    #[command(flatten)]
    source: ModelSource,
    #[command(flatten)]
    dirs: TaskDirs,
}

#[derive(Args, Debug)]
struct TasksArgs {
    #[command(subcommand)]
    action: Option<TasksAction>,
    #[command(flatten)]
    dirs: TaskDirs,
}

#[derive(Subcommand, Debug)]
enum TasksAction {
    /// Translate an lm-evaluation-harness task YAML (and its `include:` bases) into an icl-eval
    /// task, or list the keys that cannot be translated.
    Import {
        /// The lm-eval task YAML.
        path: PathBuf,
        /// Where to write the icl-eval task (default: print it).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Translate `!function` hooks into `python:` hooks (run later with --allow-python).
        #[arg(long)]
        allow_python: bool,
    },
}

#[derive(Args, Debug)]
struct CacheArgs {
    #[command(subcommand)]
    action: CacheAction,
    /// The cache file (default: ~/.cache/icl-eval/requests.sqlite).
    #[arg(long, global = true, value_name = "FILE", env = "ICL_EVAL_CACHE")]
    cache: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CacheAction {
    /// Entries and size per model.
    Stats,
    /// Delete the entries of one model, or all.
    Clear {
        /// Only this model's entries (a name as in `stats`).
        #[arg(long, value_name = "NAME")]
        model: Option<String>,
    },
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// The finished shard folders, all N of them.
    #[arg(required = true, value_name = "SHARD_DIR")]
    shards: Vec<PathBuf>,
    /// The merged run folder to write.
    #[arg(long, value_name = "DIR")]
    output: PathBuf,
    #[command(flatten)]
    python: PythonOpt,
}

/// The opt-in to lm-eval task files' Python: loading tasks runs their `!function` hooks; building a
/// report runs their recorded aggregations of `f1`/`mcc`.
#[derive(Args, Debug, Clone)]
struct PythonOpt {
    /// Run the Python of lm-eval task files with your own Python: `!function` hooks that build docs
    /// (process_docs, doc_to_text, doc_to_target, doc_to_choice) and aggregations of f1/mcc (a
    /// report without it leaves those cells empty, with a note); runs record that they did.
    #[arg(long)]
    allow_python: bool,
    /// The Python --allow-python runs (with the hooks' imports; `datasets` for process_docs).
    #[arg(
        long,
        value_name = "PATH",
        default_value = "python3",
        requires = "allow_python"
    )]
    python: PathBuf,
}

impl PythonOpt {
    /// The Python to run, when the user opted in.
    fn python(&self) -> Option<&Path> {
        self.allow_python.then_some(self.python.as_path())
    }
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Finished run folders (e.g. one per model); their cells are merged into one report.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Where to write the report (default: the run folder when there is one, else required).
    #[arg(long, value_name = "DIR")]
    output: Option<PathBuf>,
    /// Merge a task even when the runs recorded different versions of it (different task hash).
    #[arg(long)]
    allow_mixed: bool,
    #[command(flatten)]
    python: PythonOpt,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Run folder of side A.
    run_a: PathBuf,
    /// Run folder of side B (may be the same folder, with --model-a and --model-b).
    run_b: PathBuf,
    /// Model of run A (needed when run A has several).
    #[arg(long, value_name = "NAME")]
    model_a: Option<String>,
    /// Model of run B (needed when run B has several).
    #[arg(long, value_name = "NAME")]
    model_b: Option<String>,
    /// Also write the comparison as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
struct ModelSource {
    /// Models file mapping names to sources (default: ./models.yaml when present).
    #[arg(long, value_name = "FILE")]
    models_file: Option<PathBuf>,
    /// Use only the Hugging Face cache; never download (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

impl ModelSource {
    fn hub(&self) -> HubOptions {
        if self.offline {
            icl_eval::hub::set_offline();
        }
        HubOptions::from_env()
    }
}

#[derive(Args, Debug, Clone)]
struct TaskDirs {
    /// Extra folders of task YAMLs (besides ./tasks).
    #[arg(long = "tasks-dir", value_name = "DIR")]
    tasks_dir: Vec<PathBuf>,
    /// Folder holding external datasets referenced as `${DATA_DIR}/...`.
    #[arg(long, value_name = "DIR", env = "ICL_EVAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    python: PythonOpt,
}

impl TaskDirs {
    /// Where task names are looked up, in precedence order: the `--tasks-dir` folders as given
    /// (the user named them), then `./tasks`; a name found earlier shadows the same name later.
    fn dirs(&self) -> Vec<PathBuf> {
        let mut d = self.tasks_dir.clone();
        if Path::new("tasks").is_dir() {
            d.push(PathBuf::from("tasks"));
        }
        d
    }

    /// The Python to run task hooks with, when the user opted in.
    fn python(&self) -> Option<&Path> {
        self.python.python()
    }

    /// What loading a task reads besides its file, with Hub datasets read through `hub`.
    fn load_options(&self, hub: HubOptions) -> task::LoadOptions<'_> {
        task::LoadOptions {
            data_dir: self.data_dir.as_deref(),
            python: self.python(),
            hub,
        }
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Task names (from ./tasks or --tasks-dir) or YAML paths, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// Models, comma-separated: .gguf files, checkpoint folders, names from models.yaml,
    /// hf:ORG/REPO[/FILE], or openai:http://HOST:PORT/v1#MODEL (an OpenAI-compatible server).
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,
    #[command(flatten)]
    source: ModelSource,
    /// Numbers of demonstrations, comma-separated, each K or a range (A..B, A..B:+STEP,
    /// A..B:xFACTOR: `0,1..2048:x2` is 0, 1, 2, 4, …, 2048); `task`: each task's own K (its
    /// lm-eval `num_fewshot`, 0 where it has none).
    #[arg(long, value_delimiter = ',', default_value = "0,1,32", value_parser = parse_shot, allow_negative_numbers = true)]
    shots: Vec<Shot>,
    /// Evaluate only the first N test docs of each task.
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of the demonstration draws (the first, with --seeds).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Independent demonstration draws (seeds SEED .. SEED+N); the summary reports the mean and the
    /// standard deviation across them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seeds: usize,
    #[command(flatten)]
    prompt: PromptFlags,
    /// What answers demonstrations show, comma-separated for several studies: gold, random,
    /// flipped, none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gold")]
    demo_labels: Vec<DemoLabels>,
    /// Orderings of each demonstration set; the summary reports their spread.
    #[arg(long, default_value_t = 1, value_name = "N")]
    permutations: usize,
    /// Memory for reusing prompt prefixes across K, docs and seeds, in MiB (0 turns reuse off;
    /// default: an eighth of the memory available, at least 512).
    #[arg(long, value_name = "MIB")]
    kv_cache_mb: Option<usize>,
    /// In-process models: docs scored together, sharing their matrix products (answers are the
    /// same for any size; Ctrl-C stops after the current batch).
    #[arg(long, default_value_t = icl_eval::backend::candle::DEFAULT_BATCH_DOCS, value_name = "DOCS")]
    batch_size: usize,
    /// CPU threads for the forward pass (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Run folder (default: results/<timestamp>-<hash>/). A folder holding an unfinished run of
    /// the same command is resumed; without --output, so is the newest such folder in results/.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Evaluate only shard I of N (the docs at positions p with p mod N = I - 1); combine the N
    /// folders with `icl-eval merge`. `auto`: I and N from a Slurm array, the tasks of a Slurm
    /// job or a Kubernetes Indexed Job, each worker writing OUTPUT/shard-I-of-N.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<ShardChoice>,
    /// With --shard auto: the number of workers, for schedulers that set none (Kubernetes).
    #[arg(long, value_name = "N", env = "ICL_EVAL_SHARDS")]
    shards: Option<usize>,
    /// How to hold the weights in memory.
    #[arg(long, value_enum, default_value_t = WeightsChoice::Auto)]
    weights: WeightsChoice,
    /// Where in-process models run: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`).
    #[arg(long, default_value_t = DeviceChoice::Cpu, value_name = "DEVICE")]
    device: DeviceChoice,
    /// The persistent request cache: answers already computed for the same model and request
    /// are read from it (default: ~/.cache/icl-eval/requests.sqlite).
    #[arg(long, value_name = "FILE", env = "ICL_EVAL_CACHE")]
    cache: Option<PathBuf>,
    /// `openai:` servers: seconds one request may take before it is retried.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    request_timeout: u64,
    /// `openai:` servers: retries of a request after connection errors, time-outs, 429 and 5xx
    /// (exponential backoff from 0.5 s, or the server's Retry-After).
    #[arg(long, default_value_t = 6, value_name = "N")]
    retries: u32,
    /// `openai:` servers: the environment variable holding the API key.
    #[arg(long, default_value = "OPENAI_API_KEY", value_name = "VAR")]
    api_key_env: String,
    /// `openai:` servers: the model's context length, when the server does not report it.
    #[arg(long, value_name = "TOKENS")]
    context_length: Option<usize>,
    /// `openai:` servers: requests in flight at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// `openai:` servers without a tokenize endpoint: the model's tokenizer.json, to count prompt
    /// tokens with when fitting prompts to the context.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Compute every request; neither read nor write the request cache.
    #[arg(long, env = "ICL_EVAL_NO_CACHE", conflicts_with = "cache",
          value_parser = clap::builder::BoolishValueParser::new())]
    no_cache: bool,
    #[command(flatten)]
    dirs: TaskDirs,
}

#[derive(Args, Debug)]
struct PromptArgs {
    /// Task name or YAML path.
    #[arg(long)]
    task: String,
    /// Number of demonstrations.
    #[arg(long, default_value_t = 0, value_parser = parse_shots, allow_negative_numbers = true)]
    shots: usize,
    /// Index of the test doc.
    #[arg(long, default_value_t = 0)]
    doc: usize,
    /// Seed of the demonstration draw.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    #[command(flatten)]
    prompt: PromptFlags,
    /// What answers the demonstrations show.
    #[arg(long, value_enum, default_value = "gold")]
    demo_labels: DemoLabels,
    /// Ordering of the demonstration set (0 = the sampler's own order).
    #[arg(long, default_value_t = 0)]
    permutation: usize,
    /// A model (as in `run --models`): fit the prompt to its context and print the token count.
    #[arg(long)]
    model: Option<String>,
    #[command(flatten)]
    source: ModelSource,
    #[command(flatten)]
    dirs: TaskDirs,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Task YAML files.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    dirs: TaskDirs,
}

/// One `--shots` entry of `run`.
#[derive(Debug, Clone, PartialEq)]
enum Shot {
    /// A K, or the K's of a range.
    Ks(Vec<usize>),
    /// Each task's own `num_fewshot`.
    Task,
}

fn parse_shot(s: &str) -> Result<Shot, String> {
    match s.trim() {
        "task" => Ok(Shot::Task),
        _ => icl_eval::run::shots::parse_entry(s)
            .map(Shot::Ks)
            .map_err(|e| format!("{e}, or `task` (each task's own num_fewshot)")),
    }
}

fn parse_shots(s: &str) -> Result<usize, String> {
    let k = s.trim().parse::<usize>().map_err(|_| {
        format!(
            "`{s}` is not a number of demonstrations; use whole numbers ≥ 0, e.g. --shots 0,1,32"
        )
    })?;
    let max = icl_eval::run::shots::MAX_K;
    if k > max {
        return Err(format!(
            "{k} is more than {max} demonstrations, which no model's context holds"
        ));
    }
    Ok(k)
}

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Tasks(TasksArgs {
            action:
                Some(TasksAction::Import {
                    path,
                    output,
                    allow_python,
                }),
            ..
        }) => cmd_import(&path, output.as_deref(), allow_python),
        Cmd::Tasks(a) => cmd_tasks(&a.dirs),
        Cmd::Prompt(a) => cmd_prompt(a),
        Cmd::Validate(a) => cmd_validate(&a),
        Cmd::Models(a) => cmd_models(&a),
        Cmd::Report(a) => cmd_report(&a),
        Cmd::Compare(a) => cmd_compare(&a),
        Cmd::Merge(a) => cmd_merge(&a),
        Cmd::Cache(a) => cmd_cache(&a),
        Cmd::Bench(a) => cmd_bench(a),
    }
}

fn cmd_run(a: RunArgs) -> Result<()> {
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads: must be at least 1");
        }
        use_threads(n);
    }
    let selection = task::discover::select(&a.tasks, &a.dirs.dirs())?;
    let task_shots = a.shots.contains(&Shot::Task);
    if task_shots && a.shots.len() > 1 {
        bail!(
            "--shots task runs each task at its own num_fewshot; give it alone, not with numbers"
        );
    }
    let (shard, output) = match a.shard {
        None => (None, a.output),
        Some(ShardChoice::Fixed(s)) => (Some(s), a.output),
        Some(ShardChoice::Auto) => {
            let s = Shard::from_cluster(&|name| std::env::var(name).ok(), a.shards)
                .map_err(anyhow::Error::msg)?;
            let dir = a.output.context(
                "--shard auto: give --output DIR, a folder every worker shares; each writes \
                 DIR/shard-I-of-N and `icl-eval merge DIR/shard-*` joins them",
            )?;
            let dir = dir.join(s.folder_name());
            eprintln!("--shard auto: shard {s}, writing {}", dir.display());
            (Some(s), Some(dir))
        }
    };
    let cfg = RunConfig {
        tasks: selection.tasks,
        groups: selection.groups,
        models: a.models,
        models_file: ModelsFile::find(a.source.models_file.as_deref())?,
        hub: a.source.hub(),
        shots: a
            .shots
            .iter()
            .flat_map(|s| match s {
                Shot::Ks(ks) => ks.clone(),
                Shot::Task => Vec::new(),
            })
            .collect(),
        task_shots,
        limit: a.limit,
        seed: a.seed,
        protocol: Protocol {
            seeds: a.seeds,
            permutations: a.permutations,
            demo_labels: a.demo_labels,
            flags: a.prompt,
        },
        kv_cache_mb: a.kv_cache_mb,
        batch_docs: a.batch_size,
        threads: a.threads,
        output,
        results_root: PathBuf::from("results"),
        python: a.dirs.python().map(Path::to_path_buf),
        data_dir: a.dirs.data_dir,
        weights: a.weights,
        device: a.device,
        shard,
        cache: (!a.no_cache).then(|| a.cache.unwrap_or_else(cache::default_path)),
        server: icl_eval::backend::http::Options {
            timeout: std::time::Duration::from_secs(a.request_timeout.max(1)),
            retries: a.retries,
            api_key_env: a.api_key_env,
            context_length: a.context_length,
            concurrency: a.concurrency as usize,
            tokenizer: a.tokenizer,
            ..Default::default()
        },
        stop: Some(stop_on_ctrl_c()),
    };
    let outcome = run(&cfg)?;
    println!("{}", outcome.summary_markdown);
    println!(
        "Results in {}/: report.html (open it in a browser), summary.md/.csv/.tex, samples.jsonl, \
         charts {}",
        outcome.dir.display(),
        outcome
            .charts
            .iter()
            .map(|c| format!("{c}.png"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// A flag set by the first Ctrl-C (or SIGTERM), so the run stops cleanly after the current batch;
/// a second one quits at once (finished samples are on disk either way).
fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let installed = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        // Nothing written yet (tasks loading, templates rendering): nothing to keep, stop now.
        if !icl_eval::run::writing() {
            eprintln!("\nStopped before the run folder was opened; nothing was written");
            std::process::exit(130);
        }
        eprintln!("\nStopping after the current batch of docs (Ctrl-C again quits at once)…");
    });
    if let Err(e) = installed {
        eprintln!("note: Ctrl-C will not stop cleanly ({e}); finished samples are kept anyway");
    }
    stop
}

fn cmd_cache(a: &CacheArgs) -> Result<()> {
    let path = a.cache.clone().unwrap_or_else(cache::default_path);
    if !path.is_file() {
        println!("No request cache at {} yet.", path.display());
        return Ok(());
    }
    let c = match (cache::RequestCache::open(&path), &a.action) {
        (Ok(c), _) => c,
        // A damaged file only cost recomputation: clearing all of it is deleting it.
        (Err(e), CacheAction::Clear { model: None }) => {
            cache::remove_file(&path)?;
            println!(
                "{} could not be read as a request cache ({}); deleted it",
                path.display(),
                e.root_cause()
            );
            return Ok(());
        }
        (Err(e), _) => return Err(e),
    };
    match &a.action {
        CacheAction::Stats => {
            let stats = c.stats()?;
            println!("Request cache {}", path.display());
            println!("| model | entries | MB |");
            println!("|---|---:|---:|");
            for m in &stats {
                println!(
                    "| {} | {} | {:.1} |",
                    m.model,
                    m.entries,
                    m.bytes as f64 / 1e6
                );
            }
            let total: u64 = stats.iter().map(|m| m.entries).sum();
            println!("{total} entries in all");
        }
        CacheAction::Clear { model } => {
            let n = c.clear(model.as_deref())?;
            println!("Deleted {n} entries from {}", path.display());
        }
    }
    Ok(())
}

fn cmd_merge(a: &MergeArgs) -> Result<()> {
    let merged = merge::merge(&a.shards, &a.output, a.python.python())?;
    println!(
        "Merged {} shards ({} samples) into {}/: report.html, summary.md/.csv/.tex, samples.jsonl",
        a.shards.len(),
        merged.samples.len(),
        a.output.display()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 {
        bail!("--threads: must be at least 1");
    }
    use_threads(threads);
    let file = ModelsFile::find(a.source.models_file.as_deref())?;
    let mut models = Vec::new();
    for m in &a.models {
        let r = models::resolve(m, file.as_ref(), &a.source.hub())?;
        if !r.path.is_dir() && r.path.extension().and_then(|e| e.to_str()) != Some("gguf") {
            bail!(
                "--models: {m} is neither a GGUF file nor a checkpoint folder ({})",
                r.path.display()
            );
        }
        models.push((r.display_name.unwrap_or_else(|| m.clone()), r.path));
    }
    // Where scripts/install-llama-server.sh puts its venv.
    let default_python = std::env::var_os("ICL_EVAL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/icl-eval")))
        .map(|c| c.join("llama-venv/bin/python"));
    let llama_python = a.llama_python.or(default_python.filter(|p| p.is_file()));
    let task = task::discover::resolve(std::slice::from_ref(&a.task), &a.dirs.dirs())?.remove(0);
    if task.yaml.is_some() {
        bail!(
            "--task: {} is not a task file; bench runs a task file as it is",
            task.shown()
        );
    }
    let work_dir = a.work_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("icl-eval-bench-{}", std::process::id()))
    });
    let cfg = icl_eval::bench::BenchConfig {
        models,
        threads,
        tokens: a.tokens,
        reps: a.reps,
        llama_python,
        task: task.path.display().to_string(),
        limit: a.limit,
        work_dir,
        data_dir: a.dirs.data_dir,
        parts: a.parts,
        device: a.device,
        manyshot: icl_eval::bench::ManyShotConfig {
            shots: a.manyshot_shots,
            limit: a.manyshot_limit,
            check_docs: a.check_docs,
        },
    };
    let report = icl_eval::bench::bench(&cfg)?;
    println!("{}", report.markdown());
    Ok(())
}

/// Sizes the thread pools: candle's (rayon) and, in a `--features mkl` build, MKL's (OpenMP).
fn use_threads(n: usize) {
    // SAFETY: called first thing in the command, before any other thread exists; both pools read
    // the variables when they first start.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("OMP_NUM_THREADS", n.to_string());
        std::env::set_var("MKL_NUM_THREADS", n.to_string());
    }
}

fn cmd_import(path: &Path, output: Option<&Path>, allow_python: bool) -> Result<()> {
    let imported = task::import::import_lm_eval_with(path, allow_python).map_err(|problems| {
        anyhow::anyhow!(
            "cannot translate {} ({} key(s)):\n  {}",
            path.display(),
            problems.len(),
            problems.join("\n  ")
        )
    })?;
    match output {
        None => print!("{}", imported.yaml),
        Some(out) => {
            if out.exists() {
                bail!(
                    "--output: {} exists; remove it or name another file",
                    out.display()
                );
            }
            icl_eval::record::write_atomic(out, imported.yaml.as_bytes())?;
            eprintln!(
                "wrote task `{}` to {}; check it with `icl-eval validate {}`",
                imported.task,
                out.display(),
                out.display()
            );
        }
    }
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}

fn cmd_tasks(d: &TaskDirs) -> Result<()> {
    let options = d.load_options(HubOptions::from_env());
    println!("| task | tags | output type | test docs | few-shot docs | file | description |");
    println!("|---|---|---|---:|---:|---|---|");
    let found = discover(&d.dirs())?;
    for (i, src) in found.iter().enumerate() {
        // An entry whose name an earlier one (an earlier folder in precedence) has is not the
        // one `--tasks NAME` runs.
        if let Some(first) = found[..i]
            .iter()
            .find(|o| o.name == src.name && o.problem.is_none())
        {
            println!(
                "| {} | {} | – | – | – | {} | shadowed: `--tasks {}` runs {} |",
                src.name,
                src.tags.join(", "),
                src.path.display(),
                src.name,
                first.path.display()
            );
            continue;
        }
        if let Some(g) = &src.group {
            println!(
                "| {} | – | group | – | – | {} | {} members: {} |",
                src.name,
                src.path.display(),
                g.members.len(),
                g.members
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            continue;
        }
        if let Some(problem) = &src.problem {
            println!(
                "| {} | {} | – | – | – | {} | not loadable: {problem} |",
                src.name,
                src.tags.join(", "),
                src.path.display()
            );
            continue;
        }
        match task::load_ref(&src.task_ref(), &options) {
            Ok(t) => println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                t.name,
                src.tags.join(", "),
                t.output_type.name(),
                t.test.len(),
                t.fewshot.len(),
                src.path.display(),
                src.about
            ),
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                println!(
                    "| {} | {} | – | – | – | {} | not loadable: {first} |",
                    src.name,
                    src.tags.join(", "),
                    src.path.display()
                )
            }
        }
    }
    Ok(())
}

fn cmd_prompt(a: PromptArgs) -> Result<()> {
    // `prompt` renders local models' templates only: no chat endpoint stands in for one.
    a.prompt.check(false)?;
    let found = task::discover::resolve(std::slice::from_ref(&a.task), &a.dirs.dirs())?.remove(0);
    let tasks = [task::formulation::formulate_as(
        task::load_ref(&found, &a.dirs.load_options(a.source.hub()))?,
        a.prompt.format,
    )?];
    let t = &tasks[0];
    let Some(item) = t.test.get(a.doc) else {
        bail!(
            "--doc: task {} has {} test docs; {} is out of range",
            t.name,
            t.test.len(),
            a.doc
        );
    };
    let protocol = Protocol {
        demo_labels: vec![a.demo_labels],
        flags: a.prompt.clone(),
        ..Protocol::default()
    };
    let selector = icl_eval::run::selectors(&tasks, &protocol, Some(a.doc + 1))?.remove(0);
    let ranking = selector.ranking(item, a.seed, a.shots);
    let demos = selector.demos(
        &ranking,
        a.shots,
        item,
        a.seed,
        a.permutation,
        a.demo_labels,
    );
    let model = match &a.model {
        Some(m) => {
            let file = ModelsFile::find(a.source.models_file.as_deref())?;
            let resolved = models::resolve(m, file.as_ref(), &a.source.hub())?;
            Some(load_prompt_model(&resolved.path)?)
        }
        None => None,
    };
    // A chat template is the model's: without one the prompt cannot be rendered as `run` would.
    let template = match (a.prompt.chat(), &model) {
        (None, _) => None,
        (Some(_), None) => bail!(
            "--chat-template: name the model whose chat template renders the prompt (--model)"
        ),
        (Some(_), Some(m)) => Some(m.chat_template.as_ref().with_context(|| {
            format!(
                "--chat-template: model `{}` ships no chat template (tokenizer.chat_template); \
                 leave out --chat-template",
                a.model.as_deref().unwrap_or_default()
            )
        })?),
    };
    let format = prompt::Format::of(template, a.prompt.fewshot_as_multiturn);
    match &model {
        None => print!(
            "{}",
            prompt::render(t, &item.description, &demos, &item.text, format)?.0
        ),
        Some(m) => {
            let count = |s: &str| Ok(m.tokenizer.encode(s)?.len());
            let ctx = m.context;
            match prompt::fit(t, item, &demos, ctx, &count, format)? {
                Some(f) => {
                    print!("{}", f.prompt);
                    eprintln!(
                        "\n--- {} tokens (with the longest continuation or generation budget), {} of {} demonstrations, context {ctx}",
                        f.tokens, f.k, a.shots
                    );
                }
                None => bail!(
                    "even the 0-shot prompt of doc {} does not fit the context of {ctx} tokens",
                    a.doc
                ),
            }
        }
    }
    let queries = prompt::queries(item);
    if queries.len() > 1 {
        eprintln!(
            "\n--- the query above is the gold input; each of these is scored in its place: {queries:?}"
        );
    }
    let conts = prompt::continuations(t, item, format);
    if !conts.is_empty() {
        eprintln!("\n--- continuations scored after it: {conts:?}");
    }
    Ok(())
}

fn cmd_validate(a: &ValidateArgs) -> Result<()> {
    let mut bad = 0;
    for p in &a.paths {
        let problems = validate_task(p, a.dirs.data_dir.as_deref(), a.dirs.python());
        if problems.is_empty() {
            println!("ok: {}", p.display());
        } else {
            bad += 1;
            for pr in problems {
                println!("{pr}");
            }
        }
    }
    if bad > 0 {
        bail!("{bad} of {} task file(s) have problems", a.paths.len());
    }
    Ok(())
}

fn cmd_models(a: &ModelSource) -> Result<()> {
    let Some(file) = ModelsFile::find(a.models_file.as_deref())? else {
        bail!(
            "no {} in the working directory; pass --models-file FILE",
            models::MODELS_FILE
        );
    };
    print!("{}", models::render_listing(&models::list(&file, &a.hub())));
    Ok(())
}

fn cmd_report(a: &ReportArgs) -> Result<()> {
    let runs = a
        .runs
        .iter()
        .map(|d| record::read_run(d))
        .collect::<Result<Vec<_>>>()?;
    let dir = match (&a.output, runs.as_slice()) {
        (Some(d), _) => d.clone(),
        (None, [one]) => one.dir.clone(),
        (None, _) => bail!(
            "--output: say where the merged report of {} runs goes",
            runs.len()
        ),
    };
    if runs.len() > 1 && runs.iter().any(|r| same_folder(&r.dir, &dir)) {
        bail!(
            "--output {}: is one of the runs merged; its own summary and charts would be replaced by \
             the merge's, so choose another folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("--output: cannot create {}", dir.display()))?;
    let mut input = report::merge(&runs, a.allow_mixed)?;
    input.python = a.python.python().map(Path::to_path_buf);
    for n in &input.notes {
        eprintln!("note: {n}");
    }
    let out = report::write_report(&dir, &input)?;
    // A run whose scoring finished but whose report was cut short is complete once its report
    // is written in place.
    if let [one] = runs.as_slice()
        && !one.record.complete
        && same_folder(&one.dir, &dir)
    {
        let mut record = one.record.clone();
        record.complete = true;
        record::write_config(&dir, &record)?;
    }
    println!("{}", out.markdown);
    println!(
        "Report in {}/report.html (summary.md/.csv/.tex, charts {})",
        dir.display(),
        out.charts.join(", ")
    );
    Ok(())
}

/// Whether two paths name the same folder (the second may not exist yet).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn cmd_compare(a: &CompareArgs) -> Result<()> {
    let run_a = record::read_run(&a.run_a)?;
    let run_b = if a.run_b == a.run_a {
        run_a.clone()
    } else {
        record::read_run(&a.run_b)?
    };
    let c = report::compare::compare(&run_a, a.model_a.as_deref(), &run_b, a.model_b.as_deref())?;
    print!("{}", c.markdown());
    if let Some(path) = &a.csv {
        c.write_csv(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;

    use super::*;

    fn flags(cmd: &clap::Command) -> BTreeSet<String> {
        cmd.get_arguments()
            .map(|a| a.get_id().to_string())
            .collect()
    }

    /// `icl-eval prompt` shows the exact prompt of any run: it takes every flag of `run` that
    /// changes prompts, and each study axis `run` varies in its one-point form.
    #[test]
    fn prompt_takes_every_flag_of_run_that_changes_prompts() {
        let cli = Cli::command();
        let run = flags(cli.find_subcommand("run").unwrap());
        let prompt = flags(cli.find_subcommand("prompt").unwrap());
        let changing = flags(&PromptFlags::augment_args(clap::Command::new("flags")));
        assert!(changing.len() >= 5, "{changing:?}");
        for f in &changing {
            assert!(run.contains(f), "run lacks --{f}");
            assert!(prompt.contains(f), "prompt lacks --{f}");
        }
        for (in_run, in_prompt) in [
            ("tasks", "task"),
            ("models", "model"),
            ("shots", "shots"),
            ("seed", "seed"),
            ("seeds", "seed"),
            ("permutations", "permutation"),
            ("demo_labels", "demo_labels"),
        ] {
            assert!(
                run.contains(in_run) && prompt.contains(in_prompt),
                "{in_run}"
            );
        }
        // How tasks and models are found and read (hooks, data) shapes prompts too.
        let loading = [
            "tasks_dir",
            "data_dir",
            "allow_python",
            "python",
            "models_file",
            "offline",
        ];
        for f in loading {
            assert!(run.contains(f) && prompt.contains(f), "{f}");
        }
        // Every other flag of `run` is named here as one that leaves the prompt text alone; a new
        // flag must join PromptFlags or this list.
        let other: BTreeSet<&str> = [
            "tasks",
            "models",
            "shots",
            "limit",
            "seed",
            "seeds",
            "demo_labels",
            "permutations",
            "kv_cache_mb",
            "batch_size",
            "threads",
            "output",
            "shard",
            "shards",
            "weights",
            "device",
            "cache",
            "request_timeout",
            "retries",
            "api_key_env",
            "context_length",
            "concurrency",
            "tokenizer",
            "no_cache",
        ]
        .into_iter()
        .chain(loading)
        .collect();
        for f in &run {
            assert!(
                changing.contains(f) || other.contains(f.as_str()),
                "run --{f}: does it change prompts? add it to PromptFlags or to this list"
            );
        }
    }
}
