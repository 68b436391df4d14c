"""core.registry without a registry: image references, credentials, challenges, and the image inside archives."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from core.errors import ArtifactInvalidError, InvalidOptionsError, RegistryAuthError
from core.registry.client import (
    PASSWORD_ENV,
    USER_ENV,
    ImageRef,
    RegistryClient,
    find_credentials,
    parse_challenge,
    parse_image_ref,
)
from core.registry.image import LAYER_GZIP, LAYER_TAR, ArchiveBytes, index_archive
from tests.fixtures.credential_helper import asked, install_helper
from tests.fixtures.registry import write_docker_archive


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/team/model:v1", ImageRef("127.0.0.1:5000", "team/model", "v1")),
        ("registry.local/model", ImageRef("registry.local", "model", "latest")),
        ("localhost/a/b/c:1.0-rc_2", ImageRef("localhost", "a/b/c", "1.0-rc_2")),
        ("registry.local:5000/m", ImageRef("registry.local:5000", "m", "latest")),
        ("qwen", ImageRef("docker.io", "library/qwen", "latest")),
        ("team/qwen:7b", ImageRef("docker.io", "team/qwen", "7b")),
    ],
)
def test_image_references_read_as_docker_push_reads_them(text: str, expected: ImageRef) -> None:
    assert parse_image_ref(ref=text) == expected
    assert expected.api_host == ("registry-1.docker.io" if expected.registry == "docker.io" else expected.registry)


@pytest.mark.parametrize("text", ["host:5000/Team/model:v1", "host:5000/model:", "host:5000/model@sha256:" + "a" * 64,
                                  "host:5000/-model:v1", "", "host:5000/a//b:v1"])  # fmt: skip
def test_references_a_registry_would_refuse_say_how_to_write_one(text: str) -> None:
    with pytest.raises(InvalidOptionsError) as raised:
        parse_image_ref(ref=text)
    assert "registry.local:5000/team/model:v1" in str(raised.value)


def _config(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_environment_credentials_come_first_and_never_show_their_password(tmp_path: Path) -> None:
    config = _config(tmp_path, {"auths": {"r.local:5000": {"auth": base64.b64encode(b"docker:pw").decode()}}})
    found = find_credentials(registry="r.local:5000", environ={USER_ENV: "ci", PASSWORD_ENV: "s3cret!"},
                             docker_config=config)  # fmt: skip
    assert found.credentials is not None
    assert (found.credentials.username, found.credentials.password) == ("ci", "s3cret!")
    assert "s3cret" not in repr(found) and "s3cret" not in repr(found.credentials)


def test_half_of_the_environment_pair_is_an_error_naming_the_other(tmp_path: Path) -> None:
    with pytest.raises(RegistryAuthError) as raised:
        find_credentials(registry="r.local", environ={USER_ENV: "ci"}, docker_config=tmp_path / "none.json")
    assert PASSWORD_ENV in str(raised.value)


@pytest.mark.parametrize("key", ["r.local:5000", "https://r.local:5000", "http://r.local:5000/v2/", "R.LOCAL:5000"])
def test_docker_config_auths_match_however_docker_login_spelled_the_key(tmp_path: Path, key: str) -> None:
    config = _config(tmp_path, {"auths": {"other:1": {"auth": base64.b64encode(b"x:y").decode()},
                                          key: {"auth": base64.b64encode(b"alice:pa:ss").decode()}}})  # fmt: skip
    found = find_credentials(registry="r.local:5000", environ={}, docker_config=config)
    assert found.credentials is not None
    assert (found.credentials.username, found.credentials.password) == ("alice", "pa:ss")
    assert found.credentials.source == str(config)


def test_docker_hub_logins_are_found_under_the_index_key(tmp_path: Path) -> None:
    config = _config(tmp_path, {"auths": {"https://index.docker.io/v1/": {"auth": base64.b64encode(b"u:p").decode()}}})
    found = find_credentials(registry="docker.io", environ={}, docker_config=config)
    assert found.credentials is not None and found.credentials.username == "u"


def test_a_credential_helper_that_is_not_installed_is_named(tmp_path: Path) -> None:
    config = _config(tmp_path, {"auths": {"r.local": {}}, "credHelpers": {"r.local": "pass"}, "credsStore": "desktop"})
    found = find_credentials(registry="r.local", environ={"PATH": str(tmp_path)}, docker_config=config)
    assert found.credentials is None and found.helper == "pass" and not found.helper_installed
    other = find_credentials(registry="elsewhere", environ={"PATH": str(tmp_path)}, docker_config=config)
    assert other.credentials is None and other.helper == "desktop"


def test_the_registrys_own_helper_is_asked_before_the_store_and_the_file(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "pass", {"r.local:5000": ("alice", "from-pass")})
    install_helper(tmp_path / "bin", "desktop", {"r.local:5000": ("bob", "from-desktop")})
    inline = base64.b64encode(b"carol:from-file").decode()
    config = _config(tmp_path, {"auths": {"r.local:5000": {"auth": inline}}, "credHelpers": {"r.local:5000": "pass"},
                                "credsStore": "desktop"})  # fmt: skip
    found = find_credentials(registry="r.local:5000", environ=env, docker_config=config)
    assert found.credentials is not None
    assert (found.credentials.username, found.credentials.password) == ("alice", "from-pass")
    assert found.credentials.source == "docker-credential-pass" and "from-pass" not in repr(found)
    assert asked(env) == ["get r.local:5000"]


def test_a_login_kept_under_a_url_is_found_through_list(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "secretservice", {"https://r.local:5000/v2/": ("alice", "s3")})
    config = _config(tmp_path, {"credsStore": "secretservice"})
    found = find_credentials(registry="r.local:5000", environ=env, docker_config=config)
    assert found.credentials is not None and found.credentials.password == "s3"
    assert asked(env)[-2:] == ["list", "get https://r.local:5000/v2/"]


def test_docker_hub_is_asked_as_docker_login_stored_it(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "desktop", {"https://index.docker.io/v1/": ("u", "hub-secret")})
    config = _config(tmp_path, {"credsStore": "desktop"})
    found = find_credentials(registry="docker.io", environ=env, docker_config=config)
    assert found.credentials is not None and found.credentials.username == "u"
    assert asked(env) == ["get https://index.docker.io/v1/"]


def test_a_helper_without_the_login_leaves_the_file_and_then_a_named_miss(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "desktop", {"other.host": ("x", "y")})
    inline = base64.b64encode(b"carol:from-file").decode()
    with_file = find_credentials(registry="r.local", environ=env, docker_config=_config(
        tmp_path, {"credsStore": "desktop", "auths": {"r.local": {"auth": inline}}}))  # fmt: skip
    assert with_file.credentials is not None and with_file.credentials.username == "carol"
    none = find_credentials(registry="r.local", environ=env,
                            docker_config=_config(tmp_path, {"credsStore": "desktop"}))  # fmt: skip
    assert none.credentials is None and none.helper == "desktop" and none.helper_installed


def test_an_identity_token_is_marked_and_never_sent_as_a_password(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "acr", {"r.local": ("<token>", "refresh-me")})
    found = find_credentials(registry="r.local", environ=env, docker_config=_config(tmp_path, {"credsStore": "acr"}))
    assert found.credentials is not None and found.credentials.identity_token
    client = RegistryClient(ref=parse_image_ref(ref="r.local/m:v1"), credentials=found)
    assert client._basic() is None  # never "Basic <token>:refresh-me"
    with pytest.raises(RegistryAuthError) as raised:  # a Basic-only registry: said plainly, nothing sent
        client._authenticate(parse_challenge('Basic realm="r"'))
    assert "identity token" in str(raised.value) and "refresh-me" not in str(raised.value)


def test_docker_logins_identity_token_in_the_config_file_is_used_as_one(tmp_path: Path) -> None:
    inline = base64.b64encode(b"00000000-0000-0000-0000-000000000000:").decode()
    config = _config(tmp_path, {"auths": {"r.local": {"auth": inline, "identitytoken": "eyJ-refresh"}}})
    found = find_credentials(registry="r.local", environ={}, docker_config=config)
    assert found.credentials is not None and found.credentials.identity_token
    assert found.credentials.password == "eyJ-refresh"


def test_token_entries_of_docker_desktop_under_the_same_host_are_not_logins(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "desktop", {"https://r.local/access-token": ("u", "not-a-password"),
                                                       "https://r.local/refresh-token": ("u", "nor-this")})  # fmt: skip
    config = _config(tmp_path, {"credsStore": "desktop"})
    found = find_credentials(registry="r.local", environ=env, docker_config=config)
    assert found.credentials is None and found.helper_installed
    assert not any(line.startswith("get https://r.local/") for line in asked(env))


@pytest.mark.parametrize("helper", ["../evil", "/bin/sh", ""])
def test_a_helper_name_is_never_a_path(tmp_path: Path, helper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A config naming a path would run that program (a name with a slash is looked up from here): the name is
    refused before anything runs, even when the path leads to a working helper."""
    env = install_helper(tmp_path / "bin", "real", {"r.local": ("u", "p")})
    if helper:
        planted = tmp_path / ("docker-credential-" + helper)
        planted.parent.mkdir(parents=True, exist_ok=True)
        planted.write_bytes((tmp_path / "bin" / "docker-credential-real").read_bytes())
        planted.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    found = find_credentials(registry="r.local", environ={**env, "PATH": "/usr/bin:/bin"},
                             docker_config=_config(tmp_path, {"credsStore": helper}))  # fmt: skip
    assert found.credentials is None and not found.helper_installed
    assert asked(env) == []


