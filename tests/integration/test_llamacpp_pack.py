"""llama.cpp end to end on the real engine, as a user runs it: a folder with one tiny .gguf → plan → pack with
the offline llama.cpp image → image removed → `ezrunner run` → chat completions, also with no network at all;
a GGUF repo with several quantizations on the fake hub (inspect lists them, plan picks one, pack downloads only
that file); a safetensors model converted to GGUF at pack time; and the bad inputs of GGUF."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import requests
from docker import DockerClient

from core.docker import api as docker_api
from core.docker import containers as docker_containers
from tests.fixtures.cli import chat_once, ezrunner
from tests.fixtures.fake_hub import FakeHub
from tests.fixtures.hub_plugin import HF_SINGLE
from tests.fixtures.tiny_gguf import make_tiny_gguf

pytestmark = [pytest.mark.docker, pytest.mark.slow]

CPU_TARGET = ["--cpu-only", "--ram", "8"]
GGUF_REPO = "tiny-org/tiny-llama-GGUF"
SPLIT_REPO = "tiny-org/tiny-llama-split-GGUF"
OUTTYPES = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0"}


@pytest.fixture(scope="session")
def tiny_ggufs() -> dict[str, Path]:
    """The tiny Llama in three GGUF quantizations the converter writes directly."""
    return {quant: make_tiny_gguf(outtype=outtype) for quant, outtype in OUTTYPES.items()}


@pytest.fixture(scope="session")
def gguf_hub(fake_hub_server: FakeHub, tiny_ggufs: dict[str, Path]) -> FakeHub:
    files = {f"tiny-llama-{quant}.gguf": path.read_bytes() for quant, path in tiny_ggufs.items()}
    fake_hub_server.add_model(source="hf", repo_id=GGUF_REPO, extra_files={**files, "README.md": b"# tiny\n",
                                                                            "LICENSE": b"Apache-2.0\n"})  # fmt: skip
    f16 = tiny_ggufs["F16"].read_bytes()
    fake_hub_server.add_model(
        source="hf", repo_id=SPLIT_REPO,
        extra_files={"tiny-llama-F16-00001-of-00003.gguf": f16, "tiny-llama-F16-00003-of-00003.gguf": f16},
    )  # fmt: skip
    return fake_hub_server


# Asked from inside a container with no network: the llama.cpp image has bash but neither curl nor python.
_CHAT_INSIDE = r"""
body='{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}'
for i in $(seq 120); do /usr/local/bin/ezrunner-probe >/dev/null 2>&1 && break; sleep 1; done
exec 3<>/dev/tcp/127.0.0.1/8000
head='POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
printf "${head}Content-Length: %d\r\nConnection: close\r\n\r\n%s" "${#body}" "$body" >&3
cat <&3
"""


def test_a_folder_with_one_gguf_plans_packs_and_serves_offline(
    user_env: dict[str, str], offline_llama_image: str, tmp_path: Path, free_port: int, docker_client: DockerClient,
    cleanup: list[str],
) -> None:
    folder = tmp_path / "tiny-gguf"
    folder.mkdir()
    make_tiny_gguf(folder / "tiny-llama-F16.gguf")
    planned = json.loads(ezrunner("plan", str(folder), *CPU_TARGET, "--json", env=user_env).stdout)
    assert (planned["engine"], planned["device"], planned["fits"]) == ("llama.cpp", "cpu", True)
    assert planned["settings"]["quant"] == "F16"

    out = tmp_path / "out"
    artifact = json.loads(ezrunner("pack", str(folder), *CPU_TARGET, "--base-image", offline_llama_image,
                                   "-o", str(out / "tiny.tar"), "--json", env=user_env).stdout)  # fmt: skip
    cleanup += [artifact["image_tag"], artifact["image_tag"] + "-runtime"]
    assert artifact["export_path"] == "fast"
    docker_api.remove_image(ref=artifact["image_tag"], force=True, client=docker_client)

    name = f"ezrunner-test-gguf-{free_port}"
    cleanup.insert(0, name)
    started = json.loads(ezrunner("run", str(out / "tiny.tar"), "--network", "host", "--port", str(free_port),
                                  "--name", name, "--timeout", "300", "--json", env=user_env).stdout)  # fmt: skip
    answer = chat_once(started["endpoint"], started["served_model_name"])
    assert answer["usage"]["completion_tokens"] > 0
    metrics = requests.get(f"http://127.0.0.1:{free_port}/metrics", timeout=10).text
    assert "llamacpp:tokens_predicted_total" in metrics
    image = docker_client.images.get(artifact["image_tag"])
    assert image.labels["io.ezrunner.engine"] == "llama.cpp"
    assert image.attrs["Config"]["User"] == "10001:10001"
    spec = json.loads(image.labels["io.ezrunner.run-spec"])
    assert spec["profiles"][0]["argv"][0] == "llama-server"

    # with no network the image still serves: asked from inside the container
    offline = f"{name}-offline"
    cleanup.insert(0, offline)
    isolated = json.loads(ezrunner("run", str(out / "tiny.tar"), "--network", "none", "--name", offline,
                                   "--timeout", "300", "--json", env=user_env).stdout)  # fmt: skip
    assert isolated["endpoint"] is None
    script = _CHAT_INSIDE.replace("MODEL", started["served_model_name"])
    code, output = docker_containers.exec_in_container(container=offline, argv=["bash", "-c", script],
                                                       client=docker_client)  # fmt: skip
    assert code == 0, output
    body = json.loads(output.split("\r\n\r\n", 1)[1])
    assert body["usage"]["completion_tokens"] > 0
    assert docker_client.containers.get(offline).attrs["HostConfig"]["NetworkMode"] == "none"


def test_a_gguf_repo_lists_its_quantizations_and_packs_only_the_chosen_one(
    gguf_hub: FakeHub, user_env: dict[str, str], offline_llama_image: str, tmp_path: Path, cleanup: list[str],
) -> None:
    listed = json.loads(ezrunner("inspect", f"hf:{GGUF_REPO}", "--json", env=user_env).stdout)
    variants = {v["quant"]: v for v in listed["gguf"]["variants"]}
    assert set(variants) == {"F32", "F16", "Q8_0"}
    for quant, variant in variants.items():
        assert variant["size"] == gguf_hub.repos[("hf", GGUF_REPO)].files[f"tiny-llama-{quant}.gguf"].size
    # only the reference variant's header was read (the unit tests prove a big file is read by its prefix only)
    read = [quant for quant in variants if gguf_hub.bytes_served(f"tiny-llama-{quant}.gguf")]
    assert read == [listed["gguf"]["reference"].rsplit("-", 1)[-1]]

    planned = json.loads(ezrunner("plan", f"hf:{GGUF_REPO}", *CPU_TARGET, "--quant", "Q8_0", "--json",
                                  env=user_env).stdout)  # fmt: skip
    assert planned["settings"]["quant"] == "Q8_0"
    why = next(r["text"] for r in planned["reasons"] if r["code"] == "gguf_quant")
    assert "Q8_0" in why
    auto = json.loads(ezrunner("plan", f"hf:{GGUF_REPO}", *CPU_TARGET, "--json", env=user_env).stdout)
    assert auto["settings"]["quant"] == "F32"  # tiny files all fit: the most bits per weight

    gguf_hub.clear_log()
    out = tmp_path / "out"
    artifact = json.loads(ezrunner("pack", f"hf:{GGUF_REPO}", *CPU_TARGET, "--quant", "Q8_0", "--base-image",
                                   offline_llama_image, "-o", str(out / "tiny.tar"), "--json",
                                   env=user_env).stdout)  # fmt: skip
    cleanup += [artifact["image_tag"], artifact["image_tag"] + "-runtime"]
    q8 = gguf_hub.repos[("hf", GGUF_REPO)].files["tiny-llama-Q8_0.gguf"].size
    assert gguf_hub.bytes_served("tiny-llama-Q8_0.gguf") >= q8
    for other in ("F32", "F16"):
        # only header range reads, no download of the other quantizations
        assert gguf_hub.bytes_served(f"tiny-llama-{other}.gguf") < gguf_hub.repos[("hf", GGUF_REPO)].files[
            f"tiny-llama-{other}.gguf"].size  # fmt: skip


def test_a_safetensors_model_is_converted_to_gguf_when_packed(
    user_env: dict[str, str], offline_llama_image: str, tmp_path: Path, free_port: int, cleanup: list[str],
) -> None:
    out = tmp_path / "out"
    packed = ezrunner("pack", f"hf:{HF_SINGLE}", *CPU_TARGET, "--engine", "llama.cpp", "--quant", "Q8_0",
                      "--gguf-pre-tokenizer", "gpt-2", "--base-image", offline_llama_image,
                      "-o", str(out / "tiny.tar"), "--json", env=user_env)  # fmt: skip
    artifact = json.loads(packed.stdout)
    cleanup += [artifact["image_tag"], artifact["image_tag"] + "-runtime"]
    assert "==> convert" in packed.stderr
    name = f"ezrunner-test-convert-{free_port}"
    cleanup.insert(0, name)
    started = json.loads(ezrunner("run", str(out / "tiny.tar"), "--network", "host", "--port", str(free_port),
                                  "--name", name, "--timeout", "300", "--json", env=user_env).stdout)  # fmt: skip
    assert chat_once(started["endpoint"], started["served_model_name"])["usage"]["completion_tokens"] > 0
    # a second pack reuses the conversion
    again = ezrunner("pack", f"hf:{HF_SINGLE}", *CPU_TARGET, "--engine", "llama.cpp", "--quant", "Q8_0",
                     "--gguf-pre-tokenizer", "gpt-2", "--base-image", offline_llama_image,
                     "-o", str(out / "again.tar"), env=user_env)  # fmt: skip
    assert "converted earlier" in again.stderr


def test_an_unknown_tokenizer_names_the_way_out(user_env: dict[str, str], offline_llama_image: str,
                                                tmp_path: Path) -> None:  # fmt: skip
    failed = ezrunner("pack", f"hf:{HF_SINGLE}", *CPU_TARGET, "--engine", "llama.cpp", "--quant", "F16",
                      "--base-image", offline_llama_image, "-o", str(tmp_path / "x.tar"), env=user_env,
                      check=False)  # fmt: skip
    assert failed.returncode != 0
    assert "--gguf-pre-tokenizer" in failed.stderr and "Traceback" not in failed.stderr
    assert not list(tmp_path.glob("x.tar*"))


# BAD INPUT


def _write_gguf_folder(tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model-F16.gguf").write_bytes(data)
    return folder


def test_bad_gguf_files_get_clear_messages(user_env: dict[str, str], tmp_path: Path, tiny_ggufs: dict[str, Path],
                                           gguf_hub: FakeHub) -> None:  # fmt: skip
    good = tiny_ggufs["F16"].read_bytes()
    truncated = _write_gguf_folder(tmp_path, "truncated", good[:900])
    result = ezrunner("plan", str(truncated), *CPU_TARGET, env=user_env, check=False)
    assert result.returncode != 0 and "model-F16.gguf" in result.stderr and "Traceback" not in result.stderr

    # an architecture llama.cpp cannot run: rename "llama" to another name of the same length in the metadata
    key = b"general.architecture"
    at = good.index(key) + len(key)
    value_type, length = struct.unpack_from("<iQ", good, at)
    assert value_type == 8 and good[at + 12 : at + 12 + length] == b"llama"
    alien = good[: at + 12] + b"zorgo" + good[at + 12 + length :]
    unknown = _write_gguf_folder(tmp_path, "alien", alien)
    result = ezrunner("plan", str(unknown), *CPU_TARGET, env=user_env, check=False)
    assert result.returncode != 0 and "zorgo" in result.stderr and "Traceback" not in result.stderr

    result = ezrunner("plan", f"hf:{SPLIT_REPO}", *CPU_TARGET, env=user_env, check=False)
    assert result.returncode != 0 and "tiny-llama-F16-00002-of-00003.gguf" in result.stderr

    result = ezrunner("plan", f"hf:{GGUF_REPO}", *CPU_TARGET, "--quant", "Q4_K_M", env=user_env, check=False)
    assert result.returncode != 0
    assert "Q4_K_M" in result.stderr and "Q8_0" in result.stderr and "F16" in result.stderr


def test_a_gguf_folder_keeps_only_the_chosen_variant(tmp_path: Path, tiny_ggufs: dict[str, Path],
                                                     user_env: dict[str, str]) -> None:  # fmt: skip
    folder = tmp_path / "several"
    folder.mkdir()
    for quant, path in tiny_ggufs.items():
        shutil.copy(path, folder / f"tiny-{quant}.gguf")
    planned = json.loads(ezrunner("plan", str(folder), *CPU_TARGET, "--quant", "F16", "--json",
                                  env=user_env).stdout)  # fmt: skip
    assert planned["settings"]["model_file"] == "tiny-F16.gguf"
