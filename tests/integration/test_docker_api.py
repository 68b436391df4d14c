"""core.docker.api against the real Docker engine: build, save, load, pull, connect, errors.

Images come from the offline base image (no registry). Everything a test makes is removed by the
docker_scratch fixture. Containers are in test_docker_containers.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import docker.errors
import pytest
from docker import DockerClient

from core.docker import api as docker_api
from core.errors import (
    ArtifactInvalidError,
    BaseImageMissingError,
    BuildFailedError,
    CancelledError,
    DockerUnavailableError,
)
from core.events import Cancel, Event
from tests.fixtures.docker_plugin import DockerScratch

pytestmark = pytest.mark.docker


def _context(tmp_path: Path, dockerfile: str, files: dict[str, bytes] | None = None) -> Path:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (context / name).write_bytes(content)
    return context


def cancel_when(events: list[Event], cancel: Cancel, condition: Callable[[Event], bool]) -> Callable[[Event], None]:
    """An on_event that keeps every event and sets ``cancel`` once ``condition`` holds, as a user's click would."""

    def on_event(event: Event) -> None:
        events.append(event)
        if condition(event):
            cancel.set()

    return on_event


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tiny_image(client: DockerClient, scratch: DockerScratch) -> str:
    """An image of one small file, imported from a tar in memory: quick to save and load."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        content = os.urandom(64 * 1024)  # incompressible, so the zstd archive still spans several parts
        info = tarfile.TarInfo("payload.txt")
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
    ref = scratch.image_ref("tiny")
    repository, tag = ref.rsplit(":", 1)
    client.api.import_image_from_data(
        buffer.getvalue(),
        repository=repository,
        tag=tag,
        changes=[f"LABEL {k}={v}" for k, v in scratch.labels.items()],
    )
    return ref


@pytest.fixture(scope="module")
def built_image(
    offline_base_image: str,
    docker_client: DockerClient,
    docker_test_session: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str, list[Event]]]:
    """A small image built FROM the offline base: (tag, image id, the events its build reported)."""
    scratch = DockerScratch(docker_client, docker_test_session)
    context = _context(
        tmp_path_factory.mktemp("build"),
        f"FROM {offline_base_image}\n"
        "RUN echo building-marker-line\n"
        "COPY payload.bin /payload.bin\n"
        'CMD ["python3", "-c", "print(1)"]\n',
        {"payload.bin": b"\x00\x01" * 50_000},
    )
    tag = scratch.image_ref("built")
    events: list[Event] = []
    image_id = docker_api.build_image(
        context_dir=context, tag=tag, labels=scratch.labels, on_event=events.append, client=docker_client
    )
    yield tag, image_id, events
    scratch.remove_all()


def test_build_reports_each_step_and_every_log_line(built_image, docker_client: DockerClient) -> None:
    tag, image_id, events = built_image

    # the classic builder adds one LABEL step per label after the Dockerfile's 4 instructions:
    # ezrunner.test=<session> from the fixture and ezrunner=1 from build_image
    total = 4 + 2
    steps = [(e.done, e.total) for e in events if e.unit == "step" and e.done]
    assert sorted(set(steps)) == [(n, total) for n in range(1, total + 1)]
    instructions = {e.done: e.message for e in events}
    assert instructions[2] == "RUN echo building-marker-line"
    assert {instructions[5].split("=")[0], instructions[6].split("=")[0]} == {
        "LABEL ezrunner",
        "LABEL ezrunner.test",
    }
    assert all(e.stage == "build" and e.log for e in events)
    logs = [e.log for e in events]
    assert "building-marker-line" in logs
    assert any(line and line.startswith("Step 2/6 : RUN echo building-marker-line") for line in logs)
    image = docker_client.images.get(tag)
    assert image.id == image_id
    assert image.labels[docker_api.LABEL] == "1"


def test_build_failure_raises_with_the_step_and_last_log_lines(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path, f"FROM {offline_base_image}\nRUN echo failing-marker-line && exit 3\n")
    tag = docker_scratch.image_ref("fails")

    with pytest.raises(BuildFailedError) as raised:
        docker_api.build_image(context_dir=context, tag=tag, client=docker_client)

    assert "step 2/3" in str(raised.value)
    assert "failing-marker-line" in str(raised.value)
    assert not docker_api.image_exists(ref=tag, client=docker_client)


def test_build_from_a_missing_base_image_says_how_to_get_it(
    docker_scratch: DockerScratch, docker_client: DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path, "FROM ezrunner-test/no-such-base:1\nRUN true\n")

    with pytest.raises(BaseImageMissingError, match=r"docker pull ezrunner-test/no-such-base:1"):
        docker_api.build_image(context_dir=context, tag=docker_scratch.image_ref("nobase"), client=docker_client)


def test_build_cancelled_during_a_step_stops_and_keeps_nothing(
    offline_base_image: str, docker_scratch: DockerScratch, docker_client: DockerClient, tmp_path: Path
) -> None:
    context = _context(tmp_path, f"FROM {offline_base_image}\nRUN echo sleeping-now && sleep 120\nRUN true\n")
    tag = docker_scratch.image_ref("cancelled")
    events: list[Event] = []
    cancel = Cancel()

    started = time.monotonic()
    with pytest.raises(CancelledError):
        docker_api.build_image(
            context_dir=context,
            tag=tag,
            on_event=cancel_when(events, cancel, lambda e: e.log == "sleeping-now"),
            cancel=cancel,
            client=docker_client,
        )

    assert time.monotonic() - started < 60
    running = [e.log.split()[-1] for e in events if e.log and e.log.startswith(" ---> Running in ")]
    assert running, "the build never reached its RUN step"
    for container_id in running:
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(container_id)
    assert not docker_api.image_exists(ref=tag, client=docker_client)


def test_save_streams_the_image_to_one_file_with_its_sha256(
    built_image, docker_client: DockerClient, tmp_path: Path
) -> None:
    tag, _, _ = built_image
    out = tmp_path / "out" / "image.tar"
    events: list[Event] = []

    written = docker_api.save_image(ref=tag, out=out, on_event=events.append, client=docker_client)

    assert written.paths == (out,)
    assert written.size == out.stat().st_size
    assert written.sha256 == _sha256(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["image.tar"]
    exported = [e for e in events if e.stage == "export" and e.unit == "B"]
    assert exported[-1].done == written.size
    assert exported[0].total is not None and exported[0].total >= docker_api.image_size(ref=tag)
    with tarfile.open(out) as archive:
        assert "manifest.json" in archive.getnames()


def test_save_cancelled_midway_leaves_no_file(built_image, docker_client: DockerClient, tmp_path: Path) -> None:
    tag, _, _ = built_image
    out_dir = tmp_path / "out"
    events: list[Event] = []
    cancel = Cancel()

    with pytest.raises(CancelledError):
        docker_api.save_image(
            ref=tag,
            out=out_dir / "image.tar",
            on_event=cancel_when(events, cancel, lambda _: len(events) >= 2),
            cancel=cancel,
            client=docker_client,
        )

    assert 0 < events[-1].done < (events[-1].total or 0)
    assert list(out_dir.iterdir()) == []
    # the engine is still usable after the hang-up
    assert docker_api.image_exists(ref=tag, client=docker_client)


def test_save_cancelled_while_the_engine_prepares_returns_at_once(
    built_image, docker_client: DockerClient, tmp_path: Path
) -> None:
    tag, _, _ = built_image
    out_dir = tmp_path / "out"
    events: list[Event] = []
    cancel = Cancel()

    started = time.monotonic()
    with pytest.raises(CancelledError):
        docker_api.save_image(
            ref=tag,
            out=out_dir / "image.tar",
            on_event=cancel_when(events, cancel, lambda _: True),
            cancel=cancel,
            client=docker_client,
        )

    # Docker 20.10 takes about 10 s per GB to send the first byte of this 1 GB image
    assert time.monotonic() - started < 5
    assert [e.message for e in events] == ["Docker is preparing"]
    assert list(out_dir.iterdir()) == []
    assert docker_api.image_exists(ref=tag, client=docker_client)


@pytest.fixture(scope="module")
def saved_copy(
    built_image, docker_client: DockerClient, docker_test_session: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """The built image under a tag of its own, saved once: (tag, image id, archive).

    The load tests remove that tag and load it back, without disturbing the other tests.
    """
    source_tag, image_id, _ = built_image
    scratch = DockerScratch(docker_client, docker_test_session)
    tag = scratch.image_ref("reload")
    repository, version = tag.rsplit(":", 1)
    docker_client.images.get(source_tag).tag(repository, version)
    archive = tmp_path_factory.mktemp("saved") / "image.tar"
    docker_api.save_image(ref=tag, out=archive, client=docker_client)
    yield tag, image_id, archive
    scratch.remove_all()


def test_load_cancelled_midway_raises_cancelled_and_loads_nothing(
    saved_copy: tuple[str, str, Path], docker_client: DockerClient
) -> None:
    tag, _, archive = saved_copy
    docker_api.remove_image(ref=tag, client=docker_client)
    events: list[Event] = []
    cancel = Cancel()

    with pytest.raises(CancelledError):
        docker_api.load_image(
            tar=archive, on_event=cancel_when(events, cancel, lambda _: len(events) >= 3), cancel=cancel,
            client=docker_client,
        )

    assert events[-1].done < archive.stat().st_size
    assert not docker_api.image_exists(ref=tag, client=docker_client)


def test_load_after_remove_gives_the_image_back(saved_copy: tuple[str, str, Path], docker_client: DockerClient) -> None:
    tag, image_id, archive = saved_copy
    docker_api.remove_image(ref=tag, client=docker_client)
    assert not docker_api.image_exists(ref=tag, client=docker_client)
    events: list[Event] = []

    loaded = docker_api.load_image(tar=archive, on_event=events.append, client=docker_client)

    assert loaded == [tag]
    assert docker_client.images.get(tag).id == image_id
    read = [e for e in events if e.unit == "B"]
    assert read[-1].done == read[-1].total == archive.stat().st_size


def test_load_zstd_split_archive_that_the_engine_cannot_read_natively(
    docker_scratch: DockerScratch, docker_client: DockerClient, tmp_path: Path
) -> None:
    tag = _tiny_image(docker_client, docker_scratch)
    image_id = docker_client.images.get(tag).id
    written = docker_api.save_image(
        ref=tag, out=tmp_path / "tiny.tar.zst", compress="zstd", split_bytes=2048, client=docker_client
    )
    assert len(written.paths) > 1
    docker_api.remove_image(ref=tag, client=docker_client)

    loaded = docker_api.load_image(tar=written.paths[0], client=docker_client)

    assert loaded == [tag]
    assert docker_client.images.get(tag).id == image_id


def test_load_of_a_file_that_is_not_an_image_says_so(docker_client: DockerClient, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar archive" * 100)

    with pytest.raises(ArtifactInvalidError):
        docker_api.load_image(tar=junk, client=docker_client)


def test_require_image_names_the_ways_to_get_a_missing_base(docker_client: DockerClient) -> None:
    with pytest.raises(BaseImageMissingError) as raised:
        docker_api.require_image(ref="ezrunner-test/absent:1", client=docker_client)

    message = str(raised.value)
    assert "docker pull ezrunner-test/absent:1" in message
    assert "docker load" in message
    assert "scripts/offline-base-images" in message


def test_unreachable_engine_raises_docker_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")

    with pytest.raises(DockerUnavailableError, match="systemctl start docker"):
        docker_api.connect()
    with pytest.raises(DockerUnavailableError):
        docker_api.image_exists(ref="anything:1")


def test_pull_failure_names_the_reason_and_the_offline_ways(docker_client: DockerClient) -> None:
    # .invalid never resolves (RFC 2606): the registry is unreachable, as it is behind an air gap.
    events: list[Event] = []
    with pytest.raises(BaseImageMissingError) as error:
        docker_api.ensure_images(
            refs=["registry.invalid/ezrunner/none:1"], on_event=events.append, client=docker_client
        )
    message = str(error.value)
    assert "could not pull the base image registry.invalid/ezrunner/none:1" in message
    assert "registry mirror" in message and "--base-image" in message and "docker load" in message
    assert events and events[0].stage == "pull"


def test_ensure_images_leaves_present_images_alone(docker_client: DockerClient, offline_base_image: str) -> None:
    events: list[Event] = []
    docker_api.ensure_images(
        refs=[offline_base_image, offline_base_image], on_event=events.append, client=docker_client
    )
    assert events == []  # nothing to pull, no registry asked
