"""`ezrunner generate k8s|compose SOURCE`: Kubernetes manifests or a compose file for a packed image.

SOURCE is a packed archive (its run spec is read from the image config inside it, no docker needed) or a
model reference or folder with target flags, which is planned first, as `ezrunner plan` would.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from core.archive.names import is_archive_name, is_part_name
from core.errors import InvalidOptionsError
from core.runspec import RunSpec
from ezrunner_ui.cli.common import Progress, add_plan_args, make_plan

NAME = "generate"
HELP = "Kubernetes manifests or a compose file for a packed archive or a model"
JSON_OUTPUT = False

_SOURCE_HELP = (
    "a packed archive (.tar, .tar.zst or its .part000: its run spec is read from it), or a model "
    "(hf:org/name, ms:org/name, org/name or a folder) to plan with the target flags"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="target", required=True, metavar="{k8s,compose}")
    k8s = sub.add_parser("k8s", help="Deployment + Service (one node) or LeaderWorkerSet + Service (several)")
    _add_common(k8s)
    k8s.add_argument("--namespace", metavar="NS", help="namespace of every object (default: kubectl's)")
    k8s.add_argument(
        "--gpu-resource", metavar="NAME", help="extended resource of the GPUs (default: nvidia.com/gpu, amd.com/gpu)"
    )
    k8s.add_argument(
        "--embed-api-key",
        action="store_true",
        help="render the API key Secret too, with the value of the --api-key-env variable in this environment",
    )
    compose = sub.add_parser("compose", help="a compose.yaml for one host")
    _add_common(compose)
    compose.add_argument("--host-port", type=int, metavar="N", help="host port to publish (default: the image's)")


def _add_common(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)
    for action in p._actions:  # add_plan_args names its positional for models only
        if action.dest == "model":
            action.help = _SOURCE_HELP
            action.metavar = "SOURCE"
    g = p.add_argument_group("output")
    g.add_argument("--image", metavar="REF", help="image reference the cluster or host pulls (default: the pack's tag)")
    g.add_argument("--name", help="object / service name (default: from the model's name)")
    # --api-key-env is a plan option (add_plan_args): a model SOURCE is planned with it; for an archive it names
    # the variable of an image packed without one (e.g. VLLM_API_KEY), and must match the one it was packed with.


def _plan_flags_given(args: argparse.Namespace) -> list[str]:
    """The plan and target flags set on the command line: an archive's plan is fixed, so they must not be."""
    probe = argparse.ArgumentParser(add_help=False)
    add_plan_args(probe)
    defaults = vars(probe.parse_args(["-"]))
    fixed = (key for key in defaults if key not in ("model", "api_key_env"))
    changed = [key for key in fixed if getattr(args, key) != defaults[key]]
    return ["--" + key.replace("_", "-") for key in changed]


def is_archive_source(source: str) -> bool:
    """Whether SOURCE names a packed archive (or one of its parts) rather than a model."""
    name = Path(source).name
    return is_archive_name(name) or is_part_name(name)


def run_spec_for(args: argparse.Namespace) -> RunSpec:
    """The run spec of SOURCE: read from the archive, or planned and rendered for a model."""
    if is_archive_source(args.model):
        given = _plan_flags_given(args)
        if given:
            raise InvalidOptionsError(
                f"{', '.join(given)} cannot change a packed archive: its plan was fixed when it was packed.",
                hint="Leave those flags out, or pass the model reference instead of the archive to plan again.",
            )
        from core.archive.inspect import archive_run_spec

        return archive_run_spec(archive=Path(args.model), on_event=Progress())
    from core.render import render

    planned = make_plan(args)
    if not planned.fits:
        # The manifests of a plan that does not fit would start a server that fails: say what would fit instead.
        raise InvalidOptionsError(
            "The plan does not fit the target: " + "; ".join(w.text for w in planned.warnings),
            hint="Apply one of the fixes above (for a model larger than one server: --nodes N), then generate again.",
        )
    return render(plan=planned).run_spec


def run(args: argparse.Namespace) -> None:
    from core.manifests import compose_file, kubernetes_manifests

    spec = run_spec_for(args)
    image = args.image or spec.image
    if args.target == "compose":
        sys.stdout.write(
            compose_file(spec=spec, image=image, name=args.name, host_port=args.host_port, api_key_env=args.api_key_env)
        )
        return
    api_key = None
    if args.embed_api_key:
        from core.manifests import key_variable

        variable = key_variable(spec, args.api_key_env)
        api_key = os.environ.get(variable or "")
        if not variable or not api_key:
            raise InvalidOptionsError(
                "--embed-api-key needs --api-key-env VAR and the key in that variable's value here.",
                hint="Run e.g. `VLLM_API_KEY=… ezrunner generate k8s … --api-key-env VLLM_API_KEY --embed-api-key`.",
            )
    sys.stdout.write(
        kubernetes_manifests(
            spec=spec,
            image=image,
            namespace=args.namespace,
            name=args.name,
            api_key_env=args.api_key_env,
            api_key=api_key,
            gpu_resource=args.gpu_resource,
        )
    )
