"""Bad inputs and faults through the real `ezrunner` command (a subprocess): each ends with a non-zero exit,
one line on stderr that names the flag, file or reference at fault, no traceback, and nothing written.

No Docker is needed: every case fails before a build (that is the point: checks run first).
The CLI takes no plan file, so "a plan that is valid JSON but impossible" has no entry point to test here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.fake_hub import FakeHub, HubFault, closed_port_url
from tests.fixtures.hub_plugin import HF_GATED, HF_ONLY, HF_SINGLE, MS_SINGLE

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cli:
    env: dict[str, str]
    home: Path
    out: Path

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ezrunner_ui.cli", *args], env={**self.env, **(env or {})}, cwd=ROOT,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip


@pytest.fixture
def cli(fake_hub: FakeHub, tmp_path: Path) -> Iterator[Cli]:
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    out.mkdir()
    env = {**os.environ, "EZRUNNER_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_CACHE": str(tmp_path / "hf")}
    yield Cli(env=env, home=home, out=out)
    fake_hub.fault = None


def assert_refused(result: subprocess.CompletedProcess[str], cli: Cli, *culprits: str, status: int = 2) -> str:
    """Non-zero exit, one line naming every culprit, no traceback, nothing left in the output or home."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1, result.stderr
    for culprit in culprits:
        assert culprit in lines[0], lines[0]
    assert list(cli.out.iterdir()) == []
    assert [p for p in cli.home.rglob("*") if p.is_file()] == []
    return lines[0]


# MODEL REFERENCES: refused before any hub is asked


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("", "empty"),
        ("a" * 5000, "5,000 characters"),
        ("hf:../etc", "'..'"),
        ("hf:org/" + "n" * 97, "at most 96"),
        ("org/na me", "invalid org or name"),
        ("hf:org/", "invalid org or name"),
        ("ms:/name", "file path"),
        ("tests/nonexistent", "does not exist"),
        ("./nope", "does not exist"),
        ("xx:org/name", "Unknown hub prefix"),
        ("org/na\x01me", "control character"),
    ],
)
def test_bad_model_references(cli: Cli, fake_hub: FakeHub, reference: str, says: str) -> None:
    line = assert_refused(cli("plan", reference, "--cpu-only"), cli, "(MODEL)", says)
    assert line.startswith("Error (MODEL): ")
    assert fake_hub.log == []  # no network for a reference that cannot be one


# NUMBERS: refused before the model is looked at


