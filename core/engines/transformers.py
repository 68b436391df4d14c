"""``transformers serve`` (OpenAI-compatible): CPU targets, small or old GPUs, models vLLM cannot fit."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any, Literal

from core.engines.versions import (
    TORCH_CPU_VERSION,
    TRANSFORMERS_CPU_BASE_IMAGE,
    TRANSFORMERS_GPU_BASE_IMAGE,
    TRANSFORMERS_GPU_IMAGE_CUDA_VERSION,
    TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY,
    TRANSFORMERS_VERSION,
)
from core.hardware import Target

if TYPE_CHECKING:
    from core.plan import EngineName, Plan


class TransformersEngine:
    name: EngineName = "transformers"
    template = "transformers.Dockerfile.j2"
    port = 8000
    health_path = "/health"  # transformers/cli/serving/server.py registers GET /health
    image_cuda_version: str | None = TRANSFORMERS_GPU_IMAGE_CUDA_VERSION
    min_compute_capability: tuple[int, int] | None = TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY

    def default_base_image(self, *, target: Target, device: Literal["cuda", "cpu"] | None = None) -> str:
        cpu = device == "cpu" if device is not None else target.is_cpu_only
        return TRANSFORMERS_CPU_BASE_IMAGE if cpu else TRANSFORMERS_GPU_BASE_IMAGE

    def serve_argv(self, *, plan: Plan, model_dir: str, served_model_name: str) -> list[str]:
        # transformers 5.23 `serve`: the positional model is preloaded and the server is pinned to it; requests
        # must name it. It is the hub id, resolved offline through the HF-cache snapshot the template points
        # at model_dir, so clients use the same model name as with vLLM. --device becomes device_map.
        return [
            "transformers",
            "serve",
            served_model_name,
            "--device",
            "cpu" if plan.device == "cpu" else "cuda",
            "--dtype",
            plan.dtype,
            "--host",
            "0.0.0.0",
        ]

    def needs_gpu_runtime(self, *, plan: Plan) -> bool:
        return plan.device == "cuda"

    def template_values(self, *, plan: Plan, served_model_name: str) -> dict[str, Any]:
        # The GPU base image already has a CUDA torch; on the CPU image pip must take torch's CPU wheel, or it
        # would pull the multi-gigabyte CUDA build from PyPI.
        packages = [f"transformers[serving]=={TRANSFORMERS_VERSION}"]
        if plan.device == "cpu":
            packages = [
                f"torch=={TORCH_CPU_VERSION}",
                *packages,
                "--extra-index-url",
                "https://download.pytorch.org/whl/cpu",
            ]
        return {
            "transformers_version": TRANSFORMERS_VERSION,
            "pip_packages": " ".join(shlex.quote(p) for p in packages),
            "hf_cache_repo": f"/home/ezrunner/.cache/huggingface/hub/{hf_cache_folder(served_model_name)}",
            "snapshot": plan.model.commit,
        }


def hf_cache_folder(repo_id: str) -> str:
    """The folder huggingface_hub uses for ``repo_id`` in its cache (``models--org--name``)."""
    return "models--" + repo_id.replace("/", "--")
