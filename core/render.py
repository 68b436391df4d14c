"""Render the Dockerfile, ``load.sh`` and the ``docker run`` command for a plan, from ``templates/``.

Only validated values reach a template: image references and names are checked against strict
patterns, every value that lands in a shell or Dockerfile string is quoted for that language, and
no token or other secret is ever an input here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2

from core import errors, refs
from core.archive.compression import Compression
from core.archive.names import load_script_candidates
from core.engines import engine_for
from core.engines.shared import start_period_s
from core.errors import EzRunnerError, InvalidOptionsError, InvalidReferenceError
from core.layers import WeightLayer, plan_layers
from core.plan import plan_to_dict
from core.planning import Plan
from core.profiles import profiled_run_spec, selection_script
from core.runspec import (
    CONTEXT_ENV,
    PROFILE_ENV,
    RUN_SPEC_LABEL,
    SELECT_SCRIPT_PATH,
    Network,
    Role,
    RunSpec,
    docker_run_argv,
    entrypoint,
    node_run_argv,
    run_command,
    run_spec_json,
)


def templates_root() -> Traversable:
    """Where the templates are: ``core/templates`` in an installed wheel (pyproject.toml maps the top-level
    ``templates/`` there), else the checkout's ``templates/`` (a source tree or an editable install)."""
    packaged = resources.files("core") / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


TEMPLATES_DIR = templates_root()
MODELS_ROOT = "/models"
# Build-context folder whose files the Dockerfile copies to /etc/ezrunner (core.runspec.RUN_SPEC_PATH)
EZRUNNER_CONTEXT_DIR = "ezrunner"
# The selection script's file name there (core.runspec.SELECT_SCRIPT_PATH in the image).
SELECT_SCRIPT_NAME = SELECT_SCRIPT_PATH.rsplit("/", 1)[-1]
#: The build context's folder of the SBOM (``core.sbom``), copied into /etc/ezrunner after the model layers.
SBOM_CONTEXT_DIR = "sbom"
SBOM_FILE_NAME = "sbom.cdx.json"

_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
#: Modes and time of the files ``write_context_files`` puts into a build context and of their folders.
#: The classic builder's cache key for COPY hashes each source file's name, mode, owner, size and content
#: but not its mtime (the tarsum v1 header selection, moby builder/remotecontext/filehash.go and
#: pkg/tarsum/versioning.go), so fixed modes keep the cache hit whatever the packing shell's umask: the
#: runtime image, and with it the fast path's archive, stays the same from any EZRUNNER_HOME. COPY keeps
#: the files' mtimes in the layer, so a fixed one keeps the pack time out of it when the step does run
#: (the folders COPY creates still get the build's time; see core.image_archive).
CONTEXT_FILE_MODE = 0o644
CONTEXT_DIR_MODE = 0o755
CONTEXT_MTIME = 0
#: The longest default wait for a server to answer (``ezrunner run``, load.sh); --timeout goes beyond it.
MAX_DEFAULT_TIMEOUT_S = 7200
#: The shortest default wait: even a tiny model's engine imports its libraries first.
MIN_DEFAULT_TIMEOUT_S = 300

@dataclass(frozen=True)
class BuildSpec:
    """Everything a build needs besides the model files themselves."""

    dockerfile: str  # the full Dockerfile: engine layers, then one COPY per model layer
    runtime_dockerfile: str  # the same without the model layers (the fast path appends those itself)
    image_tag: str
    model_root: str  # /models/<name>
    served_model_name: str
    layers: tuple[WeightLayer, ...]
    labels: tuple[tuple[str, str], ...]
    run_spec: RunSpec
    # Files the Dockerfile COPYs from the build context besides the model (the plan and run spec as JSON, and
    # what the engine adds: the transformers image's proxy), by their path under the context.
    context_files: tuple[tuple[str, bytes], ...] = ()

    @property
    def port(self) -> int:
        return self.run_spec.port

    @property
    def health_path(self) -> str:
        return self.run_spec.health_path

    @property
    def gpus(self) -> bool:
        """Whether ``docker run`` must hand the container an accelerator."""
        return self.run_spec.needs_gpus

    def run_command(self, *, port: int | None = None, name: str | None = None) -> str:
        """The `docker run` line the target server uses."""
        return run_command(self.run_spec, name=name or container_name(self.image_tag), host_port=port, restart=None)


def ezrunner_version() -> str:
    try:
        return metadata.version("ezrunner")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+source"


