"""The pinned llama.cpp source tree: the GGUF converter and the offline llama.cpp image both come from it.

It is ``vendor/llama.cpp`` of the ``llama-cpp-python`` source distribution on PyPI (a package registry is
reachable from workstations and CI where GitHub may not be), checked against a pinned sha256 and unpacked
once into ``$XDG_CACHE_HOME/ezrunner/llama.cpp-b<build>/src``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from core.engines.versions import LLAMA_CPP_BUILD, LLAMA_CPP_PYTHON_SDIST_SHA256, LLAMA_CPP_PYTHON_VERSION
from core.errors import LlamaCppSourceError

SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
_VENDOR_PREFIX = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
_COMPLETE_MARKER = ".ezrunner-complete"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ezrunner`` (default ``~/.cache/ezrunner``), shared with scripts/offline-base-images."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ezrunner"


def source_root(*, cache_dir: Path | None = None) -> Path:
    """Where the unpacked tree lives (whether or not it is there yet)."""
    return (cache_dir or default_cache_dir()) / f"llama.cpp-b{LLAMA_CPP_BUILD}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_sdist(folder: Path) -> Path:
    """The pinned sdist in ``folder``: kept if its sha256 matches, else fetched with this Python's pip."""
    sdist = folder / SDIST_NAME
    if sdist.is_file() and _sha256(sdist) == LLAMA_CPP_PYTHON_SDIST_SHA256:
        return sdist
    sdist.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "--dest", str(folder), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
    ]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LlamaCppSourceError(
            f"Could not run pip to fetch llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (the llama.cpp source): {exc}.",
            hint=f"Download {SDIST_NAME} from PyPI by hand and put it in {folder}.",
        ) from exc
    if result.returncode != 0 or not sdist.is_file():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LlamaCppSourceError(
            f"pip could not download llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} (the llama.cpp source): {last[0]}",
            hint=f"Check that PyPI (or your PIP_INDEX_URL mirror) is reachable, or put {SDIST_NAME} in {folder}.",
        )
    got = _sha256(sdist)
    if got != LLAMA_CPP_PYTHON_SDIST_SHA256:
        sdist.unlink(missing_ok=True)
        raise LlamaCppSourceError(
            f"{SDIST_NAME} from the package index has sha256 {got[:16]}…, not the pinned "
            f"{LLAMA_CPP_PYTHON_SDIST_SHA256[:16]}…: it is not the release EZ Runner was built against.",
            hint="Point pip at a trustworthy PyPI mirror, or place the genuine file in " + str(folder) + ".",
        )
    return sdist


def llama_cpp_source(*, cache_dir: Path | None = None, fetch: bool = True) -> Path:
    """The root of the pinned llama.cpp tree (holds ``convert_hf_to_gguf.py``, ``gguf-py``, ``CMakeLists.txt``).

    Unpacked once; with ``fetch`` False a missing tree is an error instead of a download.
    """
    root = source_root(cache_dir=cache_dir)
    tree = root / "src"
    if (tree / _COMPLETE_MARKER).is_file():
        return tree
    if not fetch:
        raise LlamaCppSourceError(
            f"The llama.cpp source (build b{LLAMA_CPP_BUILD}) is not in {root}.",
            hint="Run scripts/offline-base-images llama.cpp once on a machine with access to PyPI.",
        )
    sdist = _fetch_sdist(root)
    staging = Path(tempfile.mkdtemp(prefix=".src-", dir=root))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(_VENDOR_PREFIX)]
            if not members:
                raise LlamaCppSourceError(
                    f"{SDIST_NAME} holds no vendor/llama.cpp tree.", hint="Delete it from " + str(root) + " and retry."
                )
            for member in members:
                member.name = member.name[len(_VENDOR_PREFIX) :]
            archive.extractall(staging, members=[m for m in members if m.name], filter="data")
        (staging / _COMPLETE_MARKER).write_text(f"b{LLAMA_CPP_BUILD}\n", encoding="utf-8")
        shutil.rmtree(tree, ignore_errors=True)
        staging.rename(tree)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tree
