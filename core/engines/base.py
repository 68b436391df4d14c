"""The one Engine protocol: what the planner, the renderer and the runner need to know about a server.

Each engine is one module under ``core/engines/`` (its planning, pinned images, Dockerfile template and
run spec) and one line in ``core.engines.ENGINES``. Engines never import ``core/plan.py``: the planner
sits above them and only chooses among them.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.engines.shared import PlanRequest
from core.hardware import Target
from core.hubs.base import ModelInfo
from core.planning import EngineDraft, Options, Plan
from core.runspec import RunSpec


class Engine(Protocol):
    name: str  # the registry key, what --engine takes: "vllm", "transformers", "llama.cpp"
    label: str  # for people: "vLLM 0.33.0"
    template: str  # Dockerfile template under templates/
    port: int  # default listen port inside the container (Options.port overrides it)
    health_path: str  # GET answers 200 once the model is loaded
    api_key_env: str  # the variable the image's server reads its API key from (core.runspec.ApiKey.server_env)
    formats: frozenset[str]  # model formats it serves ("safetensors", "gguf")

    def refusal(self, *, model: ModelInfo, target: Target, options: Options) -> str | None:
        """Why this engine cannot serve ``model`` on ``target`` at all (None: it can try, even if the plan
        then does not fit). The sentence is shown when the user forces this engine."""
        ...

    def plan(self, *, request: PlanRequest) -> EngineDraft:
        """Plan the model on the target: device, parallelism, context, memory per device, reasons."""
        ...

    def default_base_image(self, *, plan: Plan) -> str:
        """The pinned image to build FROM when the user gives no ``--base-image``."""
        ...

    def image_cuda_version(self, *, base_image: str) -> str | None:
        """The CUDA toolkit ``base_image`` is built on, when it is one of this engine's pinned images."""
        ...

    def run_spec(self, *, plan: Plan, image: str, served_model_name: str, model_dir: str) -> RunSpec:
        """How the image starts its server for this plan (see ``core.runspec``)."""
        ...

    def template_values(self, *, plan: Plan, served_model_name: str, model_dir: str) -> dict[str, Any]:
        """Extra values the engine's Dockerfile template uses."""
        ...

    def context_files(self, *, plan: Plan) -> tuple[tuple[str, bytes], ...]:
        """Files the engine's template COPYs from the build context (path under it, content), besides the
        model and the plan and run spec every image carries."""
        ...
