"""How much memory does `ezrunner ui` use while it serves a multi-GB archive?

Run: ``python -m bench.download_rss [--size-gib 2]``. Writes a non-sparse file of random bytes (every
block really on disk and incompressible, as a model tar mostly is), records it as a finished pack in
a temporary EZRUNNER_HOME, starts the real server (``ezrunner ui --no-browser``), downloads the file
through /api/artifacts/<id>/archive with requests (streamed, discarded) and samples the server's
RSS, children included, every 100 ms. Prints the figures and one JSON line; the target is a peak
under 300 MB. Exits 1 when the target is missed or the download is short.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

from core.history import History
from ezrunner_ui.routes import artifact_url
from tests.e2e.ui_server import running_ui_server

TARGET_BYTES = 300 * 10**6
SAMPLE_INTERVAL_S = 0.1
_BLOCK = 8 * 1024 * 1024


def write_random_file(path: Path, size: int) -> str:
    """``size`` random bytes, written block by block (no holes); returns their sha256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(_BLOCK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):  # a child may exit between listing and reading
            total += p.memory_info().rss
    return total


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append(tree_rss(self.process))
            except psutil.NoSuchProcess:
                return
            self.halt.wait(SAMPLE_INTERVAL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download_rss", description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=2.0, help="size of the archive (default 2)")
    parser.add_argument("--dir", type=Path, help="where to write it (default: a temporary folder)")
    parser.add_argument("--verify", action="store_true", help="hash the download (slows the client)")
    parser.add_argument(
        "--client-mib-s",
        type=float,
        help="read no faster than this, like a slow link (default: as fast as possible)",
    )
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ezrunner-bench-", dir=args.dir))
    try:
        size = int(args.size_gib * 2**30)
        archive = work / "out" / "bench.tar"
        archive.parent.mkdir()
        print(f"writing {size / 2**30:.2f} GiB of random bytes to {archive} …", file=sys.stderr)
        sha256 = write_random_file(archive, size)
        history = History(work / "home" / "history.sqlite")
        record_id = history.start(
            model_id="bench/download-rss",
            source="local",
            revision="-",
            model_commit="-",
            target={},
            plan={},
            dockerfile="",
            image_tag="ezrunner-bench:latest",
        )
        history.finish(
            record_id, outcome="succeeded", archive=archive, parts=(archive,), size=size, sha256=sha256
        )

        with running_ui_server(env={"EZRUNNER_HOME": str(work / "home")}) as server:
            time.sleep(1.0)  # let start-up allocations settle before the baseline
            baseline = tree_rss(psutil.Process(server.process.pid))
            sampler = RssSampler(server.process.pid)
            sampler.start()
            received = 0
            digest = hashlib.sha256()
            started = time.monotonic()
            # requests asks for gzip like a browser does: this also measures that the tar is not recompressed.
            with requests.get(
                server.url + artifact_url(record_id=record_id), stream=True, timeout=60
            ) as response:
                response.raise_for_status()
                encoding = response.headers.get("content-encoding", "identity")
                for chunk in response.iter_content(chunk_size=1 << 20):
                    received += len(chunk)
                    if args.verify:
                        digest.update(chunk)
                    if args.client_mib_s:  # a slow reader: the server must wait, not buffer the file
                        ahead = received / (args.client_mib_s * 2**20) - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
            seconds = time.monotonic() - started
            sampler.halt.set()
            sampler.join()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    peak = max(sampler.samples, default=baseline)
    result = {
        "bench": "download_rss",
        "size_bytes": size,
        "received_bytes": received,
        "content_encoding": encoding,
        "data": "random, non-sparse",
        "client_limit_mib_s": args.client_mib_s,
        "seconds": round(seconds, 2),
        "throughput_mib_s": round(received / 2**20 / seconds, 1),
        "baseline_rss_mb": round(baseline / 1e6, 1),
        "peak_rss_mb": round(peak / 1e6, 1),
        "peak_minus_baseline_mb": round((peak - baseline) / 1e6, 1),
        "samples": len(sampler.samples),
        "target_mb": TARGET_BYTES / 1e6,
        "within_target": peak < TARGET_BYTES,
        "sha256_ok": (digest.hexdigest() == sha256) if args.verify else None,
    }
    print(
        f"downloaded {received / 2**30:.2f} GiB in {seconds:.1f} s = {result['throughput_mib_s']} MiB/s "
        f"(Content-Encoding: {encoding})"
    )
    print(
        f"server RSS (with children): baseline {result['baseline_rss_mb']} MB, peak {result['peak_rss_mb']} MB "
        f"over {len(sampler.samples)} samples; target < {TARGET_BYTES / 1e6:.0f} MB: "
        f"{'met' if result['within_target'] else 'MISSED'}"
    )
    print(json.dumps(result))
    complete = received == size and result["sha256_ok"] is not False
    return 0 if result["within_target"] and complete else 1


if __name__ == "__main__":
    sys.exit(main())
