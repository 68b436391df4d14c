"""scripts/check-vllm-argv's own parts that need no vLLM: Dockerfile → argv, mutations, messages, venv pins."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from core.engines.versions import VLLM_VERSION

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check-vllm-argv"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("check_vllm_argv", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up while the file executes
    loader.exec_module(module)
    return module


cva = _load()

SERVE = 'exec vllm serve /models/M --served-model-name org/M --port "${PORT}" "$@"'


def dockerfile(*lines: str) -> str:
    return "\n".join(["FROM vllm/vllm-openai:v0.33.0", *lines]) + "\n"


# DOCKERFILE → ARGV


def test_instructions_join_continuations_and_drop_comments() -> None:
    text = (
        "# top\nENV A=1 \\\n    # a comment between continuation lines\n    B=2\n\n"
        'HEALTHCHECK --interval=1s \\\n  CMD ["x"]\n'
    )
    assert cva.dockerfile_instructions(text) == [("ENV", "A=1 B=2"), ("HEALTHCHECK", '--interval=1s CMD ["x"]')]


def test_env_forms() -> None:
    assert cva.parse_env('A=1 B="two words" C=') == {"A": "1", "B": "two words", "C": ""}
    assert cva.parse_env("LEGACY value with spaces") == {"LEGACY": "value with spaces"}
    with pytest.raises(cva.CheckError, match="expansion"):
        cva.parse_env("PATH=/x:$PATH")


def test_exec_form_entrypoint_and_cmd_are_concatenated_and_reset_inherited_cmd() -> None:
    text = dockerfile('ENTRYPOINT ["/bin/sh", "-c", "echo", "serve"]', 'CMD ["--x", "1"]')
    command = cva.container_command(text, inherited_entrypoint=["vllm", "serve"], inherited_cmd=["--base"])
    assert command.argv == ("/bin/sh", "-c", "echo", "serve", "--x", "1")
    only_entrypoint = cva.container_command(dockerfile('ENTRYPOINT ["a"]'), inherited_cmd=["--base"])
    assert only_entrypoint.argv == ("a",)


def test_cmd_alone_keeps_the_base_images_entrypoint() -> None:
    command = cva.container_command(dockerfile('CMD ["/models/M"]'), inherited_entrypoint=["vllm", "serve"])
    assert command.argv == ("vllm", "serve", "/models/M")


def test_shell_form_entrypoint_ignores_cmd() -> None:
    command = cva.container_command(dockerfile("ENTRYPOINT vllm serve /m", 'CMD ["--ignored"]'))
    assert command.argv == ("/bin/sh", "-c", "vllm serve /m")


def test_only_the_last_stage_counts() -> None:
    text = 'FROM a AS build\nENV X=1\nCOPY x /build/\nENTRYPOINT ["wrong"]\n' + dockerfile(
        "ENV PORT=8000", "COPY layers/00/ /models/M/", 'ENTRYPOINT ["right"]'
    )
    command = cva.container_command(text)
    assert command.argv == ("right",)
    assert command.env == {"PORT": "8000"}
    assert command.model_dirs == ("/models/M/",)


def test_a_dockerfile_without_a_command_is_refused() -> None:
    with pytest.raises(cva.CheckError, match="no ENTRYPOINT or CMD"):
        cva.container_command(dockerfile("ENV A=1"))


def test_argv_comes_from_a_real_shell_with_the_image_env(tmp_path: Path) -> None:
    text = dockerfile(
        "ENV PORT=9001",
        f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', SERVE, 'serve'])}",
        'CMD ["--extra", "two words"]',
    )
    argv = cva.exec_argv(cva.container_command(text), workdir=tmp_path)
    assert argv == [
        "vllm", "serve", "/models/M", "--served-model-name", "org/M", "--port", "9001", "--extra", "two words",
    ]  # fmt: skip


def test_a_command_that_never_execs_vllm_fails(tmp_path: Path) -> None:
    text = dockerfile(f"ENTRYPOINT {json.dumps(['/bin/sh', '-c', 'exec /usr/bin/env true'])}")
    with pytest.raises(cva.CheckError, match="did not exec a program named 'vllm'"):
        cva.exec_argv(cva.container_command(text), workdir=tmp_path)


def test_image_home_moves_and_model_dir_maps(tmp_path: Path) -> None:
    env = {"HOME": "/home/ezrunner", "HF_HOME": "/home/ezrunner/.cache/hf", "PORT": "8000", "X": "/home/ezrunnerx"}
    moved = cva.image_env(env, home=tmp_path)
    assert moved == {"HOME": str(tmp_path), "HF_HOME": f"{tmp_path}/.cache/hf", "PORT": "8000", "X": "/home/ezrunnerx"}
    argv = ["vllm", "serve", "/models/M", "--x", "/models/M/sub"]
    assert cva.map_model_dir(argv, image_dir="/models/M/", local_dir="/tmp/m") == [
        "vllm", "serve", "/tmp/m", "--x", "/models/M/sub",
    ]  # fmt: skip


# THE MATRIX, WITHOUT VLLM


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("matrix")
    return {case.name: cva.prepare_plan_case(case, work=work) for case in cva.CASES}


def test_every_case_still_plans_renders_and_execs_vllm_serve(prepared: dict[str, Any]) -> None:
    for name, case in prepared.items():
        assert not case.error, f"{name}: {case.error}"
        assert case.image_argv[:3] == ["vllm", "serve", case.model_dir], name
        assert case.argv[2] == case.local_model_dir and Path(case.local_model_dir, "config.json").is_file()
        assert case.image_argv[case.image_argv.index("--port") + 1] == case.env["PORT"]
        assert case.image_argv[case.image_argv.index("--tensor-parallel-size") + 1] == str(
            case.plan.tensor_parallel_size
        )


def test_the_matrix_covers_what_the_issue_asks(prepared: dict[str, Any]) -> None:
    plans = [case.plan for case in prepared.values()]
    assert {p.tensor_parallel_size for p in plans} >= {1, 2, 4, 8}
    assert any(p.dtype == "float16" and p.target.gpus[0].compute_capability < (8, 0) for p in plans)
    assert any(p.max_model_len < p.context_length for p in plans)
    assert any(p.options.max_model_len is not None for p in plans)
    architectures = {p.model.architecture for p in plans}
    assert {"DeepseekV3ForCausalLM", "MixtralForCausalLM", "Qwen2_5_VLForConditionalGeneration"} <= architectures
    methods = {str((p.model.quantization or {}).get("quant_method")) for p in plans}
    assert {"awq", "fp8", "compressed-tensors"} <= methods
    # every GPU used: replicas; models larger than one node: pipeline stages across nodes on Ray
    assert {p.data_parallel_size for p in plans} >= {1, 2, 4}
    assert {p.pipeline_parallel_size for p in plans} >= {1, 2, 3}
    for case in prepared.values():
        argv, made = case.image_argv, case.plan
        if made.pipeline_parallel_size > 1:
            assert argv[argv.index("--pipeline-parallel-size") + 1] == str(made.pipeline_parallel_size)
            assert argv[argv.index("--distributed-executor-backend") + 1] == "ray"
        if made.data_parallel_size > 1:
            assert argv[argv.index("--data-parallel-size") + 1] == str(made.data_parallel_size)


def test_coverage_drift_is_a_failure() -> None:
    case = cva.PlanCase("x", "Llama-3.1-8B-Instruct", "h100", 1, "TP 2 on one GPU", tensor_parallel_size=2)
    with pytest.raises(cva.CheckError, match="no longer covers"):
        cva.plan_for(case)


def test_every_negative_control_mutates_its_base(prepared: dict[str, Any]) -> None:
    names = [c.name for c in cva.CASES] + [n.name for n in cva.NEGATIVE_CONTROLS]
    assert len(names) == len(set(names))
    for control in cva.NEGATIVE_CONTROLS:
        base = prepared[control.base]
        negative = cva.prepare_negative(control, base)
        assert not negative.error, f"{control.name}: {negative.error}"
        assert negative.argv != base.argv
        assert negative.image_argv[:2] == ["vllm", "serve"] and base.model_dir in negative.image_argv


def test_mutations() -> None:
    argv = ["vllm", "serve", "/m", "--served-model-name", "org/m", "--dtype", "bfloat16"]
    assert cva.with_flag(argv, "--dtype", "bf16")[-1] == "bf16"
    assert cva.with_served_name_first(argv) == [
        "vllm", "serve", "--served-model-name", "org/m", "/m", "--dtype", "bfloat16",
    ]  # fmt: skip
    with pytest.raises(cva.CheckError, match="--max-model-len"):
        cva.with_flag(argv, "--max-model-len", "1")


# VLLM'S MESSAGES AND VERDICTS


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        (
            "exit status 2",
            "usage: vllm serve [model_tag] [options]\nvllm serve: error: argument --dtype: invalid choice: 'bf16'\n",
            "vllm serve: error: argument --dtype: invalid choice: 'bf16'",
        ),
        (
            "ValidationError",
            "1 validation error for VllmConfig\n  Value error, Total number of attention heads (28) must be "
            "divisible by tensor parallel size (3). [type=value_error, input_value=ArgsKwargs((), {})]\n",
            "Total number of attention heads (28) must be divisible by tensor parallel size (3).",
        ),
        (
            "ValidationError",
            "1 validation error for CacheConfig\ngpu_memory_utilization\n  Input should be less than or equal "
            "to 1 [type=less_than_equal, input_value=1.5, input_type=float]\n",
            "1 validation error for CacheConfig gpu_memory_utilization Input should be less than or equal to 1",
        ),
        ("ValueError", "`model` should be provided first.", "ValueError: `model` should be provided first."),
    ],
)
def test_vllm_message(kind: str, text: str, message: str) -> None:
    assert cva.vllm_message(kind=kind, text=text) == message


def test_verdicts(prepared: dict[str, Any]) -> None:
    base = prepared["gqa-qwen2.5-7b-1xl4"]
    made = base.plan
    resolved = {
        "model": base.local_model_dir,
        "served_model_name": base.served_model_name,
        "tensor_parallel_size": made.tensor_parallel_size,
        "pipeline_parallel_size": made.pipeline_parallel_size,
        "data_parallel_size": made.data_parallel_size,
        "max_model_len": made.max_model_len,
        "dtype": made.dtype,
        "gpu_memory_utilization": made.gpu_memory_utilization,
        "port": int(base.env["PORT"]),
        "warnings": [],
    }
    accepted = {"accepted": True, "resolved": resolved, "warnings": ["Triton is not installed.", "Casting x"]}
    verdict = cva.judge(base, accepted)
    assert verdict.passed and verdict.warnings == ("Casting x",)
    misread = cva.judge(base, {**accepted, "resolved": {**resolved, "max_model_len": 4096}})
    assert not misread.passed and "max_model_len 4096" in misread.detail
    unstaged = cva.judge(base, {**accepted, "resolved": {**resolved, "pipeline_parallel_size": 2}})
    assert not unstaged.passed and "pipeline_parallel_size 2, the plan means 1" in unstaged.detail
    rejected = cva.judge(base, {"accepted": False, "message": "no"})
    assert not rejected.passed and "vLLM rejected it: no" in rejected.detail
    assert not cva.judge(base, None).passed

    control = next(n for n in cva.NEGATIVE_CONTROLS if n.name == "neg-dtype-bf16")
    negative = cva.prepare_negative(control, base)
    assert not cva.judge(negative, accepted).passed
    assert not cva.judge(negative, {"accepted": False, "message": "something else went wrong"}).passed
    assert cva.judge(negative, {"accepted": False, "message": "argument --dtype: invalid choice: 'bf16'"}).passed


# THE PINNED SET


def test_requirements_are_one_exact_pin_each_and_pin_the_vllm_version() -> None:
    path = cva.REQUIREMENTS_DIR / f"vllm-{VLLM_VERSION}.txt"
    pins = cva.requirement_lines(path.read_text(encoding="utf-8"))
    assert f"vllm=={VLLM_VERSION}" in pins
    names = [pin.split("==", 1)[0].lower().replace("_", "-") for pin in pins]
    assert len(names) == len(set(names))
    for pin in pins:
        name, sep, version = pin.partition("==")
        assert sep and name and version and not any(c in version for c in "<>=,;* "), pin


def test_fingerprint_ignores_comments_but_not_pins_or_python() -> None:
    text = "# header\nvllm==0.33.0\n\ntorch==2.14.0  # pinned by vllm\n"
    same = "vllm==0.33.0\ntorch==2.14.0\n"
    assert cva.requirements_fingerprint(text, python="3.11") == cva.requirements_fingerprint(same, python="3.11")
    assert cva.requirements_fingerprint(text, python="3.11") != cva.requirements_fingerprint(text, python="3.12")
    assert cva.requirements_fingerprint(text, python="3.11") != cva.requirements_fingerprint(
        "vllm==0.33.0\ntorch==2.14.1\n", python="3.11"
    )


def test_a_case_name_that_does_not_exist_is_refused() -> None:
    with pytest.raises(cva.CheckError, match="unknown case"):
        cva.selected(["no-such-case"])
    plans, controls = cva.selected(["neg-dtype-bf16"])
    assert [c.name for c in plans] == ["gqa-qwen2.5-7b-1xl4"] and [n.name for n in controls] == ["neg-dtype-bf16"]
