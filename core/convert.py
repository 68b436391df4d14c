"""Safetensors → GGUF at pack time, with llama.cpp's own tools: ``convert_hf_to_gguf.py`` (F16, BF16 or Q8_0)
and, for smaller quantizations, ``llama-quantize`` run in the llama.cpp tools image.

Results are cached by model commit and target quantization under ``$EZRUNNER_HOME/gguf``, so a second pack of
the same model does not convert again. Every step reports ``Event``s (stage "convert") and honours cancel;
a failed or cancelled conversion leaves no partial file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.errors import CancelledError, ConversionError, ConverterMissingError
from core.events import Cancel, Event, EventSink, ignore_events, raise_if_cancelled
from core.llamacpp_source import llama_cpp_source

#: ``pip install "ezrunner[gguf]"`` brings what the converter imports (llama.cpp's
#: requirements/requirements-convert_hf_to_gguf.txt: torch, numpy, sentencepiece, transformers; gguf-py's
#: own: numpy, tqdm, pyyaml)
CONVERTER_EXTRA = "gguf"
CONVERTER_MODULES = ("torch", "numpy", "transformers", "sentencepiece", "yaml", "tqdm")
#: what convert_hf_to_gguf.py writes directly (its --outtype choices that need no llama-quantize)
DIRECT_OUTTYPES = {"F16": "f16", "BF16": "bf16", "Q8_0": "q8_0", "F32": "f32"}
_POLL_S = 0.5

# The converter names a BPE tokenizer's pre-tokenizer by hashing how it splits a fixed text and refuses
# hashes it does not know (conversion/base.py, get_vocab_base_pre); it has no flag for it. With
# ``pre_tokenizer`` set, this driver answers that one question in the converter's own process, then runs
# the unmodified script.
_DRIVER = """
import runpy, sys
from conversion.base import TextModel
answer = sys.argv[1]
TextModel.get_vocab_base_pre = lambda self, tokenizer: answer
script = sys.argv[2]
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


@dataclass(frozen=True)
class Conversion:
    """What the plan asks the pack to make from the safetensors weights."""

    quant: str  # the GGUF quantization to pack: "F16", "Q8_0", "Q4_K_M", ...
    output_name: str  # the file name inside the image
    pre_tokenizer: str | None = None  # for tokenizers the converter does not recognise

    @property
    def direct(self) -> bool:
        """Whether the converter writes it in one step (no llama-quantize)."""
        return self.quant.upper() in DIRECT_OUTTYPES

    @property
    def converter_outtype(self) -> str:
        """The converter's --outtype: the quant itself, or F16 as the source llama-quantize starts from (it
        refuses to requantize an already quantized file)."""
        return DIRECT_OUTTYPES.get(self.quant.upper(), "f16")


def missing_converter_modules() -> list[str]:
    """Python modules the converter needs that this environment lacks."""
    return [name for name in CONVERTER_MODULES if importlib.util.find_spec(name) is None]


def check_converter() -> None:
    """Fail before any download when the workstation cannot run the converter."""
    missing = missing_converter_modules()
    if missing:
        raise ConverterMissingError(
            f"Converting this model to GGUF needs the Python packages {', '.join(missing)}, which are not "
            "installed.",
            hint=f'Install them with `pip install "ezrunner[{CONVERTER_EXTRA}]"` (or pick a GGUF repository of the '
            "model, which needs no conversion).",
        )


def conversion_dir(*, data_dir: Path, commit: str, quant: str) -> Path:
    return data_dir / "gguf" / f"{commit[:16]}-{quant}"


def convert(
    *,
    model_dir: Path,
    conversion: Conversion,
    data_dir: Path,
    commit: str,
    quantize: QuantizeRunner | None = None,
    expected_bytes: int | None = None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> Path:
    """The GGUF file for ``model_dir`` (converted now, or cached from an earlier pack)."""
    folder = conversion_dir(data_dir=data_dir, commit=commit, quant=conversion.quant)
    final = folder / conversion.output_name
    if final.is_file():
        on_event(Event(stage="convert", message=f"Using the GGUF converted earlier: {final}"))
        return final
    check_converter()
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=folder) as scratch:
        work = Path(scratch)
        first = work / (conversion.output_name if conversion.direct else "intermediate.gguf")
        on_event(Event(stage="convert", message=f"Converting to GGUF ({conversion.converter_outtype}) with llama.cpp"))
        run_converter(
            model_dir=model_dir, out=first, outtype=conversion.converter_outtype,
            pre_tokenizer=conversion.pre_tokenizer, expected_bytes=expected_bytes, on_event=on_event, cancel=cancel,
        )  # fmt: skip
        result = first
        if not conversion.direct:
            if quantize is None:
                raise ConversionError(
                    f"Quantizing to {conversion.quant} needs llama-quantize, and no llama.cpp tools image is set.",
                    hint="Run scripts/offline-base-images llama.cpp, or pick --quant Q8_0 or F16.",
                )
            result = work / conversion.output_name
            on_event(Event(stage="convert", message=f"Quantizing to {conversion.quant} with llama-quantize"))
            quantize(source=first, dest=result, quant=conversion.quant, on_event=on_event, cancel=cancel)
        raise_if_cancelled(cancel, message="The conversion was cancelled.", hint="Start the pack again when ready.")
        result.replace(final)
    on_event(Event(stage="convert", done=final.stat().st_size, total=final.stat().st_size, unit="B",
                   message=f"Converted: {final.name}"))  # fmt: skip
    return final


