"""The hook check: once per loaded model, verify that the hooks behave as the patching
engine assumes (DESIGN.md, models), and refuse the model otherwise.

Everything is read and written through the model's :class:`~circuitdag.hooks.HookTable`,
the same hooks every pass uses, so an emulated hook (:mod:`circuitdag.emulated`: per-head
inputs and results of OPT, GPT-J, GPT-Neo; the MLP input of a parallel block sharing its
norm) is checked exactly as a native one. What "equal" means: :func:`tolerance`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitdag.errors import ModelError
from circuitdag.graph import Input, ModelSpec, NodeKind
from circuitdag.hooks import Hook, HookTable
from circuitdag.models.resume import _NO_SKIP, _TUPLE_BLOCKS, _is_bridge, resume
from circuitdag.models.spec import spec_of
from circuitdag.readout import softcap

__all__ = ["REFUSED", "HookReport", "architecture", "check_hooks", "refusal", "tolerance"]

logger = logging.getLogger("circuitdag")


@dataclass(frozen=True)
class HookReport:
    """What :func:`check_hooks` measured.

    ``resid_offset[L]`` is the constant (same at every batch entry and position) by which
    ``blocks.L.hook_resid_pre`` (``L == n_layers``: the final ``hook_resid_post``) exceeds
    ``embed + sum of head results + MLP outputs`` of the layers below: the attention output
    biases ``b_O`` (with value biases folded in), which belong to no node. ``max_error`` is
    the largest difference any check measured, ``margin`` the largest ratio of a difference
    to its tolerance (below 1 for a model that passes), ``emulated`` the hooks the table
    computes itself (:mod:`circuitdag.emulated`)."""

    resid_offset: Float[Tensor, "n_layers_plus_1 d_model"]
    max_error: float
    margin: float = 0.0
    emulated: tuple[str, ...] = ()


#: Architectures circuitdag refuses, by Hugging Face class name, and the feature in the way
#: (docs/models.md). Post-sublayer norms are patched (:mod:`circuitdag.postnorm`).
REFUSED: dict[str, str] = {}


def architecture(model: Any) -> str | None:
    """The Hugging Face class name of a bridge's model (None for other models)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    archs = getattr(config, "architectures", None) or [type(getattr(model, "original_model", None)).__name__]
    return str(archs[0]) if hasattr(model, "original_model") else None


def refusal(model: Any) -> str | None:
    """One line saying why circuitdag does not patch ``model``'s architecture, or None."""
    arch = architecture(model)
    if arch in REFUSED:
        return (f"{arch} is not supported: circuitdag cannot patch {REFUSED[arch]} exactly yet; docs/models.md "
                "lists the architectures it patches")  # fmt: skip
    return None


def tolerance(ref: Tensor, dtype: torch.dtype | None = None) -> float:
    """Agreement expected of two computations of ``ref``'s value in ``dtype`` (default:
    ``ref``'s): sqrt(eps) relative to ``ref``'s largest entry, so the tolerance follows the
    dtype (float64 1.5e-8, float32 3.5e-4, float16 0.031, bfloat16 0.088 relative)."""
    return torch.finfo(dtype or ref.dtype).eps ** 0.5 * (1.0 + ref.abs().max().item())


def _probe_tokens(model: Any) -> Int[Tensor, "batch pos"]:
    g = torch.Generator().manual_seed(0)
    n_pos = min(6, int(model.cfg.n_ctx))
    device = next(model.parameters()).device
    return torch.randint(0, int(model.cfg.d_vocab), (2, n_pos), generator=g).to(device)


def _read(table: HookTable, seen: dict[str, Tensor], identity: bool = True) -> list[tuple[str, Hook]]:
    """Hooks that store every role of ``table`` in ``seen`` (``resid{L}``, ``q{L}`` ..., ``mlp_in{L}``,
    ``heads{L}``, ``mlp{L}``, ``final``); with ``identity`` the inputs return their value, so
    an emulated input is recomputed from it (which must change nothing)."""
    short = {Input.Q: "q", Input.K: "k", Input.V: "v", Input.MLP: "mlp_in", Input.RESID: "final"}

    def put(key: str, give_back: bool) -> Hook:
        def fn(x: Tensor, hook: Any) -> Tensor | None:
            seen[key] = x.detach().clone()
            return x if give_back else None
        return fn

    return table.hooks(
        resid_pre=lambda L: put(f"resid{L}", False),
        inputs=lambda L, kind: put(short[kind] + ("" if kind == Input.RESID else str(L)), identity),
        outputs=lambda L, kind: put(f"{'heads' if kind == NodeKind.HEAD else 'mlp'}{L}", False),
    )


