"""The clean and corrupted runs every step of the neuron analysis reads, cached once.

:class:`TaskRuns` holds, for the task's clean and corrupted prompts, the residual stream
entering each block, each block's attention and MLP outputs, each MLP's neuron
activations and the final residual stream, plus the answer direction: for prompt ``b``
and answer slot ``a``, ``W_U[:, correct] - W_U[:, wrong]`` (the logit difference is that
direction applied to the final norm's output, plus ``b_U[correct] - b_U[wrong]``).

A *neuron* is one entry of ``blocks.L.mlp.hook_post``: ``act(pre)`` in a GPT-2-style MLP
(``mlp_out = post @ W_out + b_out``) and ``act(gate) * up`` in a Llama-style gated MLP
(SmolLM2: ``mlp_out = post @ W_down``), so in both the MLP output is a sum over neurons of
``post[n] * W_out[n]`` plus a bias that belongs to no neuron.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import plain_module
from circuitdag.errors import ConfigError, ModelError, TaskError
from circuitdag.graph import ModelSpec
from circuitdag.hooks import HookTable
from circuitdag.models import spec_of
from circuitdag.postnorm import RMSNorm
from circuitdag.readout import softcap
from circuitdag.tasks.base import TaskData
from circuitdag.tasks.validate import check_metric_gap

#: What is cached per layer, by short name: the hook table's name of each (see :func:`sites`).
SITE_NAMES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "post")

#: Ablations of a component or neuron (never negation, which the seed's reviewer warned off).
ABLATIONS = ("resample", "zero", "mean")


def sites(table: HookTable, parallel: bool) -> dict[str, str]:
    """The hook (a format string of the layer ``L``) of each cached site that the model
    fires. A parallel block has no residual stream between attention and MLP: its
    ``resid_mid`` is computed as ``resid_pre + attn_out`` instead (:func:`cache_runs`)."""
    names = table.names
    out = {"resid_pre": names.resid_pre, "attn_out": names.attn_out, "resid_mid": names.resid_mid,
           "mlp_out": names.mlp_out, "post": names.mlp_post}  # fmt: skip
    if parallel:
        del out["resid_mid"]
    return out


def run_to_final(
    model: Any,
    inputs: Tensor,
    start_layer: int = 0,
    fwd_hooks: Sequence[tuple[str, Callable[..., Any]]] = (),
) -> Float[Tensor, "batch pos d_model"]:
    """The final residual stream (``blocks.{n-1}.hook_resid_post``) of a forward pass.

    ``inputs`` are token ids (``start_layer == 0``) or the residual stream entering block
    ``start_layer`` (:func:`circuitdag.models.resume.resume`); the unembedding is never
    computed, so a pass costs only the blocks from ``start_layer`` on.
    """
    table = HookTable.of(model, spec_of(model))
    with torch.no_grad():
        return table.run_to_final(model, inputs, list(fwd_hooks), lambda x: x,
                                  start_layer if inputs.is_floating_point() else None)  # fmt: skip


def w_out(model: Any) -> Float[Tensor, "layer d_mlp d_model"]:
    """Every MLP's output weights, one row per neuron (``W_out``; ``W_down`` of a gated MLP)."""
    try:
        W = getattr(model, "W_out", None)  # a bridge stacks its layers' weights
    except AttributeError:
        W = None
    if isinstance(W, Tensor):
        return W
    blocks = getattr(model, "blocks", None)
    try:
        return torch.stack([b.mlp.W_out for b in blocks])  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        raise ModelError(f"{type(model).__name__} exposes no MLP output weights (W_out); "
                         "load the model with circuitdag.load_model") from None  # fmt: skip


def b_u(model: Any) -> Tensor | None:
    try:
        b = getattr(model, "b_U", None)
    except AttributeError:  # a bridge raises for a bias-free unembedding
        return None
    return b if isinstance(b, Tensor) else None


