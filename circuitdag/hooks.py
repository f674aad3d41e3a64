"""Which hook is a node's input and output, and the one builder of hook lists.

The engine reads and writes a model only through named hooks (DESIGN.md, the
computational graph). :class:`HookTable` says, for the model's backend, which hook holds

* a destination's input: ``q``/``k``/``v`` of layer ``L``'s heads (``batch pos head
  d_model``, before LayerNorm), the MLP's input, and ``logits``'s input, the final
  residual stream (``Input.RESID`` at layer ``n_layers``);
* a sender's output: every head of a layer at once, an MLP's output; ``embed`` is the
  residual stream entering block 0;
* the residual stream entering each block (what a resumed pass starts from), and the
  rotary ``cos``/``sin`` a model may have.

Every pass (the cached runs, the exact passes, the layer-by-layer fast path, the
differentiable masked pass and attribution) asks :meth:`HookTable.hooks` for its hook
list, giving one hook factory per role, and :meth:`HookTable.run_to_final` runs a pass up
to the final residual stream, which is where every metric is read: the unembedding is
computed afterwards, only at the answer positions.

Both model backends, ``TransformerBridge`` (:mod:`circuitdag.models.bridge`, which checks
the hooks once when it boots a model) and the project's own
:class:`~circuitdag.models.hooked.TinyTransformer`, use TransformerLens's hook names; a
backend with other names adds its :class:`HookNames` to :data:`BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from circuitdag.errors import ModelError
from circuitdag.graph import Input, ModelSpec, NodeKind
from circuitdag.models.bridge import resume

#: A TransformerLens forward hook: ``fn(activation, hook)``, returning a replacement or None.
Hook = Callable[[Tensor, Any], Any]
HookList = list[tuple[str, Hook]]


@dataclass(frozen=True)
class HookNames:
    """One backend's hook names, as format strings of the layer ``L``."""

    resid_pre: str
    q: str
    k: str
    v: str
    head_out: str
    mlp_in: str
    mlp_out: str
    resid_post: str
    cos: str
    sin: str


TRANSFORMER_LENS = HookNames(
    resid_pre="blocks.{L}.hook_resid_pre",
    q="blocks.{L}.hook_q_input",
    k="blocks.{L}.hook_k_input",
    v="blocks.{L}.hook_v_input",
    head_out="blocks.{L}.attn.hook_result",
    mlp_in="blocks.{L}.hook_mlp_in",
    mlp_out="blocks.{L}.hook_mlp_out",
    resid_post="blocks.{L}.hook_resid_post",
    cos="blocks.{L}.attn.hook_cos",
    sin="blocks.{L}.attn.hook_sin",
)

#: Hook names by model class name (the first match along the class's MRO wins); a model
#: of any other class is assumed to use TransformerLens's names.
BACKENDS: dict[str, HookNames] = {"TransformerBridge": TRANSFORMER_LENS, "TinyTransformer": TRANSFORMER_LENS}


class _StopForward(Exception):
    """Raised at the final residual stream to end a pass there (see :meth:`HookTable.run_to_final`)."""

    def __init__(self, value: Any) -> None:
        super().__init__("final residual reached")
        self.value = value


