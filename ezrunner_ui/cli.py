"""The `ezrunner` command: parse arguments, call core, print (JSON with --json). No logic of its own."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import hubs
from core.engines import engine_names
from core.errors import EzRunnerError, InvalidOptionsError
from core.events import Event
from core.hardware import Target, describe_target, detect_local, target_summary
from core.hubs.base import ModelInfo, SearchFilters
from core.plan import Options, Plan, plan, plan_to_dict
from core.refs import parse_ref

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'4G' → 4 GiB, '500M' → 500 MiB, '1073741824' → bytes."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 4G, 500M or a number of bytes")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))


def _add_target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target server (default: detect this machine)")
    g.add_argument("--gpu-name", metavar="PRESET", help="GPU preset, e.g. A100-80, H100, L4, RTX4090, T4")
    g.add_argument("--gpus", type=int, metavar="N", help="number of GPUs (default 1 with --gpu-name/--gpu-memory)")
    g.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory per GPU in GiB")
    g.add_argument("--compute-capability", metavar="X.Y", help="e.g. 8.0 (A100), 9.0 (H100)")
    g.add_argument("--driver", metavar="VER", help="NVIDIA driver version on the target, e.g. 550.54.15")
    g.add_argument("--cpu-only", action="store_true", help="the target has no GPU")
    g.add_argument("--ram", type=float, metavar="GIB", help="system RAM of the target in GiB")
    g.add_argument("--cpu-cores", type=int, metavar="N", help="CPU cores of the target")


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hf:org/name, ms:org/name, org/name (ModelScope, then Hugging Face) or a folder")
    p.add_argument("--revision", help="branch, tag or commit (default: the hub's default branch)")
    _add_target_args(p)
    g = p.add_argument_group("plan options")
    g.add_argument("--engine", choices=["auto", *engine_names()], default="auto")
    g.add_argument("--tensor-parallel-size", "--tp", type=int, dest="tensor_parallel_size")
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--gpu-memory-utilization", type=float)
    g.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--port", type=int, default=8000, help="port the server listens on (default 8000)")
    g.add_argument("--base-image", help="use this engine image instead of the pinned one (mirror, pre-loaded)")


def _token() -> str | None:
    # Never a flag: a token on the command line lands in shell history and process listings.
    return os.environ.get("HF_TOKEN") or os.environ.get("MODELSCOPE_API_TOKEN") or None


_GPU_FLAGS = ("gpu_name", "gpus", "gpu_memory", "compute_capability", "driver")
_CPU_FLAGS = ("ram", "cpu_cores")


def _target(args: argparse.Namespace) -> Target:
    gpu_described = any(getattr(args, a, None) is not None for a in _GPU_FLAGS)
    if not (gpu_described or args.cpu_only or any(getattr(args, a, None) is not None for a in _CPU_FLAGS)):
        return detect_local()
    return describe_target(
        gpu_preset=args.gpu_name,
        gpu_count=args.gpus if args.gpus is not None else 1,
        gpu_memory_gib=args.gpu_memory,
        compute_capability=args.compute_capability,
        driver_version=args.driver,
        cpu_only=args.cpu_only or not gpu_described,  # only --ram/--cpu-cores given: a CPU server
        ram_gib=args.ram,
        cpu_cores=args.cpu_cores,
    )


def _options(args: argparse.Namespace) -> Options:
    if not 1 <= args.port <= 65535:
        raise InvalidOptionsError(f"--port {args.port} is out of range.", hint="Use a port from 1 to 65535.")
    return Options(
        engine=args.engine,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        port=args.port,
        base_image=args.base_image,
    )


def _inspect(args: argparse.Namespace) -> ModelInfo:
    return hubs.inspect(ref=parse_ref(args.model), revision=args.revision, token=_token())


def _plan(args: argparse.Namespace) -> Plan:
    return plan(model=_inspect(args), target=_target(args), options=_options(args))


def _gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


class _Progress:
    """Stage lines and a throttled percentage on stderr; build log lines as they come."""

    def __init__(self) -> None:
        self.stage = ""
        self.message = ""
        self.last = 0.0

    def __call__(self, event: Event) -> None:
        if event.log:
            print(f"    {event.log.rstrip()}", file=sys.stderr)
        if event.stage != self.stage:
            self.stage, self.message = event.stage, event.message
            print(f"==> {event.stage}: {event.message}", file=sys.stderr)
            self.last = 0.0
        elif event.message and event.message != self.message and not event.total and not event.log:
            self.message = event.message  # a status line within the stage (e.g. which export path)
            print(f"    {event.message}", file=sys.stderr)
        now = time.monotonic()
        if event.total and now - self.last > 1.0:
            self.last = now
            pct = 100 * event.done / event.total
            amount = f"{_gib(event.done)} / {_gib(event.total)}" if event.unit == "B" else f"{event.done}/{event.total}"
            print(f"    {event.stage} {pct:5.1f}%  {amount}  {event.file or ''}", file=sys.stderr)


def cmd_search(args: argparse.Namespace) -> None:
    filters = SearchFilters(
        task=args.task,
        min_params=args.min_params,
        max_params=args.max_params,
        safetensors_only=args.safetensors_only,
    )
    results = hubs.search(query=args.query, source=args.source, limit=args.limit, filters=filters)
    if args.json:
        _print_json([r.__dict__ for r in results])
        return
    if not results:
        print(f"No models match {args.query!r} on {args.source}. Try a shorter query or --source both.")
        return
    for r in results:
        params = f"{r.parameters / 1e9:.1f}B" if r.parameters else "?"
        gated = " gated" if r.gated else ""
        print(f"{r.source}:{r.id:<50} {params:>7}  ↓{r.downloads or 0:<10} ♥{r.likes or 0}{gated}")


def cmd_inspect(args: argparse.Namespace) -> None:
    info = _inspect(args)
    if args.json:
        _print_json(hubs.model_to_dict(info))
        return
    print(f"{info.repo_id}  ({info.answered_by}, revision {info.revision} = {info.commit})")
    print(f"  architecture: {info.architecture}   context: {info.context_length}   license: {info.license}")
    dtypes = ", ".join(f"{k}: {v / 1e9:.2f}B" for k, v in info.weights.parameters_by_dtype.items())
    print(f"  parameters: {dtypes or '?'}")
    print(f"  files to pack ({len(info.files)}, {_gib(info.total_bytes)}):")
    for f in info.files:
        print(f"    {f.path:<60} {f.size:>14,d}  {(f.sha256 or '')[:12]}")


def cmd_hardware(args: argparse.Namespace) -> None:
    target = _target(args)
    if args.json:
        _print_json(target_summary(target))
        return
    print(target.label)
    for gpu in target.gpus:
        print(f"  GPU {gpu.index if gpu.index is not None else '-'}: {gpu.name}, {_gib(gpu.memory_bytes)}, "
              f"compute capability {gpu.compute_capability_str}")
    for note in getattr(target, "notes", ()):
        print(f"  note: {note}")


def cmd_plan(args: argparse.Namespace) -> None:
    result = _plan(args)
    if args.json:
        _print_json(plan_to_dict(result))
        return
    print(f"{result.model.repo_id} on {result.target.label}")
    print(f"  engine {result.engine} ({result.base_image}), TP {result.tensor_parallel_size}, "
          f"max_model_len {result.max_model_len}, dtype {result.dtype}, fits: {'yes' if result.fits else 'NO'}")
    for g in result.per_gpu:
        where = f"GPU {g.index}" if g.index is not None else "RAM"
        print(f"  {where}: weights {_gib(g.weights_bytes)} + KV {_gib(g.kv_cache_bytes)} + overhead "
              f"{_gib(g.overhead_bytes)} of {_gib(g.capacity_bytes)} usable")
    for r in result.reasons:
        print(f"  why: {r.text}")
    for w in result.warnings:
        print(f"  warning: {w.text}")


def cmd_dockerfile(args: argparse.Namespace) -> None:
    from core.render import render

    print(render(plan=_plan(args)).dockerfile, end="")


def cmd_pack(args: argparse.Namespace) -> None:
    from core.history import History
    from core.pack import pack

    result = _plan(args)
    if not result.fits and not args.force:
        raise InvalidOptionsError(
            "The plan does not fit the target: " + "; ".join(w.text for w in result.warnings),
            hint="Apply one of the fixes above, or pass --force to pack anyway.",
        )
    dockerfile = None
    if args.dockerfile:
        try:
            dockerfile = Path(args.dockerfile).read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidOptionsError(
                f"Cannot read --dockerfile {args.dockerfile}: {exc.strerror}.",
                hint="Write it first with `ezrunner dockerfile MODEL > Dockerfile`, edit it, then pass its path.",
            ) from exc
    artifact = pack(
        plan=result,
        output=Path(args.output),
        compression=args.compress,
        split_bytes=args.split,
        token=_token(),
        export_path=args.export_path,
        dockerfile=dockerfile,
        history=History(),
        on_event=_Progress(),
    )
    if args.json:
        _print_json(artifact.__dict__)
        return
    print(f"Wrote {artifact.archive} ({_gib(artifact.size)}) in {artifact.seconds:.0f} s, sha256 {artifact.sha256}")
    print(f"  {artifact.export_reason}")
    for part in artifact.parts if len(artifact.parts) > 1 else ():
        print(f"  part {part.name}")
    print(f"On the offline server, beside the archive: bash {artifact.load_script.name}")
    print(f"  or: docker load -i {artifact.archive.name} && {artifact.run_command}")


def cmd_run(args: argparse.Namespace) -> None:
    from core.run import run_archive

    server = run_archive(
        archive=Path(args.archive),
        port=args.port,
        network=args.network,
        name=args.name,
        timeout_s=args.timeout,
        on_event=_Progress(),
    )
    if args.json:
        _print_json(server.__dict__)
        return
    print(f"Running {server.image} as {server.container_name}")
    if server.endpoint:
        print(f"Endpoint: {server.endpoint}  (model {server.served_model_name})")
    else:
        print("No network: the server answers only inside the container (docker exec).")


def cmd_ui(args: argparse.Namespace) -> None:
    from ezrunner_ui.server import serve

    serve(host=args.host, port=args.port, open_browser=not args.no_browser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ezrunner", description="Pack an open LLM into one docker-loadable tar for an air-gapped GPU server."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search Hugging Face and/or ModelScope")
    p.add_argument("query")
    p.add_argument("--source", choices=["hf", "ms", "both"], default="both")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--task", help="pipeline tag, e.g. text-generation")
    p.add_argument("--min-params", type=int)
    p.add_argument("--max-params", type=int)
    p.add_argument("--safetensors-only", action="store_true")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("inspect", help="what would be packed: files, sizes, architecture, parameters")
    p.add_argument("model")
    p.add_argument("--revision")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("hardware", help="detect this machine's GPUs, or check a described target")
    _add_target_args(p)
    p.set_defaults(func=cmd_hardware)

    p = sub.add_parser("plan", help="engine, tensor parallelism, context length and memory per GPU")
    _add_plan_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("dockerfile", help="print the Dockerfile the pack will build")
    _add_plan_args(p)
    p.set_defaults(func=cmd_dockerfile)

    p = sub.add_parser("pack", help="download, build and export one docker-loadable tar")
    _add_plan_args(p)
    p.add_argument("-o", "--output", required=True, help="archive path, e.g. qwen2.5-7b.tar")
    p.add_argument("--compress", choices=["none", "zstd"], default="none")
    p.add_argument("--split", type=parse_size, metavar="SIZE", help="split into parts of SIZE (e.g. 4G for FAT32)")
    p.add_argument("--force", action="store_true", help="pack even when the plan says it does not fit")
    p.add_argument(
        "--export-path",
        choices=["auto", "fast", "docker-build"],
        default="auto",
        help="fast: stream the weights into the archive (default); docker-build: docker build + docker save",
    )
    p.add_argument("--dockerfile", metavar="FILE", help="build this hand-edited Dockerfile (docker-build path)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("run", help="verify, load and start an archive; wait until it answers")
    p.add_argument("archive")
    p.add_argument("--port", type=int)
    p.add_argument("--network", choices=["bridge", "host", "none"], default="bridge")
    p.add_argument("--name", help="container name")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for health (default 1800)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ui", help="start the wizard in your browser (bound to 127.0.0.1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--no-browser", action="store_true")
    p.set_defaults(func=cmd_ui)

    for name, sp in sub.choices.items():
        if name != "ui":
            sp.add_argument("--json", action="store_true", help="print one JSON value")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EzRunnerError as exc:
        if getattr(args, "json", False):
            _print_json({"error": exc.code, "message": str(exc)})
        else:
            print(f"Error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
