"""A failed docker build's message ends with the build's LAST output lines, each on its own line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from core.docker import api as docker_api
from core.errors import BuildFailedError


class _Api:
    def __init__(self) -> None:
        self.removed: list[str] = []

    def remove_container(self, container: str, *, force: bool) -> None:
        self.removed.append(container)


class _Engine:
    """Enough of a DockerClient for the clean-up of a failed step: its container is removed."""

    def __init__(self) -> None:
        self.api = _Api()


def _failing_build(lines: int) -> Iterator[dict[str, Any]]:
    yield {"stream": "Step 1/2 : FROM base\n"}
    yield {"stream": "Step 2/2 : RUN make\n"}
    yield {"stream": " ---> Running in 0123456789ab\n"}
    for i in range(1, lines + 1):
        yield {"stream": f"output line {i}\n"}
    yield {"stream": "Removing intermediate container 0123456789ab\n"}
    yield {"error": "The command '/bin/sh -c make' returned a non-zero code: 2",
           "errorDetail": {"code": 2, "message": "The command '/bin/sh -c make' returned a non-zero code: 2"}}


def test_the_message_keeps_the_last_lines_of_a_long_build_log_without_dockers_bookkeeping() -> None:
    engine = _Engine()
    with pytest.raises(BuildFailedError) as raised:
        docker_api._follow_build(
            engine,
            lambda: _failing_build(200), tag="ezrunner/x:1", on_event=lambda event: None, cancel=None,
            hang_up=lambda: None,
        )  # fmt: skip
    text = str(raised.value)
    first, *rest = text.splitlines()
    assert first == (
        "Docker could not build ezrunner/x:1 at step 2/2 (RUN make): "
        "The command '/bin/sh -c make' returned a non-zero code: 2"
    )
    assert rest[0] == "Last build output:"
    shown = rest[1:-1]
    assert shown == [f"output line {i}" for i in range(200 - docker_api.LOG_TAIL_LINES + 1, 201)]
    assert rest[-1].strip().startswith("Fix the cause shown above")  # the hint is not glued to a log line
    assert "Removing intermediate container" not in text and "Running in" not in text
    assert engine.api.removed == ["0123456789ab"]


def test_a_build_that_printed_nothing_gives_just_the_summary() -> None:
    assert docker_api.build_failure_text(summary="Docker could not build x.", tail=[]) == "Docker could not build x."
