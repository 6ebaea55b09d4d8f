"""The state the lookup serves: a model with nothing loaded answers ModelNotLoaded (the
API's 503 with Retry-After), whether or not the request carries a key."""

from __future__ import annotations

import pytest

from livelearn import ModelNotLoaded
from livelearn.learners import ModelSpec
from livelearn.serving._state import ServedState


@pytest.mark.parametrize("route_by_key", [False, True], ids=["combined", "routed-by-key"])
@pytest.mark.parametrize("key", [None, "customer-7"], ids=["no-key", "key"])
def test_nothing_loaded_is_model_not_loaded(route_by_key: bool, key: str | None) -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "m",
            "topics": ["t"],
            "task": "binary",
            "pipeline": [{"class": "linear_model.LogisticRegression"}],
            "route_by_key": route_by_key,
        }
    )
    state = ServedState.build(spec, None, [])
    with pytest.raises(ModelNotLoaded) as info:
        state.answering(key, retry_after=2.5)
    assert info.value.retry_after == 2.5
