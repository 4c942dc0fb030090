"""The test helpers that change how tests run must themselves be right."""

from __future__ import annotations

import pytest
from torch.multiprocessing.spawn import ProcessExitedException

from tests.helpers.models import retry_spawn_abort


def test_retry_spawn_abort_retries_only_an_aborted_child_once() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ProcessExitedException("process 0 terminated with signal SIGABRT", 0, 0, 0, "SIGABRT")
        return "ok"

    with pytest.warns(RuntimeWarning, match="retrying once"):
        assert retry_spawn_abort(flaky) == "ok"
    assert len(calls) == 2

    def always() -> None:
        raise ProcessExitedException("process 0 terminated with signal SIGABRT", 0, 0, 0, "SIGABRT")

    with pytest.warns(RuntimeWarning), pytest.raises(ProcessExitedException):
        retry_spawn_abort(always)

    def failing() -> None:
        raise AssertionError("a real failure")

    with pytest.raises(AssertionError, match="a real failure"):
        retry_spawn_abort(failing)
