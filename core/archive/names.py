"""Every file name an archive brings with it, in one place.

For an archive ``NAME`` (``model.tar``, or ``model.tar.zst`` when compressed) a pack writes, beside it:

- ``NAME`` itself, or its parts ``NAME.part000``, ``NAME.part001`` … when split (then no ``NAME``);
- ``NAME.sha256``: the sha256 of ``NAME`` (of the parts concatenated, when split), ``sha256sum`` format;
- ``NAME.parts.sha256``: one line per part, only when split;
- ``NAME.cdx.json``: the CycloneDX bill of materials of the image and model (``core.sbom``);
- ``NAME.sha256.sig``: the SSH signature of ``NAME.sha256``, only with ``pack --sign`` (``core.signing``);
- ``load.sh``, or ``<stem>.load.sh`` when another archive's ``load.sh`` already lies there;

and, while writing, each file as ``.NAME.<pid>-<random>.partial`` (hidden, and unique to the writing
process and writer, so two packs to one name never share a temporary file), renamed when complete.

A split archive is the parts its ``NAME.parts.sha256`` lists, in that order: a stray
``NAME.partNNN`` beside them (a leftover, a copy of another pack) is not part of it.
``templates/load.sh.j2`` spells the same names in shell (``"$ARCHIVE.sha256"`` …); the golden load.sh
tests keep the two in step.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
from pathlib import Path

from core.archive.compression import Compression
from core.errors import ArtifactInvalidError

TAR_SUFFIX = ".tar"
ZSTD_SUFFIX = ".zst"
CHECKSUM_SUFFIX = ".sha256"
PARTS_CHECKSUM_SUFFIX = ".parts.sha256"
SBOM_SUFFIX = ".cdx.json"
SIGNATURE_SUFFIX = ".sig"  # ssh-keygen -Y sign FILE writes FILE.sig
PARTIAL_SUFFIX = ".partial"
PART_SUFFIX = ".part"  # followed by the part number, three digits from 000
FIRST_PART_SUFFIX = f"{PART_SUFFIX}000"
LOAD_SCRIPT = "load.sh"
LOAD_SCRIPT_SUFFIX = ".load.sh"


def archive_name(name: str, *, compression: Compression) -> str:
    """``name`` with ``.zst`` appended when compressed and it lacks it (``m.tar`` → ``m.tar.zst``)."""
    return name + ZSTD_SUFFIX if compression == "zstd" and not name.endswith(ZSTD_SUFFIX) else name


def is_archive_name(name: str) -> bool:
    """Whether ``name`` ends the way an archive's name does: ``.tar`` or ``.tar.zst``."""
    return name.endswith(TAR_SUFFIX) or name.endswith(TAR_SUFFIX + ZSTD_SUFFIX)


def is_part_name(name: str) -> bool:
    """Whether ``name`` is one part of a split archive (a slice of the archive, not an archive)."""
    stem, dot_part, number = name.rpartition(PART_SUFFIX)
    return bool(stem) and bool(dot_part) and len(number) == 3 and number.isdigit()


def part_name(archive_name: str, index: int) -> str:
    return f"{archive_name}{PART_SUFFIX}{index:03d}"


def part_path(archive: Path, index: int) -> Path:
    """Part ``index`` (from 0) of the split archive ``archive``."""
    return archive.with_name(part_name(archive.name, index))


def checksum_name(archive_name: str) -> str:
    return archive_name + CHECKSUM_SUFFIX


def checksum_path(archive: Path) -> Path:
    """``NAME.sha256`` beside the archive: the sha256 of the whole archive (parts concatenated)."""
    return archive.with_name(checksum_name(archive.name))


def sbom_name(archive_name: str) -> str:
    return archive_name + SBOM_SUFFIX


def sbom_path(archive: Path) -> Path:
    """``NAME.cdx.json`` beside the archive: its CycloneDX SBOM (the same bytes as in the image)."""
    return archive.with_name(sbom_name(archive.name))


def signature_name(archive_name: str) -> str:
    return checksum_name(archive_name) + SIGNATURE_SUFFIX


def signature_path(archive: Path) -> Path:
    """``NAME.sha256.sig`` beside the archive: the SSH signature of its checksum file (``pack --sign``)."""
    return archive.with_name(signature_name(archive.name))


def parts_checksum_name(archive_name: str) -> str:
    return archive_name + PARTS_CHECKSUM_SUFFIX


def parts_checksum_path(archive: Path) -> Path:
    """``NAME.parts.sha256`` beside a split archive: one ``sha256sum`` line per part."""
    return archive.with_name(parts_checksum_name(archive.name))


def partial_owner() -> str:
    """A tag unique to one writer: this process's pid and a random part (``12345-9f3a61c2``)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def partial_path(final: Path, *, owner: str) -> Path:
    """The name ``final`` is written under, by the writer ``owner`` (``partial_owner()``), until complete.

    Hidden (a leading dot), so that neither ``ls`` nor a ``NAME.part*`` glob in a user's shell sees it."""
    return final.with_name(f".{final.name}.{owner}{PARTIAL_SUFFIX}")


