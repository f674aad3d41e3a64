"""Loading real Hugging Face models through TransformerLens 4's ``TransformerBridge``.

:func:`load_bridge` boots a hub model or a local ``save_pretrained`` directory, switches
on the hooks the patching engine needs, and checks them once (:func:`check_hooks`);
a model whose hooks do not behave as the engine assumes is refused with a
:class:`~circuitdag.errors.ModelError` naming the hook.

The hooks the engine relies on (``L`` a layer, ``n`` the number of layers)::

    blocks.L.hook_resid_pre     batch pos d_model          residual entering block L
    blocks.L.hook_q_input       batch pos n_heads d_model   = resid_pre per head, before LayerNorm
    blocks.L.hook_k_input       batch pos n_kv_heads d_model (n_kv_heads = n_heads without GQA)
    blocks.L.hook_v_input       batch pos n_kv_heads d_model
    blocks.L.attn.hook_result   batch pos n_heads d_model   each head's write to the residual
    blocks.L.hook_resid_mid     batch pos d_model
    blocks.L.hook_mlp_in        batch pos d_model          = resid_mid (resid_pre if parallel), pre-LN
    blocks.L.hook_mlp_out       batch pos d_model
    blocks.{n-1}.hook_resid_post batch pos d_model         what the unembedding reads

and :func:`resume` (``model(resid, start_at_layer=L)`` without computing blocks below ``L``)
resuming from ``blocks.L.hook_resid_pre``.
:func:`circuitdag.models.spec_of` reads the few shape facts the engine needs from either a bridge or the
project's own :class:`~circuitdag.models.hooked.TinyTransformer`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from circuitdag.errors import ModelError
from circuitdag.graph import ModelSpec
from circuitdag.models.spec import bos_decision, spec_of

if TYPE_CHECKING:
    from transformer_lens import TransformerBridge

__all__ = [
    "HookReport",
    "check_hooks",
    "load_bridge",
    "required_hooks",
    "resume",
    "skip_blocks_below",
]

logger = logging.getLogger("circuitdag")


def load_bridge(
    name_or_dir: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    process_weights: bool = True,
    check: bool = True,
) -> TransformerBridge:
    """Boot a Hugging Face causal LM as a hooked ``TransformerBridge`` ready for patching.

    ``name_or_dir`` is a hub name (``"gpt2"``; needs the network or the HF cache) or a local
    directory written by ``save_pretrained`` (config, weights, tokenizer).
    ``process_weights=True`` applies TransformerLens's usual processing (fold LayerNorm
    scales into the next weights, centre writing weights and the unembedding, fold value
    biases into ``b_O``): the model computes the same function, but logits differ from
    Hugging Face's by a constant per position (softmax unchanged) and a zero-ablated head or
    residual means something else; ``False`` keeps Hugging Face's raw weights and logits.
    With ``check=True`` the hooks are verified once (:func:`check_hooks`).
    """
    from transformer_lens import TransformerBridge

    name = os.fspath(name_or_dir)
    # Hub names are "gpt2" or "org/name"; anything else that looks like a path is one.
    local = isinstance(name_or_dir, os.PathLike) or os.path.exists(name)
    if local or name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        path = Path(name).expanduser()
        if not path.is_dir():
            raise ModelError(f"no model directory {path}; pass a directory written by save_pretrained, or a hub name")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} is not a Hugging Face model directory (no config.json); "
                "write one with model.save_pretrained(dir) and tokenizer.save_pretrained(dir)"
            )
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelError(
                f"{path} has no tokenizer files (none of {', '.join(_TOKENIZER_FILES)}); "
                "save the tokenizer next to the weights with tokenizer.save_pretrained(dir)"
            )
        name = str(path.resolve())  # absolute: "neox" alone is a TransformerLens alias of a hub model
    try:
        model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
    except OSError as e:
        if local or Path(name).is_dir():
            raise ModelError(f"could not load the model directory {name}: {str(e).splitlines()[0][:300]}; check its "
                             "config.json and weights (save_pretrained writes both)") from e  # fmt: skip
        raise ModelError(
            f"could not load {name!r}: no local directory of that name, and the Hugging Face hub or cache "
            f"does not have it ({str(e).splitlines()[0][:200]}). Pass a local directory written by "
            "save_pretrained (./name for a directory here), or make the model available in the cache"
        ) from e
    except (ValueError, NotImplementedError, KeyError) as e:
        raise ModelError(f"TransformerBridge cannot boot {name!r}: {e}") from e
    except Exception as e:  # safetensors' SafetensorError (a truncated or empty weights file), and the like
        if type(e).__name__ != "SafetensorError":
            raise
        raise ModelError(f"the weights of {name} cannot be read ({e}); the file is damaged: save the model "
                         "again with save_pretrained") from e  # fmt: skip
    model.eval()
    model.enable_compatibility_mode(disable_warnings=True, no_processing=not process_weights)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    # Whether prompts start with BOS follows the tokenizer, not the directory's name
    # (circuitdag.models.bos_decision); model.to_tokens follows the same decision.
    bos, why = bos_decision(model)
    model.cfg.default_prepend_bos = bos
    logger.info("%s: prompts %s BOS (%s)", name, "start with" if bos else "do not start with", why)
    if check:
        check_hooks(model)
    return model


#: Files of which a saved tokenizer has at least one (``tokenizer.save_pretrained``).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class _SkippedBlock(nn.Module):
    """Stands in for a block below ``start_at_layer``: passes the hidden states through."""

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states


# Bridges on which skipping blocks gave wrong logits at the check (see check_hooks).
_NO_SKIP: weakref.WeakSet[Any] = weakref.WeakSet()


def _is_bridge(model: Any) -> bool:
    return hasattr(model, "original_model") and isinstance(getattr(model, "blocks", None), nn.ModuleList)


@contextlib.contextmanager
def skip_blocks_below(model: Any, layer: int) -> Iterator[None]:
    """Within the block, blocks ``0..layer-1`` of a bridge do no work.

    ``TransformerBridge.forward(resid, start_at_layer=L)`` (transformer_lens 4.3) still runs
    blocks ``0..L-1`` and throws their output away; the bridge's ``blocks`` list is the Hugging
    Face model's own layer list, so swapping its first entries for pass-throughs skips them.
    Only meaningful together with ``start_at_layer=layer``; a no-op for other models.
    """
    if layer <= 0 or not _is_bridge(model) or model in _NO_SKIP:
        yield
        return
    blocks = model.blocks._modules
    keys = list(blocks)[:layer]
    saved = {k: blocks[k] for k in keys}
    skip = _SkippedBlock()
    try:
        for k in keys:
            blocks[k] = skip
        yield
    finally:
        blocks.update(saved)


def resume(
    model: Any,
    resid: Float[Tensor, "batch pos d_model"],
    layer: int,
    fwd_hooks: Sequence[tuple[str | Callable[..., Any], Callable[..., Any]]] = (),
    **kwargs: Any,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of the forward pass resumed at block ``layer`` from the residual ``resid``
    (``blocks.{layer}.hook_resid_pre`` of an earlier run), with ``fwd_hooks`` attached; hooks
    on blocks below ``layer`` do not fire. Works for bridges and ``TinyTransformer``."""
    with skip_blocks_below(model, layer):
        return model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=list(fwd_hooks), **kwargs)


