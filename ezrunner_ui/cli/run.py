"""`ezrunner run`: verify, load and start an archive; wait until it answers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import ProgressRenderer

NAME = "run"
HELP = "verify, load and start an archive; wait until it answers"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive")
    p.add_argument("--port", type=int)
    p.add_argument("--network", choices=["bridge", "host", "none"], default="bridge")
    p.add_argument("--name", help="container name")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for health (default 1800)")


def run(args: argparse.Namespace) -> None:
    from core.run import run_archive

    progress = ProgressRenderer()
    try:
        server = run_archive(
            archive=Path(args.archive),
            port=args.port,
            network=args.network,
            name=args.name,
            timeout_s=args.timeout,
            on_event=progress,
        )
    finally:
        progress.close()
    if args.json:
        print_json(server.__dict__)
        return
    print(f"Running {server.image} as {server.container_name}")
    if server.endpoint:
        print(f"Endpoint: {server.endpoint}  (model {server.served_model_name})")
    else:
        print("No network: the server answers only inside the container (docker exec).")
