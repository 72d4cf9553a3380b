"""Where one training step ends, found in an unchanged script (``--step-on``).

- ``optimizer[:K]`` (default ``optimizer``): each ``step()`` of one optimizer, seen through PyTorch's
  global step post-hook (``torch.optim.optimizer.register_optimizer_step_post_hook``; called after
  ``step()`` by ``Optimizer.profile_hook_step``, torch/optim/optimizer.py). With several optimizers,
  the K-th created (0-based; default the first); optimizers created before dpprof started watching
  count in the order they first step. A ``GradScaler`` that finds inf/NaN gradients skips
  ``optimizer.step()`` itself (``GradScaler._maybe_opt_step``, torch/amp/grad_scaler.py), so its
  ``step()`` is watched too: a skipped step still ends a step, marked ``grad_scaler_skipped``.
- ``backward[:N]``: every N-th outermost ``torch.autograd.backward`` call (``Tensor.backward`` calls it,
  torch/_tensor.py); backward calls made inside a running backward (reentrant checkpointing) do not count.
- ``function:NAME``: each return of a function or method, ``qualname`` (``train_step``,
  ``Trainer.step``) in the script itself, or ``module:qualname`` in an importable module.
- ``manual`` (the Python API's default): only ``Session.step()``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpprof.collect.patches import Patches
from dpprof.errors import DpprofError

#: ``boundary(grad_scaler_skipped)``: True/False, a callable read once the step's time is known, or None.
Boundary = Callable[[Any], None]
STEP_ON_HELP = ("what ends a step: optimizer (each step() of the first optimizer created; default), "
                "optimizer:K (the K-th created, from 0), backward[:N] (every N-th backward), "
                "function:NAME (each return of NAME: a function or Class.method of the script, or "
                "module:qualname), manual (the script's own dpprof.session() s.step() calls)")
#: The name the script's own functions are decorated with (``function:NAME`` in the script).
DECORATOR = "__dpprof_step__"


@dataclass(frozen=True)
class StepOn:
    """A parsed ``--step-on``: ``kind`` optimizer | backward | function | manual."""

    kind: str
    index: int = 0
    every: int = 1
    target: str = ""

    def describe(self) -> str:
        if self.kind == "optimizer":
            return "optimizer.step() of the first optimizer created" if self.index == 0 else \
                f"optimizer.step() of optimizer #{self.index} (0-based, creation order)"
        if self.kind == "backward":
            return "every backward()" if self.every == 1 else f"one step per {self.every} backward() calls"
        if self.kind == "function":
            return f"each return of {self.target}"
        return "Session.step() calls"

    @property
    def module(self) -> str | None:
        """``function:module:qualname``'s module (None: the script's own function)."""
        return self.target.partition(":")[0] if ":" in self.target else None

    @property
    def qualname(self) -> str:
        return self.target.rpartition(":")[2]


def parse_step_on(text: str) -> StepOn:
    """``optimizer``, ``optimizer:1``, ``backward``, ``backward:4``, ``function:train_step``,
    ``function:pkg.mod:Trainer.step``, ``manual``; a DpprofError (one line) otherwise."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "optimizer":
            index = int(arg) if arg else 0
            if index >= 0:
                return StepOn("optimizer", index=index)
        elif kind == "backward":
            every = int(arg) if arg else 1
            if every >= 1:
                return StepOn("backward", every=every)
        elif kind == "function" and arg:
            module, _, qual = arg.rpartition(":")
            parts = qual.split(".")
            # main.<locals>.train_step: Python's __qualname__ of a function defined inside main()
            inner = [n for n in parts[1:-1] if n != "<locals>"]
            names = [parts[0], *inner, parts[-1]] + (module.split(".") if module else [])
            if all(n.isidentifier() for n in names):
                if module and "<locals>" in parts:
                    raise DpprofError(f"--step-on {text!r}: a function defined inside another function exists "
                                      "only while that one runs; it can be named only in the script itself "
                                      "(function:outer.<locals>.inner, or function:inner)")
                return StepOn("function", target=arg)
        elif kind == "manual" and not arg:
            return StepOn("manual")
    except ValueError:
        pass
    raise DpprofError(f"--step-on {text!r}: expected {STEP_ON_HELP.split(': ', 1)[1]}")


