#!/usr/bin/env python3
"""Builds the test fixture for the task library: a local copy of the Hugging Face Hub datasets the
library reads, in the Hub's layout and the canonical schemas, converted from the public benchmark
data in ../shared/data (whatever shape its mirrors had).

    python scripts/make-fake-hub.py DATA_DIR OUT

Needs `datasets` (the venv scripts/install-llama-server.sh makes has it), so that features --
ClassLabel names, Sequence and struct columns -- are written into each parquet file's `huggingface`
schema metadata exactly as the Hub's own conversion writes them.

OUT/<org>/<name>/parquet/<config>/<split>/0000.parquet is the repository's parquet conversion
(revision refs/convert/parquet); OUT/<org>/<name>/main/<path> are files of the repository itself
(revision main), for tasks that read a repository's own data files as lm-eval does. The tests serve
OUT over HTTP as the Hub does (tests/common/fake_hub.rs).

The mirrors lack some splits lm-eval reads (HellaSwag's train, PIQA's train, ...). Such a split is
carved out of the end of one the mirror has, so every split a task names exists; no row is in two
splits, and the carving is listed in OUT/CARVED.txt. Fields a mirror dropped are rebuilt where the
data allows it (noted below per dataset); this is test data, not a substitute for the Hub.
"""

import bz2
import csv
import gzip
import json
import re
import shutil
import sys
from pathlib import Path

from datasets import ClassLabel, Dataset, Features, Sequence, Value

DATA = Path(sys.argv[1])
OUT = Path(sys.argv[2])
CARVED = []

S = Value("string")
I32 = Value("int32")


def write(repo, config, split, rows, features):
    path = OUT / repo / "parquet" / config / split / "0000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=Features(features)).to_parquet(str(path))


def carve(repo, config, rows, source, target, n):
    """The last `n` rows of `source` become split `target` (the mirror lacks it)."""
    CARVED.append(f"{repo} {config}: {target} = last {n} of {len(rows)} {source} rows")
    return rows[:-n], rows[-n:]