def final_norm_weight(model: Any) -> Tensor | None:
    """The final norm's elementwise scale as the model computes it (``d_model``; None without
    a final norm), read off the module by evaluation, not off its parameters: Gemma's RMSNorm
    multiplies by ``1 + weight`` (its raw ``weight`` is all zeros in a random model), OLMo's
    and Llama's by ``weight``, and a norm folded into ``W_U`` (:func:`circuitdag.load_model`)
    by 1. ``y = P(x) / s(x) * w + ln(0)`` is solved for ``w`` on random inputs (least squares
    per coordinate, :func:`final_scale`'s ``s``) and checked on them; raises
    :class:`ModelError` when the module is not such a norm."""
    if norm_kind(model) == "none":
        return None
    ln = plain_module(model.ln_final)
    d = int(model.cfg.d_model)
    W_U = model.W_U
    with torch.no_grad():
        x = torch.randn(16, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(W_U)
        y = (ln(x) - ln(torch.zeros_like(x[:1]))).double()
        x = x.double()
        z = (x - x.mean(-1, keepdim=True) if norm_kind(model) == "LN" else x) / final_scale(model, x)[:, None]
        w = (y * z).sum(0) / z.pow(2).sum(0)
        err = (z * w - y).abs().max().item()
    if not err <= max(1e-3, 16 * torch.finfo(W_U.dtype).eps) * (1.0 + y.abs().max().item()):
        raise ModelError(f"the final norm ({type(ln).__name__}) is not x / scale(x) * weight + bias "
                         f"(max difference {err:.3g}); the neuron analysis cannot read it")  # fmt: skip
    return w.to(W_U.dtype)


def mlp_post_norm(model: Any, layer: int) -> RMSNorm | None:
    """The norm applied to layer ``layer``'s MLP output before the residual stream receives
    it (Gemma 2/3, OLMo 2: the block's ``ln2_post``), as the model computes it; None
    without one."""
    norm = getattr(model.blocks[layer], "ln2_post", None)
    return None if norm is None else RMSNorm.of(plain_module(norm))


def norm_kind(model: Any) -> str:
    """``"LN"`` (centre, then divide by the standard deviation), ``"RMS"`` (divide by the
    root mean square) or ``"none"``: what the final norm does before its elementwise scale."""
    kind = getattr(model.cfg, "normalization_type", None)
    if kind in ("LN", "LNPre"):
        return "LN"
    if kind in ("RMS", "RMSPre"):
        return "RMS"
    if kind is None:
        return "none"
    raise ModelError(f"final norm of type {kind!r} is not supported by the neuron analysis")


def final_scale(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, ...]:
    """The final norm's divisor for residual vectors ``resid``: ``sqrt(var + eps)`` for
    LayerNorm, ``sqrt(mean(x^2) + eps)`` for RMSNorm, 1 without a norm (tracr)."""
    kind = norm_kind(model)
    if kind == "none":
        return torch.ones(resid.shape[:-1], dtype=resid.dtype, device=resid.device)
    eps = float(getattr(model.cfg, "eps", 1e-5))
    x = resid - resid.mean(-1, keepdim=True) if kind == "LN" else resid
    return (x.pow(2).mean(-1) + eps).sqrt()


@dataclass
class TaskRuns:
    """Cached clean and corrupted runs of ``data`` on ``model`` (see the module docstring).

    ``clean[site]`` / ``corrupted[site]`` are stacked over layers: ``resid_pre``,
    ``attn_out``, ``resid_mid`` (``resid_pre + attn_out`` in a parallel block), ``mlp_out``
    are ``layer batch pos d_model``, ``post``
    (neuron activations) is ``layer batch pos d_mlp``; ``final`` is the last block's
    ``hook_resid_post``, ``batch pos d_model``. ``direction`` is ``batch n_ans d_model``
    (``W_U[:, correct] - W_U[:, wrong]``), ``bias`` ``batch n_ans``. Logit differences
    ``ld_*`` are per prompt and answer slot, ``batch n_ans``.
    """

    model: Any
    data: TaskData
    spec: ModelSpec
    clean: dict[str, Tensor]
    corrupted: dict[str, Tensor]
    direction: Tensor
    bias: Tensor
    ld_clean: Tensor
    ld_corrupted: Tensor
    #: The model fires no hook with the attention's output alone (BLOOM: its attention adds
    #: the residual stream itself): ``attn_out`` is ``attn.hook_out - resid_pre``, and a
    #: patch of it is written into ``attn.hook_out`` plus the block's input (:meth:`attn_out_hook`).
    attn_out_in_stream: bool = False
    #: ``W_U[:, wrong]`` (``batch n_ans d_model``) and ``b_U[wrong]`` (``batch n_ans``): with
    #: ``direction`` and ``bias`` they give each answer's logit, which a model that soft-caps
    #: its logits (Gemma 2) caps before the difference is taken (:meth:`answer_logits`).
    u_wrong: Tensor | None = None
    b_wrong: Tensor | None = None

    @property
    def cap(self) -> float:
        """The final-logit soft-cap (Gemma 2: ``cfg.output_logits_soft_cap``), 0 for none."""
        return float(getattr(self.model.cfg, "output_logits_soft_cap", 0.0) or 0.0)

    def answer_logits(self, final: Float[Tensor, "*k batch pos d_model"]) -> tuple[Tensor, Tensor]:
        """The correct and the wrong answer's logit before any soft-cap, ``*k batch n_ans``
        each, at the answer positions of final residual streams."""
        assert self.u_wrong is not None and self.b_wrong is not None
        ap = self.data.answer_pos
        rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
        with torch.no_grad():
            y = plain_module(self.model.ln_final)(final[..., rows, ap, :])
            wrong = (y * self.u_wrong).sum(-1) + self.b_wrong
            return (y * (self.direction + self.u_wrong)).sum(-1) + self.bias + self.b_wrong, wrong

    def cap_slopes(self, which: str = "clean") -> tuple[Tensor, Tensor]:
        """``d softcap(l) / d l = 1 - tanh(l / cap)^2`` at the correct and the wrong answer's
        logit of the ``which`` run (``batch n_ans`` each; ones without a soft-cap): the
        tangent of the capped logit difference that :mod:`circuitdag.neurons.dla` uses."""
        if self.cap <= 0:
            one = torch.ones_like(self.ld_clean)
            return one, one
        correct, wrong = self.answer_logits(getattr(self, which)["final"])
        return 1 - torch.tanh(correct / self.cap).pow(2), 1 - torch.tanh(wrong / self.cap).pow(2)

    def attn_out_hook(self, L: int) -> tuple[str, bool]:
        """The hook where layer ``L``'s attention output is written, and whether that hook
        holds the block's input plus the output (``attn_out_in_stream``) rather than the
        output alone."""
        if self.attn_out_in_stream:
            return f"blocks.{L}.attn.hook_out", True
        return f"blocks.{L}.hook_attn_out", False

    @property
    def d_mlp(self) -> int:
        return int(self.clean["post"].shape[-1])

    @property
    def metric_clean(self) -> float:
        """Mean logit difference (correct - wrong) on the clean prompts."""
        return float(self.ld_clean.mean())

    @property
    def metric_corrupted(self) -> float:
        return float(self.ld_corrupted.mean())

    def logit_diff(self, final: Float[Tensor, "*k batch pos d_model"]) -> Float[Tensor, "*k batch n_ans"]:
        """Logit difference correct - wrong at the answer positions of final residual streams."""
        if self.cap > 0:  # Gemma 2 caps each logit (readout.softcap) before the difference
            correct, wrong = self.answer_logits(final)
            return softcap(self.model, correct) - softcap(self.model, wrong)
        ap = self.data.answer_pos
        rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
        x = final[..., rows, ap, :]
        with torch.no_grad():
            y = plain_module(self.model.ln_final)(x)
            return (y * self.direction).sum(-1) + self.bias

    def normalised(self, metric: Tensor | float) -> Tensor | float:
        """``(metric - corrupted) / (clean - corrupted)`` of mean logit differences: 0 is the
        corrupted run, 1 the clean run."""
        return (metric - self.metric_corrupted) / (self.metric_clean - self.metric_corrupted)

    def source_and_base(self, site: str, ablation: str) -> tuple[Tensor, str]:
        """The values a patched ``site`` takes (stacked over layers) and which run is patched.

        ``resample``: the clean values, written into the corrupted run (denoising, as in
        the seed's "apple" -> "lemon" patching). ``zero``: zeros, and ``mean``: the mean
        over the clean prompts at each position, written into the clean run."""
        if ablation == "resample":
            return self.clean[site], "corrupted"
        if ablation == "zero":
            return torch.zeros_like(self.clean[site]), "clean"
        if ablation == "mean":
            return self.clean[site].mean(1, keepdim=True).expand_as(self.clean[site]), "clean"
        raise ConfigError(f"unknown ablation {ablation!r}; choose one of {', '.join(ABLATIONS)}")

    def effect(self, metric: Tensor, ablation: str) -> Tensor:
        """Fraction of the clean-vs-corrupted logit difference a patched component carries:
        ``normalised(metric)`` for resample (how much of it patching the clean value in
        recovers), ``1 - normalised(metric)`` for zero and mean ablation (how much of it is
        lost when the component is ablated in the clean run)."""
        n = self.normalised(metric)
        assert isinstance(n, Tensor)
        return n if ablation == "resample" else 1 - n


def cache_runs(model: Any, data: TaskData) -> TaskRuns:
    """Run ``data``'s clean and corrupted prompts once each, keeping what the analysis reads.

    Raises :class:`TaskError` when the task has no wrong answers (the logit difference
    needs them) or the clean and corrupted prompts give the same mean logit difference.
    """
    if data.correct is None or data.wrong is None:
        raise TaskError("the neuron analysis reads the logit difference correct - wrong; "
                        "this task gives no wrong answers")  # fmt: skip
    spec = spec_of(model)
    if spec.attn_only:
        raise ModelError("the model is attention-only: it has no MLP neurons to analyse")
    device = data.clean.device
    W_U = model.W_U
    direction = (W_U[:, data.correct] - W_U[:, data.wrong]).detach().permute(1, 2, 0).to(device)
    b = b_u(model)
    u_wrong = W_U[:, data.wrong].detach().permute(1, 2, 0).to(device)
    bias = torch.zeros(data.correct.shape, dtype=W_U.dtype, device=device)
    b_wrong = torch.zeros_like(bias)
    if b is not None:
        bias = (b[data.correct] - b[data.wrong]).detach().to(device)
        b_wrong = b[data.wrong].detach().to(device)
    runs: dict[str, dict[str, Tensor]] = {}
    in_stream = False
    where = sites(HookTable.of(model, spec), spec.parallel_attn_mlp)
    for which, tokens in (("clean", data.clean), ("corrupted", data.corrupted)):
        got: dict[str, Tensor] = {}

        def save(key: str, got: dict[str, Tensor] = got) -> Callable[..., None]:
            def fn(x: Tensor, hook: Any) -> None:
                got[key] = x.detach().clone()

            return fn

        hooks = [(name.format(L=L), save(f"{s}.{L}")) for L in range(spec.n_layers) for s, name in where.items()]
        hooks += [(f"blocks.{L}.attn.hook_out", save(f"attn_stream.{L}")) for L in range(spec.n_layers)
                  if f"blocks.{L}.attn.hook_out" in model.hook_dict]  # fmt: skip
        hooks += [(f"blocks.{L}.ln2_post.hook_in", save(f"mlp_prenorm.{L}")) for L in range(spec.n_layers)
                  if f"blocks.{L}.ln2_post.hook_in" in model.hook_dict]  # fmt: skip
        final = run_to_final(model, tokens, 0, hooks)
        for layer in range(spec.n_layers):  # BLOOM: the attention's hook_out holds the stream plus its output
            stream, mid = got.get(f"attn_stream.{layer}"), got.get(f"resid_mid.{layer}")
            if f"attn_out.{layer}" not in got and stream is not None and mid is not None and torch.equal(stream, mid):
                got[f"attn_out.{layer}"] = stream - got[f"resid_pre.{layer}"]
                in_stream = True
        missing = [k for k in (f"{s}.{L}" for L in range(spec.n_layers) for s in where) if k not in got]
        if missing:
            s, L = missing[0].split(".")
            arch = getattr(getattr(getattr(model, "original_model", None), "config", None), "architectures", None)
            raise ModelError(f"the neuron analysis reads {where[s].format(L=L)}, which this model"
                             f"{' (' + arch[0] + ')' if arch else ''} does not fire; discover runs on it, "
                             "the neuron analysis cannot")  # fmt: skip
        stacked = {s: torch.stack([got[f"{s}.{L}"] for L in range(spec.n_layers)]) for s in where}
        if "resid_mid" not in stacked:  # parallel blocks: the stream as the attention leaves it
            stacked["resid_mid"] = stacked["resid_pre"] + stacked["attn_out"]
        if all(f"mlp_prenorm.{L}" in got for L in range(spec.n_layers)):  # Gemma 2/3, OLMo 2
            stacked["mlp_prenorm"] = torch.stack([got[f"mlp_prenorm.{L}"] for L in range(spec.n_layers)])
        stacked["final"] = final
        runs[which] = stacked
    tr = TaskRuns(model, data, spec, runs["clean"], runs["corrupted"], direction, bias,
                  torch.empty(0), torch.empty(0), in_stream, u_wrong, b_wrong)  # fmt: skip
    tr.ld_clean = tr.logit_diff(runs["clean"]["final"])
    tr.ld_corrupted = tr.logit_diff(runs["corrupted"]["final"])
    if abs(tr.metric_clean - tr.metric_corrupted) < 1e-6 * (1 + abs(tr.metric_clean)):
        raise TaskError(f"clean and corrupted prompts give the same mean logit difference ({tr.metric_clean:.4g}); "
                        "patching has nothing to recover")  # fmt: skip
    return tr


def warn_if_negligible(runs: TaskRuns) -> list[str]:
    """Warn, as discover does (:func:`~circuitdag.tasks.validate.check_metric_gap`), when the
    clean-vs-corrupted logit difference is negligible or favours the wrong answer: every
    effect the analysis reports is a fraction of that gap, so on a random or untrained model
    it is meaningless (a 0.001-logit gap gave "274%"). Returns the messages warned (the
    report records them)."""
    return check_metric_gap(-runs.metric_clean, -runs.metric_corrupted, "logit_diff", "resample", "neurons")


def chunk_size(runs: TaskRuns, budget_bytes: float = 2e9) -> int:
    """Patched copies of the prompt batch per forward pass: as many as fit in about
    ``budget_bytes`` of activations (at least 1)."""
    b, p = runs.data.clean.shape
    s = runs.spec
    per_pos = 8 * s.d_model + 3 * runs.d_mlp + 2 * s.n_heads * s.d_model + s.n_heads * p
    elem = runs.clean["final"].element_size()
    return max(1, int(budget_bytes // (b * p * per_pos * elem)))
