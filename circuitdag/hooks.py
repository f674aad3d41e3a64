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
the hooks once when it boots a model, :mod:`circuitdag.models.check`) and the project's own
:class:`~circuitdag.models.hooked.TinyTransformer`, use TransformerLens's hook names; a
backend with other names adds its :class:`HookNames` to :data:`BACKENDS`.

Per architecture: where a model does not fire a hook the engine needs (per-head inputs
and results of OPT, GPT-J, GPT-Neo; the MLP input of a parallel block that shares its
norm, Phi-1/2, Falcon, GPT-J), the table emulates it from the model's own modules
(:mod:`circuitdag.emulated`); every pass sees the same roles either way. In a parallel
block (GPT-NeoX/Pythia, GPT-J, Phi, Falcon) the MLP reads the block's input, not the
heads of its own layer: the graph and the mask layout say so, the hooks need no change.
Where each layer's summed attention output is normalised before it reaches the residual
(Gemma 2/3, OLMo 2), :attr:`HookTable.post` holds those norms and every pass re-normalises
each receiver's own mix of clean and ablated heads (:mod:`circuitdag.postnorm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from circuitdag.emulated import Emulator, Missing, missing_hooks
from circuitdag.errors import ModelError
from circuitdag.graph import Input, ModelSpec, NodeKind
from circuitdag.models.resume import resume
from circuitdag.postnorm import PostNorms

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
    resid_mid: str = "blocks.{L}.hook_resid_mid"
    attn_out: str = "blocks.{L}.hook_attn_out"
    mlp_post: str = "blocks.{L}.mlp.hook_post"
    pattern: str = "blocks.{L}.attn.hook_pattern"
    z: str = "blocks.{L}.attn.hook_z"
    attn_q: str = "blocks.{L}.attn.hook_q"
    attn_k: str = "blocks.{L}.attn.hook_k"
    attn_v: str = "blocks.{L}.attn.hook_v"
    norm1_in: str = "blocks.{L}.ln1.hook_in"
    norm2_in: str = "blocks.{L}.ln2.hook_in"
    mlp_hook_in: str = "blocks.{L}.mlp.hook_in"
    q_norm_out: str = "blocks.{L}.attn.q_norm.hook_out"
    k_norm_out: str = "blocks.{L}.attn.k_norm.hook_out"


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
    """The hooks of one model with ``n_layers`` blocks (see the module docstring).
    ``emulator``: the replacements of the hooks the model does not fire (None: it fires
    them all); ``post``: the post-attention norms through which each layer's heads reach
    the residual (:mod:`circuitdag.postnorm`; None: the heads' results add up to it)."""

    names: HookNames
    n_layers: int
    has_mlp: bool
    emulator: Emulator | None = field(default=None, compare=False)
    post: PostNorms | None = field(default=None, compare=False)

    @classmethod
    def of(cls, model: Any, spec: ModelSpec) -> HookTable:
        """The table of ``model``: its backend's names, and an emulator for the hooks it does
        not fire (found with one forward pass of three tokens, once per model)."""
        names = next((BACKENDS[c.__name__] for c in type(model).__mro__ if c.__name__ in BACKENDS), TRANSFORMER_LENS)
        missing = missing_hooks(model, spec)
        return cls(names, spec.n_layers, not spec.attn_only, Emulator(model, spec, missing) if missing.any else None,
                   PostNorms.of(model))  # fmt: skip

    @property
    def missing(self) -> Missing:
        """Which hooks are emulated (:mod:`circuitdag.emulated`)."""
        return self.emulator.missing if self.emulator is not None else Missing()

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
        mlp_in = self.names.norm2_in if self.missing.mlp_in_at_norm else self.names.mlp_in
        name = {Input.Q: self.names.q, Input.K: self.names.k, Input.V: self.names.v, Input.MLP: mlp_in}[kind]
        return name.format(L=L)

    def output(self, L: int, kind: NodeKind) -> str:
        """The hook holding the output of layer ``L``'s heads (all at once) or MLP; for heads
        whose results are emulated, ``hook_z`` (use :meth:`hooks` or :meth:`head_results`
        to read results)."""
        if kind == NodeKind.HEAD:
            return (self.names.z if self.missing.results else self.names.head_out).format(L=L)
        return self.names.mlp_out.format(L=L)

    def head_results(self, L: int, x: Tensor) -> Tensor:
        """Layer ``L``'s per-head results (``batch pos heads d_model``) from the activation
        of :meth:`output` (``hook_z`` where results are emulated)."""
        return self.emulator.result(L, x) if self.emulator is not None and self.missing.results else x

    def _emulated_input(self, L: int, kind: Input, inner: Hook, stash: dict[int, Tensor],
                        read: set[int]) -> HookList:  # fmt: skip
        """The hooks standing in for input ``kind`` of layer ``L`` when the model does not
        fire it (:mod:`circuitdag.emulated`): the engine's hook ``inner`` gets the block's
        input stream read at ``ln1.hook_in`` (per head for q/k/v) and what it returns is
        projected (q/k/v) or normalised (MLP) into the hook the model reads on from."""
        em, names = self.emulator, self.names
        assert em is not None
        out: HookList = []
        if L not in read:  # first emulated input of the layer: read the stream once
            read.add(L)

            def keep(x: Tensor, hook: Any) -> None:
                stash[L] = x
            out.append((names.norm1_in.format(L=L), keep))
        if kind == Input.MLP:

            def mlp(x: Tensor, hook: Any) -> Tensor | None:
                new = inner(stash[L], hook)
                return None if new is None else em.norm1(L, new)
            return out + [(names.mlp_hook_in.format(L=L), mlp)]
        site = {Input.Q: names.attn_q, Input.K: names.attn_k, Input.V: names.attn_v}[kind].format(L=L)

        def qkv(x: Tensor, hook: Any) -> Tensor | None:
            resid = stash[L]
            new = inner(resid.unsqueeze(2).expand(*resid.shape[:2], x.shape[2], resid.shape[-1]), hook)
            return None if new is None else em.project(L, kind, new)
        return out + [(site, qkv)]

    def _head_norms(self, L: int, kind: Input) -> HookList:
        """Hooks that apply OLMo 2's all-heads query (key) norm of layer ``L`` to each head's
        own input (:meth:`Emulator.head_norm <circuitdag.emulated.Emulator.head_norm>`): the
        per-head inputs are kept after every other hook on them has run, and the norm's
        output is replaced."""
        em = self.emulator
        assert em is not None
        box: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: Any) -> None:
            box["x"] = x

        def put(x: Tensor, hook: Any) -> Tensor | None:
            return em.head_norm(L, kind, box.pop("x"))

        out_name = self.names.q_norm_out if kind == Input.Q else self.names.k_norm_out
        return [(self.input(L, kind), keep), (out_name.format(L=L), put)]

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
        each activation before the second changes it. The list also holds, whatever the
        factories, the hooks that make the model what the engine patches: its post-sublayer
        norms in its own dtype (:mod:`circuitdag.postnorm`) and OLMo 2's query/key norms per
        head (:mod:`circuitdag.emulated`); ``hooks()`` with no factory is just those."""
        out: HookList = []
        stash: dict[int, Tensor] = {}  # block input per layer, for emulated inputs
        read: set[int] = set()  # layers whose block input is read
        missing = self.missing

        def add(name: str, hook: Hook | None) -> None:
            if hook is not None:
                out.append((name, hook))

        def add_input(L: int, kind: Input, hook: Hook | None) -> None:
            emulate = (missing.mlp_in if kind == Input.MLP else missing.split_inputs) and kind != Input.RESID
            if hook is None or not emulate:
                add(self.input(L, kind), hook)
            else:
                out.extend(self._emulated_input(L, kind, hook, stash, read))

        def add_output(L: int, kind: NodeKind, hook: Hook | None) -> None:
            if hook is None or kind != NodeKind.HEAD or not missing.results:
                add(self.output(L, kind), hook)
                return
            inner = hook

            def results(z: Tensor, hook: Any) -> None:  # output hooks only read
                inner(self.head_results(L, z), hook)
            add(self.output(L, kind), results)

        if self.post is not None:  # the model's post-sublayer norms, in the model's dtype (circuitdag.postnorm)
            out += self.post.hooks(start_layer)
        for L in range(start_layer, self.n_layers + 1):
            if resid_pre is not None:
                add(self.resid_pre(L), resid_pre(L))
            kinds = (Input.RESID,) if L == self.n_layers else (Input.Q, Input.K, Input.V, NodeKind.HEAD) + (
                (Input.MLP, NodeKind.MLP) if self.has_mlp else ())  # fmt: skip
            for kind in kinds:
                if isinstance(kind, NodeKind):
                    if outputs is not None:
                        add_output(L, kind, outputs(L, kind))
                else:
                    if inputs is not None:
                        add_input(L, kind, inputs(L, kind))
                    if missing.head_norms and kind in (Input.Q, Input.K):
                        out.extend(self._head_norms(L, kind))
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
