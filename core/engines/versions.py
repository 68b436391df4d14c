"""Pinned engine versions and base images, in one place: the templates, the offline base-image script
and the planner all read them from here."""

from __future__ import annotations

# transformers (`transformers serve`, OpenAI-compatible) and the torch it runs on
TRANSFORMERS_VERSION = "5.23.0"
TORCH_CPU_VERSION = "2.13.0"
# Official base images used when the user does not pass --base-image (tags, never "latest")
TRANSFORMERS_CPU_BASE_IMAGE = "python:3.11-slim-bookworm"
TRANSFORMERS_GPU_BASE_IMAGE = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
# The image scripts/offline-base-images builds with no registry: Debian bookworm + python3 + the pins above
TRANSFORMERS_OFFLINE_IMAGE = f"ezrunner/transformers-cpu:{TRANSFORMERS_VERSION}-torch{TORCH_CPU_VERSION}"

# vLLM: the official OpenAI-server image, pinned by release tag (never "latest").
# v0.33.0 is the newest release confirmed: PyPI lists vllm 0.33.0, and gpustack/runner v0.1.32.post4
# (2026-11-05) publishes "vLLM 0.33.0 images ... for CUDA 13.0".
# CUDA: since v0.20.0 the unsuffixed image tags are CUDA 13.0 and CUDA 12.9 moved to a "-cu129" suffix
# (vllm-project/vllm PR #39878 "Switch default CUDA to 13.0"; vast-ai/base-image PR #158 lists
# v0.20.0-cu129 / v0.20.0-cu130). docker/Dockerfile on vllm main: ARG CUDA_VERSION=13.0.3,
# ENTRYPOINT ["vllm", "serve"].
# Compute capability: docs/getting_started/installation/gpu.cuda.inc.md says "compute capability 7.5 or
# higher"; the CUDA 13 arch list in docker/versions.json is "7.5 8.0 8.6 8.9 9.0 10.0 11.0 12.0" (Volta 7.0
# was dropped with CUDA 13).
# Driver: NVIDIA's CUDA compatibility guide — CUDA 13.x needs driver >= 580 (13.0 GA: 580.65.06, Linux).
VLLM_VERSION = "0.33.0"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
VLLM_IMAGE_CUDA_VERSION = "13.0"
VLLM_MIN_COMPUTE_CAPABILITY = (7, 5)
VLLM_MIN_DRIVER_VERSION = "580.65.06"
# The same release built on CUDA 12.9 (the "-cu129" tag convention above; not verified for this exact tag):
# the way out for servers whose driver is older than R580.
VLLM_IMAGE_CUDA_12 = f"{VLLM_IMAGE}-cu129"
VLLM_IMAGE_CUDA_12_VERSION = "12.9"

# The transformers GPU base image above is built on CUDA 12.8; PyTorch 2.8's cu128 wheels carry kernels for
# sm_70 … sm_120, so Volta (7.0) still runs there.
TRANSFORMERS_GPU_IMAGE_CUDA_VERSION = "12.8"
TRANSFORMERS_GPU_MIN_COMPUTE_CAPABILITY = (7, 0)

# llama.cpp: built from the source that the `llama-cpp-python` source distribution on PyPI vendors
# (vendor/llama.cpp), so a package registry is the only thing the offline image and the GGUF converter
# need. llama-cpp-python 0.3.36 vendors llama.cpp build b11312 (its vendor/llama.cpp tree; the official
# ggml-org images are tagged by the same build number).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
LLAMA_CPP_PYTHON_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
LLAMA_CPP_BUILD = 11312

# --- llama.cpp offline image (scripts/offline-base-images llama.cpp) ---
# Debian bookworm minbase + libgomp1, llama-server and llama-quantize of build LLAMA_CPP_BUILD compiled for
# a portable x86-64 CPU (GGML_NATIVE=OFF), and the static health-check probe scripts/probe/ezrunner-probe.c.
LLAMA_CPP_OFFLINE_IMAGE = f"ezrunner/llama.cpp-cpu:b{LLAMA_CPP_BUILD}"
# The image's HEALTHCHECK (exec form, no shell): GET http://127.0.0.1:$PORT/health, exit 0 only on HTTP 200.
LLAMA_CPP_OFFLINE_PROBE = "/usr/local/bin/ezrunner-probe"

# --- llama.cpp official server images (ggml-org), pinned to the same build ---
# Tags from the source's .github/workflows/docker.yml: "server" + "-<backend>" + "-b<build>"; the CUDA 12 image
# is built FROM nvidia/cuda:12.8.1 (cuda_version "12.8.1"), the CUDA 13 one FROM 13.4.1, ROCm 7.2.1
# (.devops/rocm.Dockerfile ROCM_VERSION), Vulkan on Ubuntu 24.04 (.devops/vulkan.Dockerfile). All put
# llama-server in /app and set LLAMA_ARG_HOST=0.0.0.0; their HEALTHCHECK uses curl (installed there).
LLAMA_CPP_IMAGE_REPO = "ghcr.io/ggml-org/llama.cpp"
LLAMA_CPP_CPU_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:server-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_CUDA_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:server-cuda-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_CUDA_IMAGE_CUDA_VERSION = "12.8"
LLAMA_CPP_CUDA13_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:server-cuda13-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_CUDA13_IMAGE_CUDA_VERSION = "13.4"
LLAMA_CPP_ROCM_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:server-rocm-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_ROCM_VERSION = "7.2.1"
LLAMA_CPP_VULKAN_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:server-vulkan-b{LLAMA_CPP_BUILD}"
# The "full" CPU image carries llama-quantize (/app/llama-quantize): a pack that converts and quantizes a
# model runs it there when the offline image (which has it too) is not on this machine.
LLAMA_CPP_TOOLS_IMAGE = f"{LLAMA_CPP_IMAGE_REPO}:full-b{LLAMA_CPP_BUILD}"
LLAMA_CPP_TOOLS_QUANTIZE = "/app/llama-quantize"
# The CUDA image's CUDA_DOCKER_ARCH=default builds ggml-cuda's default architecture list, which starts at
# compute capability 5.0 (ggml/src/ggml-cuda/CMakeLists.txt): Maxwell and newer, V100 and T4 included.
LLAMA_CPP_CUDA_MIN_COMPUTE_CAPABILITY = (5, 0)
# gfx targets the ROCm image is compiled for (.devops/rocm.Dockerfile ROCM_DOCKER_ARCH).
LLAMA_CPP_ROCM_GFX_TARGETS = (
    "gfx908", "gfx90a", "gfx942", "gfx1030", "gfx1100", "gfx1101",
    "gfx1102", "gfx1150", "gfx1151", "gfx1200", "gfx1201",
)  # fmt: skip
