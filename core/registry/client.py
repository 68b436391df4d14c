"""Talking to an OCI / Docker registry (Distribution API v2): image references, credentials, auth, requests.

Auth follows the registry's own challenge (RFC 7235; distribution ``docs/spec/auth/token.md``): a 401 names
the scheme in ``WWW-Authenticate``. ``Basic``: the credentials go on every request. ``Bearer``: a token is
asked from the challenge's ``realm`` for ``service`` and the scope ``repository:<name>:pull,push`` (with the
credentials as Basic when there are any) and sent until a later 401 asks for a new one.

Credentials (``find_credentials``): ``EZRUNNER_REGISTRY_USER`` and ``EZRUNNER_REGISTRY_PASSWORD``, else the
login Docker keeps: the credential helper the Docker config (``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``) names for the registry (``credHelpers``, else ``credsStore``; run as docker runs it,
``core.registry.credential_helpers``), else the registry's ``auths`` entry there (the base64 ``user:password``
that ``docker login`` writes when no credential store is configured). An identity token from a helper is traded
at the registry's token service (distribution ``docs/spec/auth/oauth.md``). Never a flag (shell history,
process listings), and never in a message, an event or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import requests
import requests.adapters

from core.errors import (
    InvalidOptionsError,
    RegistryAuthError,
    RegistryBusyError,
    RegistryError,
    RegistryUnreachableError,
)
from core.registry.credential_helpers import HELPER_PREFIX, IDENTITY_TOKEN_USER, helper_login, helper_program

USER_ENV = "EZRUNNER_REGISTRY_USER"
PASSWORD_ENV = "EZRUNNER_REGISTRY_PASSWORD"
#: Docker's names for Docker Hub (docker/cli config keys; distribution reference.normalize).
DOCKER_HUB = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
_DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
#: Connect quickly or say so; a PATCH of one chunk over a slow link may take minutes before its answer.
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0
SEND_BLOCK_BYTES = 1 << 20

# distribution reference grammar (reference/regexp.go): lower-case path components, a tag of 1-128 chars.
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?")
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')


# IMAGE REFERENCES


@dataclass(frozen=True)
class ImageRef:
    """``registry/repository:tag``, as ``docker push`` spells it."""

    registry: str  # host[:port] as written; "docker.io" for Docker Hub
    repository: str  # e.g. "team/qwen2.5-7b" ("library/x" on Docker Hub for a one-word name)
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"

    @property
    def api_host(self) -> str:
        """Where the API answers: Docker Hub's API host differs from its name."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry


def parse_image_ref(*, ref: str) -> ImageRef:
    """``host[:port]/name[:tag]`` (tag ``latest`` when absent; no host: Docker Hub, as ``docker push`` does).

    Raises InvalidOptionsError for anything ``docker push`` would not take, or a digest (a push needs a tag).
    """
    text = ref.strip()
    if "@" in text:
        raise InvalidOptionsError(
            f"{ref!r} names a digest; a push needs a tag.", hint="Use e.g. registry.local:5000/team/model:v1."
        )
    first, slash, rest = text.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, text
    if ":" in path.rsplit("/", 1)[-1]:
        name, _, tag = path.rpartition(":")
    else:
        name, tag = path, "latest"
    components = name.split("/")
    if registry == DOCKER_HUB and len(components) == 1:
        components = ["library", *components]
    if (
        not _HOST.fullmatch(registry)
        or not all(_PATH_COMPONENT.fullmatch(c) for c in components)
        or not _TAG.fullmatch(tag)
        or len(name) > 255
    ):
        raise InvalidOptionsError(
            f"{ref!r} is not an image reference a registry takes.",
            hint="Use HOST[:PORT]/NAME[:TAG] with a lower-case NAME, e.g. registry.local:5000/team/model:v1.",
        )
    return ImageRef(registry=registry, repository="/".join(components), tag=tag)


# CREDENTIALS


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    source: str  # where they came from, for messages: the variables' names, the config file's path, a helper
    identity_token: bool = False  # ``password`` is an OAuth2 refresh token (a helper's "<token>" login)


@dataclass(frozen=True)
class CredentialSearch:
    """The credentials found for one registry (or None), and what a refusal message should mention."""

    credentials: Credentials | None
    config_file: Path
    helper: str | None  # the credential helper the Docker config names for this registry
    helper_installed: bool = False  # whether docker-credential-<helper> is on PATH (it was asked, then)


