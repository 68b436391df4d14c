"""Offline signatures of archives with SSH keys (``ssh-keygen -Y``: OpenSSH 8.1+, on every server).

What is signed is the archive's checksum file ``NAME.sha256`` (a line of 64 hex digits and the name), not
the archive: the signature is made in a second and checked in a second, and the checksum, which load.sh
checks anyway, ties it to every byte of the archive (of the parts joined, when split). The signature lies
beside it as ``NAME.sha256.sig`` (``ssh-keygen``'s own name for it), in the namespace ``ezrunner-archive``
so that a signature made for anything else (a git commit, a file signed for another tool) never passes.

Who may sign is the verifier's ``allowed_signers`` file (the format of ssh-keygen(1), ALLOWED SIGNERS:
``IDENTITY [options] KEYTYPE BASE64-KEY`` per line). The identity checked is the one that file gives to
the key that made the signature (``ssh-keygen -Y find-principals``), so the server needs no flag naming it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from core.archive import names
from core.archive.reader import verify_archive
from core.errors import ALLOWED_SIGNERS, ARCHIVE, SIGN_KEY, InvalidOptionsError, SignatureError
from core.events import Cancel, EventSink, ignore_events

#: The ``-n`` namespace of every archive signature (ssh-keygen(1): a signature verifies in its namespace only).
NAMESPACE = "ezrunner-archive"
#: ssh-keygen answers in well under a second; a hung one (a passphrase prompt with no terminal) is not waited for.
_SSH_KEYGEN_TIMEOUT_S = 120


@dataclass(frozen=True)
class Verified:
    """An archive whose signature and checksum both matched."""

    archive: Path
    sha256: str
    signers: tuple[str, ...]  # the identities allowed_signers gives the key that signed (empty: not checked)
    signature: Path | None  # None when the signature was not checked


def ssh_keygen() -> str:
    """The path of ``ssh-keygen``, or SignatureError saying how to install it."""
    found = shutil.which("ssh-keygen")
    if found is None:
        raise SignatureError(
            "ssh-keygen is not installed here; it makes and checks archive signatures.",
            hint="Install OpenSSH's client (apt-get install openssh-client, or dnf install openssh), then try again.",
        )
    return found


def check_sign_key(*, key: Path) -> None:
    """Fail before a pack starts when ``key`` cannot be used to sign (no such file, no ssh-keygen)."""
    ssh_keygen()
    if not key.is_file():
        raise InvalidOptionsError(
            f"The signing key {key} does not exist.",
            hint="Pass an SSH private key (ssh-keygen -t ed25519 -f ~/.ssh/ezrunner makes one), or its .pub "
            "file when the key is in ssh-agent.",
            field=SIGN_KEY,
        )


def sign_archive(*, archive: Path, key: Path) -> Path:
    """Sign ``NAME.sha256`` of ``archive`` with the SSH key ``key``; return the signature file.

    ``key`` is a private key (a passphrase is asked for on the terminal) or the public key of one that
    ssh-agent holds. An earlier signature beside the archive is replaced.
    """
    check_sign_key(key=key)
    checksum_file = names.checksum_path(archive)
    if not checksum_file.is_file():
        raise SignatureError(
            f"{checksum_file.name} is missing beside {archive.name}, so there is nothing to sign.",
            hint="Pack the archive again (the pack writes it), then sign.",
            field=ARCHIVE,
        )
    signature = names.signature_path(archive)
    signature.unlink(missing_ok=True)  # ssh-keygen would ask whether to overwrite it
    result = _run([ssh_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(checksum_file)], stdin=None)
    if result.returncode != 0 or not signature.is_file():
        signature.unlink(missing_ok=True)
        raise InvalidOptionsError(
            f"ssh-keygen could not sign {checksum_file.name} with {key}: {_last_line(result)}.",
            hint="Check that the key is an SSH private key you can read (or its .pub with the key in ssh-agent) "
            "and its passphrase; the archive itself was written and can be signed later with "
            f"ssh-keygen -Y sign -f KEY -n {NAMESPACE} {checksum_file.name}.",
            field=SIGN_KEY,
        )
    return signature


def verify_signature(*, archive: Path, allowed_signers: Path) -> tuple[str, ...]:
    """Check ``NAME.sha256.sig`` against ``NAME.sha256`` and ``allowed_signers``; return the signer's
    identities. Raises SignatureError when the signature is missing, made by a key the file does not
    allow, or does not match the checksum file. It does not read the archive (``verify`` does)."""
    archive = names.archive_of(archive)
    if not allowed_signers.is_file():
        raise InvalidOptionsError(
            f"The allowed signers file {allowed_signers} does not exist.",
            hint="Write one line per trusted key: IDENTITY followed by the contents of its .pub file "
            "(see ssh-keygen(1), ALLOWED SIGNERS).",
            field=ALLOWED_SIGNERS,
        )
    checksum_file = names.checksum_path(archive)
    signature = names.signature_path(archive)
    for needed in (checksum_file, signature):
        if not needed.is_file():
            raise SignatureError(
                f"{needed.name} is missing beside {archive.name}, so who made the archive cannot be checked.",
                hint="Copy it from the machine that packed the archive (packed with --sign, it lies beside the "
                "archive), then try again.",
                field=ARCHIVE,
            )
    tool = ssh_keygen()
    found = _run([tool, "-Y", "find-principals", "-s", str(signature), "-f", str(allowed_signers)], stdin=None)
    signers = tuple(line.strip() for line in found.stdout.splitlines() if line.strip())
    if found.returncode != 0 or not signers:
        raise SignatureError(
            f"{signature.name} was not made by any key in {allowed_signers.name}: the archive did not come "
            "from a signer you trust, or the signature is damaged.",
            hint="Ask the packer for their public key and add it to the allowed signers file, or copy the "
            "archive and its .sig again.",
            field=ARCHIVE,
        )
    with checksum_file.open("rb") as data:
        checked = _run(
            [tool, "-Y", "verify", "-f", str(allowed_signers), "-I", signers[0], "-n", NAMESPACE, "-s", str(signature)],
            stdin=data,
        )
    if checked.returncode != 0:
        raise SignatureError(
            f"{signature.name} does not match {checksum_file.name}: the checksum file was changed after it was "
            "signed, or the signature belongs to another archive.",
            hint="Copy the archive, its .sha256 and its .sig again from the machine that packed it.",
            field=ARCHIVE,
        )
    return signers


def verify(
    *, archive: Path, allowed_signers: Path | None, on_event: EventSink = ignore_events, cancel: Cancel | None = None
) -> Verified:
    """The signature (with ``allowed_signers``; seconds), then every byte against the checksum (minutes).

    Without ``allowed_signers`` only the checksum is checked (``Verified.signature`` is then None).
    """
    archive = names.archive_of(archive)
    signers: tuple[str, ...] = ()
    if allowed_signers is not None:
        signers = verify_signature(archive=archive, allowed_signers=allowed_signers)
    sha256 = verify_archive(archive=archive, on_event=on_event, cancel=cancel)
    return Verified(
        archive=archive,
        sha256=sha256,
        signers=signers,
        signature=names.signature_path(archive) if allowed_signers is not None else None,
    )


def _run(argv: list[str], *, stdin: IO[bytes] | None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, stdin=stdin, capture_output=True, text=True, timeout=_SSH_KEYGEN_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise SignatureError(
            f"ssh-keygen did not answer within {_SSH_KEYGEN_TIMEOUT_S} s.",
            hint="An encrypted key asks for its passphrase on a terminal: run from one, or add the key to "
            "ssh-agent and pass its .pub file.",
        ) from error


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
    return lines[-1].rstrip(".") if lines else f"exit status {result.returncode}"