def check_hooks(model: Any, tokens: Int[Tensor, "batch pos"] | None = None) -> HookReport:
    """Verify once that the hooks behave as the patching engine assumes; raise
    :class:`~circuitdag.errors.ModelError` naming the hook otherwise.

    Works for a ``TransformerBridge`` booted by :func:`~circuitdag.models.bridge.load_bridge`
    and for a ``TinyTransformer``. Checks, on ``tokens`` (default: 2 random prompts of 6 tokens):

    * every role of the hook table fires with its shape, and running the model through
      the table's hooks (emulated ones included) reproduces its logits, as do the final norm
      and the unembedding of the final residual stream (what every metric reads);
    * the q/k/v inputs equal ``hook_resid_pre`` on every head (taken before LayerNorm), the
      MLP input ``hook_resid_mid`` (``hook_resid_pre`` in a parallel block);
    * every layer's residual is ``blocks.0.hook_resid_pre`` + head results + MLP outputs of
      the layers below, up to a constant (reported in :class:`HookReport`); with
      post-sublayer norms (:attr:`HookTable.post`) each layer's heads count as the norm of
      their sum plus ``b_O``;
    * :func:`~circuitdag.models.resume.resume` from ``blocks.L.hook_resid_pre`` reproduces
      the logits;
    * on the last layer, a value written into one head's q input changes that head's result
      and the logits and nothing else (in a parallel block not the MLP either); one written
      into a key/value head's input changes exactly the query heads of
      :meth:`ModelSpec.query_heads`; one written into the MLP's input changes its output
      (and in a parallel block no head's result).
    """
    why = refusal(model)
    if why is not None:
        raise ModelError(why)
    spec = spec_of(model)
    try:
        table = HookTable.of(model, spec)
    except (AttributeError, TypeError, ValueError) as exc:  # weights the emulator reads are missing
        raise ModelError(f"{architecture(model) or type(model).__name__}: the hooks circuitdag needs cannot be "
                         f"emulated ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None  # fmt: skip
    if tokens is None:
        tokens = _probe_tokens(model)
    missing = [n for n in (table.resid_pre(0), table.final) if n not in model.hook_dict]
    if missing:
        raise ModelError(f"model has no hook {missing[0]}; circuitdag cannot patch it")
    seen: dict[str, Tensor] = {}
    mids: dict[int, Tensor] = {}
    # The model as the engine runs it: post-sublayer norms in its own dtype
    # (circuitdag.postnorm), OLMo 2's query/key norms per head (circuitdag.emulated).
    own = table.hooks()
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=own) if own else model(tokens)
        extra: list[tuple[str, Hook]] = []
        if not spec.attn_only and not spec.parallel_attn_mlp:
            extra = [(table.names.resid_mid.format(L=L), _keep(mids, L)) for L in range(spec.n_layers)
                     if table.names.resid_mid.format(L=L) in model.hook_dict]  # fmt: skip
        through = model.run_with_hooks(tokens, fwd_hooks=_read(table, seen) + extra)
    _check_shapes(spec, table, seen, *tokens.shape)
    errors: list[float] = []
    ratios: list[float] = []

    def expect_equal(name: str, got: Tensor, want: Tensor, what: str, scale: Tensor | None = None) -> None:
        """``got == want`` up to rounding in the model's dtype, relative to ``scale``'s size
        (default ``want``'s)."""
        err = (got - want).abs().max().item()
        tol = tolerance(want if scale is None else scale, logits.dtype)
        errors.append(err)
        ratios.append(err / tol)
        if not err <= tol:
            raise ModelError(f"{name} {what} (max difference {err:.3g}, more than rounding in "
                             f"{str(logits.dtype).removeprefix('torch.')} explains: {tol:.3g}); "
                             "circuitdag cannot patch this model")  # fmt: skip

    emulated = tuple(table.missing.describe())
    if table.emulator is not None:
        _check_emulation(model, spec, table, tokens, seen, expect_equal)
    expect_equal("the model", through, logits, "run through the hook table" + (
        f" (emulating {', '.join(emulated)})" if emulated else "") + " does not reproduce its own logits")  # fmt: skip
    # Every metric, and the clean run's reference logits, read the final residual stream
    # through the final norm and the unembedding (circuitdag.readout): that reproduces the logits.
    with torch.no_grad():
        read = softcap(model, model.unembed(model.ln_final(seen["final"])))
    expect_equal(table.final, read, logits, "through the final norm and the unembedding does not reproduce the "
                 "model's logits")  # fmt: skip
    for L in range(spec.n_layers):  # inputs are read before LayerNorm: every head sees one stream
        resid = seen[f"resid{L}"]
        for x, kind in (("q", Input.Q), ("k", Input.K), ("v", Input.V)):
            expect_equal(table.input(L, kind), seen[f"{x}{L}"], resid.unsqueeze(2),
                         f"is not {table.resid_pre(L)} per head")  # fmt: skip
        if not spec.attn_only:
            want = resid if spec.parallel_attn_mlp else mids.get(L)
            if want is None:
                raise ModelError(f"hook {table.names.resid_mid.format(L=L)} did not fire; circuitdag cannot patch "
                                 "this model")  # fmt: skip
            expect_equal(table.input(L, Input.MLP), seen[f"mlp_in{L}"], want,
                         f"is not {table.resid_pre(L) if spec.parallel_attn_mlp else 'hook_resid_mid'}")  # fmt: skip

    # The residual stream decomposes into node outputs plus a constant. Summed in float32
    # at least; the model's own sums round in its dtype, so the tolerance is relative to
    # the size of the residual stream, not of the constant.
    acc = torch.promote_types(logits.dtype, torch.float32)
    embed = seen["resid0"]
    total = embed.to(acc)
    offsets = [torch.zeros_like(embed[0, 0])]
    post = table.post
    for L in range(spec.n_layers):
        if post is None:
            total = total + seen[f"heads{L}"].to(acc).sum(2)
        else:  # the heads reach the residual through the norm of their sum (circuitdag.postnorm)
            A = post.attn_sum(L, seen[f"heads{L}"])
            total = total + post.norms[L](A).to(acc)
            # The passes compute the norm in the model's dtype (float32 at least); Hugging
            # Face's in float32: they agree to float32 rounding.
            low = logits.dtype if torch.finfo(logits.dtype).bits < 32 else torch.float32
            ratios.append((post.norms[L](A) - post.modules[L](A)).abs().max().item() /
                          tolerance(post.modules[L](A), low))  # fmt: skip
            if not ratios[-1] <= 1:
                raise ModelError(f"blocks.{L}.ln1_post: circuitdag's RMSNorm does not reproduce the model's "
                                 "post-attention norm; circuitdag cannot patch this model")  # fmt: skip
        if not spec.attn_only:
            total = total + seen[f"mlp{L}"].to(acc)
        stream = seen[f"resid{L + 1}"] if L + 1 < spec.n_layers else seen["final"]
        left = stream.to(acc) - total
        offsets.append(left.mean((0, 1)).to(embed.dtype))
        expect_equal(table.resid_pre(L + 1), left, left.mean((0, 1)).expand_as(left),
                     "is not blocks.0.hook_resid_pre + the head results and MLP outputs of the layers below "
                     "plus a constant", scale=stream)  # fmt: skip

    # Resuming at a layer from its residual reproduces the full forward pass (every block
    # is the same code, so a few layers stand for all).
    for L in sorted({0, 1, spec.n_layers // 2, spec.n_layers - 1} & set(range(spec.n_layers))):
        resid = seen[f"resid{L}"]
        later = table.hooks(start_layer=L)
        with torch.no_grad():
            try:
                resumed = resume(model, resid, L, fwd_hooks=later)
            except (IndexError, TypeError, RuntimeError):  # the model read block(...)[0] of the stand-in
                if not L or not _is_bridge(model) or model in _TUPLE_BLOCKS:
                    raise
                _TUPLE_BLOCKS.add(model)
                resumed = resume(model, resid, L, fwd_hooks=later)
        if L and _is_bridge(model) and not (resumed - logits).abs().max() <= tolerance(logits):
            logger.warning("cannot skip the blocks below start_at_layer on this model; resuming is slower")
            _NO_SKIP.add(model)
            with torch.no_grad():
                resumed = resume(model, resid, L, fwd_hooks=later)
        expect_equal(table.resid_pre(L), resumed, logits, f"passed to forward(start_at_layer={L}) does not "
                     "reproduce the logits")  # fmt: skip

    _check_writes(model, spec, table, seen, logits)
    return HookReport(torch.stack(offsets), max(errors), max(ratios), emulated)


def _check_emulation(model: Any, spec: ModelSpec, table: HookTable, tokens: Tensor, seen: dict[str, Tensor],
                     expect_equal: Any) -> None:  # fmt: skip
    """Emulated hooks reproduce the model's own activations on an unpatched run: each
    head's q/k/v from its input (``attn.hook_q/k/v``), the per-head results plus ``b_O``
    summed (the attention output, ``hook_attn_out``), the re-normalised MLP input
    (``mlp.hook_in``)."""
    em, names, missing = table.emulator, table.names, table.missing
    assert em is not None
    want: dict[str, str] = {}
    for L in range(spec.n_layers):
        if missing.split_inputs:
            want |= {f"{x}{L}": getattr(names, f"attn_{x}").format(L=L) for x in "qkv"}
        if missing.results:
            want[f"attn_out{L}"] = names.attn_out.format(L=L)
        if missing.mlp_in:
            want[f"mlp_hook_in{L}"] = names.mlp_hook_in.format(L=L)
        if missing.head_norms:
            want |= {f"q_norm{L}": names.q_norm_out.format(L=L), f"k_norm{L}": names.k_norm_out.format(L=L)}
    got: dict[str, Tensor] = {}
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(name, _keep(got, key)) for key, name in want.items()])
    for L in range(spec.n_layers):
        if missing.split_inputs:
            for x, kind in (("q", Input.Q), ("k", Input.K), ("v", Input.V)):
                expect_equal(want[f"{x}{L}"], em.project(L, kind, seen[f"{x}{L}"]), got[f"{x}{L}"],
                             f"is not ln1 and the head's slice of W_{x.upper()} applied to the head's input")  # fmt: skip
        if missing.results:
            b_O = _bias(model.blocks[L].attn)
            expect_equal(want[f"attn_out{L}"], seen[f"heads{L}"].sum(2) + b_O, got[f"attn_out{L}"],
                         "is not the sum of the per-head results hook_z @ W_O plus b_O")  # fmt: skip
        if missing.mlp_in:
            expect_equal(want[f"mlp_hook_in{L}"], em.norm1(L, seen[f"mlp_in{L}"]), got[f"mlp_hook_in{L}"],
                         "is not ln1 of the block's input")
        for x, kind in (("q", Input.Q), ("k", Input.K)) if missing.head_norms else ():
            mine, theirs = em.head_norm(L, kind, seen[f"{x}{L}"]), got.get(f"{x}_norm{L}")
            if mine is None or theirs is None:
                raise ModelError(f"{want[f'{x}_norm{L}']} did not fire; circuitdag cannot patch this model")
            # Hugging Face computes the norm in float32: agreement to float32 rounding.
            low = theirs.dtype if torch.finfo(theirs.dtype).bits < 32 else torch.float32
            err = (mine - theirs).abs().max().item()
            if not err <= tolerance(theirs, low):
                raise ModelError(f"{want[f'{x}_norm{L}']} is not the norm over all heads of each head's own "
                                 f"projection (max difference {err:.3g}); circuitdag cannot patch this model")  # fmt: skip


