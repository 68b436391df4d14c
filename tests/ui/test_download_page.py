"""Step 5: links to the server's artifact route and the exact commands for the offline server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import hubs
from core.hardware import Target, describe_target, target_summary
from core.history import History
from core.plan import plan
from core.refs import parse_ref
from core.render import render
from tests.ui.conftest import texts


def finished_record(folder: Path, *, parts: int = 1, compressed: bool = False, run_command: str | None = None) -> str:
    """A History record of a finished pack whose files really exist (small ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "tiny-llama-0123456789ab-vllm.tar" + (".zst" if compressed else "")
    archive = folder / name
    content = b"not really a tar, but bytes on disk" * 100
    files: tuple[Path, ...]
    if parts == 1:
        archive.write_bytes(content)
        files = (archive,)
    else:
        files = tuple(archive.with_name(f"{name}.part{i:03d}") for i in range(parts))
        for index, path in enumerate(files):
            path.write_bytes(content[index::parts])
    sha256 = hashlib.sha256(content).hexdigest()
    (folder / f"{name}.sha256").write_text(f"{sha256}  {name}\n")
    (folder / "load.sh").write_text(f"#!/bin/sh\n# loads {name}\n")
    history = History()
    target = target_summary(describe_target(gpu_preset="a100-80gb", gpu_count=2))
    record_id = history.start(
        model_id="tiny-org/tiny-llama", source="hf", revision="main", model_commit="0123456789ab" * 3,
        target=target, plan={"engine": "vllm", "tensor_parallel_size": 1, "max_model_len": 2048},
        dockerfile="FROM vllm/vllm-openai:v0.0.0\n", image_tag="ezrunner/tiny-llama:0123456789ab-vllm",
    )  # fmt: skip
    history.finish(record_id, outcome="succeeded", log="Step 1/5 : FROM x", image_id="sha256:" + "c" * 64,
                   archive=archive, parts=files, size=len(content), sha256=sha256, run_command=run_command)  # fmt: skip
    return record_id


def download_page(app: AppTest, record_id: str | None) -> AppTest:
    if record_id:
        app.query_params["record"] = record_id
    app.switch_page("views/download.py").run()
    assert not app.exception, app.exception
    return app


def test_nothing_finished_yet(app: AppTest) -> None:
    download_page(app, None)
    assert "No finished archive yet." in texts(app)


def rendered_run_command(model_dir: Path, target: Target) -> str:
    """What pack stores in the record: the engine's run spec rendered by core (BuildSpec.run_command)."""
    the_plan = plan(model=hubs.inspect(ref=parse_ref(str(model_dir))), target=target)
    return render(plan=the_plan).run_command()


def test_links_and_commands_for_one_archive(app: AppTest, data_home: Path, tiny_model: Path) -> None:
    command = rendered_run_command(tiny_model, describe_target(gpu_preset="a100-80gb", gpu_count=2))
    record_id = finished_record(data_home / "exports", run_command=command)
    download_page(app, record_id)
    urls = {link.proto.url for link in app.link_button}
    assert urls == {f"/api/artifacts/{record_id}/{kind}" for kind in ("archive", "sha256", "load.sh")}
    shown = texts(app)
    assert "3.4 KiB" in shown
    assert hashlib.sha256(b"not really a tar, but bytes on disk" * 100).hexdigest() in shown
    commands = "\n".join(code.value for code in app.code if code.language == "bash")
    assert "sha256sum -c tiny-llama-0123456789ab-vllm.tar.sha256\nbash load.sh" in commands
    assert "docker load -i tiny-llama-0123456789ab-vllm.tar" in commands
    assert command in commands and "--gpus all" in command  # core's line, as core rendered it
    url = f"http://127.0.0.1:8501/api/artifacts/{record_id}"
    assert f"curl -fC - -o tiny-llama-0123456789ab-vllm.tar {url}/archive" in commands
    assert f"curl -fC - -o tiny-llama-0123456789ab-vllm.tar.sha256 {url}/sha256" in commands
    assert "-OJ" not in commands  # curl refuses to resume (-C -) with -J


def test_a_cpu_pack_gets_the_cpu_run_command(app: AppTest, data_home: Path, tiny_model: Path) -> None:
    command = rendered_run_command(tiny_model, describe_target(cpu_only=True, ram_gib=16))
    download_page(app, finished_record(data_home / "exports", run_command=command))
    commands = "\n".join(code.value for code in app.code if code.language == "bash")
    assert command in commands
    assert "--gpus" not in commands and "--ipc=host" not in commands


def test_no_run_command_is_invented_for_an_old_record(app: AppTest, data_home: Path) -> None:
    download_page(app, finished_record(data_home / "exports"))  # no run command stored, no such image here
    commands = "\n".join(code.value for code in app.code if code.language == "bash")
    assert "docker run" not in commands
    assert any("docker run line is not known" in i.value for i in app.info)


def test_split_and_compressed_archive(app: AppTest, data_home: Path) -> None:
    record_id = finished_record(data_home / "exports", parts=3, compressed=True)
    download_page(app, record_id)
    urls = [link.proto.url for link in app.link_button]
    assert [u for u in urls if "/part/" in u] == [f"/api/artifacts/{record_id}/part/{i}" for i in range(3)]
    assert f"/api/artifacts/{record_id}/archive" not in urls
    commands = "\n".join(code.value for code in app.code if code.language == "bash")
    assert "sha256sum -c tiny-llama-0123456789ab-vllm.tar.zst.parts.sha256" in commands
    assert "zstd -dc tiny-llama-0123456789ab-vllm.tar.zst | docker load" in commands
    assert "cat tiny-llama-0123456789ab-vllm.tar.zst.part000" in commands


def test_chinese_labels(app: AppTest, data_home: Path) -> None:
    app.selectbox(key="lang").set_value("zh").run()
    record_id = finished_record(data_home / "exports")
    download_page(app, record_id)
    assert app.title[0].value == "下载"
    assert "在离线服务器上" in texts(app)


def test_profiles_sbom_signature_registry_kubernetes_and_compose_from_the_packs_run_spec(
    app: AppTest, data_home: Path, tiny_model: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import json

    import core.pack_extras

    the_plan = plan(model=hubs.inspect(ref=parse_ref(str(tiny_model))),
                    target=describe_target(gpu_preset="a100-80gb", gpu_count=2))  # fmt: skip
    spec = render(plan=the_plan).run_spec
    monkeypatch.setattr(core.pack_extras, "pack_run_spec", lambda **kwargs: spec)
    record_id = finished_record(data_home / "exports")
    folder = data_home / "exports"
    sbom = {"components": [
        {"type": "library", "purl": "pkg:deb/debian/bash@5.2"},
        {"type": "library", "purl": "pkg:pypi/torch@2.11.0"},
        {"type": "machine-learning-model", "licenses": [{"license": {"id": "apache-2.0"}}],
         "components": [{"name": "config.json", "properties": [{"name": "ezrunner:size", "value": "10"}]}]},
    ]}  # fmt: skip
    (folder / "tiny-llama-0123456789ab-vllm.tar.cdx.json").write_text(json.dumps(sbom))
    (folder / "tiny-llama-0123456789ab-vllm.tar.sha256.sig").write_text("-----BEGIN SSH SIGNATURE-----\n")
    download_page(app, record_id)
    shown = texts(app)
    assert "1 OS packages, 1 Python packages, 1 model files, licence apache-2.0" in shown
    assert any(p.name in "\n".join(str(v) for v in app.dataframe[0].value.iloc[:, 0]) for p in spec.profiles)
    commands = "\n".join(code.value for code in app.code)
    assert "--verify allowed_signers" in commands and "ezrunner verify tiny-llama-0123456789ab-vllm.tar" in commands
    assert "ezrunner push" in commands and "REGISTRY/REPOSITORY:TAG" in commands
    yaml_blocks = [code.value for code in app.code if code.language == "yaml"]
    assert any("kind: Deployment" in y and "nvidia.com/gpu" in y for y in yaml_blocks)
    assert any("services:" in y for y in yaml_blocks)
    app.text_input(key="push_ref").set_value("registry.local:5000/llm/tiny:1").run()
    assert not app.exception
    commands = "\n".join(code.value for code in app.code)
    assert "registry.local:5000/llm/tiny:1" in commands
    assert any("image: registry.local:5000/llm/tiny:1" in code.value for code in app.code if code.language == "yaml")
