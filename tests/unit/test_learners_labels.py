"""Labels checked against the task: what each task accepts, and the bad_label detail."""

from __future__ import annotations

import pytest

from livelearn import InvalidEvent
from livelearn.learners import check_label

CASES = [
    ("binary", True, True),
    ("binary", False, True),
    ("binary", 0, True),
    ("binary", 1, True),
    ("binary", 2, False),
    ("binary", -1, False),
    ("binary", 0.5, False),
    ("binary", 1.0, False),
    ("binary", "yes", False),
    ("binary", "1", False),
    ("binary", [True], False),
    ("multiclass", "cat", True),
    ("multiclass", 3, True),
    ("multiclass", 10**400, True),
    ("multiclass", True, True),
    ("multiclass", 1.5, False),
    ("multiclass", float("nan"), False),
    ("multiclass", {"a": 1}, False),
    ("regression", 3.2, True),
    ("regression", -7, True),
    ("regression", 0.0, True),
    ("regression", True, False),
    ("regression", "3.2", False),
    ("regression", "NaN", False),
    ("regression", float("nan"), False),
    ("regression", float("inf"), False),
    ("regression", 10**400, False),
]


@pytest.mark.parametrize(
    ("task", "label", "accepted"),
    CASES,
    ids=[
        f"{task}-{'ok' if ok else 'bad'}-{type(v).__name__}-{str(v)[:8]}" for task, v, ok in CASES
    ],
)
def test_each_task_accepts_its_labels_only(task, label, accepted) -> None:
    if accepted:
        check_label(task, label)
        return
    with pytest.raises(InvalidEvent) as info:
        check_label(task, label)
    assert info.value.reason == "bad_label"


def test_the_detail_names_the_task_the_type_and_what_is_allowed() -> None:
    with pytest.raises(InvalidEvent) as info:
        check_label("binary", "yes")
    assert info.value.detail == (
        "a binary model cannot learn the str 'yes'; its labels are a bool, or the integer 0 or 1"
    )


def test_a_huge_value_is_cut_in_the_detail() -> None:
    with pytest.raises(InvalidEvent) as info:
        check_label("regression", 10**400)
    assert len(info.value.detail) < 200 and "int" in info.value.detail
