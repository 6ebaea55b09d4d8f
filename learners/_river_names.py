"""Resolve class names from configuration to classes of the ``river`` package, and nothing else.

A model spec names classes as text, e.g. ``"preprocessing.StandardScaler"``. Turning text from a
config file into an import is how configuration becomes code execution, so the rules are narrow:
the name must be ``module.Name`` relative to ``river`` (or ``river.module.Name``), every dotted
part must be a public identifier, only ``river.<module>`` is ever imported, and the attribute
found must be a class defined inside ``river``.
"""

from __future__ import annotations

import importlib
import inspect

from livelearn.errors import SpecError

__all__ = ["canonical_name", "resolve_class"]

_EXAMPLE = "'preprocessing.StandardScaler'"


def canonical_name(name: str) -> str:
    """Return ``name`` relative to the ``river`` package.

    Examples
    --------
    >>> canonical_name("river.linear_model.LogisticRegression")
    'linear_model.LogisticRegression'
    >>> canonical_name("optim.SGD")
    'optim.SGD'

    """
    return name[len("river.") :] if name.startswith("river.") else name


def resolve_class(name: object) -> type:
    """Return the River class that ``name`` designates.

    Parameters
    ----------
    name
        ``"module.Name"`` relative to ``river``, or ``"river.module.Name"``.

    Returns
    -------
    type
        The class, whose ``__module__`` starts with ``"river."``.

    Raises
    ------
    SpecError
        With an empty ``loc`` (the caller knows where the name came from) when the name is
        malformed, leaves the ``river`` package, does not exist or is not a River class.

    Examples
    --------
    >>> resolve_class("linear_model.LogisticRegression").__name__
    'LogisticRegression'
    >>> resolve_class("river.drift.binary.DDM").__name__
    'DDM'
    >>> resolve_class("os.system")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    SpecError: 'os.system' is not a River class: there is no module 'river.os'

    """
    if not isinstance(name, str):
        raise SpecError("", f"expected a class name such as {_EXAMPLE}, got {name!r}")
    parts = canonical_name(name).split(".")
    if len(parts) < 2 or not all(p.isidentifier() and not p.startswith("_") for p in parts):
        raise SpecError(
            "",
            f"{name!r} is not allowed: name a public River class as 'module.Name' "
            f"(e.g. {_EXAMPLE}), optionally prefixed with 'river.'; "
            "empty parts and parts starting with '_' are refused",
        )
    module_name = "river." + ".".join(parts[:-1])
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and module_name.startswith(exc.name or "?")
        detail = (
            f"there is no module {module_name!r}"
            if missing
            else f"importing {module_name!r} failed ({exc})"
        )
        raise SpecError(
            "",
            f"{name!r} is not a River class: {detail}; "
            f"only classes of the river package can be built, e.g. {_EXAMPLE}",
        ) from None
    obj = getattr(module, parts[-1], None)
    if obj is None:
        raise SpecError(
            "", f"{name!r} is not a River class: module {module_name!r} has no {parts[-1]!r}"
        )
    if not inspect.isclass(obj):
        raise SpecError(
            "",
            f"{name!r} is a {type(obj).__name__}, not a class; name a River class such as "
            f"{_EXAMPLE}",
        )
    if not obj.__module__.startswith("river."):
        raise SpecError(
            "",
            f"{name!r} is {obj.__module__}.{obj.__qualname__}, which is defined outside the "
            "river package; only River classes can be built",
        )
    return obj