class QuantizeRunner(Protocol):
    """Runs ``llama-quantize SOURCE DEST QUANT`` somewhere (a container, a local binary)."""

    def __call__(
        self, *, source: Path, dest: Path, quant: str, on_event: EventSink, cancel: Cancel | None
    ) -> None: ...


@dataclass(frozen=True)
class LocalQuantize:
    """A ``llama-quantize`` binary on this machine."""

    binary: Path

    def __call__(
        self, *, source: Path, dest: Path, quant: str, on_event: EventSink, cancel: Cancel | None
    ) -> None:
        _run_watched(
            [str(self.binary), str(source), str(dest), quant], out=dest, expected_bytes=None, what="llama-quantize",
            env=None, cwd=dest.parent, on_event=on_event, cancel=cancel,
        )  # fmt: skip


@dataclass(frozen=True)
class ContainerQuantize:
    """``llama-quantize`` inside a llama.cpp image that has it (the offline image, or ggml-org's ``full``
    image), with no network, as this user, on a bind-mounted folder."""

    image: str
    binary: str = "llama-quantize"

    def __call__(
        self, *, source: Path, dest: Path, quant: str, on_event: EventSink, cancel: Cancel | None
    ) -> None:
        if source.parent != dest.parent:
            raise ValueError("source and dest must share a folder (it is mounted into the container)")
        argv = [
            "docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}",
            "-v", f"{source.parent}:/work", "--entrypoint", self.binary, self.image,
            f"/work/{source.name}", f"/work/{dest.name}", quant,
        ]  # fmt: skip
        _run_watched(
            argv, out=dest, expected_bytes=None, what=f"llama-quantize in {self.image}", env=None, cwd=dest.parent,
            on_event=on_event, cancel=cancel,
        )  # fmt: skip


def run_converter(
    *,
    model_dir: Path,
    out: Path,
    outtype: str,
    pre_tokenizer: str | None = None,
    expected_bytes: int | None = None,
    on_event: EventSink = ignore_events,
    cancel: Cancel | None = None,
) -> Path:
    """Run the pinned ``convert_hf_to_gguf.py`` on a Hugging Face folder (``--outtype outtype``), as this Python."""
    check_converter()
    source = llama_cpp_source()
    script = str(source / "convert_hf_to_gguf.py")
    args = [str(model_dir), "--outfile", str(out), "--outtype", outtype]
    if pre_tokenizer:
        argv = [sys.executable, "-c", _DRIVER, pre_tokenizer, script, *args]
    else:
        argv = [sys.executable, script, *args]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), str(source / "gguf-py"), env.get("PYTHONPATH")) if p)
    env.pop("NO_LOCAL_GGUF", None)
    env["HF_HUB_OFFLINE"] = "1"  # the converter must read the downloaded folder, never the network
    _run_watched(
        argv, out=out, expected_bytes=expected_bytes, what="convert_hf_to_gguf.py", env=env, cwd=out.parent,
        on_event=on_event, cancel=cancel,
    )  # fmt: skip
    return out


def _run_watched(
    argv: Sequence[str],
    *,
    out: Path,
    expected_bytes: int | None,
    what: str,
    env: dict[str, str] | None,
    cwd: Path,
    on_event: EventSink,
    cancel: Cancel | None,
) -> None:
    """Run a tool that writes ``out``, reporting its size as progress; kill it on cancel."""
    log = cwd / f".{out.name}.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while process.poll() is None:
                if cancel is not None and cancel.is_set():
                    _kill(process)
                    raise CancelledError("The conversion was cancelled.", hint="Start the pack again when ready.")
                size = out.stat().st_size if out.exists() else 0
                total = max(expected_bytes, size) if expected_bytes else None
                on_event(Event(stage="convert", done=size, total=total, unit="B", file=out.name))
                time.sleep(_POLL_S)
        except BaseException:
            _kill(process)
            raise
    text = log.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0 or not out.is_file():
        raise _failure(what=what, output=text, code=process.returncode)


def _failure(*, what: str, output: str, code: int | None) -> ConversionError:
    tail = "\n".join(output.strip().splitlines()[-12:])
    if "pre-tokenizer was not recognized" in output or "BPE pre-tokenizer" in output:
        return ConversionError(
            "llama.cpp's converter does not recognise this model's tokenizer (its pre-tokenizer).",
            hint="Pick a GGUF repository of the model, or name the pre-tokenizer with --gguf-pre-tokenizer "
            "(e.g. llama-bpe, qwen2, gpt-2) if you know which one the model uses.",
        )
    if "is not supported" in output and "Model" in output:
        return ConversionError(
            f"llama.cpp's converter does not support this model's architecture:\n{tail}",
            hint="Pick a GGUF repository of the model, or another engine (--engine vllm or transformers).",
        )
    return ConversionError(
        f"{what} failed (exit code {code}). Its last lines:\n{tail}",
        hint="Fix what the lines above say, or pick a GGUF repository of the model.",
    )


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def remove_conversion(*, data_dir: Path, commit: str, quant: str) -> None:
    shutil.rmtree(conversion_dir(data_dir=data_dir, commit=commit, quant=quant), ignore_errors=True)