def jsonl(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def options_of(instruction, word):
    """LLM-Adapters' instruction strings: the question, then `Answer1: ... Answer2: ...`."""
    m = re.match(
        r"(?s)^Please choose the correct answer to the question: (.*?)\n\n(" + word + r"1: .*?)\n\nAnswer format",
        instruction,
    )
    question, opts = m.group(1), m.group(2)
    return question, [o for o in re.split(r"\s*" + word + r"\d+:\s*", opts) if o]


def arc():
    feats = {"id": S, "question": S, "choices": {"text": Sequence(S), "label": Sequence(S)}, "answerKey": S}
    for config, folder in [("ARC-Easy", "data-easy"), ("ARC-Challenge", "data-challenge")]:
        keys = jsonl(DATA / f"arc/aristo-leaderboard/{folder}/question-answers.jsonl")
        for split in ["train", "test"]:
            items = json.load(open(DATA / f"arc/LLM-Adapters/{config}/{split}.json"))
            rows = []
            for i, item in enumerate(items):
                question, texts = options_of(item["instruction"], "Answer")
                gold = int(item["answer"].removeprefix("answer")) - 1
                if split == "test":
                    # The leaderboard's answer key lists the test questions in the same order.
                    ident, key = keys[i]["id"], keys[i]["answerKey"]
                    labels = [str(j + 1) for j in range(len(texts))] if key.isdigit() else list("ABCDE"[: len(texts)])
                    assert labels.index(key) == gold, (config, i)
                else:
                    ident, labels = f"{config}-train-{i}", list("ABCDE"[: len(texts)])
                rows.append(
                    {"id": ident, "question": question, "choices": {"text": texts, "label": labels}, "answerKey": labels[gold]}
                )
            if split == "train":
                rows, validation = carve("allenai/ai2_arc", config, rows, "train", "validation", 200)
                write("allenai/ai2_arc", config, "validation", validation, feats)
            write("allenai/ai2_arc", config, split, rows, feats)


def hellaswag():
    # The mirror's text format: "<activity_label>: <ctx>", the gold index, four endings. ctx_b (the
    # lowercased start of the next sentence) is the part after the last sentence end, as in the
    # original ActivityNet items; WikiHow items keep all of ctx in ctx_a.
    lines = bz2.open(DATA / "hellaswag/hellaswag_val_full.txt.bz2", "rt", encoding="utf-8").read().split("\n")
    rows = []
    for i in range(0, len(lines) - 5, 6):
        label_ctx, gold, endings = lines[i], lines[i + 1], lines[i + 2 : i + 6]
        activity, ctx = label_ctx.split(": ", 1)
        m = re.match(r"^(.*[.!?]) ([a-z][^.!?]*)$", ctx)
        ctx_a, ctx_b = (m.group(1), m.group(2)) if m else (ctx, "")
        rows.append(
            {
                "ind": len(rows),
                "activity_label": activity,
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": ctx,
                "endings": endings,
                "source_id": f"mirror~{len(rows)}",
                "split": "val",
                "split_type": "indomain",
                "label": gold,
            }
        )
    feats = {
        "ind": I32,
        "activity_label": S,
        "ctx_a": S,
        "ctx_b": S,
        "ctx": S,
        "endings": Sequence(S),
        "source_id": S,
        "split": S,
        "split_type": S,
        "label": S,
    }
    validation, train = carve("Rowan/hellaswag", "default", rows, "validation", "train", 1000)
    write("Rowan/hellaswag", "default", "validation", validation, feats)
    write("Rowan/hellaswag", "default", "train", train, feats)


def piqa():
    docs = jsonl(DATA / "piqa/valid.jsonl")
    labels = [int(x) for x in open(DATA / "piqa/valid-labels.lst").read().split()]
    rows = [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": g} for d, g in zip(docs, labels)]
    feats = {"goal": S, "sol1": S, "sol2": S, "label": ClassLabel(names=["0", "1"])}
    validation, train = carve("baber/piqa", "default", rows, "validation", "train", 300)
    write("baber/piqa", "default", "validation", validation, feats)
    write("baber/piqa", "default", "train", train, feats)


def openbookqa():
    feats = {"id": S, "question_stem": S, "choices": {"text": Sequence(S), "label": Sequence(S)}, "answerKey": S}
    keys = jsonl(DATA / "openbookqa/aristo-leaderboard/question-answers.jsonl")
    out = {}
    for split in ["train", "test"]:
        rows = []
        for i, item in enumerate(json.load(open(DATA / f"openbookqa/LLM-Adapters/{split}.json"))):
            question, texts = options_of(item["instruction"], "Answer")
            gold = int(item["answer"].removeprefix("answer")) - 1
            ident = keys[i]["id"] if split == "test" else f"train-{i}"
            if split == "test":
                assert "ABCD".index(keys[i]["answerKey"]) == gold, i
            rows.append({"id": ident, "question_stem": question, "choices": {"text": texts, "label": list("ABCD")}, "answerKey": "ABCD"[gold]})
        out[split] = rows
    out["train"], out["validation"] = carve("allenai/openbookqa", "main", out["train"], "train", "validation", 500)
    for split, rows in out.items():
        write("allenai/openbookqa", "main", split, rows, feats)


def winogrande():
    rows = []
    for item in json.load(open(DATA / "winogrande/LLM-Adapters/test.json")):
        m = re.match(
            r"(?s)^Please choose the correct answer to fill in the blank to complete the given sentence: (.*)\n\nOption1: (.*) Option2: (.*) Answer format",
            item["instruction"],
        )
        rows.append({"sentence": m.group(1), "option1": m.group(2), "option2": m.group(3), "answer": item["answer"].removeprefix("option")})
    feats = {"sentence": S, "option1": S, "option2": S, "answer": S}
    validation, train = carve("allenai/winogrande", "winogrande_xl", rows, "validation", "train", 267)
    write("allenai/winogrande", "winogrande_xl", "validation", validation, feats)
    write("allenai/winogrande", "winogrande_xl", "train", train, feats)


def super_glue():
    repo = "aps/super_glue"
    # BoolQ: llm-foundry's "Passage: ...\nQuestion: ...?" queries, gold 0 = no.
    rows = []
    for i, d in enumerate(jsonl(DATA / "boolq/boolq.jsonl")):
        m = re.match(r"(?s)^Passage: (.*)\nQuestion: (.*)\?$", d["query"])
        rows.append({"question": m.group(2), "passage": m.group(1), "idx": i, "label": d["gold"]})
    feats = {"question": S, "passage": S, "idx": I32, "label": ClassLabel(names=["False", "True"])}
    validation, train = carve(repo, "boolq", rows, "validation", "train", 270)
    write(repo, "boolq", "validation", validation, feats)
    write(repo, "boolq", "train", train, feats)
    # CB and RTE: the splits as they are; the unlabelled test sets get -1, as on the Hub.
    for config, names in [("cb", ["entailment", "contradiction", "neutral"]), ("rte", ["entailment", "not_entailment"])]:
        feats = {"premise": S, "hypothesis": S, "idx": I32, "label": ClassLabel(names=names)}
        for split, file in [("train", "train"), ("validation", "val"), ("test", "test")]:
            rows = [
                {"premise": d["premise"], "hypothesis": d["hypothesis"], "idx": d["idx"], "label": names.index(d["label"]) if "label" in d else -1}
                for d in jsonl(DATA / f"{config}/{file}.jsonl")
            ]
            write(repo, config, split, rows, feats)
    # COPA: llm-foundry's "<premise without its period>, therefore|because" queries and
    # lowercased alternatives; the premise's period and the capitals are put back.
    rows = []
    for i, d in enumerate(jsonl(DATA / "copa/llm-foundry/copa.jsonl")):
        m = re.match(r"^(.*), (therefore|because)$", d["query"])
        cap = lambda s: s[0].upper() + s[1:]
        rows.append(
            {
                "premise": m.group(1) + ".",
                "choice1": cap(d["choices"][0]),
                "choice2": cap(d["choices"][1]),
                "question": "effect" if m.group(2) == "therefore" else "cause",
                "idx": i,
                "label": d["gold"],
            }
        )
    feats = {"premise": S, "choice1": S, "choice2": S, "question": S, "idx": I32, "label": ClassLabel(names=["choice1", "choice2"])}
    validation, train = carve(repo, "copa", rows, "validation", "train", 40)
    write(repo, "copa", "validation", validation, feats)
    write(repo, "copa", "train", train, feats)


def sst2_line(line):
    label, sentence = line.split(" ", 1)
    return int(label), sentence


def sst2():
    # GLUE's SST-2 (sentence, label, idx) and SetFit/sst2 (text, label, label_text): the same
    # sentences, binary labels 0 = negative.
    glue = {"sentence": S, "label": ClassLabel(names=["negative", "positive"]), "idx": I32}
    setfit = {"text": S, "label": Value("int64"), "label_text": S}
    for split, file in [("train", "train"), ("validation", "dev"), ("test", "test")]:
        pairs = [sst2_line(l) for l in open(DATA / f"sst2/stsa.binary.{file}", encoding="utf-8").read().splitlines() if l.strip()]
        write("SetFit/sst2", "default", split, [{"text": s, "label": g, "label_text": ["negative", "positive"][g]} for g, s in pairs], setfit)
        if split != "test":
            write("nyu-mll/glue", "sst2", split, [{"sentence": s, "label": g, "idx": i} for i, (g, s) in enumerate(pairs)], glue)


def ag_news():
    rows = []
    with open(DATA / "agnews/test.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.append({"text": f"{r['Title']} {r['Description']}", "label": int(r["Class Index"]) - 1})
    feats = {"text": S, "label": ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])}
    test, train = carve("fancyzhx/ag_news", "default", rows, "test", "train", 1600)
    write("fancyzhx/ag_news", "default", "test", test, feats)
    write("fancyzhx/ag_news", "default", "train", train, feats)


TREC_COARSE = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]


