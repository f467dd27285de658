#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) into a virtual
# environment outside the clone, for the tests that drive a real server. Building the wheel
# compiles llama.cpp (about 10 minutes on 2 cores), so the wheel is kept and reused.
set -euo pipefail
version=0.3.36
cache="${ICL_EVAL_CACHE_DIR:-$HOME/.cache/icl-eval}"
venv="$cache/llama-venv"
wheels="$cache/wheels"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp, llama_cpp.server, sys; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null; then
  echo "llama-cpp-python $version: $venv"
  exit 0
fi
mkdir -p "$wheels"
python3 -m venv "$venv"
if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
  # A CPU build for this machine's cores; no BLAS, so the numbers are llama.cpp's own kernels.
  CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DLLAMA_CURL=OFF" \
    "$venv/bin/pip" wheel --no-deps -w "$wheels" "llama-cpp-python==$version"
fi
"$venv/bin/pip" install -q "$wheels"/llama_cpp_python-"$version"-*.whl
"$venv/bin/pip" install -q "llama-cpp-python[server]==$version" --find-links "$wheels"
echo "llama-cpp-python $version: $venv"
