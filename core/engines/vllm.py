"""vLLM's official OpenAI-compatible server image (``vllm/vllm-openai``) on NVIDIA GPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from core.engines.versions import (
    VLLM_IMAGE,
    VLLM_IMAGE_CUDA_VERSION,
    VLLM_MIN_COMPUTE_CAPABILITY,
    VLLM_VERSION,
)
from core.hardware import Target

if TYPE_CHECKING:
    from core.plan import EngineName, Plan


class VllmEngine:
    name: EngineName = "vllm"
    template = "vllm.Dockerfile.j2"
    port = 8000
    health_path = "/health"
    image_cuda_version: str | None = VLLM_IMAGE_CUDA_VERSION
    min_compute_capability: tuple[int, int] | None = VLLM_MIN_COMPUTE_CAPABILITY
    # The image's own ENTRYPOINT is ["vllm", "serve"]; serve_argv repeats it so the rendered Dockerfile can
    # state the whole command (ENTRYPOINT reset + CMD, or ENTRYPOINT with the argv) without guessing.
    image_entrypoint: tuple[str, ...] = ("vllm", "serve")

    def default_base_image(self, *, target: Target, device: Literal["cuda", "cpu"] | None = None) -> str:
        return VLLM_IMAGE

    def serve_argv(self, *, plan: Plan, model_dir: str, served_model_name: str) -> list[str]:
        argv = [
            *self.image_entrypoint,
            model_dir,
            "--served-model-name",
            served_model_name,
            "--tensor-parallel-size",
            str(plan.tensor_parallel_size),
            "--max-model-len",
            str(plan.max_model_len),
            "--dtype",
            plan.dtype,
        ]
        if plan.gpu_memory_utilization is not None:
            argv += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
        argv += ["--host", "0.0.0.0"]
        return argv

    def needs_gpu_runtime(self, *, plan: Plan) -> bool:
        return True

    def template_values(self, *, plan: Plan, served_model_name: str) -> dict[str, Any]:
        return {"vllm_version": VLLM_VERSION}
