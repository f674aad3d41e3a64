"""Commands that look inside models rather than find circuits: ``heads`` (embed attention
heads by behaviour), ``neurons`` (the " an" neuron method) and ``activations`` (one
prompt's top neurons and heads per layer)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from circuitdag import _options
from circuitdag._options import DEFAULT_TOP, number
from circuitdag.cli._common import add_run_options, load, writable_dir
from circuitdag.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("heads", help="embed attention heads of one or more models by behaviour; heads.json, heads.svg")
    p.add_argument("--task", required=True, help="the task whose inputs describe the heads")
    p.add_argument("--model", action="append",
                   help="a model (repeat for several; the task's own names such as compiled/trained, or any "
                   "name circuitdag.load_model takes); default: the task's model")  # fmt: skip
    p.add_argument("--n-prompts", type=number("--n-prompts", int, 1), default=None, metavar="N")
    p.add_argument("--seed", type=_options.seed(), default=0)
    p.add_argument("-k", type=number("-k", int, 1), default=3,
                   help="nearest heads listed per head and other model (default 3; at most the model's heads)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=number("--threads", int, 1), default=None,
                   help="torch CPU threads (default 1)")
    p.add_argument("--out", default="runs/heads", help="output directory (default runs/heads)")
    p.set_defaults(fn=cmd_heads)

    p = sub.add_parser(
        "neurons",
        help="the ' an' neuron method: logit lens, activation and single-neuron patching, DLA, "
        "mutual congruence, the top neuron over a corpus; writes report.json, report.md and SVG plots",
    )
    add_run_options(p, task_required=True)
    p.add_argument("--layer", metavar="L[,L]",
                   help="MLP layers whose neurons are patched one by one, or all (default: all on models with at "
                   "most 4096 neurons, else the MLP layer whose output at the answer position has the largest "
                   "patching effect)")  # fmt: skip
    p.add_argument("--corpus", metavar="FILE",
                   help="UTF-8 text to run the top neuron over (default: Debian's fortunes, see docs/neurons.md)")
    p.add_argument("--corpus-tokens", type=number("--corpus-tokens", int, 0), default=20_000, metavar="N",
                   help="tokens of the corpus to read (default 20000; 0 skips the corpus step)")
    p.add_argument("--out", help="output directory (default runs/<task>-neurons)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or phase messages")
    p.set_defaults(fn=cmd_neurons)

    p = sub.add_parser(
        "activations", help="heatmaps of each layer's top MLP neurons and heads on one prompt (HTML)"
    )
    p.add_argument("--model", required=True, help="zoo name, smollm2-135m, hub name or local directory")
    p.add_argument("--text", required=True, help="the prompt")
    p.add_argument("-o", "--output", default="activations.html", help="HTML path (default activations.html)")
    p.add_argument("--top", type=number("--top", int, 1), default=DEFAULT_TOP,
                   help=f"neurons per layer (default {DEFAULT_TOP}; at most the layer's neurons)")
    p.add_argument("--prepend-bos", choices=("auto", "yes", "no"), default="auto",
                   help="start with the tokenizer's BOS token (default: as the model's prompts do)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.set_defaults(fn=cmd_activations)


def cmd_heads(args: argparse.Namespace) -> int:
    """``circuitdag heads``: embed the heads of one or more models on a task
    (:func:`circuitdag.heads.write_heads`: heads.json, heads.svg); print each head's nearest
    heads in the other models."""
    import torch

    from circuitdag.heads import nearest, write_heads

    torch.set_num_threads(_options.threads(args.threads, 1))
    out = writable_dir(args.out)
    emb = write_heads(args.task, args.model or [None], out, k=args.k, seed=args.seed, n_prompts=args.n_prompts,
                      device=args.device, dtype=args.dtype)  # fmt: skip
    for (label, head), others in nearest(emb, args.k).items():
        text = "; ".join(f"{o}: " + ", ".join(f"{h} {d:.2f}" for h, d in v) for o, v in others.items())
        print(f"{label} {head} -> {text}")
    print(f"-> {out}/heads.json, {out}/heads.svg")
    return 0


def cmd_neurons(args: argparse.Namespace) -> int:
    from circuitdag.models import spec_of
    from circuitdag.neurons.analysis import analyze_neurons, parse_layers
    from circuitdag.neurons.report import write_report

    if args.metric not in (None, "logit_diff"):
        raise ConfigError("the neuron analysis measures the logit difference; leave --metric out")
    args.metric = None
    parse_layers(args.layer, sys.maxsize)  # the syntax, before the model loads; its range after
    task, model = load(args)
    out = str(writable_dir(args.out or f"runs/{task.name}-neurons"))  # before the analysis, not after it
    layers = parse_layers(args.layer, spec_of(model).n_layers)
    analysis = analyze_neurons(model, task, layers=layers, ablation=args.ablation or "resample", seed=args.seed,
                               n_prompts=args.n_prompts, corpus=args.corpus, corpus_tokens=args.corpus_tokens,
                               progress=not args.quiet)  # fmt: skip
    report = analysis.to_dict()
    write_report(report, out)
    top = report["top_neuron"]
    agr = report["agreement"]
    verb = "recovers" if report["ablation"] == "resample" else "removes"  # report.md's wording
    print(f"{task.name} on {report['model']}: top neuron L{top['layer']}.N{top['neuron']} {verb} "
          f"{100 * top['effect']:.1f}% of the logit difference ({report['ablation']}), its MLP layer "
          f"{100 * top['layer_effect']:.1f}% (seed: 50% / 49%); DLA rank {top['dla_rank']}, mutual congruence "
          f"{'agrees' if agr['mutual_agrees'] else 'differs'} -> {out}/report.md")  # fmt: skip
    return 0


def cmd_activations(args: argparse.Namespace) -> int:
    from circuitdag.activations import layer_activations, write_activations
    from circuitdag.loading import load_model
    from circuitdag.tasks._lm import PREPEND_BOS

    model = load_model(args.model, device=args.device)
    acts = layer_activations(model, args.text, top=args.top, bos=PREPEND_BOS[args.prepend_bos])
    print(write_activations(acts, args.output))
    return 0
