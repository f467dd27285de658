#!/usr/bin/env bash
# Installs Intel MKL from PyPI (mkl-static, mkl-include) into a folder outside the clone, for
# `cargo build --release --features mkl`. Prints the MKLROOT to build with:
#   MKLROOT=$(scripts/install-mkl.sh) cargo build --release --features mkl
# The binary finds MKL's OpenMP runtime there through an rpath (build.rs).
set -euo pipefail
cache="${ICL_EVAL_CACHE_DIR:-$HOME/.cache/icl-eval}"
venv="$cache/mkl-venv"
if [ ! -f "$venv/lib/libmkl_core.a" ] || [ ! -f "$venv/include/mkl.h" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q mkl-static mkl-include >&2
fi
echo "$venv"
