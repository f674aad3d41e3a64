"""Compile a RASP program with tracr into a model circuitdag runs, with its ground truth.

    circuitdag tracr compile my_programs.py:make_program --vocab 1 2 3 --max-len 5 --out runs/prog
    circuitdag discover --task tracr:runs/prog

:func:`compile_tracr` (the command) compiles a RASP program with tracr (Lindner et al.
2023, "Tracr: Compiled Transformers as a Laboratory for Interpretability"), ports the
weights into the project's :class:`~circuitdag.models.hooked.TinyTransformer`, checks the
port against tracr on the inputs, derives the ground-truth circuit per input length
(:mod:`circuitdag.tracr_truth`) and writes a self-contained directory that
``--task tracr:DIR`` (:class:`~circuitdag.tasks.tracr.CompiledTracrTask`) runs without JAX.

The port (:func:`~circuitdag.tracr_port.port_program`, in :mod:`circuitdag.tracr_port`
with its checks): tracr's layer i (attention, then MLP) becomes block i;
heads and MLP widths are already padded by tracr; ``W_U`` projects the residual stream
onto the program's output directions; all biases must be zero (tracr writes constants
through a ``one`` direction). Weights are rounded to float32, the precision written, before
any check, so the checks and the ground truth see exactly the written model.

The checks (:func:`~circuitdag.tracr_port.check_port`), every input of every length (or a seeded sample of
``max_inputs`` when there are more), each failure a :class:`TracrCheckError` with a
one-line reason (the command exits 1):

* the layer-0 residual equals tracr's input embedding (max abs difference <= 1e-6);
* the raw output-space values equal tracr's final residual projected by the unembedding
  (<= 1e-3) at every non-BOS, non-PAD position;
* the decoded outputs (argmax, or the number) equal tracr's compiled model's, and equal
  tracr's RASP evaluator (``rasp.evaluate``) on the program (numbers within 1e-3); an
  output ``None`` (an Aggregate that selects nothing) fails, since no model output can be
  compared with it;
* the numpy model of :mod:`circuitdag.tracr_truth` equals the torch model (1e-9), and the
  ground truth passes that module's checks.

JAX, haiku and tracr are imported only inside :func:`port_program` (the ``tracr`` extra);
nothing at run time imports them.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import json
import random
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag._options import DEFAULT_MAX_INPUTS  # --help shows it, so defined there
from circuitdag.errors import ConfigError
from circuitdag.models.hooked import TinyConfig, load_tiny, save_tiny
from circuitdag.models.tracr_dir import DIR_FORMAT, INPUTS_FILE, MODEL_FILE
from circuitdag.tasks.tracr import BOS, PAD, CompiledTracrTask, pair_counterfactuals
from circuitdag.tracr_port import (
    COMPILE_OPTIONS,
    Port,
    check_node_model,
    check_port,
    examples,
    port_program,
    probes,
)
from circuitdag.tracr_truth import TracrCheckError, derive_ground_truth

__all__ = [
    "DEFAULT_MAX_INPUTS",
    "Port",
    "check_node_model",
    "check_port",
    "compile_tracr",
    "examples",
    "load_program",
    "port_program",
    "probes",
]

Value = Any
#: ACDC threshold (l2) of a compiled task: the shipped programs' (docs/tracr.md).
DEFAULT_THRESHOLD = 1e-3


# --------------------------------------------------------------------------- user programs


def load_program(target: str) -> tuple[Any, dict[str, Any]]:
    """What ``MODULE:FUNCTION`` returns (``FUNCTION()`` is called with no arguments; a RASP
    program, or for ``--inputs`` the input sequences), and where it came from. ``MODULE`` is a ``.py`` file or an importable
    module. Raises :class:`~circuitdag.errors.ConfigError` naming what is missing."""
    module_name, sep, func_name = target.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(
            f"expected MODULE:FUNCTION (a .py file or module, and a function in it), got {target!r}"
        )
    file = Path(module_name)
    if module_name.endswith(".py") or file.is_file():
        if not file.is_file():
            raise ConfigError(f"no Python file {file}")
        spec = importlib.util.spec_from_file_location(f"circuitdag_user_rasp_{file.stem}", file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {file} as a Python module")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's code: report it in one line
            raise ConfigError(f"importing {file} failed: {type(exc).__name__}: {exc}") from exc
        source_file: Path | None = file
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import module {module_name!r} ({exc}); give a .py file or an importable module"
            ) from exc
        source_file = Path(module.__file__) if module.__file__ else None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"{module_name} has no function {func_name!r}")
    try:
        program = func()
    except Exception as exc:  # the user's code
        raise ConfigError(f"{target}() failed: {type(exc).__name__}: {exc}") from exc
    try:
        func_source = inspect.getsource(func)
    except (OSError, TypeError):
        func_source = None
    origin: dict[str, Any] = {"target": target, "function": func_name, "function_source": func_source}
    if source_file is not None:
        origin["source_file"] = str(source_file)
        origin["source_sha256"] = hashlib.sha256(source_file.read_bytes()).hexdigest()
        origin["_source_path"] = source_file
    return program, origin


def _parse_vocab(vocab: Iterable[Value]) -> list[Value]:
    out = list(vocab)
    if not out:
        raise ConfigError("--vocab is empty; give the input tokens, e.g. --vocab 1 2 3")
    for v in out:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ConfigError(f"vocabulary entries must be numbers or strings, got {v!r}")
        if v in (BOS, PAD):
            raise ConfigError(f"{v!r} is the compiler's {v} token; it cannot be in the vocabulary")
    if len({(type(v), v) for v in out}) != len(out):
        raise ConfigError(f"--vocab has repeated entries: {out}")
    return out


def _input_space(
    vocab: list[Value], length: int, max_inputs: int, seed: int
) -> tuple[list[list[Value]], int]:
    """All sequences of ``length`` over ``vocab`` (in product order), or a seeded sample of
    ``max_inputs`` of them (sorted by index) when there are more; and how many there are."""
    total = len(vocab) ** length
    if total <= max_inputs:
        return [list(t) for t in itertools.product(vocab, repeat=length)], total
    rng = random.Random(seed)
    if total <= sys.maxsize:
        picked = sorted(rng.sample(range(total), max_inputs))
    else:  # random.sample needs len(range(total)) to fit a C ssize_t; draw indices until enough differ
        chosen: set[int] = set()
        while len(chosen) < max_inputs:
            chosen.add(rng.randrange(total))
        picked = sorted(chosen)
    out = []
    for index in picked:
        digits = []
        for _ in range(length):
            index, d = divmod(index, len(vocab))
            digits.append(vocab[d])
        out.append(digits[::-1])
    return out, total


def compile_tracr(
    program: Any, vocab: Iterable[Value], max_len: int, out: str | Path, *,
    lengths: Iterable[int] | None = None, inputs: Iterable[Sequence[Value]] | None = None,
    max_inputs: int = DEFAULT_MAX_INPUTS, seed: int = 0, overwrite: bool = False,
    command: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Compile ``program`` and write the directory ``out`` that ``--task tracr:OUT`` runs.

    ``program``: a RASP ``SOp`` or ``"MODULE:FUNCTION"`` (:func:`load_program`). ``vocab``:
    input token values (numbers or strings); ``max_len``: the longest input (BOS excluded).
    The input space: every sequence over ``vocab`` of each length in ``lengths`` (default
    ``[max_len]``, fixed-length), or a seeded (``seed``) sample of ``max_inputs`` per length
    when there are more; or exactly ``inputs`` (sequences, grouped by length). Each length
    gets its own ground truth (the engine runs one length at a time:
    :class:`~circuitdag.tasks.tracr.CompiledTracrTask`).

    Writes ``model.safetensors``, ``model.json`` (config, vocabularies, ground truth per
    length and ablation, checks, provenance), ``inputs.json`` (inputs and the program's
    outputs per length) and, for a program from a file, ``program.py`` (a copy). Nothing
    is written unless every check passes. Returns a summary (also in ``model.json``).

    Raises :class:`TracrCheckError` when a check fails (module docstring),
    :class:`~circuitdag.errors.ConfigError` for bad arguments or a program tracr cannot
    compile, :class:`~circuitdag.errors.MissingExtraError` without the ``tracr`` extra.
    """
    out = Path(out)
    vocab = _parse_vocab(vocab)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"--max-len must be an integer >= 1, got {max_len!r}")
    if max_inputs < 2:
        raise ConfigError(f"--max-inputs must be >= 2, got {max_inputs}")
    if out.exists() and any(out.iterdir()) and not overwrite and not (out / f"{MODEL_FILE}.json").exists():
        raise ConfigError(
            f"{out} exists and is not a compiled directory; choose another --out or pass --force"
        )
    origin: dict[str, Any] = {}
    if isinstance(program, str):
        program, origin = load_program(program)
    name = str(origin.get("function") or getattr(program, "label", "program"))

    groups: dict[int, list[list[Value]]] = {}
    space_size: dict[int, int] = {}
    if inputs is not None:
        if lengths is not None:
            raise ConfigError("give either --lengths or --inputs (whose lengths are used), not both")
        known = {(type(v), v) for v in vocab}
        for xs in inputs:
            xs = list(xs)
            if not 1 <= len(xs) <= max_len:
                raise ConfigError(
                    f"input {xs} has length {len(xs)}; inputs need length 1..{max_len} (--max-len)"
                )
            bad = [x for x in xs if (type(x), x) not in known]
            if bad:
                raise ConfigError(f"input {xs} has {bad[0]!r}, which is not in --vocab")
            groups.setdefault(len(xs), []).append(xs)
        space_size = {n: len(g) for n, g in groups.items()}
        if not groups:
            raise ConfigError("--inputs gave no inputs")
    else:
        wanted = sorted(set(lengths)) if lengths is not None else [max_len]
        bad_len = [
            n for n in wanted if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_len
        ]
        if bad_len or not wanted:
            raise ConfigError(f"--lengths must be integers in 1..{max_len} (--max-len), got {list(wanted)}")
        for n in wanted:
            groups[n], space_size[n] = _input_space(vocab, n, max_inputs, seed)
    for n, g in groups.items():
        if len({tuple(map(repr, xs)) for xs in g}) < 2:
            raise ConfigError(f"length {n} has fewer than two distinct inputs; resample ablation needs two")

    port = port_program(program, vocab, max_len, name=name)
    checks: dict[str, Any] = {}
    outputs: dict[int, list[list[Value]]] = {}
    by_length: dict[str, Any] = {}
    truth: dict[str, Any] = {}
    n_task = CompiledTracrTask.n_prompts
    for n in sorted(groups):
        where = f"{name} (length {n})"
        diffs, outputs[n] = check_port(port, groups[n], name=where)
        checks[str(n)] = {**diffs, "inputs_checked": len(groups[n]), "inputs_in_space": space_size[n],
                          "sampled": len(groups[n]) < space_size[n]}  # fmt: skip
        nm = check_node_model(port, np.array([port.encode(xs) for xs in groups[n]]), where)
        space = groups[n]
        gt_probes, task_probes = probes(
            nm, port, space, lambda s, m, space=space: pair_counterfactuals(space, s, m), n_task
        )
        gt = derive_ground_truth(nm, gt_probes, task_probes, DEFAULT_THRESHOLD, label=where)
        truth = {k: gt[k] for k in ("rule", "tolerance", "n_full_graph_edges", "structural")}
        by_length[str(n)] = {a: gt[a] for a in ("zero", "resample")}

    provenance = {
        **{k: v for k, v in origin.items() if not k.startswith("_")},
        "command": command,
        "compiled_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "compile_options": COMPILE_OPTIONS,
        "versions": _versions(),
    }
    meta = {
        "tracr_dir": DIR_FORMAT,
        "name": name,
        "program": origin.get("function_source") or f"RASP program {program.label!r}",
        "input_vocab": port.input_vocab,
        "bos": BOS,
        "pad": PAD,
        "max_seq_len": max_len,
        "lengths": sorted(groups),
        "output": port.output,
        "default_threshold": DEFAULT_THRESHOLD,
        "check_vs_tracr": checks,
        "examples": examples(port, groups[max(groups)], outputs[max(groups)]),
        "ground_truth": {**truth, "by_length": by_length},
        "provenance": provenance,
    }
    inputs_doc = {
        "lengths": {
            str(n): {
                "n_space": space_size[n],
                "sampled": len(groups[n]) < space_size[n],
                "seed": seed,
                "inputs": groups[n],
                "outputs": outputs[n],
            }
            for n in sorted(groups)
        }
    }
    out.mkdir(parents=True, exist_ok=True)
    model32 = port.model.float()
    save_tiny(model32, out / MODEL_FILE, meta=meta)
    (out / INPUTS_FILE).write_text(json.dumps(inputs_doc))
    if "_source_path" in origin:
        shutil.copyfile(origin["_source_path"], out / "program.py")
    elif (out / "program.py").exists():  # from an earlier compile into this directory
        (out / "program.py").unlink()
    # The written files reload to the same outputs.
    loaded, _ = load_tiny(out / MODEL_FILE)
    tokens = torch.tensor([port.encode(xs) for xs in groups[max(groups)]])
    with torch.no_grad():
        if not torch.allclose(loaded(tokens), model32(tokens)):
            raise TracrCheckError(f"{name}: the written model does not reload to the same outputs")
    return summary(meta, port.model.cfg)