def _bias(attn: Any) -> Tensor | float:
    try:
        b = attn.b_O
    except AttributeError:  # a bridge raises for a bias-free output projection
        return 0.0
    return b if isinstance(b, Tensor) else 0.0


def _differ(got: Tensor, want: Tensor) -> bool:
    """More than rounding apart (an emulated hook recomputes what the model computed)."""
    return not (got - want).abs().max().item() <= tolerance(want)


def _keep(store: dict[Any, Tensor], key: Any) -> Hook:
    def fn(x: Tensor, hook: Any) -> None:
        store[key] = x.detach().clone()
    return fn


def _check_shapes(spec: ModelSpec, table: HookTable, seen: dict[str, Tensor], n_batch: int, n_pos: int) -> None:
    """Every role of the table fired, with its shape (``batch pos [heads] d_model``)."""
    want: dict[str, tuple[int, ...]] = {"final": (n_batch, n_pos, spec.d_model)}
    for L in range(spec.n_layers):
        want[f"resid{L}"] = (n_batch, n_pos, spec.d_model)
        want |= {f"q{L}": (n_batch, n_pos, spec.n_heads, spec.d_model), f"heads{L}": (n_batch, n_pos, spec.n_heads,
                 spec.d_model), f"k{L}": (n_batch, n_pos, spec.n_kv_heads, spec.d_model),
                 f"v{L}": (n_batch, n_pos, spec.n_kv_heads, spec.d_model)}  # fmt: skip
        if not spec.attn_only:
            want |= {f"mlp_in{L}": (n_batch, n_pos, spec.d_model), f"mlp{L}": (n_batch, n_pos, spec.d_model)}
    for key, shape in want.items():
        if key not in seen:  # the hooks a bridge can switch off are emulated: this one the model has not
            raise ModelError(f"hook {_hook_of(table, key)} did not fire and cannot be emulated on this model; "
                             "circuitdag cannot patch it (docs/models.md lists the architectures it patches)")  # fmt: skip
        if tuple(seen[key].shape) != shape:
            raise ModelError(f"hook {_hook_of(table, key)} has shape {tuple(seen[key].shape)}, expected {shape}")


