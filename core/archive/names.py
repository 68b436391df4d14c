"""Every file name an archive brings with it, in one place.

For an archive ``NAME`` (``model.tar``, or ``model.tar.zst`` when compressed) a pack writes, beside it:

- ``NAME`` itself, or its parts ``NAME.part000``, ``NAME.part001`` … when split (then no ``NAME``);
- ``NAME.sha256``: the sha256 of ``NAME`` (of the parts concatenated, when split), ``sha256sum`` format;
- ``NAME.parts.sha256``: one line per part, only when split;
- ``load.sh``, or ``<stem>.load.sh`` when another archive's ``load.sh`` already lies there;

and, while writing, each file under its final name plus ``.partial``, renamed when complete.
``templates/load.sh.j2`` spells the same names in shell (``"$ARCHIVE.sha256"`` …); the golden load.sh
tests keep the two in step.
"""

from __future__ import annotations

import glob
from pathlib import Path

from core.archive.compression import Compression
from core.errors import ArtifactInvalidError

TAR_SUFFIX = ".tar"
ZSTD_SUFFIX = ".zst"
CHECKSUM_SUFFIX = ".sha256"
PARTS_CHECKSUM_SUFFIX = ".parts.sha256"
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


def parts_checksum_name(archive_name: str) -> str:
    return archive_name + PARTS_CHECKSUM_SUFFIX


def parts_checksum_path(archive: Path) -> Path:
    """``NAME.parts.sha256`` beside a split archive: one ``sha256sum`` line per part."""
    return archive.with_name(parts_checksum_name(archive.name))


def partial_path(final: Path) -> Path:
    """The name ``final`` is written under until it is complete."""
    return final.with_name(final.name + PARTIAL_SUFFIX)


def archive_of(path: Path) -> Path:
    """The archive ``path`` names: itself, or the archive whose first part it is."""
    return path.with_name(path.name.removesuffix(FIRST_PART_SUFFIX)) if path.name.endswith(FIRST_PART_SUFFIX) else path


def numbered_parts(archive: Path) -> list[Path]:
    """Every ``NAME.partNNN`` beside ``archive`` now, gaps included, in name order."""
    return sorted(archive.parent.glob(glob.escape(archive.name) + PART_SUFFIX + "[0-9]" * 3))


def archive_parts(path: Path) -> list[Path]:
    """The files that make up the archive ``path``: itself, or ``path.part000``, ``path.part001`` …

    ``path`` may also name the first part. Raises ArtifactInvalidError when neither is there.
    """
    path = archive_of(path)
    if path.is_file():
        return [path]
    parts: list[Path] = []
    while part_path(path, len(parts)).is_file():
        parts.append(part_path(path, len(parts)))
    if not parts:
        raise ArtifactInvalidError(
            f"There is no archive at {path} (nor parts {part_name(path.name, 0)} …).",
            hint="Check the path; for a split archive keep all the parts in one folder.",
        )
    return parts


def load_script_candidates(archive: Path) -> tuple[Path, Path]:
    """Where an archive's load.sh lies: ``load.sh`` beside it, or ``<stem>.load.sh`` when another
    archive's load.sh already had that name (``core.render.find_load_script`` tells which is whose)."""
    stem = archive.name.split(TAR_SUFFIX)[0]
    return archive.with_name(LOAD_SCRIPT), archive.with_name(stem + LOAD_SCRIPT_SUFFIX)
