"""core.docker.api's pure parts: reading the classic builder's output and a Dockerfile's base images."""

from __future__ import annotations

import pytest

from core.docker.api import BuildStep, dockerfile_base_images, parse_build_step


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Step 1/7 : FROM python:3.11-slim\n", BuildStep(1, 7, "FROM python:3.11-slim")),
        ('Step 12/12 : CMD ["serve"]', BuildStep(12, 12, 'CMD ["serve"]')),
        ("Step 3/5 : COPY model/ /model/\r\n", BuildStep(3, 5, "COPY model/ /model/")),
    ],
)
def test_parse_build_step_reads_number_total_and_instruction(line: str, expected: BuildStep) -> None:
    assert parse_build_step(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        " ---> Running in 0123456789ab",
        "Successfully built 0123456789ab",
        "Step x/5 : RUN",
        "",
        "Step 1 : RUN",
    ],
)
def test_parse_build_step_ignores_other_lines(line: str) -> None:
    assert parse_build_step(line) is None


def test_dockerfile_base_images_skips_stages_scratch_and_args() -> None:
    text = (
        "ARG BASE=python:3.11\n"
        "FROM ezrunner/transformers-cpu:1 AS builder\n"
        "RUN echo from here is not a FROM line\n"
        "from --platform=linux/amd64 vllm/vllm-openai:v0.11.0 as runtime\n"
        "FROM builder\n"
        "FROM scratch\n"
        "FROM ${BASE}\n"
    )
    assert dockerfile_base_images(text) == ["ezrunner/transformers-cpu:1", "vllm/vllm-openai:v0.11.0"]
