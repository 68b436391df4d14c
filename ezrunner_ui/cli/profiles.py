"""`ezrunner profiles ARCHIVE`: the archive's profiles against this machine's GPUs (or a described server),
sorted like NVIDIA NIM's list-model-profiles: runnable, runnable with a shorter context, incompatible."""

from __future__ import annotations

import argparse
from pathlib import Path

from core import errors
from core.errors import ArtifactInvalidError
from core.profiles import ProfileFit, check_profiles, choose
from ezrunner_ui.cli.common import Progress, add_target_args, print_json, target_from_args

NAME = "profiles"
HELP = "list an archive's profiles: which run on this machine (or a described server), and why not"
JSON_OUTPUT = True

_TITLES = (
    ("runnable", "Runnable"),
    ("shorter", "Runnable with a shorter context"),
    ("incompatible", "Incompatible"),
    ("unchecked", "Not checked"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", metavar="ARCHIVE", help="the packed archive (.tar, .tar.zst, or its first part)")
    add_target_args(p)


def _line(fit: ProfileFit, *, default: str) -> list[str]:
    profile = fit.profile
    mark = " (default)" if fit.name == default else ""
    shorter = f"--max-model-len {fit.max_model_len} fits (planned {profile.max_model_len}): " if (
        fit.group == "shorter") else ""  # fmt: skip
    return [f"  {fit.name:<24} {profile.description}{mark}", f"    {shorter}{fit.reason}"]


def run(args: argparse.Namespace) -> None:
    from core.archive.inspect import archive_run_spec

    archive = Path(args.archive)
    if not archive.exists():
        raise ArtifactInvalidError(
            f"{archive} does not exist.", hint="Give the path of a packed archive.", field=errors.ARCHIVE
        )
    target = target_from_args(args)
    spec = archive_run_spec(archive=archive, on_event=Progress())
    fits = check_profiles(spec=spec, target=target)
    chosen = choose(spec=spec, target=target)
    if args.json:
        print_json(
            {
                "target": target.label,
                "default_profile": spec.default_profile,
                "chosen": None if chosen is None else {"profile": chosen[0], "max_model_len": chosen[1]},
                "profiles": [
                    {"name": f.name, "group": f.group, "max_model_len": f.max_model_len, "reason": f.reason,
                     "description": f.profile.description, "gpus_per_node": f.profile.gpus_per_node,
                     "planned_max_model_len": f.profile.max_model_len}
                    for f in fits
                ],
            }
        )  # fmt: skip
        return
    print(f"Profiles of {archive.name} on {target.label}:")
    for group, title in _TITLES:
        members = [f for f in fits if f.group == group]
        if not members and group == "unchecked":
            continue
        print(f"{title}:" if members else f"{title}: none")
        for fit in members:
            print("\n".join(_line(fit, default=spec.default_profile)))
    if chosen is None:
        print("No profile fits: the image refuses to start there (load.sh --profile NAME forces one).")
    else:
        name, context = chosen
        planned = spec.profile(name).max_model_len
        extra = f" with --max-model-len {context}" if context != planned else ""
        print(f"load.sh and the image start {name}{extra}.")
