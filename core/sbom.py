"""The archive's bill of materials: a CycloneDX 1.6 SBOM (JSON) of the image and the model it serves.

It lists the engine image's OS packages (dpkg's status file, apk's installed database) and Python
packages (``*.dist-info/METADATA``), read from the runtime image's layer tars without running the image;
the model (hub, repo, revision, commit, license) with each packed file's sha256 and size; and the plan.
A pack writes it beside the archive (``NAME.cdx.json``) and into the image (``/etc/ezrunner/sbom.cdx.json``).

Reproducible, like the archive it describes: no timestamp (CycloneDX makes ``metadata.timestamp``
optional), every ``bom-ref`` derived from what it names, components in a fixed order, and a serial
number that is a UUID derived from the document's own content (``uuid5`` of its sha256), so the same
image and model give the same bytes, and another image or model another serial number.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import re
import tarfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.errors import ExportFailedError
from core.hubs.base import ModelFile

#: CycloneDX spec version written (the newest cyclonedx-python-lib 11 validates).
SPEC_VERSION = "1.6"
#: Where the SBOM lies inside the image, beside plan.json and run-spec.json.
IMAGE_FOLDER = "/etc/ezrunner"
IMAGE_PATH = f"{IMAGE_FOLDER}/sbom.cdx.json"
#: uuid5 namespace of the serial numbers (uuid5(NAMESPACE_URL, "https://ezrunner/sbom"), fixed once).
_SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://ezrunner/sbom")
_HASH_CHUNK = 4 << 20

PackageKind = Literal["deb", "apk", "pypi"]


@dataclass(frozen=True)
class ImagePackage:
    """One package installed in the engine image."""

    kind: PackageKind
    name: str
    version: str
    license: str | None = None
    arch: str | None = None


@dataclass(frozen=True)
class ModelFileEntry:
    """One packed model file, by its path in the repository."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SbomCounts:
    """What ``ezrunner inspect`` prints of an SBOM."""

    os_packages: int
    python_packages: int
    model_files: int
    model_bytes: int
    license: str | None


# READING THE ENGINE IMAGE'S PACKAGES FROM ITS LAYER TARS

_DPKG_STATUS = "var/lib/dpkg/status"
_APK_INSTALLED = "lib/apk/db/installed"
_OS_RELEASE = ("etc/os-release", "usr/lib/os-release")
_DIST_INFO_METADATA = re.compile(r"(^|/)(site|dist)-packages/[^/]+\.dist-info/METADATA$")
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


def image_packages(*, layer_tars: Sequence[Path]) -> tuple[tuple[ImagePackage, ...], str | None]:
    """The OS and Python packages of the image whose layers (uncompressed tars, bottom first) are
    ``layer_tars``, and its distribution id (``debian``, ``ubuntu``, ``alpine``; None when unknown).

    Layers apply as overlayfs applies them: a file of an upper layer replaces the lower one, a whiteout
    (``.wh.NAME``) removes it, so a package uninstalled in a later layer is not listed."""
    files: dict[str, bytes] = {}
    for layer in layer_tars:
        try:
            with tarfile.open(layer, mode="r:") as tar:
                for member in tar:
                    _apply(tar, member, files)
        except (OSError, tarfile.TarError) as error:
            raise ExportFailedError(
                f"The engine image's layer {layer.name} cannot be read for the bill of materials: {error}.",
                hint="Run `ezrunner clean` to empty the layer cache, then pack again.",
            ) from error
    packages: list[ImagePackage] = []
    if _DPKG_STATUS in files:
        packages.extend(_dpkg_packages(files[_DPKG_STATUS].decode("utf-8", "replace")))
    if _APK_INSTALLED in files:
        packages.extend(_apk_packages(files[_APK_INSTALLED].decode("utf-8", "replace")))
    python: dict[str, ImagePackage] = {}
    for path in sorted(p for p in files if _DIST_INFO_METADATA.search(p)):
        package = _python_package(files[path].decode("utf-8", "replace"))
        if package is not None:
            python.setdefault(package.name.lower(), package)  # one per name (a second site-packages copy)
    packages.extend(python.values())
    distro = next((_os_release_id(files[p]) for p in _OS_RELEASE if p in files), None)
    return tuple(sorted(set(packages), key=lambda p: (p.kind, p.name.lower(), p.version))), distro


