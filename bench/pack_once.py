"""One fast-path pack in a process of its own, so its peak RSS and I/O counters are its alone.

``python -m bench.pack_once SPEC.json`` prints one JSON line: seconds, peak RSS, bytes read and written.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from core.hubs.base import ModelFile
from core.image_archive import ModelLayerSource, write_image_archive
from core.layer_cache import runtime_layers
from core.layers import plan_layers


def io_counters() -> dict[str, int]:
    """/proc/self/io: write_bytes counts what this process sent towards the disk (page cache dirtied)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {key: int(value) for key, value in fields.items()}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    files = [ModelFile(path=path, size=size) for path, size in spec["files"]]
    model_dir = Path(spec["model_dir"])
    before = io_counters()
    started = time.perf_counter()
    runtime = runtime_layers(client=None, image_id=spec["runtime_id"], cache_dir=Path(spec["cache_dir"]))
    result = write_image_archive(
        runtime=runtime,
        model_root=spec["model_root"],
        layers=[ModelLayerSource(layer=layer, folder=model_dir) for layer in plan_layers(files=files)],
        repo_tag=spec["repo_tag"],
        out=Path(spec["out"]),
        compress=spec["compress"],
    )
    seconds = time.perf_counter() - started
    after = io_counters()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "write_bytes": after["write_bytes"] - before["write_bytes"],
                "read_bytes": after["read_bytes"] - before["read_bytes"],
                "tar_size": result.tar_size,
                "size_on_disk": result.size,
                "sha256": result.sha256,
                "image_id": result.image_id,
                "paths": [str(p) for p in result.paths],
            }
        )
    )


if __name__ == "__main__":
    main()
