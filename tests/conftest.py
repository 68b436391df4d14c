"""Shared fixtures live in tests/fixtures/*_plugin.py, one module per area."""

import os
import tempfile

# Keep every test's history, builds and caches out of the user's real data directory.
os.environ.setdefault("EZRUNNER_HOME", tempfile.mkdtemp(prefix="ezrunner-test-home-"))

pytest_plugins = [
    "tests.fixtures.hub_plugin",
    "tests.fixtures.docker_plugin",
]
