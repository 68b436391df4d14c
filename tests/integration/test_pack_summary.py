"""What `ezrunner pack` prints at the end names the files it really wrote (a split archive has no file of its
own name), and nothing else lies beside them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from docker import DockerClient

from core.docker import api as docker_api
from tests.fixtures.cli import ezrunner

CPU_TARGET = ("--cpu-only", "--ram", "16", "--cpu-cores", "4")


@pytest.mark.docker
def test_a_split_pack_names_each_part_and_sidecar_it_wrote(
    tiny_model_dir: Path, offline_base_image: str, tmp_path: Path, docker_client: DockerClient
) -> None:
    model = tmp_path / "tiny-llama"
    model.mkdir()
    for file in tiny_model_dir.iterdir():
        shutil.copy(file, model / file.name)  # new mtimes: an image tag of this test's own, safe to remove
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["EZRUNNER_HOME"] = str(tmp_path / "home")
    out = tmp_path / "out"
    packed = ezrunner("pack", str(model), *CPU_TARGET, "--base-image", offline_base_image,
                      "-o", str(out / "tiny.tar"), "--split", "300M", env=env)  # fmt: skip
    try:
        written = sorted(p.name for p in out.iterdir())
        lines = packed.stdout.splitlines()
        assert lines[0].startswith("Wrote ") and lines[0].endswith(f"to {out}:")
        listed = [line.split()[0] for line in lines[1 : 1 + len(written)]]
        assert sorted(listed) == written  # every file, and only files that exist
        assert "tiny.tar" not in written and "tiny.tar.part001" in written and "tiny.tar.parts.sha256" in written
        (done,) = [line for line in packed.stderr.splitlines() if line.startswith("==> done")]
        assert done.startswith("==> done: Wrote tiny.tar.part000, tiny.tar.part001") and done.endswith(f"in {out}")
        (by_hand,) = [line for line in lines if line.startswith("  or by hand:")]  # then the profiles
        parts = " ".join(name for name in written if ".part0" in name)
        assert by_hand.startswith(f"  or by hand: cat {parts} | docker load && docker run ")
        assert "Traceback" not in packed.stderr
    finally:
        for line in packed.stdout.splitlines():
            if "docker run" in line:
                tag = line.split()[-1]
                for ref in (tag, f"{tag}-runtime"):
                    docker_api.remove_image(ref=ref, force=True, client=docker_client)
