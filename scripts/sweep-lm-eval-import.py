#!/usr/bin/env python3
"""Sweeps `icl-eval tasks import` over an lm-evaluation-harness tasks folder and tallies what it
accepts and why it refuses the rest, per file and per folder.

    pip download --no-deps lm-eval==0.4.13 -d /tmp/lm-eval && unzip -q /tmp/lm-eval/*.whl -d /tmp/lm-eval
    scripts/sweep-lm-eval-import.py /tmp/lm-eval/lm_eval/tasks [--icl-eval target/release/icl-eval]

Prints Markdown: totals, refusals by reason (a file counts once per reason it hits), and one row per
top-level folder ("alone": the files a reason is the only refusal of, what lifting it gains).
`--files` also lists every file with its verdict and reasons.
"""

import argparse
import collections
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile

REASONS = [
    # (label, pattern in an import error line), first match wins per line.
    ("`!function` (Python)", re.compile(r"!function")),
    ("a task key missing (template and group files: `doc_to_text`, `output_type`, …)",
     re.compile(r"key `[^`]+` is missing")),
    ("group file (`task:` list, `group`, `group_alias`, `aggregate_metric_list`)",
     re.compile(r"key `(task|group|group_alias|aggregate_metric_list)`")),
    ("`filter_list`", re.compile(r"key `filter_list`")),
    ("metric not computed", re.compile(r"has metric `")),
    ("metric option", re.compile(r"key `metric_list\.[^`]*\.")),
    ("`dataset_kwargs`", re.compile(r"key `dataset_kwargs")),
    ("generation settings", re.compile(r"key `generation_kwargs")),
    ("`fewshot_config`", re.compile(r"key `fewshot_config")),
    ("YAML icl-eval cannot read", re.compile(r"(at line \d+ column \d+|did not find expected|not a mapping)")),
]


NOT_A_TASK = "not a task: no `task` or `group` key (lm-eval's index skips it too)"


def verdict(icl_eval, path, allow_python=False):
    """(accepted, [reason labels], first error line)."""
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "task.yaml")
        extra = ["--allow-python"] if allow_python else []
        p = subprocess.run([icl_eval, "tasks", "import", path, "--output", out, *extra],
                           capture_output=True, text=True)
    if p.returncode == 0:
        return True, [], ""
    # Each problem line is "PATH: what"; the header line only counts them.
    lines = [
        l.strip().removeprefix(path + ": ")
        for l in p.stderr.splitlines()
        if l.strip() and not l.startswith("note") and "cannot translate" not in l
    ]
    # Without a `task` (or `group`) key a file is a base others include: lm-eval's task index
    # skips it too ("Unknown config shape"), so it is no task that fails to import.
    if "key `task` is missing" in lines:
        return False, [NOT_A_TASK], lines[0]
    reasons = set()
    for line in lines:
        for label, pat in REASONS:
            if pat.search(line):
                reasons.add(label)
                break
        else:
            m = re.search(r"key `([^`]+)`", line)
            if m:
                reasons.add(f"key `{m.group(1).split('.')[0]}`")
    if not reasons:
        reasons.add("other")
    first = lines[0] if lines else p.stderr.strip()
    return False, sorted(reasons), first


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks_dir")
    ap.add_argument("--icl-eval", default=os.environ.get("ICL_EVAL", "target/release/icl-eval"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--files", action="store_true", help="also list every file's verdict")
    ap.add_argument("--allow-python", action="store_true",
                    help="import as `tasks import --allow-python` does (hooks become `python:`)")
    a = ap.parse_args()
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(a.tasks_dir)
        for f in names
        if f.endswith(".yaml")
    )
    if not files:
        sys.exit(f"no *.yaml under {a.tasks_dir}")
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda f: verdict(a.icl_eval, f, a.allow_python), files))
    by_reason = collections.Counter()
    folders = collections.defaultdict(lambda: [0, 0, collections.Counter()])
    for f, (ok, reasons, _) in zip(files, results):
        folder = os.path.relpath(f, a.tasks_dir).split(os.sep)[0]
        row = folders[folder]
        row[0] += 1
        row[1] += ok
        for r in reasons:
            by_reason[r] += 1
            row[2][r] += 1
    accepted = sum(ok for ok, _, _ in results)
    bases = by_reason[NOT_A_TASK]
    tasks = len(files) - bases
    print(f"{accepted} of {len(files)} YAML files import ({100 * accepted / len(files):.1f}%), "
          f"in {sum(1 for r in folders.values() if r[1])} of {len(folders)} folders; "
          f"{bases} files are no task or group (bases others include), so {accepted} of the "
          f"{tasks} task and group files import ({100 * accepted / tasks:.1f}%).\n")
    no_python = {name: row for name, row in folders.items() if not row[2]["`!function` (Python)"]}
    whole = sorted(name for name, row in no_python.items()
                   if row[0] == row[1] + row[2][NOT_A_TASK])
    print(f"Folders without `!function`: {len(no_python)}; every task and group file imports in "
          f"{len(whole)}. The others (imported / task and group files: main refusal): " + "; ".join(
              f"{name} ({row[1]}/{row[0] - row[2][NOT_A_TASK]}: "
              f"{(row[2] - collections.Counter({NOT_A_TASK: row[2][NOT_A_TASK]})).most_common(1)[0][0]})"
              for name, row in sorted(no_python.items())
              if name not in whole) + ".\n")
    # "alone": the files this is the only refusal of, i.e. what lifting it would gain.
    alone = collections.Counter(rs[0] for ok, rs, _ in results if len(rs) == 1)
    print("| refused because of | files | alone |\n|---|---:|---:|")
    for r, n in by_reason.most_common():
        print(f"| {r} | {n} | {alone[r]} |")
    print("\n| folder | files | import | main refusal |\n|---|---:|---:|---|")
    for name in sorted(folders):
        n, ok, reasons = folders[name]
        main_reason = reasons.most_common(1)[0][0] if reasons else ""
        print(f"| {name} | {n} | {ok} | {main_reason} |")
    sys.stdout.flush()
    if a.files:
        print("\n| file | verdict | reasons |\n|---|---|---|")
        for f, (ok, reasons, first) in zip(files, results):
            print(f"| {os.path.relpath(f, a.tasks_dir)} | {'imports' if ok else first} | {'; '.join(reasons)} |")


if __name__ == "__main__":
    main()