@pytest.mark.parametrize(
    ("flags", "culprit"),
    [
        (["--gpu-name", "l4", "--gpus", "0"], "--gpus"),
        (["--gpu-name", "l4", "--gpus", "-2"], "--gpus"),
        (["--gpu-name", "l4", "--gpus", "1000000"], "--gpus"),
        (["--gpu-memory", "nan", "--compute-capability", "8.0"], "--gpu-memory"),
        (["--gpu-memory", "inf", "--compute-capability", "8.0"], "--gpu-memory"),
        (["--gpu-memory", "-24", "--compute-capability", "8.0"], "--gpu-memory"),
        (["--gpu-memory", "0", "--compute-capability", "8.0"], "--gpu-memory"),
        (["--gpu-memory", "1e308", "--compute-capability", "8.0"], "--gpu-memory"),
        (["--ram", "nan"], "--ram"),
        (["--ram", "-1"], "--ram"),
        (["--ram", "0"], "--ram"),
        (["--ram", "1e15"], "--ram"),
        (["--cpu-cores", "0"], "--cpu-cores"),
        (["--cpu-only", "--max-model-len", "0"], "--max-model-len"),
        (["--cpu-only", "--max-model-len", "-8"], "--max-model-len"),
        (["--cpu-only", "--max-model-len", "1000000000000000"], "--max-model-len"),
        (["--cpu-only", "--port", "0"], "--port"),
        (["--cpu-only", "--port", "70000"], "--port"),
        (["--cpu-only", "--port", "-1"], "--port"),
        (["--gpu-name", "l4", "--gpu-memory-utilization", "nan"], "--gpu-memory-utilization"),
        (["--gpu-name", "l4", "--gpu-memory-utilization", "0"], "--gpu-memory-utilization"),
        (["--gpu-name", "l4", "--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization"),
        (["--gpu-name", "l4", "--tp", "0"], "--tensor-parallel-size"),
        (["--gpu-name", "l4", "--tp", "4"], "--tensor-parallel-size"),
        (["--cpu-only", "--parallel", "0"], "--parallel"),
        (["--gpu-name", "h100", "--gpu-api", "vulkan"], "--gpu-api"),
        (["--gpus", "many"], "--gpus"),  # argparse's own refusal, on one line too
        (["--gpu-memory", "lots"], "--gpu-memory"),
    ],
)
def test_bad_numbers_name_the_flag(cli: Cli, fake_hub: FakeHub, flags: list[str], culprit: str) -> None:
    assert_refused(cli("plan", f"hf:{HF_SINGLE}", *flags), cli, culprit)
    assert fake_hub.log == []


def test_bad_split_names_the_flag(cli: Cli, tiny_model_dir: Path) -> None:
    result = cli("pack", str(tiny_model_dir), "--cpu-only", "-o", str(cli.out / "m.tar"), "--split", "0")
    assert_refused(result, cli, "--split")


# IMAGE REFERENCES


@pytest.mark.parametrize(
    "image", ["not a reference", "vllm/vllm-openai", "python:3.11\nRUN curl evil", "UPPER:1", "x:1;id"]
)
@pytest.mark.parametrize("command", ["plan", "dockerfile"])
def test_bad_base_images_are_refused(cli: Cli, tiny_model_dir: Path, command: str, image: str) -> None:
    result = cli(command, str(tiny_model_dir), "--cpu-only", "--base-image", image)
    assert_refused(result, cli, "(--base-image)")
    assert result.stdout == ""


# CONFIG.JSON AND WEIGHT HEADERS OF A FOLDER


def _model_copy(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def _config_with(folder: Path, **values: object) -> bytes:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    return json.dumps(config).encode()


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("not-json", "cannot be read as JSON"),
        ("empty", "is empty"),
        ("nan", "NaN"),
        ("infinity", "Infinity"),
        ("negative-context", "max_position_embeddings is -4096"),
        ("absurd-context", "max_position_embeddings is 1000000000000000000"),
        ("negative-layers", "num_hidden_layers is -2"),
        ("list-hidden", "hidden_size is [64]"),
        ("oversized", "far more than a JSON config holds"),
    ],
)
def test_bad_config_json(cli: Cli, tmp_path: Path, tiny_model_dir: Path, case: str, says: str) -> None:
    folder = _model_copy(tmp_path, tiny_model_dir)
    config = folder / "config.json"
    bodies = {
        "not-json": b"{ this is not json",
        "empty": b"",
        "nan": _config_with(folder).rstrip(b"}") + b', "rope_theta": NaN}',
        "infinity": _config_with(folder).rstrip(b"}") + b', "max_position_embeddings": Infinity}',
        "negative-context": _config_with(folder, max_position_embeddings=-4096),
        "absurd-context": _config_with(folder, max_position_embeddings=10**18),
        "negative-layers": _config_with(folder, num_hidden_layers=-2),
        "list-hidden": _config_with(folder, hidden_size=[64]),
    }
    if case == "oversized":
        with config.open("r+b") as handle:  # sparse: 8 GiB listed, nothing to read into memory
            handle.truncate(8 << 30)
    else:
        config.write_bytes(bodies[case])
    line = assert_refused(cli("plan", str(folder), "--cpu-only"), cli, "config.json", says)
    assert line.startswith("Error (MODEL's config.json): ")


