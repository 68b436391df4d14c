"""What the benchmark packs: synthetic safetensors shards, a Dockerfile of the template's shape, a base."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

from docker import DockerClient

from core.hubs.base import ModelFile

SHARD_BYTES = 1 << 30
HEADER_BYTES = 256
MODEL_ROOT = "/models/bench"
OFFLINE_BASE_REPOSITORY = "ezrunner/transformers-cpu"
OFFLINE_GGUF_BASE_REPOSITORY = "ezrunner/llama.cpp-cpu"
GGUF_SHARD_BYTES = 2 << 30  # GGUF repos ship one file per quantization, split past tens of GB
GGUF_ALIGNMENT = 32
GGML_TYPE_I8 = 24
TINY_BASE = "ezrunner-bench/tiny-base:1"
LABELS = {"ezrunner.bench": "1"}

# The shape of templates/base.Dockerfile.j2, with shell built-ins only so it also runs on the tiny base.
DOCKERFILE = """\
FROM {base}
ENV HF_HUB_OFFLINE=1 \\
    HOME=/home/ezrunner
RUN echo "ezrunner:x:10001:10001::/home/ezrunner:/bin/sh" >> /etc/passwd \\
 && echo "ezrunner:x:10001:" >> /etc/group
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
{model_copies}USER 10001:10001
WORKDIR /home/ezrunner
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \\
  CMD ["/bin/sh", "-c", "test -d {model_root}"]
ENTRYPOINT ["/bin/sh", "/usr/local/bin/entrypoint.sh"]
CMD []
LABEL io.ezrunner.model="bench"
"""


def _random_stream(seed: int) -> Callable[[int], bytes]:
    """Incompressible bytes fast (AES-CTR, ~2 GB/s); os.urandom (~150 MB/s here) without `cryptography`."""
    try:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    except ImportError:
        return lambda n: os.urandom(n)
    encryptor = Cipher(algorithms.AES(seed.to_bytes(16, "little")), modes.CTR(bytes(16))).encryptor()
    return lambda n: encryptor.update(bytes(n))


def write_weights(*, folder: Path, total_bytes: int) -> list[ModelFile]:
    """Shards of at most 1 GiB of random bytes behind a valid safetensors header, plus config files.

    Reused when already there with the right sizes (generating is slower than packing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-total_bytes // SHARD_BYTES)
    files: list[ModelFile] = []
    meta = {
        "config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode(),
        "tokenizer.json": b'{"version": "1.0"}',
        "generation_config.json": b"{}",
    }
    for name, body in meta.items():
        (folder / name).write_bytes(body)
        files.append(ModelFile(path=name, size=len(body)))
    left = total_bytes
    for index in range(count):
        size = min(SHARD_BYTES, left)
        left -= size
        path = folder / f"model-{index + 1:05d}-of-{count:05d}.safetensors"
        files.append(ModelFile(path=path.name, size=size))
        if path.is_file() and path.stat().st_size == size:
            continue
        data_bytes = size - 8 - HEADER_BYTES
        header = (
            json.dumps(
                {
                    "__metadata__": {"format": "pt"},
                    "w": {"dtype": "U8", "shape": [data_bytes], "data_offsets": [0, data_bytes]},
                }
            )
            .encode()
            .ljust(HEADER_BYTES, b" ")
        )  # safetensors pads its header with spaces
        random = _random_stream(index + 1)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(header)) + header)
            remaining = data_bytes
            while remaining:
                n = min(remaining, 16 << 20)
                out.write(random(n))
                remaining -= n
        tmp.replace(path)
    return files


def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(*, folder: Path, total_bytes: int) -> list[ModelFile]:
    """GGUF files (v3) of at most 2 GiB, each one I8 tensor of random bytes behind a valid header, named as
    llama.cpp's split files are (``-00001-of-0000N.gguf``). Reused when already there with the right sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    count = -(-total_bytes // GGUF_SHARD_BYTES)
    files: list[ModelFile] = []
    left = total_bytes
    for index in range(count):
        size = min(GGUF_SHARD_BYTES, left)
        left -= size
        path = folder / f"bench-Q8_0-{index + 1:05d}-of-{count:05d}.gguf"
        files.append(ModelFile(path=path.name, size=size))
        if path.is_file() and path.stat().st_size == size:
            continue
        kv = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
        head_without_dims = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + kv + _gguf_string("w") + struct.pack("<I", 1)
        fixed = len(head_without_dims) + 8 + 4 + 8
        padded = -(-fixed // GGUF_ALIGNMENT) * GGUF_ALIGNMENT
        data_bytes = size - padded
        header = head_without_dims + struct.pack("<QIQ", data_bytes, GGML_TYPE_I8, 0)
        random = _random_stream(1000 + index)
        tmp = path.with_name(path.name + ".partial")
        with open(tmp, "wb") as out:
            out.write(header.ljust(padded, b"\0"))
            remaining = data_bytes
            while remaining:
                n = min(remaining, 16 << 20)
                out.write(random(n))
                remaining -= n
        tmp.replace(path)
    return files


def dockerfile(*, base: str, layer_names: list[str] | None) -> str:
    copies = "".join(f"COPY layers/{name}/ {MODEL_ROOT}/\n" for name in layer_names or [])
    return DOCKERFILE.format(base=base, model_copies=copies, model_root=MODEL_ROOT)


def write_context(*, folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(text, encoding="utf-8")
    (folder / "entrypoint.sh").write_text(f'ls {MODEL_ROOT}\n')
    return folder


def choose_base(*, client: DockerClient, requested: str | None, model_format: str = "safetensors") -> str:
    """The requested image, else the offline base of the format's engine (transformers for safetensors,
    llama.cpp for GGUF) when built, else a tiny base made here."""
    if requested:
        client.images.get(requested)
        return requested
    repository = OFFLINE_GGUF_BASE_REPOSITORY if model_format == "gguf" else OFFLINE_BASE_REPOSITORY
    for image in client.images.list(name=repository):
        if image.tags:
            return str(image.tags[0])
    repository, tag = TINY_BASE.split(":")
    client.api.import_image_from_data(host_rootfs(), repository=repository, tag=tag)
    return TINY_BASE


def host_rootfs() -> bytes:
    """A tar of a minimal root filesystem: the host's dash as /bin/sh, its libc and loader (enough for the
    Dockerfile's RUN); the benchmark's fallback base and the fast-export tests' base."""
    files = {
        "bin/sh": Path("/bin/dash"),
        "lib/x86_64-linux-gnu/libc.so.6": Path("/lib/x86_64-linux-gnu/libc.so.6"),
        "lib64/ld-linux-x86-64.so.2": Path("/lib64/ld-linux-x86-64.so.2"),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "etc", "lib", "lib/x86_64-linux-gnu", "lib64", "tmp", "usr", "home"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        for name, source in files.items():
            body = source.resolve().read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o755
            tar.addfile(info, io.BytesIO(body))
        for name, body in (("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", b"root:x:0:\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()