def trec():
    fine_names = []
    splits = {}
    for split in ["train", "test"]:
        rows = []
        for line in open(DATA / f"trec/{split}.txt", encoding="latin-1").read().splitlines():
            label, text = line.split(" ", 1)
            rows.append((label, text))
        splits[split] = rows
        fine_names += [label for label, _ in rows]
    fine_names = sorted(set(fine_names))
    feats = {"text": S, "coarse_label": ClassLabel(names=TREC_COARSE), "fine_label": ClassLabel(names=fine_names)}
    for split, rows in splits.items():
        write(
            "CogComp/trec",
            "default",
            split,
            [{"text": t, "coarse_label": TREC_COARSE.index(l.split(":")[0]), "fine_label": fine_names.index(l)} for l, t in rows],
            feats,
        )


def lambada():
    rows = jsonl(DATA / "lambada/lambada_test.jsonl")
    write("EleutherAI/lambada_openai", "default", "test", [{"text": r["text"]} for r in rows], {"text": S})


def mmlu():
    feats = {"question": S, "subject": S, "choices": Sequence(S), "answer": ClassLabel(names=["A", "B", "C", "D"])}
    for path in sorted((DATA / "mmlu/test").glob("*_test.csv")):
        subject = path.name.removesuffix("_test.csv")
        for split in ["dev", "test"]:
            with open(DATA / f"mmlu/{split}/{subject}_{split}.csv", encoding="utf-8") as f:
                rows = [
                    {"question": r["question"], "subject": subject, "choices": [r[f"choice{j}"] for j in range(4)], "answer": int(r["answer"])}
                    for r in csv.DictReader(f)
                ]
            write("cais/mmlu", subject, split, rows, feats)


def gpt3():
    # EleutherAI/arithmetic keeps openai/gpt-3's jsonl files as they are (lm-eval reads them as the
    # repository's own data files); EleutherAI/unscramble's conversion has one config per file.
    src = DATA / "gpt3_synthetic/data"
    for path in sorted(src.glob("*.jsonl")):
        dest = OUT / "EleutherAI/arithmetic/main/data" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    for path in sorted(src.glob("*.jsonl.gz")):
        config = path.name.removesuffix(".jsonl.gz")
        rows = [{"context": r["context"], "completion": r["completion"]} for r in jsonl(path)]
        write("EleutherAI/unscramble", config, "validation", rows, {"context": S, "completion": S})


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for build in [arc, hellaswag, piqa, openbookqa, winogrande, super_glue, sst2, ag_news, trec, lambada, mmlu, gpt3]:
        build()
    (OUT / "CARVED.txt").write_text("\n".join(CARVED) + "\n")


if __name__ == "__main__":
    main()
