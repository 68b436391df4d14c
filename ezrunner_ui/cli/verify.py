"""`ezrunner verify`: check an archive's checksum and, with --allowed-signers, who signed it."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.archive import names
from ezrunner_ui.cli.common import print_json
from ezrunner_ui.cli.progress import ProgressRenderer

NAME = "verify"
HELP = "check an archive's sha256 and, with --allowed-signers, its SSH signature (before copying or loading it)"
JSON_OUTPUT = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", type=Path, help="NAME.tar, NAME.tar.zst, or the first part of a split archive")
    p.add_argument(
        "--allowed-signers", metavar="FILE", type=Path,
        help="ssh-keygen allowed_signers file (IDENTITY KEYTYPE BASE64-KEY per line): the keys you trust",
    )  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from core.signing import verify

    progress = ProgressRenderer()
    try:
        verified = verify(archive=args.archive, allowed_signers=args.allowed_signers, on_event=progress)
    finally:
        progress.close()
    if args.json:
        print_json(
            {"archive": verified.archive, "sha256": verified.sha256, "signers": list(verified.signers),
             "signature": verified.signature}
        )  # fmt: skip
        return
    print(f"{verified.archive.name}: sha256 {verified.sha256} matches {names.checksum_name(verified.archive.name)}.")
    if verified.signature is not None:
        print(f"Signature: good, made by {', '.join(verified.signers)} (allowed by {args.allowed_signers}).")
    elif names.signature_path(verified.archive).is_file():
        print(
            f"Signature: {names.signature_name(verified.archive.name)} was NOT checked; "
            "pass --allowed-signers FILE to check who made the archive."
        )
    else:
        print("Signature: none (the archive was packed without --sign).")
