"""`ezrunner dockerfile`: print the Dockerfile the pack will build (with --json: it, the plan and the run spec)."""

from __future__ import annotations

import argparse

from ezrunner_ui.cli.common import add_plan_args, make_plan, print_json

NAME = "dockerfile"
HELP = "print the Dockerfile the pack will build"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)


def run(args: argparse.Namespace) -> None:
    from core.plan import plan_to_dict
    from core.render import render
    from core.runspec import run_spec_to_dict

    plan = make_plan(args)
    spec = render(plan=plan)
    if args.json:
        # The same three things the image carries (/etc/ezrunner/{plan,run-spec}.json), for scripts and reviews.
        print_json(
            {
                "dockerfile": spec.dockerfile,
                "image_tag": spec.image_tag,
                "plan": plan_to_dict(plan),
                "run_spec": run_spec_to_dict(spec.run_spec),
            }
        )
        return
    print(spec.dockerfile, end="")
