"""What the subcommands share: target and plan flags, the token, sizes, JSON and progress printing."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from core import errors, hubs
from core.engines import engine_names
from core.errors import EzRunnerError, InvalidOptionsError, InvalidTargetError
from core.events import Event
from core.hardware import Target, default_data_dir, describe_target, detect_local
from core.hubs.base import ModelInfo
from core.plan import Options, Plan, plan, validate_options
from core.refs import ModelRef, parse_ref

#: how the CLI spells each input an error can be about (``EzRunnerError.field``, keys from core.errors.FIELDS)
FLAGS: dict[str, str] = {
    errors.MODEL: "MODEL",
    errors.REVISION: "--revision",
    errors.QUANT: "--quant",
    errors.CONFIG: "MODEL's config.json",
    errors.WEIGHTS: "MODEL's weight files",
    errors.GPU_PRESET: "--gpu-name",
    errors.GPUS: "--gpus",
    errors.GPU_MEMORY: "--gpu-memory",
    errors.COMPUTE_CAPABILITY: "--compute-capability",
    errors.DRIVER: "--driver",
    errors.GPU_API: "--gpu-api",
    errors.CPU_ONLY: "--cpu-only",
    errors.RAM: "--ram",
    errors.CPU_CORES: "--cpu-cores",
    errors.ENGINE: "--engine",
    errors.TENSOR_PARALLEL_SIZE: "--tensor-parallel-size",
    errors.MAX_MODEL_LEN: "--max-model-len",
    errors.GPU_MEMORY_UTILIZATION: "--gpu-memory-utilization",
    errors.DTYPE: "--dtype",
    errors.PORT: "--port",
    errors.BASE_IMAGE: "--base-image",
    errors.KV_CACHE_TYPE: "--kv-cache-type",
    errors.PARALLEL: "--parallel",
    errors.GGUF_PRE_TOKENIZER: "--gguf-pre-tokenizer",
    errors.API_KEY_ENV: "--api-key-env",
    errors.OUTPUT: "--output",
    errors.ARCHIVE_FORMAT: "--format",
    errors.SPLIT: "--split",
    errors.DOCKERFILE: "--dockerfile",
    errors.HOME: "EZRUNNER_HOME",
    errors.ARCHIVE: "ARCHIVE",
    errors.TIMEOUT: "--timeout",
    errors.NETWORK: "--network",
    errors.QUERY: "QUERY",
    errors.LIMIT: "--limit",
    errors.IMAGE: "--image",
    errors.NAMESPACE: "--namespace",
    errors.NODES: "--nodes",
    errors.DATA_PARALLEL_SIZE: "--data-parallel-size",
    errors.BENCH_TARGET: "TARGET",
    errors.PROMPTS: "--prompts",
    errors.REQUESTS: "--requests",
    errors.CONCURRENCY: "--concurrency",
    errors.MAX_TOKENS: "--max-tokens",
    errors.SIGN_KEY: "--sign",
    errors.ALLOWED_SIGNERS: "--allowed-signers",
}


def error_line(error: EzRunnerError) -> str:
    """The one line the CLI prints for ``error``: the flag (or argument, file) at fault, then the message."""
    flag = FLAGS.get(error.field or "")
    text = " ".join(str(error).split())  # one line, whatever the message holds
    return f"Error ({flag}): {text}" if flag else f"Error: {text}"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


# A split part smaller than this is a typo (a FAT32 file holds 4 GiB; nobody carries 1,000 parts)
MIN_SPLIT_BYTES = 1 << 20


def parse_size(text: str) -> int:
    """'4G' → 4 GiB, '500M' → 500 MiB, '1073741824' → bytes; at least 1 MiB."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use e.g. 4G, 500M or a number of bytes")
    size = int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))
    if size < MIN_SPLIT_BYTES:
        raise argparse.ArgumentTypeError(f"{text!r} is smaller than 1M: use e.g. 4G (FAT32) or 1G")
    return size


