"""An image archive's bytes on disk: names of its pieces and sidecars (``names``), zstd (``compression``),
the one parts writer (``writer``) and the reader and checksum check (``reader``).

``core.image_archive`` (the docker-archive layout of the fast path) and ``core.docker.api`` (``docker
save`` / ``docker load``) both write and read through these modules. Nothing is re-exported here:
import the module that holds what you need.
"""