def _wanted(path: str) -> bool:
    return path in (_DPKG_STATUS, _APK_INSTALLED, *_OS_RELEASE) or bool(_DIST_INFO_METADATA.search(path))


def _apply(tar: tarfile.TarFile, member: tarfile.TarInfo, files: dict[str, bytes]) -> None:
    path = member.name.removeprefix("./").rstrip("/")
    folder, _, base = path.rpartition("/")
    if base == _OPAQUE:
        prefix = folder + "/"
        for known in [k for k in files if k.startswith(prefix)]:
            del files[known]
        return
    if base.startswith(_WHITEOUT):
        gone = f"{folder}/{base.removeprefix(_WHITEOUT)}" if folder else base.removeprefix(_WHITEOUT)
        for known in [k for k in files if k == gone or k.startswith(gone + "/")]:
            del files[known]
        return
    if not _wanted(path) or not member.isfile():
        return
    extracted = tar.extractfile(member)
    if extracted is not None:
        files[path] = extracted.read()


def _dpkg_packages(status: str) -> Iterable[ImagePackage]:
    for stanza in status.split("\n\n"):
        fields = _rfc822_fields(stanza)
        if "installed" not in fields.get("status", "").split() or not fields.get("package"):
            continue
        yield ImagePackage(
            kind="deb", name=fields["package"], version=fields.get("version", ""), arch=fields.get("architecture")
        )


def _rfc822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue  # a continuation line (a long description) or junk
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    return fields


def _apk_packages(installed: str) -> Iterable[ImagePackage]:
    for stanza in installed.split("\n\n"):
        fields = dict(line.split(":", 1) for line in stanza.splitlines() if len(line) > 2 and line[1] == ":")
        if fields.get("P"):
            yield ImagePackage(kind="apk", name=fields["P"], version=fields.get("V", ""), license=fields.get("L"),
                               arch=fields.get("A"))  # fmt: skip


def _python_package(metadata: str) -> ImagePackage | None:
    message = email.parser.HeaderParser().parsestr(metadata)
    name, version = message.get("Name"), message.get("Version")
    if not name or not version:
        return None
    license_text = message.get("License-Expression") or message.get("License") or ""
    first_line = license_text.strip().splitlines()[0].strip() if license_text.strip() else ""
    # Some packages put the whole licence text in License: a name that long is no name.
    return ImagePackage(kind="pypi", name=name.strip(), version=version.strip(),
                        license=first_line if 0 < len(first_line) <= 100 else None)  # fmt: skip


def _os_release_id(data: bytes) -> str | None:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("ID="):
            return line.removeprefix("ID=").strip().strip('"') or None
    return None


# THE MODEL FILES


def model_file_entries(*, files: Sequence[ModelFile], folder: Path) -> tuple[ModelFileEntry, ...]:
    """Each packed file with its sha256: the hub's where it gave one (the download checked the file
    against it: ``core.hubs.assemble``), else computed from the file in ``folder`` (the small git-stored
    files of a hub repository; every file of a local folder)."""
    entries = []
    for model_file in sorted(files, key=lambda f: f.path):
        digest = model_file.sha256.lower() if model_file.sha256 else _sha256_of(folder / model_file.path)
        entries.append(ModelFileEntry(path=model_file.path, size=model_file.size, sha256=digest))
    return tuple(entries)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError as error:
        raise ExportFailedError(
            f"The model file {path} cannot be read for the bill of materials: {error.strerror or error}.",
            hint="Download the model again (the hub cache may have been cleaned), then pack again.",
        ) from error
    return digest.hexdigest()


# THE DOCUMENT


@dataclass(frozen=True)
class SbomInputs:
    """Everything the SBOM says, gathered by the pack."""

    image_tag: str
    base_image: str
    engine: str
    hub: str  # "hf", "modelscope", "local"
    repo_id: str
    revision: str
    commit: str
    license: str | None
    model_files: tuple[ModelFileEntry, ...]
    packages: tuple[ImagePackage, ...]
    distro: str | None
    plan: Mapping[str, Any]  # core.plan.plan_to_dict
    ezrunner_version: str


def _purl_type(hub: str) -> str | None:
    # purl types of https://github.com/package-url/purl-spec/blob/main/PURL-TYPES.rst
    return {"hf": "huggingface"}.get(hub)


