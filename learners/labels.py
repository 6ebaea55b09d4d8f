"""Labels checked against the model's task before the learner sees them."""

from __future__ import annotations

import math

from livelearn.errors import InvalidEvent
from livelearn.learners.spec import Task

__all__ = ["check_label"]

_ALLOWED: dict[Task, str] = {
    "binary": "a bool, or the integer 0 or 1",
    "multiclass": "a string, an integer or a bool",
    "regression": "a finite int or float, not a bool",
}


def check_label(task: Task, label: object) -> None:
    """Refuse a label that a model of ``task`` cannot learn from.

    Parameters
    ----------
    task
        The model's task.
    label
        The event's label; never None (an event without a label is scored, not learned).

    Raises
    ------
    InvalidEvent
        With reason ``bad_label`` and a detail naming the task, the value's type and what
        the task allows.

    Examples
    --------
    >>> check_label("binary", True), check_label("binary", 0), check_label("regression", 2)
    (None, None, None)
    >>> check_label("binary", 0.5)
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: bad_label: a binary model cannot learn the float 0.5; \
its labels are a bool, or the integer 0 or 1
    >>> check_label("regression", "3.2")
    Traceback (most recent call last):
    ...
    livelearn.errors.InvalidEvent: bad_label: a regression model cannot learn the str '3.2'; \
its labels are a finite int or float, not a bool

    """
    kind = type(label)
    if task == "binary":
        ok = kind is bool or (kind is int and label in (0, 1))
    elif task == "multiclass":
        ok = kind is str or kind is int or kind is bool
    elif kind is int or kind is float:
        try:
            ok = math.isfinite(label)  # type: ignore[arg-type]
        except OverflowError:  # an int such as 10**400 that no float can hold
            ok = False
    else:
        ok = False
    if not ok:
        shown = repr(label)
        if len(shown) > 40:
            shown = f"{shown[:36]}…"
        raise InvalidEvent(
            "bad_label",
            f"a {task} model cannot learn the {kind.__name__} {shown}; "
            f"its labels are {_ALLOWED[task]}",
        )