def add_target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("target server (default: detect this machine)")
    g.add_argument("--gpu-name", metavar="PRESET", help="GPU preset, e.g. A100-80, H100, L4, RTX4090, T4")
    g.add_argument("--gpus", type=int, metavar="N", help="number of GPUs (default 1 with --gpu-name/--gpu-memory)")
    g.add_argument("--gpu-memory", type=float, metavar="GIB", help="memory per GPU in GiB")
    g.add_argument("--compute-capability", metavar="X.Y", help="e.g. 8.0 (A100), 9.0 (H100)")
    g.add_argument("--driver", metavar="VER", help="NVIDIA driver version on the target, e.g. 550.54.15")
    g.add_argument("--cpu-only", action="store_true", help="the target has no GPU")
    g.add_argument("--ram", type=float, metavar="GIB", help="system RAM of the target in GiB")
    g.add_argument("--cpu-cores", type=int, metavar="N", help="CPU cores of the target")
    g.add_argument("--gpu-api", choices=["cuda", "rocm", "vulkan"],
                   help="how the GPUs are driven where the card offers a choice (e.g. vulkan for an AMD card)")
    g.add_argument("--nodes", type=int, default=1, metavar="N",
                   help="identical servers, each with the GPUs above, the model may span (vLLM over Ray; default 1)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="hf:org/name, ms:org/name, org/name (ModelScope, then Hugging Face) or a folder")
    p.add_argument("--revision", help="branch, tag or commit (default: the hub's default branch)")
    add_target_args(p)
    g = p.add_argument_group("plan options")
    g.add_argument("--engine", choices=["auto", *engine_names()], default="auto")
    g.add_argument("--tensor-parallel-size", "--tp", type=int, dest="tensor_parallel_size")
    g.add_argument("--data-parallel-size", "--dp", type=int, dest="data_parallel_size",
                   help="vLLM replicas of the model on the node (default: as many as its GPUs hold)")
    g.add_argument("--max-model-len", type=int)
    g.add_argument("--gpu-memory-utilization", type=float)
    g.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
    g.add_argument("--port", type=int, default=8000, help="port the server listens on (default 8000)")
    g.add_argument("--base-image", help="use this engine image instead of the pinned one (mirror, pre-loaded)")
    g.add_argument("--api-key-env", metavar="NAME",
                   help="require an API key: the server reads it from the variable NAME when the container starts "
                   "(docker run -e NAME); the key is never part of the image")
    g = p.add_argument_group("llama.cpp / GGUF options")
    g.add_argument("--quant", metavar="NAME", help="GGUF quantization to pack, e.g. Q4_K_M (a GGUF repo's, or the "
                   "target of a conversion); default: the most bits per weight that fits")
    g.add_argument("--kv-cache-type", choices=["f16", "bf16", "q8_0", "q4_0"], help="llama.cpp KV cache type")
    g.add_argument("--parallel", type=int, metavar="N", help="llama.cpp slots: requests decoded at once")
    g.add_argument("--gguf-pre-tokenizer", metavar="NAME",
                   help="for a conversion whose tokenizer llama.cpp's converter does not recognise, e.g. llama-bpe")


def token() -> str | None:
    # Never a flag: a token on the command line lands in shell history and process listings.
    return os.environ.get("HF_TOKEN") or os.environ.get("MODELSCOPE_API_TOKEN") or None


_GPU_FLAGS = ("gpu_name", "gpus", "gpu_memory", "compute_capability", "driver", "gpu_api")
_CPU_FLAGS = ("ram", "cpu_cores")


def target_from_args(args: argparse.Namespace) -> Target:
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
        gpu_api=args.gpu_api,
    )


class _AlsoForParser(argparse.ArgumentParser):
    """The target flags of one ``--also-for`` value; a flag it refuses is an error naming that value."""

    def error(self, message: str) -> NoReturn:
        raise InvalidOptionsError(
            f"--also-for {self.prog!r}: {message}.",
            hint='Give the target flags of `ezrunner plan` in quotes, e.g. --also-for "--gpu-name A100-40 --gpus 2".',
        )


def also_for_target(text: str) -> Target:
    """One ``--also-for "TARGET FLAGS"`` value as a described target (the same flags as ``plan``)."""
    parser = _AlsoForParser(prog=text, add_help=False)
    add_target_args(parser)
    try:
        words = shlex.split(text)
    except ValueError as error:
        parser.error(str(error))
    args = parser.parse_args(words)
    described = [a for a in (*_GPU_FLAGS, *_CPU_FLAGS) if getattr(args, a, None) is not None] or args.cpu_only
    if not described:
        parser.error("it describes no server (no --gpu-name, --gpu-memory, --cpu-only or --ram)")
    if args.nodes != 1:
        parser.error("profiles run on one node, so --nodes does not apply")
    try:
        return target_from_args(args)
    except InvalidTargetError as error:
        raise InvalidOptionsError(f"--also-for {text!r}: {error}") from error


def options(args: argparse.Namespace) -> Options:
    return Options(
        engine=args.engine,
        tensor_parallel_size=args.tensor_parallel_size,
        data_parallel_size=args.data_parallel_size,
        nodes=args.nodes,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        port=args.port,
        base_image=args.base_image,
        quant=args.quant,
        kv_cache_type=args.kv_cache_type,
        parallel=args.parallel,
        gguf_pre_tokenizer=args.gguf_pre_tokenizer,
        api_key_env=args.api_key_env,
    )


def inspect(args: argparse.Namespace, *, ref: ModelRef | None = None) -> ModelInfo:
    quant = getattr(args, "quant", None)
    info = hubs.inspect(ref=ref or parse_ref(args.model), revision=args.revision, token=token(), quant=quant)
    if info.lookup_note:
        print(f"note: {info.lookup_note}", file=sys.stderr)
    return info


def check_pack_paths(args: argparse.Namespace) -> None:
    """Before a pack asks a hub anything: the archive's folder and EZRUNNER_HOME must take files."""
    errors.check_writable_dir(path=Path(args.output).parent, field=errors.OUTPUT, doing="checking the --output folder")
    errors.check_writable_dir(path=default_data_dir(), field=errors.HOME, doing="checking EZ Runner's data folder")


def make_plan(args: argparse.Namespace) -> Plan:
    # Everything that needs no network is checked first: a typo in a flag never waits for a hub.
    ref = parse_ref(args.model)
    target = target_from_args(args)
    chosen = options(args)
    validate_options(options=chosen, target=target)
    return plan(model=inspect(args, ref=ref), target=target, options=chosen)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


class Progress:
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
            amount = f"{gib(event.done)} / {gib(event.total)}" if event.unit == "B" else f"{event.done}/{event.total}"
            print(f"    {event.stage} {pct:5.1f}%  {amount}  {event.file or ''}", file=sys.stderr)
