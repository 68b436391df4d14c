"""``python -m bench``: time the fast export path against `cp` and against docker build + docker save.

For each weights size: synthetic safetensors shards (random, incompressible), a runtime image built
once and cached (its layers in the layer cache, as after a first pack), then ``--reps`` rounds of, in
this order: the fast pack (in a child process: time, peak RSS, bytes written), ``cp`` of the tar it made
(+ fsync, as the pack fsyncs), and the docker-build path (build of the full Dockerfile with the runtime
steps cached + streamed docker save + sha256, as ``core.pack`` does it). Medians are reported.

Bytes written, two ways: per process from /proc/<pid>/io write_bytes (bytes the process dirtied; for
the docker-build path the bench process plus dockerd, which misses the short-lived ``docker-untar``
children that extract the context and COPY, so it is a lower bound); and for the whole disk from
/sys/dev/block/<dev>/stat sectors written between two ``sync``s (includes file system journal and
metadata, and whatever else wrote to the disk meanwhile).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.workload import LABELS, MODEL_ROOT, choose_base, dockerfile, write_context, write_gguf, write_weights
from core.docker import api as docker_api
from core.layer_cache import cached_runtime_layers, runtime_layers
from core.layers import plan_layers

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "latest.json"
RUNTIME_TAG = "ezrunner-bench/runtime:1"
CLASSIC_TAG = "ezrunner-bench/classic:1"
FAST_TAG = "ezrunner-bench/fast:1"
GIB = 1 << 30


def _io(pid: int | str = "self") -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split(": ") for line in text.splitlines())}


def _dockerd_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd":
                    return int(entry.name)
            except OSError:
                continue
    return None


def _sectors_written(path: Path) -> int | None:
    dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat")
    try:
        return int(stat.read_text().split()[6])
    except (OSError, IndexError, ValueError):
        return None


def _disk_bytes_written(path: Path, action: Callable[[], Any]) -> tuple[Any, int | None]:
    os.sync()
    before = _sectors_written(path)
    answer = action()
    os.sync()
    after = _sectors_written(path)
    return answer, None if before is None or after is None else (after - before) * 512


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fast_rep(*, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    spec_path = workdir / "fast-spec.json"
    spec_path.write_text(json.dumps(spec))

    def run() -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.pack_once", str(spec_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"the fast pack failed:\n{proc.stderr[-4000:]}")
        answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return answer

    result, disk = _disk_bytes_written(workdir, run)
    result["disk_write_bytes"] = disk
    tar = Path(result["paths"][0])
    copy = tar.with_name(tar.name + ".cp")
    os.sync()
    started = time.perf_counter()
    subprocess.run(["cp", str(tar), str(copy)], check=True)
    _fsync(copy)
    result["cp_seconds"] = time.perf_counter() - started
    copy.unlink()
    tar.unlink()
    return result


def _classic_rep(*, context: Path, workdir: Path, compress: str) -> dict[str, Any]:
    client = docker_api.connect()
    docker_api.remove_image(ref=CLASSIC_TAG, force=True, client=client)  # so the COPY steps are not cached
    out = workdir / ("classic.tar" + (".zst" if compress == "zstd" else ""))
    dockerd = _dockerd_pid()
    self_before, daemon_before = _io(), _io(dockerd) if dockerd else {}
    times: dict[str, float] = {}

    def run() -> Any:
        started = time.perf_counter()
        docker_api.build_image(context_dir=context, tag=CLASSIC_TAG, labels=LABELS, client=client)
        times["build_seconds"] = time.perf_counter() - started
        written = docker_api.save_image(
            ref=CLASSIC_TAG, out=out, compress="zstd" if compress == "zstd" else "none", client=client
        )
        times["seconds"] = time.perf_counter() - started
        return written

    written, disk = _disk_bytes_written(workdir, run)
    self_after, daemon_after = _io(), _io(dockerd) if dockerd else {}
    process_bytes = self_after.get("write_bytes", 0) - self_before.get("write_bytes", 0)
    process_bytes += daemon_after.get("write_bytes", 0) - daemon_before.get("write_bytes", 0)
    out.unlink()
    docker_api.remove_image(ref=CLASSIC_TAG, force=True, client=client)
    return {
        **times,
        "size_on_disk": written.size,
        "process_write_bytes": process_bytes,
        "disk_write_bytes": disk,
    }


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run_size(*, size_gib: float, reps: int, workdir: Path, base: str, compress: str,
             model_format: str = "safetensors") -> dict[str, Any]:  # fmt: skip
    client = docker_api.connect()
    model_dir = workdir / (f"weights-{size_gib:g}g" if model_format == "safetensors" else f"gguf-{size_gib:g}g")
    print(f"\n## {size_gib:g} GiB of {model_format} weights", flush=True)
    started = time.perf_counter()
    write = write_gguf if model_format == "gguf" else write_weights
    files = write(folder=model_dir, total_bytes=int(size_gib * GIB))
    print(f"weights ready in {model_dir} ({time.perf_counter() - started:.0f} s)", flush=True)
    layers = plan_layers(files=files)

    runtime_context = write_context(folder=workdir / "runtime-context", text=dockerfile(base=base, layer_names=None))
    started = time.perf_counter()
    runtime_id = docker_api.build_image(context_dir=runtime_context, tag=RUNTIME_TAG, labels=LABELS, client=client)
    runtime_build = time.perf_counter() - started
    cache_dir = workdir / "layer-cache"
    cached = cached_runtime_layers(image_id=runtime_id, cache_dir=cache_dir) is not None
    started = time.perf_counter()
    runtime = runtime_layers(client=client, image_id=runtime_id, cache_dir=cache_dir)
    cache_fill = None if cached else time.perf_counter() - started
    filled = "already filled" if cache_fill is None else f"filled in {cache_fill:.1f} s (one docker save)"
    print(
        f"runtime image {runtime_id[:19]} ({runtime.size / GIB:.2f} GiB of layers), "
        f"built in {runtime_build:.1f} s; layer cache {filled}",
        flush=True,
    )

    classic_context = workdir / "classic-context"
    shutil.rmtree(classic_context, ignore_errors=True)
    write_context(folder=classic_context, text=dockerfile(base=base, layer_names=[layer.name for layer in layers]))
    for layer in layers:  # as core.pack stages it: hard links into layers/<layer>/
        for f in layer.files:
            target = classic_context / "layers" / layer.name / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(model_dir / f.path, target)

    spec = {
        "runtime_id": runtime_id,
        "cache_dir": str(cache_dir),
        "model_dir": str(model_dir),
        "model_root": MODEL_ROOT,
        "files": [[f.path, f.size] for f in files],
        "repo_tag": FAST_TAG,
        "compress": compress,
        "out": str(workdir / ("fast.tar" + (".zst" if compress == "zstd" else ""))),
    }
    fast, classic = [], []
    for rep in range(reps):
        fast.append(_fast_rep(spec=spec, workdir=workdir))
        last = fast[-1]
        print(
            f"rep {rep + 1}/{reps}: fast {last['seconds']:.1f} s (cp {last['cp_seconds']:.1f} s)",
            end="",
            flush=True,
        )
        classic.append(_classic_rep(context=classic_context, workdir=workdir, compress=compress))
        c = classic[-1]
        print(f"; docker build + save {c['seconds']:.1f} s (build {c['build_seconds']:.1f} s)", flush=True)
    shutil.rmtree(classic_context, ignore_errors=True)

    tar_size = fast[0]["tar_size"]
    fast_s = _median([r["seconds"] for r in fast])
    cp_s = _median([r["cp_seconds"] for r in fast])
    classic_s = _median([r["seconds"] for r in classic])
    classic_size = classic[0]["size_on_disk"]

    def ratio(values: list[int | None], size: int) -> float | None:
        known = [v for v in values if v is not None]
        return round(_median([v / size for v in known]), 3) if known else None

    return {
        "weights_gib": size_gib,
        "weights_bytes": sum(f.size for f in files),
        "runtime_layers_bytes": runtime.size,
        "runtime_cache_fill_seconds": cache_fill,
        "fast_tar_bytes": tar_size,
        "fast_bytes_on_disk": fast[0]["size_on_disk"],
        "classic_bytes_on_disk": classic_size,
        "fast_seconds_median": round(fast_s, 2),
        "cp_seconds_median": round(cp_s, 2),
        "classic_seconds_median": round(classic_s, 2),
        "classic_build_seconds_median": round(_median([r["build_seconds"] for r in classic]), 2),
        "pack_over_cp": round(fast_s / cp_s, 2),
        "classic_over_fast": round(classic_s / fast_s, 2),
        "fast_peak_rss_mb": round(max(r["peak_rss_bytes"] for r in fast) / 1e6, 1),
        "fast_written_over_tar_process": ratio([r["write_bytes"] for r in fast], fast[0]["size_on_disk"]),
        "fast_written_over_tar_disk": ratio([r["disk_write_bytes"] for r in fast], fast[0]["size_on_disk"]),
        "classic_written_over_tar_process": ratio([r["process_write_bytes"] for r in classic], classic_size),
        "classic_written_over_tar_disk": ratio([r["disk_write_bytes"] for r in classic], classic_size),
        "reps": {"fast": fast, "classic": classic},
    }


def _machine(base: str) -> dict[str, Any]:
    client = docker_api.connect()
    mem = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    info = client.info()
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem / GIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": client.version().get("Version"),
        "storage_driver": info.get("Driver"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "base_image": base,
    }


def _table(results: list[dict[str, Any]]) -> str:
    rows = [
        ("fast pack (s)", "fast_seconds_median", ""),
        ("cp of its tar + fsync (s)", "cp_seconds_median", ""),
        ("docker build + save (s)", "classic_seconds_median", ""),
        ("pack ÷ cp", "pack_over_cp", "≤ 1.5"),
        ("docker-build ÷ fast", "classic_over_fast", "≥ 4"),
        ("fast peak RSS (MB)", "fast_peak_rss_mb", "< 300"),
        ("fast: written ÷ tar (process)", "fast_written_over_tar_process", "≤ 1.05"),
        ("fast: written ÷ tar (disk)", "fast_written_over_tar_disk", ""),
        ("docker-build: written ÷ tar (process, lower bound)", "classic_written_over_tar_process", ""),
        ("docker-build: written ÷ tar (disk)", "classic_written_over_tar_disk", ""),
    ]
    head = "| metric | " + " | ".join(f"{r['weights_gib']:g} GiB" for r in results) + " | target |"
    lines = [head, "|" + "---|" * (len(results) + 2)]
    for label, key, target in rows:
        lines.append(f"| {label} | " + " | ".join(str(r[key]) for r in results) + f" | {target} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--sizes", default="2", help="weights sizes in GiB, comma-separated (default: 2)")
    parser.add_argument("--reps", type=int, default=3, help="rounds per size; medians are reported (default: 3)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ezrunner-bench",
        help="where weights, caches and archives go (weights are kept for the next run)",
    )
    parser.add_argument("--base", help="base image (default: the offline transformers image, else a tiny one)")
    parser.add_argument("--compress", choices=("none", "zstd"), default="none")
    parser.add_argument(
        "--model-format", choices=("safetensors", "gguf"), default="safetensors",
        help="safetensors shards on the transformers base, or GGUF files on the llama.cpp base",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default: {RESULTS})")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    args.workdir.mkdir(parents=True, exist_ok=True)
    client = docker_api.connect()
    base = choose_base(client=client, requested=args.base, model_format=args.model_format)
    runtime_guess = int(client.images.get(base).attrs.get("Size") or 0)
    free = shutil.disk_usage(args.workdir).free
    for size in sizes:
        folder = args.workdir / (f"weights-{size:g}g" if args.model_format == "safetensors" else f"gguf-{size:g}g")
        existing = sum(p.stat().st_size for p in folder.glob("*.*tensors")) + sum(
            p.stat().st_size for p in folder.glob("*.gguf")
        )
        # weights + the docker-build path's copies: context temp file, daemon context, layer, saved tar
        need = int(size * GIB) - existing + 4 * int(size * GIB) + 2 * runtime_guess
        if need * 1.1 > free:
            raise SystemExit(
                f"{size:g} GiB needs about {need * 1.1 / GIB:.0f} GiB free in {args.workdir}; "
                f"{free / GIB:.0f} GiB is free. Use --workdir elsewhere or smaller --sizes."
            )
    machine = _machine(base)
    print(f"machine: {machine}", flush=True)
    results = [
        run_size(size_gib=s, reps=args.reps, workdir=args.workdir, base=base, compress=args.compress,
                 model_format=args.model_format)
        for s in sizes
    ]
    report = {
        "machine": machine,
        "compress": args.compress,
        "model_format": args.model_format,
        "reps": args.reps,
        "results": results,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    print("\n" + _table(results) + "\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
