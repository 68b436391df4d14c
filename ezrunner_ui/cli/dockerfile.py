"""`ezrunner dockerfile`: print the Dockerfile the pack will build."""

from __future__ import annotations

import argparse

from ezrunner_ui.cli.common import add_plan_args, make_plan

NAME = "dockerfile"
HELP = "print the Dockerfile the pack will build"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)


def run(args: argparse.Namespace) -> None:
    from core.render import render

    print(render(plan=make_plan(args)).dockerfile, end="")