def _rewrite_shard(path: Path, header: bytes, *, length: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + b"\0" * 64)


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("length-past-file", "the file has only"),
        ("not-json", "header is not JSON"),
        ("unknown-dtype", "'Q9_FANCY'"),
        ("offsets-past-file", "past the file"),
        ("negative-shape", "shape"),
    ],
)
def test_bad_weight_headers(cli: Cli, tmp_path: Path, tiny_model_dir: Path, case: str, says: str) -> None:
    folder = _model_copy(tmp_path, tiny_model_dir)
    shard = folder / "model.safetensors"
    tensor = {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]}
    headers = {
        "not-json": b"{ not json at all }",
        "unknown-dtype": json.dumps({"w": {**tensor, "dtype": "Q9_FANCY"}}).encode(),
        "offsets-past-file": json.dumps({"w": {**tensor, "shape": [2, 2000], "data_offsets": [0, 8000]}}).encode(),
        "negative-shape": json.dumps({"w": {**tensor, "shape": [-2, 2]}}).encode(),
    }
    if case == "length-past-file":
        _rewrite_shard(shard, b"{}", length=10**6)
    else:
        _rewrite_shard(shard, headers[case])
    line = assert_refused(cli("plan", str(folder), "--cpu-only"), cli, "model.safetensors", says)
    assert line.startswith("Error (MODEL's weight files): ")


# HUB ANSWERS


@pytest.mark.parametrize(
    ("reference", "fault", "says"),
    [
        (f"hf:{HF_SINGLE}", HubFault(side="hf", extra_listing=("../evil.safetensors",)), "../evil.safetensors"),
        (f"hf:{HF_SINGLE}", HubFault(side="hf", extra_listing=("a/../../etc/x",)), "outside the model folder"),
        (f"ms:{MS_SINGLE}", HubFault(side="ms", extra_listing=("/etc/passwd",)), "/etc/passwd"),
        (f"hf:{HF_SINGLE}", HubFault(side="hf", garbage=True), "unreadable"),
        (f"ms:{MS_SINGLE}", HubFault(side="ms", garbage=True), "ModelScope"),
        (f"hf:{HF_SINGLE}", HubFault(side="hf", status=503), "HTTP 503"),
        (f"hf:{HF_SINGLE}", HubFault(side="hf", status=429), "429"),
        (f"ms:{MS_SINGLE}", HubFault(side="ms", status=503), "ModelScope"),
        (f"ms:{MS_SINGLE}", HubFault(side="ms", status=429), "ModelScope"),
        (f"hf:{HF_SINGLE}", HubFault(side="hf", short_files=True), "config.json"),
        (f"ms:{MS_SINGLE}", HubFault(side="ms", short_files=True), "config.json"),
    ],
)
def test_bad_hub_answers(cli: Cli, fake_hub: FakeHub, reference: str, fault: HubFault, says: str) -> None:
    fake_hub.fault = fault
    assert_refused(cli("inspect", reference, timeout=300), cli, says)


def test_gated_model_names_hf_token(cli: Cli) -> None:
    line = assert_refused(cli("inspect", f"hf:{HF_GATED}"), cli, "(MODEL)", "HF_TOKEN")
    assert "--token" not in line


# BARE ORG/NAME: MODELSCOPE FIRST, BRIEFLY, THEN HUGGING FACE


def test_bare_name_found_on_modelscope_says_so(cli: Cli) -> None:
    result = cli("inspect", MS_SINGLE)
    assert result.returncode == 0, result.stderr
    assert "found on ModelScope" in result.stderr
    assert "(ModelScope," in result.stdout


def test_bare_name_missing_on_modelscope_falls_back_and_says_so(cli: Cli) -> None:
    result = cli("inspect", HF_ONLY)
    assert result.returncode == 0, result.stderr
    assert "not on ModelScope; found on Hugging Face" in result.stderr


def test_bare_name_with_modelscope_down_falls_back_to_hugging_face(cli: Cli) -> None:
    result = cli("inspect", HF_SINGLE, env={"MODELSCOPE_ENDPOINT": closed_port_url()})
    assert result.returncode == 0, result.stderr
    assert "ModelScope did not answer" in result.stderr and "found on Hugging Face" in result.stderr
    assert "(Hugging Face," in result.stdout


def test_bare_name_with_modelscope_silent_falls_back_within_the_probe_timeout(cli: Cli) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            silent.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{silent.getsockname()[1]}"
            result = cli("inspect", HF_SINGLE, env={"MODELSCOPE_ENDPOINT": url}, timeout=60)
        finally:
            stop.set()
            thread.join()
            for connection in accepted:
                connection.close()
    assert result.returncode == 0, result.stderr
    assert "ModelScope did not answer within 5 s" in result.stderr


