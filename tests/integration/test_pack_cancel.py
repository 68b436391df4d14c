"""Cancel a real pack, run as the wizard runs it (a core.jobs job), at each stage: the job ends
"cancelled", nothing is left in the output folder, and History records the cancel."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker import DockerClient

from core import hubs
from core.docker import api as docker_api
from core.events import Cancel, Event, EventSink
from core.hardware import describe_target
from core.history import History
from core.jobs import JobRegistry
from core.pack import pack
from core.plan import Options, plan
from core.refs import parse_ref
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SHARDED

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.mark.parametrize("stage", ["download", "build", "export"])
def test_cancel_at_each_stage_leaves_nothing_behind(
    stage: str, fake_hub: FakeHub, offline_base_image: str, tmp_path: Path, docker_client: DockerClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    the_plan = plan(
        model=hubs.inspect(ref=parse_ref(f"hf:{HF_SHARDED}")),
        target=describe_target(cpu_only=True, ram_gib=8),
        options=Options(base_image=offline_base_image),
    )
    out = tmp_path / "out"
    out.mkdir()
    history = History(tmp_path / "history.sqlite")

    def work(on_event: EventSink, cancel: Cancel) -> object:
        def watch(event: Event) -> None:
            on_event(event)
            if event.stage == stage:
                cancel.set()  # the user clicks Cancel as soon as this stage shows progress

        return pack(plan=the_plan, output=out / "tiny.tar", history=history, on_event=watch, cancel=cancel)

    job = JobRegistry().start(key="test", work=work)
    snapshot = job.wait(300)
    try:
        assert snapshot.state == "cancelled", snapshot.error
        assert snapshot.error_code == "cancelled"
        assert list(out.iterdir()) == []  # no archive, no .partial, no sidecars
        (record,) = history.list()
        assert record.outcome == "cancelled"
        assert record.archive is None
    finally:
        docker_api.remove_image(ref=f"ezrunner/tiny-llama-sharded:{the_plan.model.commit[:12]}-transformers-runtime",
                               force=True, client=docker_client)
