"""`ezrunner run`: verify, load and start an archive; wait until it answers."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from core import errors
from core.errors import InvalidOptionsError
from core.events import Cancel, Event, EventSink
from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import ProgressRenderer
from ezrunner_ui.cli.signals import stop_on_signals

if TYPE_CHECKING:
    from core.run import RunningServer

NAME = "run"
HELP = "verify, load and start an archive; wait until it answers"
JSON_OUTPUT = True
#: Without a terminal (a log file, CI), one plain line per this many seconds of waiting.
PLAIN_WAIT_LINE_EVERY_S = 15.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    p.add_argument("--port", type=int, help="host port (default: the image's port, 8000)")
    p.add_argument(
        "--network",
        choices=["bridge", "host", "none"],
        default="bridge",
        help="bridge: publish the port on 127.0.0.1 (default); host: share this machine's network; none: no network",
    )
    p.add_argument("--name", help="container name")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="seconds to wait for the server to answer (default: scaled to the model's size)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="smoke test: start, send one short chat request, print the answer's first tokens and the time to "
        "first token, then stop and remove the container",
    )


class WaitLine:
    """The wait for health as one line: rewritten in place on a terminal, a plain line now and then
    otherwise; every other event goes to the CLI's progress renderer."""

    def __init__(self, stream: TextIO | None = None, *, other: EventSink | None = None) -> None:
        self.stream = stream or sys.stderr
        self.other = other or ProgressRenderer()
        self.tty = self.stream.isatty()
        self.open = False  # an in-place line is on screen and needs its newline
        self.last_plain = 0.0

    def __call__(self, event: Event) -> None:
        if event.stage != "run" or event.unit != "s":
            self.end_line()
            self.other(event)
            return
        line = f"    waiting for the server: {event.done} s of {event.total} s ({event.message})"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
            self.open = True
            if event.message == "healthy":
                self.end_line()
            return
        now = time.monotonic()
        if event.message == "healthy" or now - self.last_plain >= PLAIN_WAIT_LINE_EVERY_S:
            self.last_plain = now
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        close = getattr(self.other, "close", None)
        if close is not None:
            close()

    def end_line(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def run(args: argparse.Namespace) -> None:
    from core.run import check_timeout, run_archive

    check_timeout(args.timeout)
    if args.check and args.network == "none":
        raise InvalidOptionsError(
            "--check sends a chat request from this machine, which --network none cannot reach.",
            hint="Use --network host or bridge with --check.",
            field=errors.NETWORK,
        )
    progress = WaitLine()
    try:
        with stop_on_signals(what="the run", json_output=args.json) as cancel:
            server = run_archive(
                archive=Path(args.archive),
                port=args.port,
                network=args.network,
                name=args.name,
                timeout_s=args.timeout,
                on_event=progress,
                cancel=cancel,
                one_off_key=args.check,  # the check's server is removed when it ends
            )
            if args.check:
                _check(server, json_output=args.json, cancel=cancel)
                return
    finally:
        progress.end_line()
        progress.close()
    if args.json:
        print_json(server.as_json())
        return
    print(f"Running {server.image} as {server.container_name}")
    if server.endpoint:
        print(f"Endpoint: {server.endpoint}  (model {server.served_model_name})")
        if server.api_key_env:
            print(f"API key: clients send the header 'Authorization: Bearer <the key in ${server.api_key_env}>'.")
    else:
        print("No network: the server answers only inside the container (docker exec).")


def _check(server: RunningServer, *, json_output: bool, cancel: Cancel) -> None:
    """One short chat request to the started server, its first tokens and TTFT; the container is removed
    whether it answers or not (the error then carries its last log lines)."""
    from core.bench import check_server
    from core.docker import containers as docker_containers

    try:
        answer = check_server(server=server, cancel=cancel)
    finally:
        docker_containers.remove_container(container=server.container_id)
    if json_output:
        print_json({"image": server.image, "served_model_name": server.served_model_name, "answer": answer.text,
                    "ttft_s": answer.ttft_s, "output_tokens": answer.output_tokens, "removed": True})  # fmt: skip
        return
    first = " ".join(answer.text.split())[:200]
    print(f"Answer: {first}")
    print(f"Time to first token: {answer.ttft_s:.3f} s ({answer.output_tokens} tokens)")
    print(f"Check passed: {server.image} answers; {server.container_name} was stopped and removed.")