def docker_config_file(*, environ: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json`` (what the docker CLI reads)."""
    folder = environ.get("DOCKER_CONFIG")
    return Path(folder).expanduser() / "config.json" if folder else Path.home() / ".docker" / "config.json"


def _config_key_host(key: str) -> str:
    """A config ``auths`` key as a bare host[:port]: ``https://host:5000/v2/`` → ``host:5000``."""
    without_scheme = key.split("://", 1)[1] if "://" in key else key
    return without_scheme.split("/", 1)[0].lower()


def find_credentials(
    *, registry: str, environ: Mapping[str, str] | None = None, docker_config: Path | None = None
) -> CredentialSearch:
    """The credentials for ``registry`` (host[:port]): the environment variables, else the Docker config."""
    env = os.environ if environ is None else environ
    config_file = docker_config if docker_config is not None else docker_config_file(environ=env)
    user, password = env.get(USER_ENV), env.get(PASSWORD_ENV)
    if user or password:
        if not (user and password):
            missing = PASSWORD_ENV if user else USER_ENV
            raise RegistryAuthError(
                f"{USER_ENV if user else PASSWORD_ENV} is set but {missing} is not.",
                hint=f"Set both {USER_ENV} and {PASSWORD_ENV}, or neither to use `docker login`'s credentials.",
            )
        return CredentialSearch(
            credentials=Credentials(username=user, password=password, source=f"{USER_ENV}/{PASSWORD_ENV}"),
            config_file=config_file,
            helper=None,
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return CredentialSearch(credentials=None, config_file=config_file, helper=None)
    if not isinstance(config, dict):
        return CredentialSearch(credentials=None, config_file=config_file, helper=None)
    wanted = {registry.lower()} | ({k.lower() for k in _DOCKER_HUB_KEYS} if registry == DOCKER_HUB else set())
    wanted = {_config_key_host(k) for k in wanted}
    helpers = config.get("credHelpers")
    helpers = helpers if isinstance(helpers, dict) else {}
    helper = next((str(v) for k, v in helpers.items() if _config_key_host(k) in wanted), None)
    helper = helper or (str(config["credsStore"]) if config.get("credsStore") else None)
    program = helper_program(helper, environ=env) if helper else None
    if helper and program:
        addresses = list(_DOCKER_HUB_KEYS) if registry == DOCKER_HUB else [registry, f"https://{registry}",
                                                                            f"http://{registry}"]  # fmt: skip
        login = helper_login(helper=helper, program=program, addresses=addresses, host_of=_config_key_host,
                             environ=env)  # fmt: skip
        if login is not None:
            found = Credentials(username=login.username, password=login.secret, source=HELPER_PREFIX + helper,
                                identity_token=login.identity_token)  # fmt: skip
            return CredentialSearch(credentials=found, config_file=config_file, helper=helper, helper_installed=True)
    auths = config.get("auths")
    auths = auths if isinstance(auths, dict) else {}
    for key, entry in auths.items():
        if _config_key_host(key) not in wanted or not isinstance(entry, dict):
            continue
        found_in_file = _entry_credentials(entry, source=str(config_file))
        if found_in_file is not None:
            return CredentialSearch(credentials=found_in_file, config_file=config_file, helper=None)
    return CredentialSearch(credentials=None, config_file=config_file, helper=helper,
                            helper_installed=program is not None)  # fmt: skip


def _entry_credentials(entry: Mapping[str, object], *, source: str) -> Credentials | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:  # what `docker login` keeps for an OAuth login (az acr login …)
        return Credentials(username=IDENTITY_TOKEN_USER, password=token, source=source, identity_token=True)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, colon, password = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return Credentials(username=user, password=password, source=source) if colon and user else None
    name, secret = entry.get("username"), entry.get("password")
    if isinstance(name, str) and isinstance(secret, str) and name:
        return Credentials(username=name, password=secret, source=source)
    return None


# HTTP


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme and its parameters (realm, service, scope …)."""

    scheme: str  # lower case: "basic" or "bearer"
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3) for m in
              _CHALLENGE_PARAM.finditer(rest)}  # fmt: skip
    return Challenge(scheme=scheme.lower(), params=params)


@dataclass(frozen=True)
class UploadStatus:
    offset: int  # bytes the registry holds for this upload
    location: str  # the URL to continue at (the registry may change it with every answer)


class Body(Protocol):
    """A request body streamed as it is sent: its length up front, then ``read`` until it gives b"";
    ``rewind`` starts it again (the request is sent again after a 401 asked for a new token)."""

    def __len__(self) -> int: ...

    def read(self, amount: int = -1) -> bytes: ...

    def rewind(self) -> None: ...


class _Adapter(requests.adapters.HTTPAdapter):
    """Sends bodies in blocks of SEND_BLOCK_BYTES (urllib3's default, 16 KiB, costs a Python call per block)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = SEND_BLOCK_BYTES
        super().init_poolmanager(*args, **kwargs)


def _as_sent(request: requests.PreparedRequest) -> requests.PreparedRequest:
    return request


class DigestRejectedError(RegistryError):
    """The registry computed another digest than the one we named for a blob (its bytes differ)."""

    code = "registry_error"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _registry_errors(response: requests.Response) -> list[dict[str, object]]:
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _describe(response: requests.Response) -> str:
    errors = _registry_errors(response)
    said = "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors)
    return f"HTTP {response.status_code}" + (f" ({said})" if said else "")


class RegistryClient:
    """One registry repository over one HTTP session: blobs, uploads and the manifest, with auth."""

    def __init__(
        self,
        *,
        ref: ImageRef,
        insecure: bool = False,
        credentials: CredentialSearch | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.ref = ref
        self.base_url = f"{'http' if insecure else 'https'}://{ref.api_host}"
        self._insecure = insecure
        self._search = credentials or CredentialSearch(credentials=None, config_file=Path(), helper=None)
        self._session = session or requests.Session()
        for scheme in ("http://", "https://"):
            self._session.mount(scheme, _Adapter())
        self._authorization: str | None = None
        self._scope = f"repository:{ref.repository}:pull,push"

    def close(self) -> None:
        self._session.close()

    def url(self, path: str) -> str:
        return urljoin(self.base_url + "/", path.lstrip("/"))

    # requests

    def _send(
        self,
        method: str,
        url: str,
        *,
        data: bytes | Body | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """One request, answering a 401 challenge once; transport failures become RegistryUnreachableError."""
        for attempt in range(2):
            sent_headers = dict(headers or {})
            if self._authorization:
                sent_headers["Authorization"] = self._authorization
            response = self._transport(method, url, data=data, headers=sent_headers)
            if response.status_code != 401:
                break
            challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            refused = attempt == 1 or (self._authorization is not None and challenge.scheme == "basic")
            if refused:
                raise self._auth_error(refused=self._search.credentials is not None)
            self._authenticate(challenge)
            if data is not None and not isinstance(data, bytes):
                data.rewind()
        if response.status_code == 429 or response.status_code >= 500:
            raise RegistryBusyError(
                f"The registry at {self.base_url} answered {method} with {_describe(response)}.",
                hint="It may be overloaded or restarting; the push retries, and running it again continues.",
            )
        if response.status_code == 403:
            who = f"User {self._search.credentials.username!r}" if self._search.credentials else "An anonymous user"
            raise RegistryAuthError(
                f"{who} may not push to {self.ref.repository} on {self.ref.registry} ({_describe(response)}).",
                hint="Ask the registry's administrator for push rights, or push to a repository you may write.",
            )
        return response

    def _transport(
        self, method: str, url: str, *, data: bytes | Body | None, headers: Mapping[str, str]
    ) -> requests.Response:
        try:
            # auth=_as_sent: our Authorization header stands; requests would otherwise replace it with a
            # ~/.netrc login for the host. No redirects: a blob HEAD may answer 307 to storage, which is enough.
            return self._session.request(
                method, url, data=data, headers=headers, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                allow_redirects=False, auth=_as_sent,
            )  # fmt: skip
        except requests.exceptions.SSLError as error:
            raise RegistryUnreachableError(
                f"The TLS handshake with {urlsplit(url).netloc} failed ({_short(error)}).",
                hint="For a registry that serves plain HTTP add --insecure; for one with a private CA point "
                "REQUESTS_CA_BUNDLE at its certificate.",
            ) from error
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as error:
            raise RegistryUnreachableError(
                f"Cannot reach the registry at {urlsplit(url).scheme}://{urlsplit(url).netloc} ({_short(error)}).",
                hint="Check the host and port in the image reference and that the registry runs"
                + ("." if self._insecure else "; for a registry that serves plain HTTP add --insecure."),
            ) from error
        except requests.exceptions.RequestException as error:
            raise RegistryError(
                f"The request to {urlsplit(url).netloc} failed ({_short(error)}).",
                hint="Check the image reference and try again.",
            ) from error

    def _auth_error(self, *, refused: bool) -> RegistryAuthError:
        login = f"`docker login {self.ref.registry}`"
        found = self._search.credentials
        if refused and found is not None:
            return RegistryAuthError(
                f"The registry at {self.ref.registry} refused the login of user {found.username!r} "
                f"(credentials from {found.source}).",
                hint=f"Check {USER_ENV} and {PASSWORD_ENV}, or run {login} again.",
            )
        helper = ""
        if self._search.helper and self._search.helper_installed:
            helper = (f" {HELPER_PREFIX}{self._search.helper} (the credential helper of the Docker config) has no "
                      "login for it.")  # fmt: skip
        elif self._search.helper:
            helper = (f" The Docker config keeps logins in the credential helper {HELPER_PREFIX}{self._search.helper},"
                      " which is not installed here (not on PATH).")  # fmt: skip
        return RegistryAuthError(
            f"The registry at {self.ref.registry} needs a login to push {self.ref.repository}.{helper}",
            hint=f"Set {USER_ENV} and {PASSWORD_ENV}, or run {login} (EZ Runner reads the logins Docker keeps: "
            f"{self._search.config_file} and the credential helper it names).",
        )

    def _basic(self) -> str | None:
        found = self._search.credentials
        if found is None or found.identity_token:  # a refresh token is never a password
            return None
        return "Basic " + base64.b64encode(f"{found.username}:{found.password}".encode()).decode("ascii")

    def _authenticate(self, challenge: Challenge) -> None:
        if challenge.scheme == "basic":
            basic = self._basic()
            found = self._search.credentials
            if basic is None and found is not None and found.identity_token:
                raise RegistryAuthError(
                    f"The login for {self.ref.registry} (from {found.source}) is an identity token, but the registry "
                    "asks for a user name and password (Basic auth), which a token cannot answer.",
                    hint=f"Run `docker login {self.ref.registry}` with a user name and password, or set {USER_ENV} "
                    f"and {PASSWORD_ENV}.",
                )
            if basic is None:
                raise self._auth_error(refused=False)
            self._authorization = basic
            return
        if challenge.scheme != "bearer" or not challenge.params.get("realm"):
            raise RegistryAuthError(
                f"The registry at {self.ref.registry} asks for an authentication scheme EZ Runner does not "
                f"speak ({challenge.scheme or 'none given'}).",
                hint="Push with `docker push` after `docker load`, or use a registry with Basic or token auth.",
            )
        self._authorization = "Bearer " + self._token(challenge)

    def _token(self, challenge: Challenge) -> str:
        realm = challenge.params["realm"]
        query = {"scope": self._scope}
        if challenge.params.get("service"):
            query["service"] = challenge.params["service"]
        found = self._search.credentials
        if found is not None and found.identity_token:
            # oauth.md: the refresh token is traded with a form POST (never in a URL)
            form = {"grant_type": "refresh_token", "refresh_token": found.password, "client_id": "ezrunner",
                    "access_type": "offline", **query}  # fmt: skip
            response = self._transport("POST", realm, data=urlencode(form).encode(),
                                       headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        else:
            headers = {"Authorization": basic} if (basic := self._basic()) else {}
            url = realm + ("&" if "?" in realm else "?") + urlencode(query)
            response = self._transport("GET", url, data=None, headers=headers)
        if response.status_code in (401, 403):
            raise self._auth_error(refused=self._search.credentials is not None)
        if response.status_code != 200:
            raise RegistryAuthError(
                f"The token service at {urlsplit(realm).netloc} answered {_describe(response)}.",
                hint="Check that the registry's auth service runs, then try again.",
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryAuthError(
                f"The token service at {urlsplit(realm).netloc} gave no token.",
                hint="Check the registry's auth configuration, then try again.",
            )
        return token

    def _unexpected(self, what: str, response: requests.Response) -> RegistryError:
        return RegistryError(
            f"The registry at {self.ref.registry} refused to {what}: {_describe(response)}.",
            hint="Check the image reference; when the registry names a cause above, fix it and push again.",
        )

    # the API

    def ping(self) -> None:
        """``GET /v2/``: reachable, speaks the v2 API, and our login (if it wants one) works."""
        response = self._send("GET", self.url("/v2/"))
        if response.status_code != 200:
            raise RegistryError(
                f"{self.base_url} does not answer as a Docker / OCI registry ({_describe(response)} for /v2/).",
                hint="Check the host and port in the image reference.",
            )
        if self._authorization and self._authorization.startswith("Bearer "):
            return
        # Token registries may let /v2/ through anonymously and only challenge the repository; ask now, so a
        # wrong login fails before the first byte is read from the archive.
        probe = self._send("HEAD", self.url(f"/v2/{self.ref.repository}/blobs/sha256:{'0' * 64}"))
        if probe.status_code not in (200, 404):
            raise self._unexpected("answer a blob lookup", probe)

    def blob_exists(self, *, digest: str) -> bool:
        response = self._send("HEAD", self.url(f"/v2/{self.ref.repository}/blobs/{digest}"))
        if response.status_code in (200, 302, 303, 307):  # a redirect to where the blob is stored
            return True
        if response.status_code == 404:
            return False
        raise self._unexpected(f"answer whether it has blob {digest[:19]}", response)

    def start_upload(self) -> str:
        """``POST /v2/<name>/blobs/uploads/``: the new upload's URL."""
        response = self._send("POST", self.url(f"/v2/{self.ref.repository}/blobs/uploads/"))
        if response.status_code != 202 or not response.headers.get("Location"):
            raise self._unexpected("start an upload", response)
        return self.url(response.headers["Location"]) if response.headers["Location"].startswith("/") else (
            response.headers["Location"])  # fmt: skip

    def upload_status(self, *, location: str) -> UploadStatus | None:
        """How much of the upload at ``location`` the registry holds, or None when it has dropped the upload."""
        response = self._send("GET", location)
        if response.status_code in (400, 404):  # BLOB_UPLOAD_UNKNOWN / BLOB_UPLOAD_INVALID: start again
            return None
        if response.status_code != 204:
            raise self._unexpected("report an upload's progress", response)
        return UploadStatus(offset=self._offset(response), location=self._next_location(response, location))

    def _offset(self, response: requests.Response) -> int:
        # "Range: 0-<last byte>"; distribution 2.8 sends "0-0" for an empty upload as well
        # (registry/handlers/blobupload.go blobUploadResponse), so 0-0 is read as nothing held.
        match = re.fullmatch(r"(?:bytes=)?0-(\d+)", response.headers.get("Range", "").strip())
        if match is None:
            return 0
        last = int(match.group(1))
        return last + 1 if last > 0 else 0

    def _next_location(self, response: requests.Response, current: str) -> str:
        location = response.headers.get("Location")
        if not location:
            return current
        return self.url(location) if location.startswith("/") else location

    def patch(self, *, location: str, body: Body, start: int) -> UploadStatus:
        """``PATCH`` one chunk at ``start``, streamed from ``body``; where the registry now is, and the URL to
        continue at."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(body) - 1}",
            "Content-Length": str(len(body)),
        }
        response = self._send("PATCH", location, data=body, headers=headers)
        if response.status_code != 202:
            raise self._unexpected("take a chunk of an upload", response)
        offset = self._offset(response) if response.headers.get("Range") else start + len(body)
        return UploadStatus(offset=offset, location=self._next_location(response, location))

    def finish_upload(self, *, location: str, digest: str) -> None:
        """``PUT <location>?digest=``: the registry checks the bytes against ``digest`` and stores the blob."""
        url = location + ("&" if "?" in location else "?") + urlencode({"digest": digest})
        response = self._send("PUT", url, data=b"", headers={"Content-Type": "application/octet-stream"})
        if response.status_code in (201, 204):
            return
        codes = {str(e.get("code")) for e in _registry_errors(response)}
        if "DIGEST_INVALID" in codes or "SIZE_INVALID" in codes:
            raise DigestRejectedError(
                f"The registry found other bytes than blob {digest[:19]}… in the upload ({_describe(response)}).",
                hint="Check the archive with its .sha256 (`ezrunner run` does), and copy it again if damaged.",
            )
        raise self._unexpected(f"complete blob {digest[:19]}…", response)

    def cancel_upload(self, *, location: str) -> None:
        """Best effort: the registry also expires abandoned uploads by itself."""
        with contextlib.suppress(RegistryError):
            self._send("DELETE", location)

    def put_manifest(self, *, tag: str, body: bytes, media_type: str) -> str:
        """``PUT /v2/<name>/manifests/<tag>``; the digest the registry gives the manifest."""
        response = self._send(
            "PUT", self.url(f"/v2/{self.ref.repository}/manifests/{tag}"), data=body,
            headers={"Content-Type": media_type},
        )  # fmt: skip
        if response.status_code not in (200, 201):
            raise self._unexpected(f"store the manifest as {tag!r}", response)
        return response.headers.get("Docker-Content-Digest", "")
