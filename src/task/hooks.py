# icl-eval's driver for lm-eval's `!function` hooks, run only when the user passes --allow-python.
# Reads {"hooks": {name: "FILE.py:function"}, "splits": {split: [doc, ...]}} on stdin; writes
# {split: [doc, ...]} on stdout: each split through process_docs (a `datasets.Dataset`, as lm-eval
# hands it), then each doc given `__icl_text`, `__icl_target`, `__icl_choices` from the per-doc hooks.
# Or reads {"aggregate": [{"hook": "FILE.py:function", "items": [[gold, pred], ...]}, ...]} and
# writes each cell's aggregated score.
import importlib.util
import json
import os
import sys

modules = {}


def hook(spec):
    path, name = spec.rsplit(":", 1)
    if path not in modules:
        sys.path.insert(0, os.path.dirname(path))
        s = importlib.util.spec_from_file_location(f"icl_eval_hook_{len(modules)}", path)
        m = importlib.util.module_from_spec(s)
        s.loader.exec_module(m)
        modules[path] = m
    return getattr(modules[path], name)


def plain(v):
    """A value JSON can carry (lm-eval hooks return ints, strings, lists, numpy scalars)."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def main():
    req = json.load(sys.stdin)
    if "aggregate" in req:
        # A cell's score from its (gold, prediction) pairs, as lm-eval calls an aggregation; a cell
        # the function fails on is left empty (null), named on stderr.
        out = []
        for c in req["aggregate"]:
            try:
                out.append(plain(hook(c["hook"])([tuple(p) for p in c["items"]])))
            except Exception as e:
                print(f"{c['hook']}: {type(e).__name__}: {e}", file=sys.stderr)
                out.append(None)
        json.dump(out, sys.stdout)
        return
    hooks = req["hooks"]
    out = {}
    splits = dict(req["splits"])
    if "fewshot_samples" in hooks:
        # lm-eval uses the listed samples as they are, without process_docs.
        out[req["samples_split"]] = [dict(d) for d in hook(hooks["fewshot_samples"])()]
    for split, docs in splits.items():
        if "process_docs" in hooks:
            try:
                import datasets
            except ImportError:
                sys.exit("process_docs needs the `datasets` package (pip install datasets), "
                         "as lm-eval hands it a datasets.Dataset")
            ds = hook(hooks["process_docs"])(datasets.Dataset.from_list(docs))
            docs = [dict(d) for d in ds]
        out[split] = docs
    for docs in out.values():
        for field, key in [("doc_to_text", "__icl_text"), ("doc_to_target", "__icl_target"),
                           ("doc_to_choice", "__icl_choices"),
                           ("fewshot_doc_to_text", "__icl_fewshot_text"),
                           ("fewshot_doc_to_target", "__icl_fewshot_target")]:
            if field in hooks:
                f = hook(hooks[field])
                for d in docs:
                    d[key] = plain(f(d))
    json.dump(out, sys.stdout, default=str)


main()
