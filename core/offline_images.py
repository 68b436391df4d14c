"""The locally built offline base images, and which one can stand in for a plan's pinned image.

``scripts/offline-base-images`` builds CPU base images without any registry (``ezrunner/transformers-cpu:*``
and ``ezrunner/llama.cpp-cpu:*``, the pins in ``core/engines/versions.py``). On an offline machine the pinned
upstream image (``python:3.11-slim-bookworm``, ``ghcr.io/ggml-org/llama.cpp:server-b…``) is usually absent and
cannot be pulled; a plan for the CPU can then be built FROM the offline image instead, and the wizard offers
exactly that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.engines.versions import LLAMA_CPP_OFFLINE_IMAGE, TRANSFORMERS_OFFLINE_IMAGE
from core.planning import Plan

if TYPE_CHECKING:
    from docker import DockerClient

#: engine → the image ``scripts/offline-base-images`` builds for it at this version's pins
PINNED_OFFLINE_IMAGES: Mapping[str, str] = {
    "transformers": TRANSFORMERS_OFFLINE_IMAGE,
    "llama.cpp": LLAMA_CPP_OFFLINE_IMAGE,
}


def repository(ref: str) -> str:
    """``ezrunner/llama.cpp-cpu:b1`` → ``ezrunner/llama.cpp-cpu`` (a registry port is not a tag)."""
    name, _, tag = ref.rpartition(":")
    return name if name and "/" not in tag else ref


@dataclass(frozen=True)
class OfflineImage:
    engine: str
    ref: str
    pinned: bool  # the tag this version pins; another tag is an older or newer build of the same recipe


@dataclass(frozen=True)
class BaseImageStatus:
    """Whether the plan's base image is on this machine, and the offline image that could replace it."""

    image: str
    present: bool
    offline: OfflineImage | None = None

    @property
    def offline_helps(self) -> bool:
        return not self.present and self.offline is not None and self.offline.ref != self.image


def local_offline_images(*, client: DockerClient) -> list[OfflineImage]:
    """Every offline base image in the local Docker engine, pinned tags first."""
    from core.docker.api import engine_errors

    found: list[OfflineImage] = []
    for engine, pinned in PINNED_OFFLINE_IMAGES.items():
        with engine_errors(action=f"list the {repository(pinned)} images"):
            images = client.images.list(name=repository(pinned))
        tags = sorted({tag for image in images for tag in image.tags if repository(tag) == repository(pinned)})
        found += [OfflineImage(engine=engine, ref=tag, pinned=tag == pinned) for tag in tags]
    return sorted(found, key=lambda image: (image.engine, not image.pinned, image.ref))


def offline_image_for(*, plan: Plan, client: DockerClient) -> OfflineImage | None:
    """The offline image a plan can be built FROM: same engine, a CPU plan (the images are CPU builds)."""
    if plan.device != "cpu" or plan.engine not in PINNED_OFFLINE_IMAGES:
        return None
    return next((image for image in local_offline_images(client=client) if image.engine == plan.engine), None)


def base_image_status(*, plan: Plan, client: DockerClient) -> BaseImageStatus:
    from core.docker.api import image_exists

    present = image_exists(ref=plan.base_image, client=client)
    offline = None if present else offline_image_for(plan=plan, client=client)
    return BaseImageStatus(image=plan.base_image, present=present, offline=offline)


__all__ = [
    "PINNED_OFFLINE_IMAGES",
    "BaseImageStatus",
    "OfflineImage",
    "base_image_status",
    "local_offline_images",
    "offline_image_for",
    "repository",
]