def build_sbom(inputs: SbomInputs) -> bytes:
    """The SBOM as UTF-8 JSON bytes: the same inputs always give the same bytes."""
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.tool import ToolRepository
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    licenses = LicenseFactory()

    def prop(name: str, value: object) -> Property:
        return Property(name=f"ezrunner:{name}", value=str(value))

    files = [
        Component(
            type=ComponentType.FILE, name=f.path, bom_ref=f"model-file:{f.path}",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=f.sha256)], properties=[prop("size", f.size)],
        )
        for f in inputs.model_files
    ]  # fmt: skip
    purl_type = _purl_type(inputs.hub)
    namespace, _, name = inputs.repo_id.rpartition("/")
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        name=inputs.repo_id,
        version=inputs.commit,
        bom_ref=f"model:{inputs.hub}:{inputs.repo_id}@{inputs.commit}",
        purl=PackageURL(type=purl_type, namespace=namespace or None, name=name, version=inputs.commit)
        if purl_type else None,
        licenses=[licenses.make_from_string(inputs.license)] if inputs.license else [],
        components=files,
        properties=[prop("hub", inputs.hub), prop("repo", inputs.repo_id), prop("revision", inputs.revision),
                    prop("commit", inputs.commit)],
    )  # fmt: skip
    packages = []
    for package in inputs.packages:
        qualifiers = {"arch": package.arch} if package.arch else {}
        purl = PackageURL(
            type=package.kind, namespace=inputs.distro if package.kind != "pypi" else None, name=package.name,
            version=package.version, qualifiers=qualifiers,
        )  # fmt: skip
        packages.append(
            Component(
                type=ComponentType.LIBRARY, name=package.name, version=package.version, purl=purl,
                bom_ref=purl.to_string(),
                licenses=[licenses.make_from_string(package.license)] if package.license else [],
            )
        )  # fmt: skip
    image = Component(
        type=ComponentType.CONTAINER, name=inputs.image_tag, bom_ref=f"image:{inputs.image_tag}",
        properties=[prop("engine", inputs.engine), prop("base-image", inputs.base_image)],
    )  # fmt: skip
    tool = Component(type=ComponentType.APPLICATION, name="ezrunner", version=inputs.ezrunner_version,
                     bom_ref="tool:ezrunner")  # fmt: skip
    plan_json = json.dumps(inputs.plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    bom = Bom(
        components=[model, *packages],
        metadata=BomMetaData(
            component=image, tools=ToolRepository(components=[tool]), properties=[prop("plan", plan_json)]
        ),
        serial_number=uuid.UUID(int=0),
    )
    for library in packages:
        bom.register_dependency(image, [library])
    bom.register_dependency(image, [model])
    document: dict[str, Any] = json.loads(JsonV1Dot6(bom).output_as_string())
    document.get("metadata", {}).pop("timestamp", None)  # the clock never enters the archive
    document.pop("serialNumber", None)
    body = _canonical(document)
    document["serialNumber"] = uuid.uuid5(_SERIAL_NAMESPACE, hashlib.sha256(body).hexdigest()).urn
    return _canonical(document)


def _canonical(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def validation_errors(document: bytes) -> str | None:
    """The CycloneDX 1.6 JSON schema's complaint about ``document`` (None: it validates)."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document.decode())
    return None if error is None else str(error)


def counts(document: Mapping[str, Any]) -> SbomCounts:
    """How many OS packages, Python packages and model files an SBOM lists, and the model's licence."""
    components: list[dict[str, Any]] = list(document.get("components") or [])
    purls = [str(c.get("purl") or "") for c in components]
    model = next((c for c in components if c.get("type") == "machine-learning-model"), {})
    files = list(model.get("components") or [])
    sizes = [int(p["value"]) for f in files for p in f.get("properties") or [] if p.get("name") == "ezrunner:size"]
    license_names = [
        entry.get("expression") or (entry.get("license") or {}).get("id") or (entry.get("license") or {}).get("name")
        for entry in model.get("licenses") or []
    ]
    return SbomCounts(
        os_packages=sum(p.startswith(("pkg:deb/", "pkg:apk/")) for p in purls),
        python_packages=sum(p.startswith("pkg:pypi/") for p in purls),
        model_files=len(files),
        model_bytes=sum(sizes),
        license=next((str(n) for n in license_names if n), None),
    )