def test_a_failing_helper_says_which_and_why_and_never_the_secret(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "pass", {}, broken="gpg: decryption failed: No secret key")
    with pytest.raises(RegistryAuthError) as raised:
        find_credentials(registry="r.local", environ=env, docker_config=_config(tmp_path, {"credsStore": "pass"}))
    assert "docker-credential-pass failed" in str(raised.value) and "No secret key" in str(raised.value)
    assert "EZRUNNER_REGISTRY_USER" in raised.value.hint


def test_the_docker_config_folder_comes_from_DOCKER_CONFIG(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"r": {"username": "u", "password": "p"}}}))
    found = find_credentials(registry="r", environ={"DOCKER_CONFIG": str(tmp_path)})
    assert found.config_file == tmp_path / "config.json"
    assert found.credentials is not None and found.credentials.username == "u"


def test_no_or_broken_config_means_no_credentials(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    assert find_credentials(registry="r", environ={}, docker_config=tmp_path / "config.json").credentials is None
    assert find_credentials(registry="r", environ={}, docker_config=tmp_path / "absent.json").credentials is None


def test_bearer_and_basic_challenges_parse() -> None:
    bearer = parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",'
                             'scope="repository:team/m:pull,push"')  # fmt: skip
    assert bearer.scheme == "bearer"
    assert dict(bearer.params) == {"realm": "https://auth.example/token", "service": "registry.example",
                                   "scope": "repository:team/m:pull,push"}  # fmt: skip
    basic = parse_challenge('Basic realm="ezrunner-test"')
    assert basic.scheme == "basic" and basic.params["realm"] == "ezrunner-test"


