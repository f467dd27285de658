#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) into a virtual
# environment outside the clone, for the tests that drive a real server. Building the wheel
# compiles llama.cpp (about 10 minutes on 2 cores), so the wheel is kept and reused.
set -euo pipefail
version=0.3.36
cache="${ICL_EVAL_CACHE_DIR:-$HOME/.cache/icl-eval}"
venv="$cache/llama-venv"
# A portable x86-64 build (AVX2/FMA, no AVX-512/AMX): a GGML_NATIVE wheel built on one machine
# segfaulted on the first evaluation on another (AMX-capable) one, and so did the prebuilt wheel a
# machine's pip finds (find-links, pip cache): built from source, always.
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_BLAS=OFF -DLLAMA_CURL=OFF"
wheels="$cache/wheels-portable"
stamp="$venv/.icl-eval-build"
# The tests of lm-eval's Python hooks (--allow-python) run a venv of their own with `datasets`:
# process_docs hooks take a datasets.Dataset, as in lm-eval; aggregation hooks such as cb's
# `cb_multi_fi` call scikit-learn.
hooks="$cache/hooks-venv"
if ! "$hooks/bin/python" -c "import datasets, sklearn" 2>/dev/null; then
  [ -x "$hooks/bin/python" ] || python3 -m venv "$hooks"
  "$hooks/bin/pip" install -q datasets scikit-learn
fi
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version $flags" ] \
  && "$venv/bin/python" -c "import llama_cpp, llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  echo "llama-cpp-python $version: $venv"
  exit 0
fi
mkdir -p "$wheels"
rm -rf "$venv"
python3 -m venv "$venv"
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  # No BLAS, so the numbers are llama.cpp's own kernels.
  CMAKE_ARGS="$flags" \
    "$venv/bin/pip" wheel --no-deps --no-binary llama-cpp-python --no-cache-dir -w "$wheels" "llama-cpp-python==$version"
fi
"$venv/bin/pip" install -q "$wheels"/llama_cpp_python-"$version"-*.whl
"$venv/bin/pip" install -q "llama-cpp-python[server]==$version" --find-links "$wheels"
echo "$version $flags" > "$stamp"
echo "llama-cpp-python $version: $venv"