def _hook_of(table: HookTable, key: str) -> str:
    """The hook name behind a key of :func:`_read`."""
    role, L = key.rstrip("0123456789"), int(key[len(key.rstrip("0123456789")):] or table.n_layers)
    if role in ("resid", "final"):
        return table.resid_pre(L)
    if role in ("heads", "mlp"):
        return table.output(L, NodeKind.HEAD if role == "heads" else NodeKind.MLP)
    return table.input(L, {"q": Input.Q, "k": Input.K, "v": Input.V, "mlp_in": Input.MLP}[role])


def _check_writes(model: Any, spec: ModelSpec, table: HookTable, seen: dict[str, Tensor], logits: Tensor) -> None:
    """Write noise into one input of the last layer; see which outputs move."""
    L = spec.n_layers - 1
    resid = seen[f"resid{L}"]
    g = torch.Generator().manual_seed(1)
    noise = (torch.randn(resid.shape, generator=g) * (4 * resid.std().item() + 1)).to(resid)

    def run(kind: Input, entry: int | None) -> tuple[Tensor, dict[str, Tensor]]:
        out: dict[str, Tensor] = {}

        def write(t: Tensor, hook: Any) -> Tensor:
            t = t.clone()
            if entry is None:
                t[:] = noise
            else:
                t[:, :, entry] = noise
            return t

        def save(key: str) -> Hook:
            def fn(t: Tensor, hook: Any) -> None:
                out[key] = t.detach().clone()
            return fn

        hooks = table.hooks(start_layer=L, inputs=lambda M, k: write if (M, k) == (L, kind) else None,
                            outputs=lambda M, k: save("heads" if k == NodeKind.HEAD else "mlp") if M == L else None)
        with torch.no_grad():
            new_logits = resume(model, resid, L, fwd_hooks=hooks)
        if "heads" not in out:
            raise ModelError(f"hook {table.output(L, NodeKind.HEAD)} did not fire in forward(start_at_layer={L})")
        return new_logits, out

    def unused(name: str) -> ModelError:
        return ModelError(f"{name}: a value written into this hook does not change the output")

    base = seen[f"heads{L}"]
    for kind in (Input.Q, Input.K, Input.V):
        name = table.input(L, kind)
        entry = (spec.n_heads if kind == Input.Q else spec.n_kv_heads) - 1
        expected = {entry} if kind == Input.Q else set(spec.query_heads(entry))
        new_logits, out = run(kind, entry)
        result = out["heads"]
        changed = {h for h in range(spec.n_heads) if (result[:, :, h] - base[:, :, h]).abs().max() > tolerance(base)}
        moved = {h for h in range(spec.n_heads) if not torch.equal(result[:, :, h], base[:, :, h])}
        if not moved or (new_logits - logits).abs().max() == 0:
            raise unused(name)
        if not changed <= expected or not expected <= moved:
            raise ModelError(f"{name}: writing entry {entry} changed the results of heads {sorted(moved)}, "
                             f"expected exactly {sorted(expected)}")  # fmt: skip
        if spec.parallel_attn_mlp and not spec.attn_only and _differ(out["mlp"], seen[f"mlp{L}"]):
            raise ModelError(f"{name}: writing into a head's input changed the MLP's output, but the block is "
                             "parallel (its MLP reads the block's input)")  # fmt: skip
    if not spec.attn_only:
        name = table.input(L, Input.MLP)
        new_logits, out = run(Input.MLP, None)
        if torch.equal(out["mlp"], seen[f"mlp{L}"]) or (new_logits - logits).abs().max() == 0:
            raise unused(name)
        if spec.parallel_attn_mlp and _differ(out["heads"], base):
            raise ModelError(f"{name}: writing into the MLP's input changed head results, but the block is parallel")
