"""`ezrunner push` and `pack --push` against a real registry on loopback (Debian's docker-registry, distribution
2.8): pulled back by the Docker engine as the same image ID; a second push sends nothing; pushes cut by a proxy
that drops the connection, continued in the same run and by a second run; htpasswd logins; unreachable
registries."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core.docker import api as docker_api
from core.errors import RegistryUnreachableError
from core.events import Event
from core.registry.push import push_archive
from tests.fixtures.cli import ezrunner
from tests.fixtures.credential_helper import asked, install_helper
from tests.fixtures.registry import Registry, TokenService, registry, registry_factory, write_docker_archive
from tests.fixtures.tiny_gguf import make_tiny_gguf

__all__ = ["registry", "registry_factory"]  # the fixtures, imported so pytest finds them here

CPU_TARGET = ["--cpu-only", "--ram", "8"]
MiB = 1 << 20


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell without registry credentials: an empty Docker config folder, data under tmp."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EZRUNNER_REGISTRY_")}
    (tmp_path / "docker-config").mkdir()
    env.update(DOCKER_CONFIG=str(tmp_path / "docker-config"), EZRUNNER_HOME=str(tmp_path / "ezrunner-home"))
    return env


@pytest.fixture
def cleanup(docker_client: DockerClient) -> Iterator[list[str]]:
    refs: list[str] = []
    yield refs
    for ref in refs:
        docker_api.remove_image(ref=ref, force=True, client=docker_client)


def pulled_image_id(ref: str, cleanup: list[str]) -> str:
    cleanup.append(ref)
    pulled = subprocess.run(["docker", "pull", ref], capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    inspected = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True,
                               text=True, check=True)  # fmt: skip
    return inspected.stdout.strip()


def manifest_config_digest(registry: Registry, repository: str, tag: str) -> str:
    response = requests.get(f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=10,
                            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})  # fmt: skip
    assert response.status_code == 200, response.text
    return str(response.json()["config"]["digest"])


# THE REAL IMAGE


@pytest.mark.docker
@pytest.mark.slow
def test_a_tiny_pack_pushed_by_pack_push_pulls_back_as_the_same_image_and_a_second_push_sends_nothing(
    user_env: dict[str, str], offline_llama_image: str, registry: Registry, tmp_path: Path, cleanup: list[str],
) -> None:
    folder = tmp_path / "tiny-gguf"
    folder.mkdir()
    make_tiny_gguf(folder / "tiny-llama-F16.gguf")
    ref = f"{registry.host}/ezrunner-test/tiny-gguf:v1"
    packed = ezrunner("pack", str(folder), *CPU_TARGET, "--base-image", offline_llama_image, "-o",
                      str(tmp_path / "out" / "tiny.tar"), "--push", ref, "--push-insecure", "--json", env=user_env)
    artifact = json.loads(packed.stdout)
    cleanup += [artifact["image_tag"], artifact["image_tag"] + "-runtime"]
    pushed = artifact["push"]
    assert pushed["ref"] == ref and pushed["image_id"] == artifact["image_id"]
    assert pushed["skipped"] == [] and len(pushed["uploaded"]) >= 2  # the config and the layers, all new here
    assert "==> push" in packed.stderr
    assert sorted(registry.completed_blobs()) == sorted(pushed["uploaded"])

    # the engine pulls it from the registry as the image the archive holds
    docker_api.remove_image(ref=artifact["image_tag"], force=True, client=docker_api.connect())
    assert pulled_image_id(ref, cleanup) == artifact["image_id"]

    # the same archive again: every blob is there, none is sent, the tag is written again
    patches_before = registry.patches()
    again = json.loads(ezrunner("push", str(tmp_path / "out" / "tiny.tar"), ref, "--insecure", "--json",
                                env=user_env).stdout)  # fmt: skip
    assert again["uploaded"] == [] and again["bytes_sent"] == 0
    assert sorted(again["skipped"]) == sorted(pushed["uploaded"])
    assert registry.patches() == patches_before
    assert sorted(registry.completed_blobs()) == sorted(pushed["uploaded"])
    assert manifest_config_digest(registry, "ezrunner-test/tiny-gguf", "v1") == artifact["image_id"]


@pytest.mark.docker
def test_a_split_zstd_archive_pushes_by_cli_and_pulls_back_as_the_same_image(
    user_env: dict[str, str], registry: Registry, tmp_path: Path, cleanup: list[str],
) -> None:
    made = write_docker_archive(tmp_path / "img.tar.zst", layer_bytes=(3 * MiB, 100, MiB), seed=11, compress="zstd",
                                split_bytes=MiB)  # fmt: skip
    ref = f"{registry.host}/ezrunner-test/split:z"
    result = ezrunner("push", str(tmp_path / "img.tar.zst.part000"), ref, "--insecure", env=user_env)
    assert f"Pushed {ref}" in result.stdout and "4 blobs sent" in result.stdout
    assert "==> push" in result.stderr
    assert pulled_image_id(ref, cleanup) == made.image_id


# CUT CONNECTIONS


class CuttingProxy:
    """A TCP proxy in front of the registry that drops the connection on cue, as a flaky network would.

    ``cut_after_bytes``: after that many request bytes in all (mid-chunk, usually). ``cut_at_patch``: when
    the N-th PATCH request starts, before any of it goes through (between chunks). ``refuse_after_cut``:
    from then on every new connection is closed at once (the network is gone), else it forwards again.
    """

    def __init__(self, upstream: str, *, cut_after_bytes: int | None = None, cut_at_patch: int | None = None,
                 refuse_after_cut: bool = False) -> None:  # fmt: skip
        self.upstream = upstream.rsplit(":", 1)
        self.cut_after_bytes = cut_after_bytes
        self.cut_at_patch = cut_at_patch
        self.refuse_after_cut = refuse_after_cut
        self.forwarded = 0
        self.patches = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def heal(self) -> None:
        """The network is back: forward everything from now on."""
        self.cut_after_bytes = self.cut_at_patch = None
        self.refuse_after_cut = False

    def close(self) -> None:
        self._server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.cuts and self.refuse_after_cut:
                client.close()
                continue
            upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client), daemon=True).start()

    def _cut(self, *sockets: socket.socket) -> None:
        self.cuts += 1
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        while True:
            try:
                data = client.recv(1 << 16)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    upstream.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                if self.cut_at_patch is not None and b"PATCH /v2/" in data:
                    self.patches += data.count(b"PATCH /v2/")
                    if self.patches == self.cut_at_patch and not self.cuts:
                        self._cut(client, upstream)
                        return
                room = None
                if self.cut_after_bytes is not None and not self.cuts:
                    room = self.cut_after_bytes - self.forwarded
                if room is not None and room < len(data):
                    with contextlib.suppress(OSError):
                        upstream.sendall(data[: max(room, 0)])
                    self.forwarded += max(room, 0)
                    self._cut(client, upstream)
                    return
                self.forwarded += len(data)
            try:
                upstream.sendall(data)
            except OSError:
                return

    def _answers(self, upstream: socket.socket, client: socket.socket) -> None:
        while True:
            try:
                data = upstream.recv(1 << 16)
                if not data:
                    client.close()
                    return
                client.sendall(data)
            except OSError:
                return


@pytest.fixture
def proxy_factory() -> Iterator[Callable[..., CuttingProxy]]:
    made: list[CuttingProxy] = []

    def make(upstream: str, **cues: object) -> CuttingProxy:
        proxy = CuttingProxy(upstream, **cues)  # type: ignore[arg-type]
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


def test_a_push_cut_midway_then_run_again_sends_no_completed_blob_again(
    registry: Registry, proxy_factory: Callable[..., CuttingProxy], tmp_path: Path,
) -> None:
    made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(3 * MiB, 3 * MiB, 3 * MiB), seed=21)
    proxy = proxy_factory(registry.host, cut_after_bytes=int(5.5 * MiB), refuse_after_cut=True)
    state = tmp_path / "uploads"
    with pytest.raises(RegistryUnreachableError) as raised:
        push_archive(archive=made.archive, ref=f"{proxy.host}/cut/midway:v1", insecure=True, chunk_bytes=MiB,
                     retries=2, backoff_s=0.01, state_dir=state)  # fmt: skip
    assert "Running the same push again continues where it stopped" in str(raised.value)
    first_run = registry.completed_blobs()
    assert first_run == [made.diff_ids[0]]  # 5.5 MiB in: the first layer went through, the second was cut

    proxy.heal()
    result = push_archive(archive=made.archive, ref=f"{proxy.host}/cut/midway:v1", insecure=True,
                          chunk_bytes=MiB, state_dir=state)  # fmt: skip
    assert result.skipped == (made.diff_ids[0],)
    second_run = registry.completed_blobs()[len(first_run):]
    assert sorted(second_run) == sorted([*made.diff_ids[1:], made.image_id])
    assert result.bytes_sent < sum(made.layer_sizes)  # the first layer was not sent again
    # the cut layer: continued where the registry kept it, or (distribution 2.8, which drops an upload cut
    # mid-chunk: "upload resumed at wrong offset" in its log) sent again from its start; never more than once
    assert all(b.bytes_sent == b.size - b.resumed_from for b in result.blobs if b.uploaded)
    assert manifest_config_digest(registry, "cut/midway", "v1") == made.image_id
    assert list(state.iterdir()) == []  # nothing left to resume


def test_a_connection_dropped_between_chunks_is_continued_at_the_registrys_offset(
    registry: Registry, proxy_factory: Callable[..., CuttingProxy], tmp_path: Path,
) -> None:
    made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(5 * MiB,), seed=22)
    proxy = proxy_factory(registry.host, cut_at_patch=3)
    events: list[str] = []
    result = push_archive(archive=made.archive, ref=f"{proxy.host}/cut/between:v1", insecure=True, chunk_bytes=MiB,
                          backoff_s=0.01, state_dir=tmp_path / "uploads",
                          on_event=lambda e: events.append(e.message))  # fmt: skip
    assert proxy.cuts == 1 and result.retries == 1
    assert any("Retrying in" in m for m in events)
    # the registry kept the two chunks it had; only the rest was sent: no byte twice
    assert result.bytes_sent == sum(b.size for b in result.blobs)
    assert sorted(registry.completed_blobs()) == sorted([made.diff_ids[0], made.image_id])
    assert manifest_config_digest(registry, "cut/between", "v1") == made.image_id


def test_an_upload_left_by_a_failed_run_is_continued_by_the_next_run(
    registry: Registry, proxy_factory: Callable[..., CuttingProxy], tmp_path: Path,
) -> None:
    made = write_docker_archive(tmp_path / "img.tar.zst", layer_bytes=(5 * MiB,), seed=23, compress="zstd")
    proxy = proxy_factory(registry.host, cut_at_patch=3, refuse_after_cut=True)
    state = tmp_path / "uploads"
    with pytest.raises(RegistryUnreachableError):
        push_archive(archive=made.archive, ref=f"{proxy.host}/cut/later:v1", insecure=True, chunk_bytes=MiB,
                     retries=1, backoff_s=0.01, state_dir=state)  # fmt: skip
    assert registry.completed_blobs() == []
    proxy.heal()
    result = push_archive(archive=made.archive, ref=f"{proxy.host}/cut/later:v1", insecure=True, chunk_bytes=MiB,
                          state_dir=state)  # fmt: skip
    layer = next(b for b in result.blobs if b.digest == made.diff_ids[0])
    assert layer.resumed_from == 2 * MiB  # the two chunks the first run got in
    assert layer.bytes_sent == layer.size - 2 * MiB
    assert manifest_config_digest(registry, "cut/later", "v1") == made.image_id


# LOGINS AND ADDRESSES


def test_htpasswd_logins_from_the_environment_or_docker_config_and_clear_refusals(
    registry_factory: Callable[..., Registry], user_env: dict[str, str], tmp_path: Path,
) -> None:
    registry = registry_factory(users={"alice": "right-password"})
    made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(MiB,), seed=31)
    ref = f"{registry.host}/team/login:v1"

    wrong = ezrunner("push", str(made.archive), ref, "--insecure", check=False,
                     env={**user_env, "EZRUNNER_REGISTRY_USER": "alice", "EZRUNNER_REGISTRY_PASSWORD": "wrong-pw-42"})
    assert wrong.returncode == 2
    assert "refused the login of user 'alice'" in wrong.stderr
    assert "EZRUNNER_REGISTRY_PASSWORD" in wrong.stderr and "docker login" in wrong.stderr
    assert "Traceback" not in wrong.stderr and "wrong-pw-42" not in wrong.stdout + wrong.stderr

    anonymous = ezrunner("push", str(made.archive), ref, "--insecure", "--json", check=False, env=user_env)
    assert anonymous.returncode == 2
    said = json.loads(anonymous.stdout)
    assert said["error"] == "registry_auth_failed"
    assert "needs a login" in said["message"] and f"docker login {registry.host}" in said["message"]

    login = {"EZRUNNER_REGISTRY_USER": "alice", "EZRUNNER_REGISTRY_PASSWORD": "right-password"}
    right = ezrunner("push", str(made.archive), ref, "--insecure", "--json", env={**user_env, **login})
    assert json.loads(right.stdout)["image_id"] == made.image_id

    # what `docker login` writes (no credential store): the base64 user:password under auths
    config = Path(user_env["DOCKER_CONFIG"]) / "config.json"
    auth = base64.b64encode(b"alice:right-password").decode()
    config.write_text(json.dumps({"auths": {f"http://{registry.host}": {"auth": auth}}}), encoding="utf-8")
    again = json.loads(ezrunner("push", str(made.archive), ref, "--insecure", "--json", env=user_env).stdout)
    assert again["uploaded"] == [] and again["image_id"] == made.image_id
    assert "right-password" not in registry.log.read_text() and auth not in registry.log.read_text()

    # `docker login` with a credential store: the config holds only the store's name, the helper the login
    helper_env = install_helper(tmp_path / "helpers", "secretservice", {registry.host: ("alice", "right-password")})
    config.write_text(json.dumps({"auths": {registry.host: {}}, "credsStore": "secretservice"}), encoding="utf-8")
    stored = json.loads(ezrunner("push", str(made.archive), ref, "--insecure", "--json",
                                 env={**user_env, **helper_env}).stdout)  # fmt: skip
    assert stored["image_id"] == made.image_id and asked(helper_env) == [f"get {registry.host}"]
    # the helper is gone from PATH: the refusal says so
    gone = ezrunner("push", str(made.archive), ref, "--insecure", check=False, env=user_env)
    assert gone.returncode == 2 and "docker-credential-secretservice" in gone.stderr
    assert "not installed here" in gone.stderr and "Traceback" not in gone.stderr


def test_an_unreachable_registry_says_what_to_check(
    registry: Registry, user_env: dict[str, str], tmp_path: Path,
) -> None:
    made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(1000,), seed=41)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nothing = f"127.0.0.1:{s.getsockname()[1]}"  # bound, not listening: connections are refused
        down = ezrunner("push", str(made.archive), f"{nothing}/m:v1", "--insecure", check=False, env=user_env)
    assert down.returncode == 2
    assert f"Cannot reach the registry at http://{nothing}" in down.stderr
    assert "Check the host and port" in down.stderr and "Traceback" not in down.stderr

    # HTTPS (the default) to a registry that serves plain HTTP: the message names --insecure
    plain = ezrunner("push", str(made.archive), f"{registry.host}/m:v1", check=False, env=user_env)
    assert plain.returncode == 2
    assert "TLS handshake" in plain.stderr and "--insecure" in plain.stderr and "Traceback" not in plain.stderr


def test_token_auth_asks_the_realm_for_a_push_scope_with_the_login(
    registry_factory: Callable[..., Registry], user_env: dict[str, str], tmp_path: Path,
) -> None:
    tokens = TokenService(tmp_path / "tokens", users={"bob": "token-pass"})
    try:
        registry = registry_factory(tokens=tokens)
        made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(MiB, 2000), seed=51)
        ref = f"{registry.host}/team/tok:v1"
        login = {"EZRUNNER_REGISTRY_USER": "bob", "EZRUNNER_REGISTRY_PASSWORD": "token-pass"}
        pushed = json.loads(ezrunner("push", str(made.archive), ref, "--insecure", "--json",
                                     env={**user_env, **login}).stdout)  # fmt: skip
        assert pushed["image_id"] == made.image_id and len(pushed["uploaded"]) == 3
        query, user = tokens.asked[-1]
        assert user == "bob"
        assert query["service"] == [TokenService.SERVICE] and query["scope"] == ["repository:team/tok:pull,push"]
        again = json.loads(ezrunner("push", str(made.archive), ref, "--insecure", "--json",
                                    env={**user_env, **login}).stdout)  # fmt: skip
        assert again["uploaded"] == []

        refused = ezrunner("push", str(made.archive), ref, "--insecure", check=False,
                           env={**user_env, **login, "EZRUNNER_REGISTRY_PASSWORD": "not-it"})  # fmt: skip
        assert refused.returncode == 2 and "refused the login of user 'bob'" in refused.stderr
        assert "Traceback" not in refused.stderr and "not-it" not in refused.stderr
    finally:
        tokens.stop()


def test_an_identity_token_from_a_credential_helper_is_traded_at_the_token_service(
    registry_factory: Callable[..., Registry], user_env: dict[str, str], tmp_path: Path,
) -> None:
    tokens = TokenService(tmp_path / "tokens", users={}, refresh_tokens={"refresh-7f3a": "carol"})
    try:
        registry = registry_factory(tokens=tokens)
        made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(2000,), seed=53)
        helper_env = install_helper(tmp_path / "helpers", "acr", {registry.host: ("<token>", "refresh-7f3a")})
        config = Path(user_env["DOCKER_CONFIG"]) / "config.json"
        config.write_text(json.dumps({"credHelpers": {registry.host: "acr"}}), encoding="utf-8")
        pushed = json.loads(ezrunner("push", str(made.archive), f"{registry.host}/team/idt:v1", "--insecure",
                                     "--json", env={**user_env, **helper_env}).stdout)  # fmt: skip
        assert pushed["image_id"] == made.image_id
        form, user = tokens.asked[-1]
        assert user == "carol" and form["grant_type"] == ["refresh_token"]
        assert form["scope"] == ["repository:team/idt:pull,push"] and form["service"] == [TokenService.SERVICE]
        assert all("refresh-7f3a" not in str(query) for query, _ in tokens.asked if "grant_type" not in query)
    finally:
        tokens.stop()


def test_a_token_that_expires_midway_is_asked_for_again(registry_factory: Callable[..., Registry],
                                                        tmp_path: Path) -> None:  # fmt: skip
    tokens = TokenService(tmp_path / "tokens", users={"bob": "token-pass"}, lifetime_s=2)
    try:
        registry = registry_factory(tokens=tokens)
        made = write_docker_archive(tmp_path / "img.tar", layer_bytes=(6 * MiB,), seed=52)

        def slow(event: Event) -> None:  # a slow link: each chunk takes a while, the push outlives its token
            if event.total:
                time.sleep(0.4)

        result = push_archive(archive=made.archive, ref=f"{registry.host}/team/slow:v1", insecure=True,
                              chunk_bytes=MiB, backoff_s=0.01, state_dir=tmp_path / "uploads", on_event=slow,
                              environ={"EZRUNNER_REGISTRY_USER": "bob", "EZRUNNER_REGISTRY_PASSWORD": "token-pass"})
        assert len(tokens.asked) >= 2  # one token at the start, more when the registry refused the expired one
        assert result.image_id == made.image_id and len(result.uploaded) == 2
    finally:
        tokens.stop()
