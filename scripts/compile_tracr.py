"""Compile the shipped tracr programs and derive their ground-truth circuits.

    pip install -e .[tracr]
    python scripts/compile_tracr.py            # writes circuitdag/models/zoo/tracr/*

For every program in :data:`circuitdag.tasks.tracr.SPECS` this runs the steps of
``circuitdag tracr compile`` (:mod:`circuitdag.tracr_compile`: compile, port into a
TinyTransformer, check against tracr on the whole input space, derive the ground truth
with :mod:`circuitdag.tracr_truth`), with two differences kept for the shipped files:

* the input space and counterfactuals are the task's (``SPECS[...].inputs``,
  :func:`~circuitdag.tasks.tracr.counterfactual_pairs`: ``tracr-length`` has padded inputs
  of every length, its counterfactuals of any length), and the outputs are also checked
  against the program's plain-Python reference (``SPECS[...].reference``);
* it writes ``<name>.safetensors`` + ``<name>.json`` into the zoo, with the ground truth
  of the one input space at the top level (``ground_truth["zero"]``, ...).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tracr.compiler import lib
from tracr.rasp import rasp

from circuitdag.models.hooked import load_tiny, save_tiny
from circuitdag.tasks import tracr as tasks
from circuitdag.tasks.tracr import BOS, PAD, SPECS, counterfactual_pairs, input_space
from circuitdag.tracr_port import check_node_model, check_port, examples, port_program, probes
from circuitdag.tracr_truth import derive_ground_truth


def _programs() -> dict[str, tuple[rasp.SOp, str]]:
    return {
        "reverse": (
            lib.make_reverse(rasp.tokens),
            (
                "length = SelectorWidth(Select(tokens, tokens, TRUE)); "
                "opp_idx = length - indices - 1; "
                "reverse = Aggregate(Select(indices, opp_idx, EQ), tokens)"
            ),
        ),
        "proportion": (
            lib.make_frac_prevs(rasp.tokens == "x"),
            (
                'frac_prevs = numerical(Aggregate(Select(indices, indices, LEQ), numerical(tokens == "x"), '
                "default=0))"
            ),
        ),
        "sort_unique": (
            lib.make_sort_unique(rasp.tokens, rasp.tokens),
            (
                "target_pos = SelectorWidth(Select(tokens, tokens, LT)); "
                "sort = Aggregate(Select(target_pos, indices, EQ), tokens)"
            ),
        ),
        "hist": (lib.make_hist(), "hist = SelectorWidth(Select(tokens, tokens, EQ))"),
        "length": (lib.make_length(), "length = SelectorWidth(Select(tokens, tokens, TRUE))"),
        "pair_balance": (
            lib.make_pair_balance(rasp.tokens, "(", ")"),
            (
                'opens = frac_prevs(tokens == "("); closes = frac_prevs(tokens == ")"); '
                "pair_balance = numerical(LinearSequenceMap(opens, closes, 1, -1))"
            ),
        ),
    }


def compile_one(name: str, out_dir: Path) -> dict:
    spec = SPECS[name]
    program, text = _programs()[name]
    port = port_program(program, spec.vocab, spec.max_seq_len, name=f"tracr-{spec.name}")
    space = input_space(spec)
    diffs, _ = check_port(port, space, name=name, reference=spec.reference)
    tokens = np.array([port.encode(xs) for xs in space])
    nm = check_node_model(port, tokens, name)
    gt_probes, task_probes = probes(nm, port, space, lambda s, m: counterfactual_pairs(spec, s, m),
                                    tasks.TracrTask.n_prompts)  # fmt: skip
    gt = derive_ground_truth(nm, gt_probes, task_probes, tasks.TracrTask.default_threshold, label=name)
    refs = [spec.reference([x for x in xs if x != PAD]) for xs in space]
    meta = {
        "name": f"tracr-{name.replace('_', '-')}",
        "program": text,
        "input_vocab": port.input_vocab,
        "bos": BOS,
        "pad": PAD,
        "max_seq_len": spec.max_seq_len,
        "input_space": spec.inputs,
        "output": port.output,
        "compiled_with": "tracr-pypi (compile_rasp_to_model, causal=False, mlp_exactness=100)",
        "check_vs_tracr": diffs,
        "examples": examples(port, space, refs),
        "ground_truth": gt,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model_f32 = port.model.float()
    save_tiny(model_f32, out_dir / name, meta=meta)
    meta["config"] = {k: getattr(model_f32.cfg, k) for k in ("n_layers", "n_heads", "d_model")}
    # The saved file reloads to the same outputs.
    loaded, _ = load_tiny(out_dir / name)
    with torch.no_grad():
        assert torch.allclose(loaded(torch.tensor(tokens)), model_f32(torch.tensor(tokens)))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(SPECS), help="programs to compile (default: all)")
    ap.add_argument("--out", type=Path, default=tasks.ZOO_DIR)
    args = ap.parse_args()
    for name in args.names:
        meta = compile_one(name, args.out)
        gt = meta["ground_truth"]
        c = meta["config"]
        cfg_line = f" L={c['n_layers']} H={c['n_heads']} d={c['d_model']}"
        print(
            f"{name:12s}{cfg_line} full={gt['n_full_graph_edges']} structural={len(gt['structural'])} "
            + " ".join(
                f"{a}: gt={len(gt[a]['edges'])} inert={len(gt[a]['inert'])} "
                f"acdc_ok={gt[a]['acdc_on_task_data_matches']}"
                for a in ("zero", "resample")
            )
        )


if __name__ == "__main__":
    main()
