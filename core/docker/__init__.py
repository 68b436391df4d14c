"""Everything that talks to the Docker engine: ``api`` (connect, images, build, save, load) and
``containers`` (run, health checks, logs, exec, remove).

Nothing is re-exported here, so that each caller names what it uses: ``from core.docker import api as
docker_api``. (Inside this package ``import docker`` is still docker-py: imports are absolute.)
"""
