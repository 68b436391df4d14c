"""`ezrunner generate k8s|compose SOURCE`: from a packed archive (the run spec read back from it, no docker) and
from a model reference with target flags (planned first), through the real argument parser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core.hardware import describe_target
from core.hubs.base import ModelInfo
from core.plan import Options, plan
from core.render import render
from ezrunner_ui.cli import common, main
from tests.unit.test_archive_inspect import _pack
from tests.unit.test_image_archive import _model
from tests.unit.test_sizing import model_info

IMAGE = "registry.internal:5000/llm/llama:1"


def _generate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    documents = [d for d in yaml.safe_load_all(out) if d] if code == 0 else []
    return code, documents, err


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model references resolve to the real configs of tests/unit/configs, without a network."""

    def inspect(*, ref: Any, revision: str | None, token: str | None, quant: str | None) -> ModelInfo:
        return model_info(ref.repo_id.rsplit("/", 1)[-1])

    monkeypatch.setattr(common.hubs, "inspect", inspect)


def test_k8s_from_a_model_plans_first(hub: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = _generate(
        capsys, "k8s", "hf:org/Llama-3.1-8B-Instruct", "--gpu-name", "l4", "--gpus", "2", "--image", IMAGE,
        "--namespace", "llm",
    )
    assert code == 0, err
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]
    for document in documents:
        kubernetes_validate.validate(document, "1.33.0", strict=True)
    container = documents[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE and container["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_k8s_from_a_model_on_two_nodes(hub: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = _generate(
        capsys, "k8s", "hf:org/Llama-3.1-70B", "--gpu-name", "a100-40gb", "--gpus", "4", "--nodes", "2",
        "--image", IMAGE,
    )
    assert code == 0, err
    lws, service = documents
    assert lws["kind"] == "LeaderWorkerSet" and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "leader"


def test_a_plan_that_does_not_fit_names_the_nodes_it_needs(hub: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = _generate(
        capsys, "k8s", "hf:org/Llama-3.1-70B", "--gpu-name", "a100-40gb", "--gpus", "4", "--image", IMAGE
    )
    assert code == 2 and not documents
    assert "does not fit" in err and "--nodes 2" in err and "Traceback" not in err


def test_compose_from_a_model(hub: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = _generate(
        capsys, "compose", "hf:org/Llama-3.1-8B-Instruct", "--gpu-name", "l4", "--gpus", "4", "--image", IMAGE,
        "--host-port", "9000",
    )
    assert code == 0, err
    (document,) = documents
    (service,) = document["services"].values()
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 4
    assert service["ports"] == ["9000:8000"]


@pytest.fixture
def multi_node_archive(tmp_path: Path) -> Path:
    """A real archive (core.image_archive's writer) whose labels are those of a 70B pack for 2 × 4 A100-40GB."""
    target = describe_target(gpu_preset="a100-40gb", gpu_count=4)
    build = render(plan=plan(model=model_info("Llama-3.1-70B"), target=target, options=Options(nodes=2)))
    folder = tmp_path / "model"
    return _pack(tmp_path, dict(build.labels), folder, _model(folder), name="llama-70b.tar")


def test_k8s_from_an_archive_reads_its_run_spec(multi_node_archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, documents, err = _generate(capsys, "k8s", str(multi_node_archive), "--image", IMAGE)
    assert code == 0, err
    lws, _service = documents
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2
    assert group["leaderTemplate"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_an_archive_refuses_plan_flags(multi_node_archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _documents, err = _generate(capsys, "k8s", str(multi_node_archive), "--gpus", "8", "--nodes", "3")
    assert code == 2
    assert "--gpus, --nodes cannot change a packed archive" in err


def test_compose_of_a_multi_node_archive_points_to_k8s(
    multi_node_archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _documents, err = _generate(capsys, "compose", str(multi_node_archive))
    assert code == 2 and "generate k8s" in err
