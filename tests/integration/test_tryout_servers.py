"""The test drive on the real engine with the tiny llama.cpp pack: a pack's server started from its History record
(from its image, and from its archive once the image is gone), a chat streamed from it, stopped with nothing
left; a start stopped midway; two packs compared in turn with never two servers at once; and the test servers a
dead wizard left behind removed while those of a live one stay."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from docker import DockerClient

from core import tryout
from core.docker import api as docker_api
from core.docker import containers as docker_containers
from core.history import History, PackRecord
from core.tryout import ChatRun, Comparison, TryServers
from tests.fixtures.packs import Pack, record_again, tiny_llamacpp_pack

pytestmark = [pytest.mark.docker, pytest.mark.slow]
START_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def tiny_pack(
    tmp_path_factory: pytest.TempPathFactory, offline_llama_image: str, docker_client: DockerClient
) -> Iterator[Pack]:
    yield from tiny_llamacpp_pack(root=tmp_path_factory.mktemp("tryout"), llama_image=offline_llama_image,
                                  client=docker_client)  # fmt: skip


@pytest.fixture
def history(tiny_pack: Pack, monkeypatch: pytest.MonkeyPatch) -> History:
    monkeypatch.setenv("EZRUNNER_HOME", str(tiny_pack.home))
    return History(tiny_pack.home / "history.sqlite")


@pytest.fixture
def servers(docker_client: DockerClient) -> Iterator[TryServers]:
    own = TryServers()
    yield own
    own.stop_all()
    assert try_containers(docker_client) == []


def try_containers(client: DockerClient) -> list[str]:
    return [c.name for c in client.containers.list(all=True, filters={"label": f"{tryout.ROLE_LABEL}={tryout.ROLE}"})]


def the_record(history: History, tiny_pack: Pack) -> PackRecord:
    record = history.get(tiny_pack.record_id)
    assert record is not None and record.outcome == "succeeded"
    return record


def test_a_pack_is_started_from_its_record_chatted_with_and_stopped(
    history: History, tiny_pack: Pack, servers: TryServers, docker_client: DockerClient
) -> None:
    record = the_record(history, tiny_pack)
    job = servers.start(record=record)
    assert servers.start(record=record).id == job.id  # a second click follows the same start
    snapshot = job.wait(START_TIMEOUT_S)
    assert snapshot.state == "succeeded", snapshot.error
    status = servers.status(record.id)
    assert status.state == "running" and status.server is not None
    container = docker_client.containers.get(status.server.container_id)
    assert container.labels[tryout.ROLE_LABEL] == "try"
    assert container.labels[tryout.OWNER_LABEL] == tryout.owner()

    # greedy: the tiny model's random weights sample an answer of special tokens only now and then
    chat = ChatRun(server=status.server, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8,
                   temperature=0.0)  # fmt: skip
    answer = chat.start().wait(120)
    assert answer.state == "done", answer.error
    assert answer.text and answer.figures is not None and 1 <= answer.figures.output_tokens <= 8
    assert answer.figures.ttft_s is not None and answer.figures.ttft_s > 0

    servers.stop(record.id)
    assert servers.status(record.id).state == "stopped"
    assert try_containers(docker_client) == []


def test_with_its_image_gone_the_archive_is_loaded_and_started(
    history: History, tiny_pack: Pack, servers: TryServers, docker_client: DockerClient
) -> None:
    record = the_record(history, tiny_pack)
    docker_api.remove_image(ref=tiny_pack.image, force=True, client=docker_client)
    try:
        assert tryout.target_of(record=record).archive == tiny_pack.archive
        job = servers.start(record=record)
        snapshot = job.wait(START_TIMEOUT_S)
        assert snapshot.state == "succeeded", snapshot.error
        assert snapshot.progress("load") is not None  # it loaded the archive first
        assert docker_api.image_exists(ref=tiny_pack.image, client=docker_client)
    finally:
        if not docker_api.image_exists(ref=tiny_pack.image, client=docker_client):
            docker_api.load_image(client=docker_client, tar=tiny_pack.archive)


def test_a_start_stopped_midway_leaves_nothing(
    history: History, tiny_pack: Pack, servers: TryServers, docker_client: DockerClient
) -> None:
    record = the_record(history, tiny_pack)
    job = servers.start(record=record)
    servers.stop(record.id)
    snapshot = job.wait(START_TIMEOUT_S)
    assert snapshot.state in ("cancelled", "failed")
    assert servers.status(record.id).state == "stopped"
    assert try_containers(docker_client) == []


def test_two_packs_compared_in_turn_never_run_at_once(
    history: History, tiny_pack: Pack, servers: TryServers, docker_client: DockerClient
) -> None:
    first = the_record(history, tiny_pack)
    # a second record of the same archive: two entries of History, one server each
    second = history.get(record_again(history, first))
    assert second is not None
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(try_containers(docker_client)))
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        comparison = Comparison(records=[first, second], prompt="Say hello", max_tokens=8, side_by_side=False,
                                servers=servers).start()  # fmt: skip
        final = comparison.wait(2 * START_TIMEOUT_S)
    finally:
        done.set()
        watcher.join()
    assert [s.state for s in final.sides] == ["done", "done"], [s.message for s in final.sides]
    assert all(s.chat is not None and s.chat.text for s in final.sides)
    # a comparison decodes greedily by default: the same archive gives the same answer twice
    assert len({s.chat.text for s in final.sides if s.chat is not None}) == 1
    assert most[0] == 1  # one server at a time
    assert try_containers(docker_client) == [] and servers.running() == {}


def test_servers_of_a_dead_wizard_are_removed_and_a_live_ones_kept(
    tiny_pack: Pack, docker_client: DockerClient
) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    host = socket.gethostname()
    made = []
    try:
        for name, who in ((f"ezrunner-try-dead-{dead_pid}", f"{host}:{dead_pid}"),
                          (f"ezrunner-try-live-{dead_pid}", tryout.owner()),
                          (f"ezrunner-try-other-host-{dead_pid}", f"another-host:{dead_pid}")):  # fmt: skip
            made.append(docker_client.containers.create(
                tiny_pack.image, name=name, labels={tryout.ROLE_LABEL: tryout.ROLE, tryout.OWNER_LABEL: who},
            ).name)  # fmt: skip
        removed = tryout.remove_orphans(client=docker_client)
        assert removed == [f"ezrunner-try-dead-{dead_pid}"]
        left = try_containers(docker_client)
        assert f"ezrunner-try-live-{dead_pid}" in left and f"ezrunner-try-other-host-{dead_pid}" in left
    finally:
        for name in made:
            docker_containers.remove_container(container=name, client=docker_client)