@dataclass(frozen=True)
class HookTable:
    """The hooks of one model with ``n_layers`` blocks (see the module docstring)."""

    names: HookNames
    n_layers: int
    has_mlp: bool

    @classmethod
    def of(cls, model: Any, spec: ModelSpec) -> HookTable:
        names = next((BACKENDS[c.__name__] for c in type(model).__mro__ if c.__name__ in BACKENDS), TRANSFORMER_LENS)
        return cls(names, spec.n_layers, not spec.attn_only)

    @property
    def final(self) -> str:
        """The final residual stream: what the unembedding reads (``logits``'s input)."""
        return self.names.resid_post.format(L=self.n_layers - 1)

    def resid_pre(self, L: int) -> str:
        """The residual stream entering block ``L`` (``L == n_layers``: the final one)."""
        return self.final if L == self.n_layers else self.names.resid_pre.format(L=L)

    def input(self, L: int, kind: Input) -> str:
        """The hook holding input ``kind`` of layer ``L``'s nodes (``RESID``: ``logits``)."""
        if kind == Input.RESID:
            return self.final
        name = {Input.Q: self.names.q, Input.K: self.names.k, Input.V: self.names.v, Input.MLP: self.names.mlp_in}[kind]
        return name.format(L=L)

    def output(self, L: int, kind: NodeKind) -> str:
        """The hook holding the output of layer ``L``'s heads (all at once) or MLP."""
        return (self.names.head_out if kind == NodeKind.HEAD else self.names.mlp_out).format(L=L)

    def rotary(self, model: Any) -> list[str]:
        """Names of the rotary ``cos``/``sin`` hooks ``model`` has (empty without rotary)."""
        have = getattr(model, "hook_dict", {})
        names = [n.format(L=L) for L in range(self.n_layers) for n in (self.names.cos, self.names.sin)]
        return [name for name in names if name in have]

    def hooks(
        self,
        *,
        start_layer: int = 0,
        resid_pre: Callable[[int], Hook | None] | None = None,
        inputs: Callable[[int, Input], Hook | None] | None = None,
        outputs: Callable[[int, NodeKind], Hook | None] | None = None,
    ) -> HookList:
        """The hook list of a pass over the blocks from ``start_layer`` on, in forward order.

        Each factory is asked once per site and returns the hook to attach there, or None:
        ``resid_pre(L)`` for the residual entering block ``L`` (``L == n_layers``: the final
        residual stream); ``inputs(L, kind)`` for the q, k, v and MLP inputs of layer ``L``
        and, as ``inputs(n_layers, Input.RESID)``, the input of ``logits``; ``outputs(L,
        kind)`` for the heads (``NodeKind.HEAD``) and the MLP (``NodeKind.MLP``) of layer
        ``L``. Hooks on one name fire in list order, so of two lists joined the first reads
        each activation before the second changes it."""
        out: HookList = []

        def add(name: str, hook: Hook | None) -> None:
            if hook is not None:
                out.append((name, hook))

        for L in range(start_layer, self.n_layers + 1):
            if resid_pre is not None:
                add(self.resid_pre(L), resid_pre(L))
            kinds = (Input.RESID,) if L == self.n_layers else (Input.Q, Input.K, Input.V, NodeKind.HEAD) + (
                (Input.MLP, NodeKind.MLP) if self.has_mlp else ())  # fmt: skip
            for kind in kinds:
                if isinstance(kind, NodeKind):
                    if outputs is not None:
                        add(self.output(L, kind), outputs(L, kind))
                elif inputs is not None:
                    add(self.input(L, kind), inputs(L, kind))
        return out

    def run_to_final(
        self,
        model: Any,
        x: Tensor,
        hooks: Sequence[tuple[str, Hook]],
        read: Callable[[Tensor], Any],
        start_layer: int | None = None,
    ) -> Any:
        """Run ``model`` with ``hooks`` up to the final residual stream and return
        ``read(final)``, where ``final`` is that stream after every hook on it; the
        unembedding is never computed. ``x``: tokens, or with ``start_layer`` the residual
        stream entering that block (:func:`~circuitdag.models.bridge.resume`)."""

        def stop(resid: Tensor, hook: Any) -> None:
            raise _StopForward(read(resid))

        fwd = [*hooks, (self.final, stop)]
        try:
            if start_layer is None:
                model.run_with_hooks(x, fwd_hooks=fwd)
            else:
                resume(model, x, start_layer, fwd_hooks=fwd)
        except _StopForward as s:
            return s.value
        raise ModelError(f"the forward pass never reached the final residual hook {self.final}")


__all__ = ["BACKENDS", "TRANSFORMER_LENS", "Hook", "HookList", "HookNames", "HookTable"]
