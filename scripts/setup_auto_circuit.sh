#!/usr/bin/env bash
# Set up .venv-autocircuit with auto-circuit 1.0.1 from PyPI, for benchmarks/vs_auto_circuit.py.
# auto-circuit needs TransformerLens 2.x (circuitdag's .venv has a newer one), so it gets its
# own virtual environment; safe to rerun (it skips what is done).
#  - torch 2.13.0: the CPU build on machines without an NVIDIA GPU (as scripts/setup.sh)
#  - auto-circuit 1.0.1 with its dependencies (tracr-pypi, JAX, plotly, ...) and TransformerLens 2.x
# auto-circuit's tracr datasets are not in its wheel; the benchmark writes them itself from
# circuitdag's tracr task data, so nothing else is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${AUTO_CIRCUIT_VENV:-.venv-autocircuit}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${PIP[@]}" install "torch==2.13.0"
  else  # CPU build: a local wheel when the machine has one, else PyTorch's CPU index
    "${PIP[@]}" install --no-deps --retries 0 --timeout 20 "torch==2.13.0+cpu" \
      --extra-index-url https://download.pytorch.org/whl/cpu
    "${PIP[@]}" install "torch==2.13.0+cpu"  # its dependencies, from PyPI
  fi
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('auto-circuit') == '1.0.1'" >/dev/null 2>&1; then
  # TransformerLens 2.x pins numpy<2, and the newest pyarrow (pulled in by datasets) needs
  # numpy 2; pyarrow 21 (the oldest datasets 5 accepts) works with numpy 1.26;
  # torch stays the build installed above.
  TORCH=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")
  "${PIP[@]}" install "auto-circuit==1.0.1" "transformer-lens>=2,<3" "pyarrow>=21,<22" "torch==$TORCH"
fi
"$VENV/bin/python" - <<EOF
import importlib.metadata as m
import auto_circuit.prune_algos.ACDC  # noqa: F401  (fails here if the environment is broken)
print("setup: ready ($VENV): " + ", ".join(f"{d} {m.version(d)}" for d in ("auto-circuit", "transformer-lens", "torch")))
EOF
