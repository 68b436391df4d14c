"""`ezrunner ui`: start the wizard in your browser (bound to 127.0.0.1)."""

from __future__ import annotations

import argparse

NAME = "ui"
HELP = "start the wizard in your browser (bound to 127.0.0.1)"
JSON_OUTPUT = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--no-browser", action="store_true")


def run(args: argparse.Namespace) -> None:
    from ezrunner_ui.server import serve

    serve(host=args.host, port=args.port, open_browser=not args.no_browser)