# THE IMAGE INSIDE AN ARCHIVE


@pytest.mark.parametrize(("compress", "split"), [("none", None), ("zstd", None), ("none", 1 << 20), ("zstd", 300_000)])
def test_the_image_is_found_in_plain_zstd_and_split_archives(tmp_path: Path, compress: str, split: int | None) -> None:
    name = "img.tar" + (".zst" if compress == "zstd" else "")
    made = write_docker_archive(tmp_path / name, layer_bytes=(2 << 20, 10, 700_000), compress=compress,
                                split_bytes=split)  # fmt: skip
    image = index_archive(archive=tmp_path / name)
    assert image.compressed == (compress == "zstd")
    assert len(image.parts) == (1 if split is None else len(list(tmp_path.glob(name + ".part[0-9]*"))))
    assert image.image_id == made.image_id
    assert [b.digest for b in image.layers] == list(made.diff_ids)
    assert [b.size for b in image.layers] == list(made.layer_sizes)
    assert {b.media_type for b in image.layers} == {LAYER_TAR}
    # the offsets really point at the layers: each one read back hashes to its diff_id
    reader = ArchiveBytes(parts=image.parts, compressed=image.compressed)
    try:
        for blob in reversed(image.layers):  # backwards: zstd reopens, plain seeks
            assert "sha256:" + hashlib.sha256(reader.read_at(blob.offset, blob.size)).hexdigest() == blob.digest
    finally:
        reader.close()
    manifest = json.loads(image.manifest_bytes())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "size": len(image.config_bytes), "digest": made.image_id}  # fmt: skip
    assert [layer["digest"] for layer in manifest["layers"]] == list(made.diff_ids)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for info, body in members:
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return out.getvalue()


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_docker_save_layouts_symlinked_duplicates_and_gzip_blobs(tmp_path: Path) -> None:
    """A classic `docker save` links a repeated layer to its first copy; the containerd store's saves
    hold gzip blobs under blobs/sha256/<hex>, whose digest is the compressed bytes' and not the diff_id."""
    plain = _tar([(_file("etc/hello"), b"hello\n")])
    packed = gzip.compress(_tar([(_file("etc/world"), b"world\n")]), mtime=0)
    plain_id = "sha256:" + hashlib.sha256(plain).hexdigest()
    world_id = "sha256:" + hashlib.sha256(gzip.decompress(packed)).hexdigest()
    gz_hex = hashlib.sha256(packed).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [plain_id, world_id, plain_id]}}).encode()
    link = _file("c/layer.tar")
    link.type, link.linkname = tarfile.SYMTYPE, "../a/layer.tar"
    manifest = json.dumps([{"Config": "cfg.json", "RepoTags": ["x:1"],
                            "Layers": ["a/layer.tar", f"blobs/sha256/{gz_hex}", "c/layer.tar"]}]).encode()  # fmt: skip
    archive = tmp_path / "saved.tar"
    archive.write_bytes(_tar([(_file("a/layer.tar"), plain), (_file(f"blobs/sha256/{gz_hex}"), packed), (link, None),
                              (_file("cfg.json"), config), (_file("manifest.json"), manifest)]))  # fmt: skip
    image = index_archive(archive=archive)
    assert [(b.digest, b.media_type) for b in image.layers] == [
        (plain_id, LAYER_TAR), (f"sha256:{gz_hex}", LAYER_GZIP), (plain_id, LAYER_TAR)]  # fmt: skip
    assert image.layers[2].offset == image.layers[0].offset
    assert image.repo_tags == ("x:1",)