_PARTIAL = re.compile(r"^\.(?P<final>.+)\.(?P<pid>[0-9]+)-[0-9a-f]+" + re.escape(PARTIAL_SUFFIX) + "$")


def partial_of(name: str) -> tuple[str, int] | None:
    """For a temporary file's name, the final name it becomes and the pid of the process writing it
    (``ezrunner clean`` removes those whose process is gone); None for any other name."""
    match = _PARTIAL.fullmatch(name)
    return (match["final"], int(match["pid"])) if match else None


def archive_of(path: Path) -> Path:
    """The archive ``path`` names: itself, or the archive whose first part it is."""
    return path.with_name(path.name.removesuffix(FIRST_PART_SUFFIX)) if path.name.endswith(FIRST_PART_SUFFIX) else path


def numbered_parts(archive: Path) -> list[Path]:
    """Every ``NAME.partNNN`` beside ``archive`` now, gaps included, in name order."""
    return sorted(archive.parent.glob(glob.escape(archive.name) + PART_SUFFIX + "[0-9]" * 3))


_SHA256_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")
#: A parts list is one short line per part; anything much larger is not one (and is not read whole).
_MAX_PARTS_LIST_BYTES = 1 << 20


def read_parts_list(archive: Path) -> list[tuple[Path, str]]:
    """The parts ``NAME.parts.sha256`` lists for the split archive ``archive``, in order, each with its
    sha256 (lower case). Raises ArtifactInvalidError when the list is unreadable, names a file that is
    not the next part of this archive, or is empty; it does not look at the parts themselves."""
    listing = parts_checksum_path(archive)
    try:
        if listing.stat().st_size > _MAX_PARTS_LIST_BYTES:
            raise _damaged_list(listing, "it is far too large for a list of parts")
        text = listing.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise _damaged_list(listing, f"it cannot be read ({error.strerror or error})") from error
    parts: list[tuple[Path, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _SHA256_LINE.fullmatch(line.strip())
        if match is None:
            raise _damaged_list(listing, f"line {number} is not '<sha256>  <file>'")
        # Only this archive's next part, by its exact name: never a path, never another file.
        expected = part_name(archive.name, len(parts))
        if match[2] != expected:
            raise _damaged_list(listing, f"line {number} names {match[2]!r} where {expected!r} belongs")
        parts.append((archive.with_name(expected), match[1].lower()))
    if not parts:
        raise _damaged_list(listing, "it lists no parts")
    return parts


def _damaged_list(listing: Path, why: str) -> ArtifactInvalidError:
    return ArtifactInvalidError(
        f"{listing.name} is damaged: {why}.",
        hint="Copy it again from the machine that packed the archive (it was written beside the parts).",
    )


def archive_parts(path: Path) -> list[Path]:
    """The files that make up the archive ``path``: itself, or the parts its ``NAME.parts.sha256`` lists.

    ``path`` may also name the first part. Numbered parts the list does not name are not included
    (``stray_parts`` names them). Raises ArtifactInvalidError when the archive is not there, a listed
    part is missing, or parts lie there without their list.
    """
    path = archive_of(path)
    if path.is_file():
        return [path]
    listing = parts_checksum_path(path)
    if not listing.is_file():
        if part_path(path, 0).is_file():
            raise ArtifactInvalidError(
                f"{listing.name} is missing beside {part_name(path.name, 0)}: it lists which parts make up "
                "the archive.",
                hint=f"Copy {listing.name} (written with the parts) into {path.parent}, then try again.",
            )
        raise ArtifactInvalidError(
            f"There is no archive at {path} (nor parts {part_name(path.name, 0)} …).",
            hint="Check the path; for a split archive keep all the parts in one folder.",
        )
    parts = [part for part, _ in read_parts_list(path)]
    missing = [part.name for part in parts if not part.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ArtifactInvalidError(
            f"{len(missing)} of the {len(parts)} parts of {path.name} are missing: {shown}.",
            hint=f"Copy every part {listing.name} lists into {path.parent}, then try again.",
        )
    return parts


def stray_parts(archive: Path) -> list[Path]:
    """Numbered parts beside the split archive ``archive`` that its parts list does not name (ignored)."""
    archive = archive_of(archive)
    if archive.is_file() or not parts_checksum_path(archive).is_file():
        return []
    listed = {part for part, _ in read_parts_list(archive)}
    return [part for part in numbered_parts(archive) if part not in listed]


def load_script_candidates(archive: Path) -> tuple[Path, Path]:
    """Where an archive's load.sh lies: ``load.sh`` beside it, or ``<stem>.load.sh`` when another
    archive's load.sh already had that name (``core.render.find_load_script`` tells which is whose)."""
    stem = archive.name.split(TAR_SUFFIX)[0]
    return archive.with_name(LOAD_SCRIPT), archive.with_name(stem + LOAD_SCRIPT_SUFFIX)