@dataclass(frozen=True)
class HookReport:
    """What :func:`check_hooks` measured.

    ``resid_offset[L]`` is the constant (same at every batch entry and position) by which
    ``blocks.L.hook_resid_pre`` (``L == n_layers``: the final ``hook_resid_post``) exceeds
    ``embed + sum of head results + MLP outputs`` of the layers below: the attention output
    biases ``b_O`` (with value biases folded in), which belong to no node.
    """

    resid_offset: Float[Tensor, "n_layers_plus_1 d_model"]
    max_error: float


def required_hooks(spec: ModelSpec) -> list[str]:
    """Names of every hook the patching engine reads or writes, layer by layer."""
    names: list[str] = []
    for L in range(spec.n_layers):
        names += [f"blocks.{L}.hook_resid_pre"] + [f"blocks.{L}.hook_{x}_input" for x in "qkv"]
        names += [f"blocks.{L}.attn.hook_result", f"blocks.{L}.hook_resid_mid"]
        if not spec.attn_only:
            names += [f"blocks.{L}.hook_mlp_in", f"blocks.{L}.hook_mlp_out"]
    names.append(f"blocks.{spec.n_layers - 1}.hook_resid_post")
    return names


def _probe_tokens(model: Any) -> Int[Tensor, "batch pos"]:
    g = torch.Generator().manual_seed(0)
    n_pos = min(6, int(model.cfg.n_ctx))
    return torch.randint(0, int(model.cfg.d_vocab), (2, n_pos), generator=g).to(_device(model))


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _tol(ref: Tensor, dtype: torch.dtype | None = None) -> float:
    """Agreement expected of two computations of ``ref``'s value in ``dtype`` (default:
    ``ref``'s): sqrt(eps) relative to ``ref``'s largest entry, so the tolerance follows the
    dtype (float64 1.5e-8, float32 3.5e-4, float16 0.031, bfloat16 0.088 relative)."""
    return torch.finfo(dtype or ref.dtype).eps ** 0.5 * (1.0 + ref.abs().max().item())