def validate_image_ref(ref: str) -> str:
    """The base image as written into ``FROM``: a pinned Docker reference (``core.refs.validate_image_ref``)."""
    return refs.validate_image_ref(ref, field=errors.BASE_IMAGE)


def image_tag_for(plan: Plan) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", plan.model.name.lower()).strip("._-") or "model"
    return f"ezrunner/{name}:{plan.model.commit[:12]}-{plan.engine}"


def container_name(image_tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", image_tag.split("/", 1)[-1].split(":", 1)[0]) or "ezrunner"


def _dockerfile_string(value: str) -> str:
    # A double-quoted Dockerfile word: JSON escaping covers quotes and backslashes; `$` must not expand.
    return json.dumps(value, ensure_ascii=False).replace("$", "\\$")


def _labels(plan: Plan, *, served_model_name: str, gpus: bool) -> tuple[tuple[str, str], ...]:
    model = plan.model
    summary = {
        "engine": plan.engine,
        "tensor_parallel_size": plan.tensor_parallel_size,
        "max_model_len": plan.max_model_len,
        "dtype": plan.dtype,
        "gpu_memory_utilization": plan.gpu_memory_utilization,
        "target": plan.target.label,
        "weights_bytes": plan.weights_bytes,
        "kv_cache_bytes_per_token": plan.kv_cache_bytes_per_token,
    }
    source_url = {
        "hf": f"https://huggingface.co/{model.repo_id}",
        "ms": f"https://modelscope.cn/models/{model.repo_id}",
    }.get(model.ref.source, "")
    raw = [
        ("org.opencontainers.image.title", f"{model.repo_id} ({plan.engine})"),
        ("org.opencontainers.image.description", f"{model.repo_id} served by {plan.engine}, built by EZ Runner"),
        ("org.opencontainers.image.revision", model.commit),
        ("org.opencontainers.image.source", source_url),
        ("io.ezrunner.model", model.repo_id),
        ("io.ezrunner.model.source", model.ref.source),
        ("io.ezrunner.model.commit", model.commit),
        ("io.ezrunner.engine", plan.engine),
        ("io.ezrunner.served-model-name", served_model_name),
        ("io.ezrunner.gpus", "all" if gpus else "none"),
        ("io.ezrunner.plan", json.dumps(summary, sort_keys=True, separators=(",", ":"))),
    ]
    return tuple((key, value) for key, value in raw if value)


def _load_template(name: str) -> tuple[str, str, Callable[[], bool]]:
    # Read through importlib.resources' Traversable, so that the templates load wherever the package lies.
    source = TEMPLATES_DIR / name
    try:
        text = source.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError) as error:
        raise EzRunnerError(
            f"EZ Runner's template {name} is missing from {TEMPLATES_DIR}: the installation is incomplete.",
            hint="Reinstall EZ Runner (pip install --force-reinstall ezrunner, or pip install . from the checkout).",
        ) from error
    return text, str(source), lambda: True


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["shquote"] = shlex.quote
    return env