class OptimizerSteps:
    """One boundary per ``step()`` of the tracked optimizer, and per ``GradScaler.step`` that skipped it."""

    def __init__(self, index: int, boundary: Boundary, patches: Patches) -> None:
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.index = index
        self.boundary = boundary
        self.order: list[weakref.ref[Any]] = []  # creation order (then first-step order)
        self.names: list[str] = []
        self.step_counts: list[int] = []
        self._tracked: Any = None
        self._in_scaler: Any = None
        self._fired = False
        self._handle = register_optimizer_step_post_hook(self._post_hook)
        patches.wrap(torch.optim.Optimizer, "__init__", self._init_wrapper)
        patches.wrap(torch.amp.GradScaler, "step", self._scaler_wrapper)

    def _position(self, opt: Any) -> int:
        for i, ref in enumerate(self.order):
            if ref() is opt:
                return i
        self.order.append(weakref.ref(opt))
        self.names.append(type(opt).__name__)
        self.step_counts.append(0)
        return len(self.order) - 1

    def _is_tracked(self, opt: Any) -> bool:
        if self._tracked is None:
            self._position(opt)
            if len(self.order) > self.index:
                self._tracked = self.order[self.index]
        return self._tracked is not None and self._tracked() is opt

    def _init_wrapper(self, init: Callable[..., None]) -> Callable[..., None]:
        def __init__(opt: Any, *args: Any, **kwargs: Any) -> None:
            init(opt, *args, **kwargs)
            self._position(opt)
        return __init__

    def _post_hook(self, opt: Any, args: Any, kwargs: Any) -> None:
        self.step_counts[self._position(opt)] += 1
        if not self._is_tracked(opt):
            return
        if self._in_scaler is opt:  # GradScaler.step ends the step once it knows whether it skipped
            self._fired = True
            return
        self.boundary(None)

    def _scaler_wrapper(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(scaler: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            if self._in_scaler is not None or not self._is_tracked(optimizer):
                return step(scaler, optimizer, *args, **kwargs)
            self._in_scaler, self._fired = optimizer, False
            try:
                out = step(scaler, optimizer, *args, **kwargs)
            finally:
                self._in_scaler = None
            self.boundary(_skipped(scaler, optimizer, self._fired))
            return out
        return wrapped

    def section(self) -> dict[str, Any]:
        """What the manifest says about the optimizers: class names in order, steps each, the tracked one."""
        tracked = next((i for i, r in enumerate(self.order) if self._tracked is r), None)
        return {"optimizers": list(self.names), "optimizer_steps": list(self.step_counts), "tracked": tracked}

    def close(self) -> None:
        self._handle.remove()


def _skipped(scaler: Any, optimizer: Any, fired: bool) -> Any:
    """Whether a GradScaler skipped this update: None when it is disabled (it never skips), True when
    ``optimizer.step()`` never ran; for optimizers that skip inside their own fused kernel
    (``_step_supports_amp_scaling``) step() always runs, so the found-inf flags are read lazily."""
    if not scaler.is_enabled():
        return None
    if not fired:
        return True
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
        flags = list(state.get("found_inf_per_device", {}).values())
        return lambda: any(float(t.item()) != 0.0 for t in flags)
    return False


class BackwardSteps:
    """One boundary every ``every`` outermost backward calls."""

    def __init__(self, every: int, boundary: Boundary, patches: Patches) -> None:
        import torch

        self.every = every
        self.count = 0
        current_task = torch._C._current_graph_task_id  # -1 outside a running backward (used by FSDP too)

        def make(backward: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                outer = current_task() == -1
                out = backward(*args, **kwargs)
                if outer:
                    self.count += 1
                    if self.count % self.every == 0:
                        boundary(None)
                return out
            return wrapped

        patches.wrap(torch.autograd, "backward", make)

    def close(self) -> None:
        pass


def step_decorator(boundary: Boundary) -> Callable[[Any], Any]:
    """Wraps a function so that each normal return ends a step. A ``staticmethod`` or ``classmethod``
    object (the decorator listed above it, or a class attribute) is re-wrapped around the wrapped
    function: a classmethod object itself is not callable."""
    def decorate(fn: Any) -> Any:
        if isinstance(fn, (staticmethod, classmethod)):
            return type(fn)(decorate(fn.__func__))
        if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
            raise DpprofError(f"--step-on function: {getattr(fn, '__qualname__', fn)} is a coroutine or "
                              "generator function; name the plain function that runs one step")

        @functools.wraps(fn)
        def step_function(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            boundary(None)
            return out
        return step_function
    return decorate


class DecorateDefinitions:
    """Puts ``@__dpprof_step__`` first (outermost) on every definition of ``qualname`` in a script's
    syntax tree (``transform``); line numbers stay those of the script.

    ``qualname`` is Python's ``__qualname__``: ``train_step``, ``Trainer.step``, ``main.<locals>.step``.
    A bare name that no top-level function has matches a single nested definition of that name (a method,
    or a function defined inside another); several are an error that lists them. ``resolved``: the
    qualname decorated; ``found``: how many definitions carry it.
    """

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname
        self.resolved = qualname
        self.found = 0

    def transform(self, tree: ast.Module) -> ast.Module:
        defs = list(_definitions(tree.body, []))
        chosen = [node for name, node in defs if name == self.qualname]
        if not chosen and "." not in self.qualname:
            nested = sorted({name for name, _ in defs if name.rsplit(".", 1)[-1] == self.qualname})
            if len(nested) > 1:
                raise DpprofError(f"--step-on function:{self.qualname}: the script defines several functions of "
                                  f"that name ({', '.join(nested)}): name one of them")
            if nested:
                self.resolved = nested[0]
                chosen = [node for name, node in defs if name == self.resolved]
        for node in chosen:
            node.decorator_list.insert(0, ast.copy_location(ast.Name(id=DECORATOR, ctx=ast.Load()), node))
        self.found = len(chosen)
        return tree


def _definitions(body: list[Any], scope: list[str]) -> Any:
    """``(qualname, node)`` of every function definition, at any depth, as Python names them (a function's
    own scope adds ``<locals>``; statements nested in if/for/with/try blocks are searched too)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield ".".join([*scope, node.name]), node
            yield from _definitions(node.body, [*scope, node.name, "<locals>"])
        elif isinstance(node, ast.ClassDef):
            yield from _definitions(node.body, [*scope, node.name])
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                value = getattr(node, field, None)
                if isinstance(value, list):
                    yield from _definitions([n for n in value if isinstance(n, ast.AST)], scope)


@dataclass(frozen=True)
class FunctionTarget:
    """Where ``function:NAME`` lives: ``owner.<name>`` is ``raw`` (a function, staticmethod or classmethod)."""

    owner: Any
    name: str
    raw: Any


def find_function(step_on: StepOn, main: Any | None) -> FunctionTarget:
    """``function:MODULE:NAME`` (MODULE imported now) or, for the Python API, NAME in ``main`` (the
    ``__main__`` module); a DpprofError naming the module and what is missing. Called before the run
    directory gets any file, so a wrong name leaves nothing behind."""
    if step_on.module is not None:
        try:
            root: Any = importlib.import_module(step_on.module)
        except Exception as exc:  # ImportError, or the module failing as it is imported
            raise DpprofError(f"--step-on function:{step_on.target}: cannot import {step_on.module}: "
                              f"{type(exc).__name__}: {exc}") from None
        where = f"module {step_on.module}"
    else:
        root, where = main, "__main__"
    *owners, name = step_on.qualname.split(".")
    owner = root
    for part in owners:
        owner = getattr(owner, part, None)
        if owner is None:
            raise DpprofError(f"--step-on function:{step_on.target}: {where} has no {part!r}")
    raw = vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if raw is None:
        raise DpprofError(f"--step-on function:{step_on.target}: {where} has no {step_on.qualname!r}")
    if not isinstance(raw, (staticmethod, classmethod)) and not callable(raw):
        raise DpprofError(f"--step-on function:{step_on.target}: {where}'s {step_on.qualname} is not a function")
    return FunctionTarget(owner, name, raw)


def function_steps(target: FunctionTarget, boundary: Boundary, patches: Patches) -> None:
    """Wrap ``target`` in place for the session: each return of it ends a step."""
    patches.replace(target.owner, target.name, step_decorator(boundary)(target.raw))
