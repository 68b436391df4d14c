"""`ezrunner bench`: start each packed target in turn, send it the same streamed chat load, compare the figures."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from core.bench import BenchResult
from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import human_bytes
from ezrunner_ui.cli.run import WaitLine
from ezrunner_ui.cli.signals import stop_on_signals

NAME = "bench"
HELP = "start packed archives or loaded images one after the other and compare TTFT, tokens/s and memory"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET",
                   help="a packed archive (.tar, .tar.zst, .tar.part000) or a loaded image reference")  # fmt: skip
    p.add_argument("--requests", type=int, default=16, metavar="N", help="chat completions per target (default 16)")
    p.add_argument("--concurrency", type=int, default=1, metavar="C", help="requests at once (default 1)")
    p.add_argument("--max-tokens", type=int, default=64, metavar="M", help="max_tokens of each request (default 64)")
    p.add_argument("--prompts", type=Path, metavar="FILE",
                   help="a text file, one prompt a line (default: the prompts shipped with EZ Runner)")  # fmt: skip
    p.add_argument("--port", type=int, help="host port of the server (default: the image's port, 8000)")
    p.add_argument(
        "--network",
        choices=["bridge", "host"],
        default="bridge",
        help="bridge: publish the port on 127.0.0.1 (default); host: share this machine's network",
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="seconds to wait for each server to answer (default: scaled to the model's size)")  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from core.bench import bench, load_prompts, validate_load
    from core.history import History
    from core.run import check_timeout

    # what needs no Docker first: a typo in a flag never waits for an engine
    validate_load(requests_count=args.requests, concurrency=args.concurrency, max_tokens=args.max_tokens,
                  port=args.port)  # fmt: skip
    check_timeout(args.timeout)
    prompts = load_prompts(path=args.prompts)
    progress = WaitLine()

    def finished(result: BenchResult) -> None:
        progress.end_line()
        print(f"    {result.target}: {result.requests_ok} ok, {result.requests_failed} failed, "
              f"{result.output_tokens_per_s:.1f} tokens/s", file=sys.stderr)  # fmt: skip

    try:
        with stop_on_signals(what="the bench", json_output=args.json) as cancel:
            results = bench(targets=args.targets, requests_count=args.requests, concurrency=args.concurrency,
                            max_tokens=args.max_tokens, prompts=prompts, port=args.port, network=args.network,
                            timeout_s=args.timeout, history=History(), on_event=progress, on_result=finished,
                            cancel=cancel)  # fmt: skip
    finally:
        progress.end_line()
        progress.close()
    if args.json:
        print_json({"results": [r.to_dict() for r in results]})
        return
    print(table(results))
    for result in results:
        for note in result.notes:
            print(f"note ({result.target}): {note}")
        for error in result.errors:
            print(f"failed request ({result.target}): {error}")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else human_bytes(value)


def table(results: Sequence[BenchResult]) -> str:
    """The results side by side: one column per target, one row per figure."""
    rows: list[tuple[str, list[str]]] = [
        ("target", [r.target for r in results]),
        ("engine", [r.engine or "?" for r in results]),
        ("requests ok / failed", [f"{r.requests_ok} / {r.requests_failed}" for r in results]),
        ("TTFT p50", [_seconds(r.ttft_s_p50) for r in results]),
        ("TTFT p95", [_seconds(r.ttft_s_p95) for r in results]),
        ("output tokens", [str(r.output_tokens) for r in results]),
        ("output tokens/s", [_rate(r.output_tokens_per_s) for r in results]),
        ("decode tokens/s", [_rate(r.decode_tokens_per_s) for r in results]),
        ("engine's token count", [
            "-" if r.metrics_output_tokens is None else str(r.metrics_output_tokens) for r in results
        ]),
        ("peak memory", [_bytes(r.peak_memory_bytes) for r in results]),
        ("peak GPU memory", [_bytes(r.peak_gpu_memory_bytes) for r in results]),
    ]
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(values[i]) for _, values in rows) for i in range(len(results))]
    lines = []
    for label, values in rows:
        cells = "  ".join(value.rjust(width) for value, width in zip(values, widths, strict=True))
        lines.append(f"{label.ljust(label_width)}  {cells}")
    return "\n".join(lines)