def test_a_gzip_layer_without_a_digest_name_is_hashed(tmp_path: Path) -> None:
    packed = gzip.compress(_tar([(_file("f"), b"x" * 5000)]), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(packed)).hexdigest()
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    manifest = json.dumps([{"Config": "c.json", "Layers": ["l/layer.tar.gz"]}]).encode()
    archive = tmp_path / "gz.tar"
    archive.write_bytes(_tar([(_file("l/layer.tar.gz"), packed), (_file("c.json"), config),
                              (_file("manifest.json"), manifest)]))  # fmt: skip
    (layer,) = index_archive(archive=archive).layers
    assert layer.digest == "sha256:" + hashlib.sha256(packed).hexdigest() and layer.media_type == LAYER_GZIP


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([("x.txt", b"x")], "manifest.json"),
        ([("manifest.json", b"[]")], "malformed"),
        ([("manifest.json", json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode()),
          ("c.json", json.dumps({"rootfs": {"diff_ids": []}}).encode())], "lists 0 layers"),
        ([("manifest.json", json.dumps([{"Config": "c.json", "Layers": []}]).encode())], "'c.json'"),
    ],
)  # fmt: skip
def test_archives_that_are_not_docker_archives_say_so(tmp_path: Path, members: list[tuple[str, bytes]],
                                                      says: str) -> None:  # fmt: skip
    archive = tmp_path / "bad.tar"
    archive.write_bytes(_tar([(_file(name), body) for name, body in members]))
    with pytest.raises(ArtifactInvalidError) as raised:
        index_archive(archive=archive)
    assert says in str(raised.value) and "ezrunner pack" in str(raised.value)


def test_a_truncated_archive_is_reported_not_pushed(tmp_path: Path) -> None:
    made = write_docker_archive(tmp_path / "t.tar", layer_bytes=(1 << 20,))
    image = index_archive(archive=made.archive)
    data = made.archive.read_bytes()
    made.archive.write_bytes(data[: image.layers[0].offset + 1000])
    reader = ArchiveBytes(parts=(made.archive,), compressed=False)
    with pytest.raises(ArtifactInvalidError) as raised:
        reader.read_at(image.layers[0].offset, image.layers[0].size)
    reader.close()
    assert ".sha256" in str(raised.value)


def test_a_helper_that_exits_with_a_login_on_stdout_is_not_quoted(tmp_path: Path) -> None:
    env = install_helper(tmp_path / "bin", "leaky", {})
    program = tmp_path / "bin" / "docker-credential-leaky"
    program.write_text(f"#!{sys.executable}\nimport sys\nprint('{{\"Username\": \"u\", \"Secret\": \"s3cr3t\"}}')\n"
                       "sys.exit(3)\n")  # fmt: skip
    with pytest.raises(RegistryAuthError) as raised:
        find_credentials(registry="r.local", environ=env, docker_config=_config(tmp_path, {"credsStore": "leaky"}))
    assert "s3cr3t" not in str(raised.value) and "docker-credential-leaky failed" in str(raised.value)
