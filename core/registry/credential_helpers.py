"""Docker credential helpers: the programs ``docker login`` keeps a login in when the Docker config names one
(``credsStore`` for every registry, ``credHelpers`` per registry): ``docker-credential-<name>`` on ``PATH``.

The protocol (docker/docker-credential-helpers, ``client/client.go``): ``get`` reads the server address on
stdin and prints ``{"ServerURL", "Username", "Secret"}``, or exits non-zero saying "credentials not found";
``list`` prints ``{server address: user name}``. ``docker login`` stores a private registry under the address
as typed (``host:port``, sometimes with a scheme) and Docker Hub under ``https://index.docker.io/v1/``, so a
``get`` for the bare host that finds nothing is followed by ``list`` and a ``get`` of the stored address that
names the same host. A user name of ``<token>`` means the secret is an identity token (an OAuth2 refresh
token), which is traded at the registry's token service rather than sent as a password.

A helper may wait for a desktop keyring to unlock: it gets ``HELPER_TIMEOUT_S``. Its secret is never in a
message; of its error output only the first line is quoted (the helpers print a reason there, not a secret).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from core.errors import RegistryAuthError

HELPER_PREFIX = "docker-credential-"
HELPER_TIMEOUT_S = 60.0
#: what a helper's ``Username`` says when its ``Secret`` is an identity token (docker/cli credentials.go)
IDENTITY_TOKEN_USER = "<token>"
_NOT_FOUND = "credentials not found"


@dataclass(frozen=True)
class HelperLogin:
    username: str
    secret: str = field(repr=False)
    server: str  # the address the helper keeps it under

    @property
    def identity_token(self) -> bool:
        return self.username == IDENTITY_TOKEN_USER


def helper_program(helper: str, *, environ: Mapping[str, str]) -> str | None:
    """The helper's executable on ``environ``'s PATH, or None when it is not installed here."""
    if not helper or "/" in helper or os.sep in helper:
        return None  # a name, never a path: docker itself only prefixes it
    return shutil.which(HELPER_PREFIX + helper, path=environ.get("PATH", os.defpath))


def helper_login(
    *, helper: str, program: str, addresses: Iterable[str], host_of: Callable[[str], str],
    environ: Mapping[str, str],
) -> HelperLogin | None:  # fmt: skip
    """Ask ``program`` for a registry's login: a ``get`` for each of ``addresses`` (the ways docker spells the
    registry), then a ``get`` of each address ``list`` holds whose host (``host_of``) is one of theirs and whose
    path is a registry's (none, ``/v1/``, ``/v2/``: Docker Desktop also keeps ``…/access-token`` and
    ``…/refresh-token`` entries under the same host, which are not logins). None when the helper keeps no login
    for it; RegistryAuthError when the helper itself fails."""
    wanted = list(dict.fromkeys(addresses))
    for address in wanted:
        found = _get(helper=helper, program=program, address=address, environ=environ)
        if found is not None:
            return found
    hosts = {host_of(a) for a in wanted}
    for stored in _list(helper=helper, program=program, environ=environ):
        if stored not in wanted and host_of(stored) in hosts and _registry_path(stored):
            found = _get(helper=helper, program=program, address=stored, environ=environ)
            if found is not None:
                return found
    return None


def _registry_path(address: str) -> bool:
    path = address.split("://", 1)[-1].partition("/")[2].strip("/")
    return path in ("", "v1", "v2")


def _run(*, helper: str, program: str, action: str, stdin: str, environ: Mapping[str, str]) -> tuple[int, str, str]:
    try:
        done = subprocess.run([program, action], input=stdin, capture_output=True, encoding="utf-8",
                              errors="replace", timeout=HELPER_TIMEOUT_S, env=dict(environ))  # fmt: skip
    except subprocess.TimeoutExpired as error:
        raise RegistryAuthError(
            f"The credential helper {HELPER_PREFIX}{helper} did not answer within {HELPER_TIMEOUT_S:.0f} s.",
            hint="Unlock its keyring (or run `docker login` once in this session), then push again; or set "
            "EZRUNNER_REGISTRY_USER and EZRUNNER_REGISTRY_PASSWORD.",
        ) from error
    except OSError as error:
        raise RegistryAuthError(
            f"The credential helper {program} could not be run ({error.strerror or error}).",
            hint="Reinstall it, or set EZRUNNER_REGISTRY_USER and EZRUNNER_REGISTRY_PASSWORD.",
        ) from error
    return done.returncode, done.stdout, done.stderr


def _failed(helper: str, action: str, why: str) -> RegistryAuthError:
    first = next((line.strip() for line in why.splitlines() if line.strip()), "no reason given")[:200]
    return RegistryAuthError(
        f"The credential helper {HELPER_PREFIX}{helper} failed to {action}: {first}",
        hint="Fix the helper (try `docker login` again), or set EZRUNNER_REGISTRY_USER and "
        "EZRUNNER_REGISTRY_PASSWORD.",
    )


def _get(*, helper: str, program: str, address: str, environ: Mapping[str, str]) -> HelperLogin | None:
    code, out, err = _run(helper=helper, program=program, action="get", stdin=address, environ=environ)
    if code != 0:
        if _NOT_FOUND in (err + out).lower():
            return None
        # its error output only: what it printed on stdout may be a login (with its secret)
        raise _failed(helper, f"give the login of {address}", err)
    try:
        answer = json.loads(out)
    except ValueError:
        raise _failed(helper, f"give the login of {address}", "its answer is not JSON") from None
    if not isinstance(answer, dict):
        raise _failed(helper, f"give the login of {address}", "its answer is not a JSON object")
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str) or not username or not secret:
        return None  # an empty entry, as some helpers keep after a logout
    return HelperLogin(username=username, secret=secret, server=address)


def _list(*, helper: str, program: str, environ: Mapping[str, str]) -> list[str]:
    code, out, _ = _run(helper=helper, program=program, action="list", stdin="", environ=environ)
    if code != 0:
        return []  # listing is a second chance only: a helper without it still answered get
    try:
        answer = json.loads(out)
    except ValueError:
        return []
    return [str(k) for k in answer] if isinstance(answer, dict) else []


__all__ = ["HELPER_PREFIX", "IDENTITY_TOKEN_USER", "HelperLogin", "helper_login", "helper_program"]