def check_hooks(model: Any, tokens: Int[Tensor, "batch pos"] | None = None) -> HookReport:
    """Verify once that the hooks behave as the patching engine assumes; raise otherwise.

    Works for a ``TransformerBridge`` booted by :func:`load_bridge` and for a
    ``TinyTransformer``. Checks, on ``tokens`` (default: 2 random prompts of 6 tokens):

    * every hook of :func:`required_hooks` fires with the documented shape;
    * ``hook_q/k/v_input`` equal ``hook_resid_pre`` on every head (taken before LayerNorm),
      ``hook_mlp_in`` equals ``hook_resid_mid`` (``hook_resid_pre`` if parallel attn/MLP);
    * every layer's residual is ``blocks.0.hook_resid_pre`` + head results + MLP outputs of
      the layers below, up to a constant (reported in :class:`HookReport`);
    * :func:`resume` from ``blocks.L.hook_resid_pre`` reproduces the logits;
    * a value written into ``hook_q_input`` at one head changes that head's result and the
      logits and nothing else; one written into ``hook_k_input``/``hook_v_input`` at one key/value
      head changes exactly the query heads of :meth:`ModelSpec.query_heads`; one written into
      ``hook_mlp_in`` changes ``hook_mlp_out`` (checked on the last layer).
    """
    spec = spec_of(model)
    if spec.parallel_attn_mlp:  # the patching engine reads each MLP's input after attention (hook_resid_mid)
        raise ModelError(f"{getattr(model.cfg, 'model_name', None) or 'this model'} computes attention and MLP in "
                         "parallel from the same residual stream (GPT-NeoX/Pythia, GPT-J): circuitdag does not "
                         "support parallel attention+MLP blocks yet; use a model with sequential blocks (GPT-2, "
                         "Llama, SmolLM2, ...)")  # fmt: skip
    if tokens is None:
        tokens = _probe_tokens(model)
    names = required_hooks(spec)
    absent = [n for n in names if n not in model.hook_dict]
    if absent:
        raise ModelError(f"model has no hook {absent[0]}; circuitdag cannot patch it")
    # No names_filter: the bridge warns about filtered names whose hooks are switched off,
    # and a hook that does not fire is reported below with the way to switch it on.
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    n_batch, n_pos = tokens.shape
    _check_shapes(spec, cache, n_batch, n_pos)
    errors: list[float] = []

    def expect_equal(name: str, got: Tensor, want: Tensor, what: str, scale: Tensor | None = None) -> None:
        """``got == want`` up to rounding in the model's dtype, relative to ``scale``'s size
        (default ``want``'s)."""
        err = (got - want).abs().max().item()
        errors.append(err)
        tol = _tol(want if scale is None else scale, logits.dtype)
        if not err <= tol:
            raise ModelError(f"{name} {what} (max difference {err:.3g}, more than rounding in {_dtype_name(logits)} "
                             f"explains: {tol:.3g}); circuitdag cannot patch this model")  # fmt: skip

    # Inputs are read before LayerNorm: every head sees the same residual stream.
    for L in range(spec.n_layers):
        resid = cache[f"blocks.{L}.hook_resid_pre"]
        for x in "qkv":
            name = f"blocks.{L}.hook_{x}_input"
            expect_equal(name, cache[name], resid.unsqueeze(2), f"is not blocks.{L}.hook_resid_pre per head")
        if not spec.attn_only:
            src = f"blocks.{L}.hook_resid_pre" if spec.parallel_attn_mlp else f"blocks.{L}.hook_resid_mid"
            expect_equal(
                f"blocks.{L}.hook_mlp_in", cache[f"blocks.{L}.hook_mlp_in"], cache[src], f"is not {src}"
            )

    # The residual stream decomposes into node outputs plus a constant. Summed in float32
    # at least; the model's own sums round in its dtype, so the tolerance is relative to
    # the size of the residual stream, not of the constant.
    acc = torch.promote_types(logits.dtype, torch.float32)
    embed = cache["blocks.0.hook_resid_pre"]
    total = embed.to(acc)
    offsets = [torch.zeros_like(embed[0, 0])]
    for L in range(spec.n_layers):
        total = total + cache[f"blocks.{L}.attn.hook_result"].to(acc).sum(2)
        if not spec.attn_only:
            total = total + cache[f"blocks.{L}.hook_mlp_out"].to(acc)
        name = f"blocks.{L + 1}.hook_resid_pre" if L + 1 < spec.n_layers else f"blocks.{L}.hook_resid_post"
        left = cache[name].to(acc) - total
        offsets.append(left.mean((0, 1)).to(embed.dtype))
        expect_equal(
            name,
            left,
            left.mean((0, 1)).expand_as(left),
            "is not blocks.0.hook_resid_pre + attn.hook_result + hook_mlp_out of the layers below "
            "plus a constant",
            scale=cache[name],
        )

    # Resuming at a layer from its residual reproduces the full forward pass (every block
    # is the same code, so a few layers stand for all).
    for L in sorted({0, 1, spec.n_layers // 2, spec.n_layers - 1} & set(range(spec.n_layers))):
        resid = cache[f"blocks.{L}.hook_resid_pre"]
        with torch.no_grad():
            resumed = resume(model, resid, L)
        if L and _is_bridge(model) and not (resumed - logits).abs().max() <= _tol(logits):
            logger.warning("cannot skip the blocks below start_at_layer on this model; resuming is slower")
            _NO_SKIP.add(model)
            with torch.no_grad():
                resumed = resume(model, resid, L)
        what = f"passed to forward(start_at_layer={L}) does not reproduce the logits"
        expect_equal(f"blocks.{L}.hook_resid_pre", resumed, logits, what)

    _check_writes(model, spec, cache, logits)
    return HookReport(resid_offset=torch.stack(offsets), max_error=max(errors))


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _check_shapes(spec: ModelSpec, cache: Any, n_batch: int, n_pos: int) -> None:
    for name in required_hooks(spec):
        if name not in cache:
            raise ModelError(
                f"hook {name} did not fire; boot the model with load_bridge (which enables "
                "set_use_attn_result, set_use_split_qkv_input and set_use_hook_mlp_in)"
            )
        kind = name.rsplit(".", 1)[1]
        heads = {"hook_q_input": spec.n_heads, "hook_k_input": spec.n_kv_heads}
        heads |= {"hook_v_input": spec.n_kv_heads, "hook_result": spec.n_heads}
        want = (
            (n_batch, n_pos, heads[kind], spec.d_model) if kind in heads else (n_batch, n_pos, spec.d_model)
        )
        if tuple(cache[name].shape) != want:
            raise ModelError(f"hook {name} has shape {tuple(cache[name].shape)}, expected {want}")


def _check_writes(model: Any, spec: ModelSpec, cache: Any, logits: Tensor) -> None:
    """Write noise into one head's input of the last layer; see which outputs move."""
    L = spec.n_layers - 1
    resid = cache[f"blocks.{L}.hook_resid_pre"]
    g = torch.Generator().manual_seed(1)
    noise = (torch.randn(resid.shape, generator=g) * (4 * resid.std().item() + 1)).to(resid)
    result_name = f"blocks.{L}.attn.hook_result"

    def run(hook: str, entry: int | None, out: str) -> tuple[Tensor, Tensor]:
        seen: dict[str, Tensor] = {}

        def write(t: Tensor, hook: Any) -> Tensor:
            t = t.clone()
            if entry is None:
                t[:] = noise
            else:
                t[:, :, entry] = noise
            return t

        def save(t: Tensor, hook: Any) -> None:
            seen["out"] = t.detach().clone()

        with torch.no_grad():
            new_logits = resume(model, resid, L, fwd_hooks=[(hook, write), (out, save)])
        if "out" not in seen:
            raise ModelError(f"hook {out} did not fire in forward(start_at_layer={L})")
        return new_logits, seen["out"]

    def unused(name: str) -> ModelError:
        return ModelError(f"{name}: a value written into this hook does not change the output")

    for x in "qkv":
        name = f"blocks.{L}.hook_{x}_input"
        entry = (spec.n_heads if x == "q" else spec.n_kv_heads) - 1
        expected = {entry} if x == "q" else set(spec.query_heads(entry))
        new_logits, result = run(name, entry, result_name)
        base = cache[result_name]
        changed = {
            h for h in range(spec.n_heads) if (result[:, :, h] - base[:, :, h]).abs().max() > _tol(base)
        }
        moved = {h for h in range(spec.n_heads) if not torch.equal(result[:, :, h], base[:, :, h])}
        if not moved or (new_logits - logits).abs().max() == 0:
            raise unused(name)
        if not changed <= expected or not expected <= moved:
            raise ModelError(
                f"{name}: writing entry {entry} changed the results of heads {sorted(moved)}, "
                f"expected exactly {sorted(expected)}"
            )
    if not spec.attn_only:
        name, out = f"blocks.{L}.hook_mlp_in", f"blocks.{L}.hook_mlp_out"
        new_logits, mlp_out = run(name, None, out)
        if torch.equal(mlp_out, cache[out]) or (new_logits - logits).abs().max() == 0:
            raise unused(name)
