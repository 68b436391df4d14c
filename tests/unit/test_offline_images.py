"""core/offline_images.py: which locally built offline image can stand in for a plan's missing pinned image."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from core.docker import api as docker_api
from core.engines.versions import LLAMA_CPP_OFFLINE_IMAGE, TRANSFORMERS_OFFLINE_IMAGE
from core.hardware import describe_target
from core.offline_images import base_image_status, local_offline_images, offline_image_for, repository
from core.plan import plan
from tests.unit.test_llamacpp_engine import gguf_repo
from tests.unit.test_sizing import model_info


class FakeImage:
    def __init__(self, *tags: str) -> None:
        self.tags = list(tags)


class FakeClient:
    def __init__(self, *images: FakeImage) -> None:
        self.all = images
        self.images = self

    def list(self, *, name: str) -> list[FakeImage]:
        return [i for i in self.all if any(repository(tag) == name for tag in i.tags)]

    def get(self, ref: str) -> FakeImage:
        for image in self.all:
            if ref in image.tags:
                return image
        raise docker_api.docker.errors.ImageNotFound(ref)


def test_repository_of_a_ref() -> None:
    assert repository("ezrunner/llama.cpp-cpu:b1") == "ezrunner/llama.cpp-cpu"
    assert repository("my.mirror:5000/vllm/vllm-openai") == "my.mirror:5000/vllm/vllm-openai"
    assert repository("my.mirror:5000/x:v1") == "my.mirror:5000/x"


def test_offline_images_are_listed_pinned_first() -> None:
    client: Any = FakeClient(FakeImage("ezrunner/llama.cpp-cpu:b1"), FakeImage(LLAMA_CPP_OFFLINE_IMAGE, "other:1"),
                             FakeImage(TRANSFORMERS_OFFLINE_IMAGE))  # fmt: skip
    found = local_offline_images(client=client)
    assert [(i.engine, i.ref, i.pinned) for i in found] == [
        ("llama.cpp", LLAMA_CPP_OFFLINE_IMAGE, True),
        ("llama.cpp", "ezrunner/llama.cpp-cpu:b1", False),
        ("transformers", TRANSFORMERS_OFFLINE_IMAGE, True),
    ]


@pytest.mark.parametrize(
    ("model", "target", "expected"),
    [
        (model_info("Qwen2.5-0.5B"), describe_target(cpu_only=True, ram_gib=16), TRANSFORMERS_OFFLINE_IMAGE),
        (gguf_repo("Qwen2.5-7B-Instruct", ("Q4_K_M",)), describe_target(cpu_only=True, ram_gib=16),
         LLAMA_CPP_OFFLINE_IMAGE),
        (model_info("Qwen2.5-0.5B"), describe_target(gpu_preset="l4"), None),  # a GPU plan: CPU images do not help
    ],
)  # fmt: skip
def test_the_offline_image_matches_the_plans_engine_and_device(model: Any, target: Any, expected: str | None) -> None:
    client: Any = FakeClient(FakeImage(LLAMA_CPP_OFFLINE_IMAGE), FakeImage(TRANSFORMERS_OFFLINE_IMAGE))
    the_plan = plan(model=model, target=target)
    found = offline_image_for(plan=the_plan, client=client)
    assert (found.ref if found else None) == expected
    status = base_image_status(plan=the_plan, client=client)
    assert not status.present and status.offline_helps == (expected is not None)
    # once the plan is built FROM the offline image, it is present and nothing more is offered
    if expected:
        built_from = dataclasses.replace(the_plan, base_image=expected)
        again = base_image_status(plan=built_from, client=client)
        assert again.present and not again.offline_helps