def test_bare_name_with_both_hubs_down_names_both(cli: Cli) -> None:
    down = closed_port_url()
    result = cli("inspect", HF_SINGLE, env={"MODELSCOPE_ENDPOINT": down, "HF_ENDPOINT": down})
    assert_refused(result, cli, "Neither hub answered", "ModelScope", "Hugging Face")


# THE FILE SYSTEM


def test_output_folder_not_writable_names_it(cli: Cli, tiny_model_dir: Path) -> None:
    result = cli("pack", str(tiny_model_dir), "--cpu-only", "-o", "/sys/ezrunner-test.tar")
    assert_refused(result, cli, "(--output)", "/sys", "Permission denied")


def test_output_under_a_file_names_it(cli: Cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("pack", str(tiny_model_dir), "--cpu-only", "-o", str(blocker / "m.tar"))
    assert_refused(result, cli, "(--output)", str(blocker), "Not a directory")


def test_home_not_writable_names_it(cli: Cli, tiny_model_dir: Path) -> None:
    result = cli("pack", str(tiny_model_dir), "--cpu-only", "-o", str(cli.out / "m.tar"),
                 env={"EZRUNNER_HOME": "/sys/ezrunner-home"})  # fmt: skip
    assert_refused(result, cli, "(EZRUNNER_HOME)", "/sys", "Permission denied")


# --debug AND BUGS


def test_debug_prints_the_traceback(cli: Cli) -> None:
    result = cli("--debug", "plan", "./nope", "--cpu-only")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "InvalidReferenceError" in result.stderr
    assert cli("plan", "./nope", "--cpu-only", "--debug").stderr.count("Traceback") == 1


def test_a_bug_is_one_line_that_asks_for_a_report(cli: Cli, tmp_path: Path, tiny_model_dir: Path) -> None:
    # a planner that crashes: sitecustomize runs before the CLI imports it
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import core.plan\n"
        "def broken(**kwargs):\n"
        "    raise ZeroDivisionError('planted')\n"
        "core.plan.plan = broken\n"
    )
    env = {"PYTHONPATH": f"{hooks}{os.pathsep}{ROOT}"}
    result = cli("plan", str(tiny_model_dir), "--cpu-only", env=env)
    line = assert_refused(result, cli, "`ezrunner plan`", "ZeroDivisionError", "--debug", status=1)
    assert "report" in line
    debug = cli("--debug", "plan", str(tiny_model_dir), "--cpu-only", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "planted" in debug.stderr


# REVISIONS, SEARCH, JSON


@pytest.mark.parametrize("revision", ["../../api/models", "main branch", "x\ny"])
def test_bad_revision_is_refused_before_any_hub(cli: Cli, fake_hub: FakeHub, revision: str) -> None:
    assert_refused(cli("inspect", f"hf:{HF_SINGLE}", "--revision", revision), cli, "(--revision)")
    assert fake_hub.log == []


def test_missing_revision_names_the_flag(cli: Cli) -> None:
    assert_refused(cli("inspect", f"hf:{HF_SINGLE}", "--revision", "no-such-branch"), cli, "(--revision)")


@pytest.mark.parametrize("limit", ["0", "-3", "99999999"])
def test_bad_search_limit_names_the_flag(cli: Cli, fake_hub: FakeHub, limit: str) -> None:
    assert_refused(cli("search", "llama", "--limit", limit), cli, "(--limit)")
    assert fake_hub.log == []


def test_gated_modelscope_model_names_its_token_variable(cli: Cli) -> None:
    from tests.fixtures.hub_plugin import MS_GATED

    line = assert_refused(cli("inspect", f"ms:{MS_GATED}"), cli, "MODELSCOPE_API_TOKEN")
    assert "--token" not in line


def test_json_errors_carry_the_key_and_the_flag(cli: Cli, tiny_model_dir: Path) -> None:
    result = cli("plan", str(tiny_model_dir), "--cpu-only", "--port", "0", "--json")
    assert result.returncode == 2
    answer = json.loads(result.stdout)
    assert (answer["error"], answer["field"], answer["flag"]) == ("invalid_options", "port", "--port")