def render(*, plan: Plan) -> BuildSpec:
    """Render the build for ``plan``. Pure: same plan, same text."""
    engine = engine_for(plan.engine)
    model = plan.model
    served_model_name = model.repo_id if model.ref.source != "local" else model.name
    if not _SERVED_NAME.fullmatch(served_model_name):
        raise InvalidReferenceError(
            f"The model name {served_model_name!r} cannot be used as a served model name.",
            hint="Rename the folder to letters, digits, '.', '_' or '-' and try again.",
        )
    base_image = validate_image_ref(plan.base_image)
    model_root = f"{MODELS_ROOT}/{re.sub(r'[^A-Za-z0-9._-]+', '-', model.name)}"
    layers = plan_layers(files=model.files)
    image_tag = image_tag_for(plan)
    spec = profiled_run_spec(
        spec=engine.run_spec(plan=plan, image=image_tag, served_model_name=served_model_name, model_dir=model_root),
        plan=plan,
        spec_of=lambda other: engine.run_spec(
            plan=other, image=image_tag, served_model_name=served_model_name, model_dir=model_root
        ),
    )
    spec_json = run_spec_json(spec)
    plan_json = json.dumps(plan_to_dict(plan), sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    labels = (*_labels(plan, served_model_name=served_model_name, gpus=spec.needs_gpus), (RUN_SPEC_LABEL, spec_json))
    values = {
        "ezrunner_version": ezrunner_version(),
        "model_id": model.repo_id,
        "commit": model.commit,
        "engine": plan.engine,
        "image_tag": image_tag,
        "base_image": base_image,
        "model_root": model_root,
        "layers": [layer.name for layer in layers],
        "port": spec.port,
        "start_period_s": spec.start_period_s,
        "healthcheck_json": json.dumps(list(spec.healthcheck)),
        "entrypoint_json": json.dumps(entrypoint(spec)),
        "labels": [(key, _dockerfile_string(value)) for key, value in labels],
        "ezrunner_dir": EZRUNNER_CONTEXT_DIR,
        "sbom_dir": SBOM_CONTEXT_DIR,
        **engine.template_values(plan=plan, served_model_name=served_model_name, model_dir=model_root),
        "served_model_name": served_model_name,
    }
    template = _environment().get_template(engine.template)
    return BuildSpec(
        dockerfile=template.render(include_model=True, **values),
        runtime_dockerfile=template.render(include_model=False, **values),
        image_tag=image_tag,
        model_root=model_root,
        served_model_name=served_model_name,
        layers=layers,
        labels=labels,
        run_spec=spec,
        context_files=(
            (f"{EZRUNNER_CONTEXT_DIR}/plan.json", plan_json.encode()),
            (f"{EZRUNNER_CONTEXT_DIR}/run-spec.json", (spec_json + "\n").encode()),
            *engine.context_files(plan=plan),
            (f"{EZRUNNER_CONTEXT_DIR}/{SELECT_SCRIPT_NAME}", selection_script(spec).encode()),
        ),
    )


def write_context_files(*, spec: BuildSpec, context_dir: Path) -> None:
    """Write ``spec.context_files`` under ``context_dir`` with fixed modes and times (files and folders)."""
    times = (CONTEXT_MTIME, CONTEXT_MTIME)
    folders: set[Path] = set()
    for relative, content in spec.context_files:
        path = context_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(CONTEXT_FILE_MODE)
        os.utime(path, times)
        folders.update(p for p in path.parents if p.is_relative_to(context_dir) and p != context_dir)
    for folder in folders:  # after the files: writing them changed their folders' mtimes
        folder.chmod(CONTEXT_DIR_MODE)
        os.utime(folder, times)


def write_sbom_file(*, sbom: bytes, context_dir: Path) -> Path:
    """Write the SBOM as ``<context_dir>/sbom/sbom.cdx.json`` with the fixed mode and time of the other
    context files (the image layer it becomes must not depend on when or where it was written)."""
    folder = context_dir / SBOM_CONTEXT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SBOM_FILE_NAME
    path.write_bytes(sbom)
    path.chmod(CONTEXT_FILE_MODE)
    folder.chmod(CONTEXT_DIR_MODE)
    for written in (path, folder):
        os.utime(written, (CONTEXT_MTIME, CONTEXT_MTIME))
    return path


def validate_file_name(name: str) -> str:
    """An archive (or part) name load.sh can use unquoted-safe: letters, digits, '.', '_' and '-'."""
    if not _FILE_NAME.fullmatch(name):
        raise InvalidOptionsError(
            f"The output file name {name!r} has characters load.sh cannot use safely.",
            hint="Use letters, digits, '.', '_' and '-' only, e.g. -o qwen2.5-7b.tar.",
        )
    return name


def load_script_is_for(script: Path, *, archive_name: str) -> bool:
    """Whether the load.sh at ``script`` was written for ``archive_name`` (its exact ARCHIVE= line)."""
    try:
        lines = script.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    return f"ARCHIVE={shlex.quote(archive_name)}" in lines


def find_load_script(archive: Path) -> Path | None:
    """The load.sh written for ``archive``, of the two names ``core.archive.names`` allows, or None."""
    for candidate in load_script_candidates(archive):
        if candidate.is_file() and load_script_is_for(candidate, archive_name=archive.name):
            return candidate
    return None


def default_timeout_s(*, spec: RunSpec | None, archive_bytes: int = 0) -> int:
    """How long ``ezrunner run`` and load.sh wait for the server unless told: twice the image's
    health-check start period (which its engine scaled to the model's size); for images packed before
    run specs, the same rule on the archive's size."""
    start_period = spec.start_period_s if spec is not None else start_period_s(archive_bytes)
    return min(MAX_DEFAULT_TIMEOUT_S, max(MIN_DEFAULT_TIMEOUT_S, 2 * start_period))


# Stand-ins that load.sh's shell variables replace in the rendered ``docker run`` line.
_NAME_SLOT = "EZRUNNER-NAME-SLOT"
_PORT_SLOT = 987654321
_PROFILE_SLOT = "EZRUNNER-PROFILE-SLOT"
_CONTEXT_SLOT = "EZRUNNER-CONTEXT-SLOT"
_ADDRESS_SLOT = "EZRUNNER-ADDRESS-SLOT"
_HEAD_SLOT = "EZRUNNER-HEAD-SLOT"
#: slot in a rendered argv -> the load.sh variable it becomes
_SLOTS = {
    _NAME_SLOT: "$NAME", str(_PORT_SLOT): "$PORT", _PROFILE_SLOT: "$PROFILE_NAME", _CONTEXT_SLOT: "$PROFILE_CONTEXT",
    _ADDRESS_SLOT: "$ADDRESS", _HEAD_SLOT: "$HEAD_ADDRESS",
}  # fmt: skip
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_.,:=/+@%-]*$")