def summary(meta: dict[str, Any], cfg: TinyConfig) -> dict[str, Any]:
    """What ``circuitdag tracr compile`` prints: sizes, checks and ground truth per length."""
    gt = meta["ground_truth"]
    return {
        "name": meta["name"],
        "layers": cfg.n_layers,
        "heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "full_graph_edges": gt["n_full_graph_edges"],
        "structural_edges": len(gt["structural"]),
        "lengths": {
            n: {"inputs_checked": meta["check_vs_tracr"][n]["inputs_checked"],
                "inputs_in_space": meta["check_vs_tracr"][n]["inputs_in_space"],
                **{a: {"edges": len(t[a]["edges"]), "inert": len(t[a]["inert"]),
                       "acdc_on_task_data_matches": t[a]["acdc_on_task_data_matches"]} for a in ("zero", "resample")}}
            for n, t in gt["by_length"].items()
        },
    }  # fmt: skip


def summary_lines(result: dict[str, Any]) -> str:
    """The summary of :func:`compile_tracr` as text: the model, then one line per length."""
    r = result
    heads = f"{r['heads']} head" + ("s" if r["heads"] != 1 else "")
    layers = f"{r['layers']} layer" + ("s" if r["layers"] != 1 else "")
    head = f"{r['name']}: {layers} x {heads}, d_model {r['d_model']}; "
    lines = [head + f"{r['full_graph_edges']} edges, {r['structural_edges']} structural"]
    for n, row in r["lengths"].items():
        checked, total = row["inputs_checked"], row["inputs_in_space"]
        on = f"all {total} inputs" if checked == total else f"a seeded sample of {checked} of {total} inputs"
        truth = ", ".join(
            f"{a} {row[a]['edges']} edges ({row[a]['inert']} inert)" for a in ("zero", "resample")
        )
        found = "/".join("yes" if row[a]["acdc_on_task_data_matches"] else "NO" for a in ("zero", "resample"))
        lines.append(f"length {n}: checked on {on}; ground truth {truth}; "
                     f"ACDC at {DEFAULT_THRESHOLD:g} finds it (zero/resample): {found}")  # fmt: skip
    return "\n".join(lines)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("circuitdag", "tracr-pypi", "jax", "jaxlib", "dm-haiku", "torch", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out
