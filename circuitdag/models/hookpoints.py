"""Named hook points, with TransformerLens's forward-hook API, in plain torch.

The project's own hooked transformer (:mod:`circuitdag.models.hooked`) runs the shipped
zoo and tracr models. It needs only the part of TransformerLens's ``HookedRootModule``
that the patching engine uses, and importing TransformerLens costs about three seconds
of process start-up (it imports every architecture adapter and ``transformers``'
modelling code), more than a whole ACDC search on those models. So the hook machinery
lives here, with the same calling conventions:

* a hook is ``fn(activation, hook=point)``; a return value other than None replaces the
  activation for everything downstream (and for the hooks after it on the same point);
* hooks on one point fire in the order they were added;
* :meth:`HookedModule.run_with_hooks` removes the hooks it added when the pass ends
  (also on an exception), :meth:`HookedModule.hooks` is the same as a context manager,
  :meth:`HookedModule.run_with_cache` returns ``(output, {name: activation})`` with the
  activations detached (a plain dict standing in for TransformerLens's ``ActivationCache``).

Only forward hooks exist: no circuitdag pass uses backward hooks (attribution takes
gradients with ``torch.autograd.grad`` on activations the forward hooks record).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["HookFn", "HookPoint", "HookedModule", "NamesFilter"]

#: ``fn(activation, hook=point)``: returns a replacement activation or None.
HookFn = Callable[..., Any]
#: A hook point's name, or a predicate on names (TransformerLens accepts both).
NameOrFilter = str | Callable[[str], bool]
#: What :meth:`HookedModule.run_with_cache` keeps: None (everything), a name, names, a predicate.
NamesFilter = None | str | Sequence[str] | Callable[[str], bool]


class HookPoint(nn.Module):
    """An identity module that calls its hooks on the tensor passing through it.

    ``name`` is set by :meth:`HookedModule.setup` to the point's dotted module path
    (``blocks.0.hook_resid_pre``)."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str | None = None
        self._hooks: list[HookFn] = []

    def add_hook(self, hook: HookFn, dir: str = "fwd", prepend: bool = False) -> None:
        """Attach ``hook`` (forward only: ``dir`` must be ``"fwd"``)."""
        if dir != "fwd":
            raise NotImplementedError("the project's hooked transformer has forward hooks only")
        if prepend:
            self._hooks.insert(0, hook)
        else:
            self._hooks.append(hook)

    def remove_hooks(self, dir: str = "fwd", including_permanent: bool = False) -> None:
        """Detach every hook (the arguments exist for TransformerLens compatibility)."""
        self._hooks.clear()

    def remove_hook(self, hook: HookFn) -> None:
        """Detach one attachment of ``hook`` (the last one made)."""
        for i in range(len(self._hooks) - 1, -1, -1):
            if self._hooks[i] is hook:
                del self._hooks[i]
                return

    def forward(self, x: Tensor) -> Tensor:
        for hook in self._hooks:
            out = hook(x, hook=self)
            if out is not None:
                x = out
        return x


def _filter(names: NamesFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda name: True
    if isinstance(names, str):
        return lambda name: name == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda name: name in wanted


class HookedModule(nn.Module):
    """Base class of a model made of :class:`HookPoint` s; call :meth:`setup` at the end
    of ``__init__`` (it names the points and builds :attr:`hook_dict`)."""

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def setup(self) -> None:
        """Name every hook point after its module path and index the modules by name."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if not name:
                continue
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def add_hook(self, name: NameOrFilter, hook: HookFn, dir: str = "fwd", prepend: bool = False) -> None:
        """Attach ``hook`` to the point called ``name``, or to every point whose name the
        predicate ``name`` accepts. Raises KeyError for a name that is not a hook point."""
        for point in self._points(name):
            point.add_hook(hook, dir=dir, prepend=prepend)

    def _points(self, name: NameOrFilter) -> list[HookPoint]:
        if callable(name):
            return [point for point_name, point in self.hook_dict.items() if name(point_name)]
        if name not in self.hook_dict:
            raise KeyError(f"{type(self).__name__} has no hook point {name!r}")
        return [self.hook_dict[name]]

    def reset_hooks(self, *args: Any, **kwargs: Any) -> None:
        """Detach every hook of every point."""
        for point in self.hook_dict.values():
            point.remove_hooks()

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedModule]:
        """Within the block, ``fwd_hooks`` are attached; afterwards (with
        ``reset_hooks_end``) they are detached again, also on an exception. Hooks attached
        outside the block stay, so blocks nest."""
        if bwd_hooks:
            raise NotImplementedError("the project's hooked transformer has forward hooks only")
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for name, hook in fwd_hooks:
                for point in self._points(name):
                    point.add_hook(hook)
                    added.append((point, hook))
            yield self
        finally:
            if reset_hooks_end:
                for point, hook in reversed(added):
                    point.remove_hook(hook)

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        bwd_hooks: Sequence[tuple[NameOrFilter, HookFn]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """``self(*model_args, **model_kwargs)`` with ``fwd_hooks`` attached for the pass."""
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end):
            return self(*model_args, **model_kwargs)

    def run_with_cache(
        self, *model_args: Any, names_filter: NamesFilter = None, device: Any = None, **model_kwargs: Any
    ) -> tuple[Any, dict[str, Tensor]]:
        """``(output, cache)``: the pass's output and the activations of the hook points
        ``names_filter`` selects (default all), detached (moved to ``device`` if given)."""
        keep = _filter(names_filter)
        cache: dict[str, Tensor] = {}

        def save(x: Tensor, hook: HookPoint) -> None:
            value = x.detach()
            cache[str(hook.name)] = value if device is None else value.to(device)

        hooks = [(name, save) for name in self.hook_dict if keep(name)]
        return self.run_with_hooks(*model_args, fwd_hooks=hooks, **model_kwargs), cache