def _shell_words(argv: Sequence[str]) -> str:
    """``argv`` as one shell line in which the slots become load.sh's variables (in double quotes)."""
    words = []
    for arg in argv:
        slots = [slot for slot in _SLOTS if slot in arg]
        if slots:
            if not _SHELL_SAFE.fullmatch(arg):
                raise ValueError(f"cannot put {arg!r} in a double-quoted shell word")
            for slot in slots:
                arg = arg.replace(slot, _SLOTS[slot])
            words.append('"' + arg + '"')
        else:
            words.append(shlex.quote(arg))
    return " ".join(words)


def _shell_run_line(spec: RunSpec, *, network: Network) -> str:
    """``core.runspec.docker_run_argv`` as one shell line whose container name and host port are load.sh's
    ``$NAME`` and ``$PORT``: the flags come from the run spec only, never from the template."""
    # The profile load.sh chose travels to the ENTRYPOINT, which then starts it without choosing again.
    env = () if spec.default.multi_node else ((PROFILE_ENV, _PROFILE_SLOT), (CONTEXT_ENV, _CONTEXT_SLOT))
    return _shell_words(docker_run_argv(spec, name=_NAME_SLOT, host_port=_PORT_SLOT, network=network, env=env))


def _shell_node_line(spec: RunSpec, *, role: Role) -> str:
    """``core.runspec.node_run_argv`` of one node of a multi-node profile, with load.sh's ``$NAME``, ``$PORT``,
    ``$ADDRESS`` (this node) and ``$HEAD_ADDRESS`` (the head, for a worker)."""
    return _shell_words(
        node_run_argv(spec, role=role, name=_NAME_SLOT, node_address=_ADDRESS_SLOT,
                      head_address=_HEAD_SLOT if role == "worker" else None, host_port=_PORT_SLOT)
    )  # fmt: skip


def render_load_script(
    *, plan: Plan, spec: BuildSpec, archive_name: str, parts: Sequence[str] = (), compression: Compression = "none"
) -> str:
    """``load.sh``: one argument parser (``--help``), checks that take seconds (network, port, files),
    verify, reassemble parts, ``docker load``, ``docker run`` (from the run spec), and a bounded wait
    until the published port answers before it says Ready."""
    for name in (archive_name, *parts):
        validate_file_name(name)
    return (
        _environment()
        .get_template("load.sh.j2")
        .render(
            ezrunner_version=ezrunner_version(),
            model_id=plan.model.repo_id,
            engine=plan.engine,
            port=spec.port,
            container_name=container_name(spec.image_tag),
            image_ref=spec.image_tag,
            archive_name=archive_name,
            parts=list(parts),
            compression=compression,
            health_path=spec.run_spec.health_path,
            timeout_s=default_timeout_s(spec=spec.run_spec),
            **_run_lines(spec.run_spec),
            served_model_name=spec.served_model_name,
            api_key_env=spec.run_spec.api_key.env if spec.run_spec.api_key else "",
            select_script=shlex.quote(selection_script(spec.run_spec)),
            profiles=not spec.run_spec.default.multi_node,
        )
    )


def _run_lines(spec: RunSpec) -> dict[str, Any]:
    """The ``docker run`` lines load.sh may use: one per network for a one-node profile; for a multi-node one,
    the head's and the workers' (host networking: Ray and NCCL reach the other nodes by the host's address)."""
    profile = spec.profile(spec.default_profile)
    if profile.multi_node:
        return {
            "nodes": profile.nodes, "ray_port": profile.ray_port,
            "run_head": _shell_node_line(spec, role="head"), "run_worker": _shell_node_line(spec, role="worker"),
        }  # fmt: skip
    return {
        "nodes": 1,
        "run_host": _shell_run_line(spec, network="host"),
        "run_bridge": _shell_run_line(spec, network="bridge"),
    }
