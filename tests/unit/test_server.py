"""`ezrunner ui` settings: what it passes to Streamlit, and the config file that mirrors them."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from streamlit import config as st_config

from core.errors import InvalidOptionsError, PortInUseError
from ezrunner_ui import server

REPO = Path(__file__).resolve().parents[2]


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def test_config_file_mirrors_what_serve_passes() -> None:
    in_file = _flatten(tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8")))
    assert in_file == server.ui_config(host=server.DEFAULT_HOST, port=server.DEFAULT_PORT)


def test_every_option_exists_in_this_streamlit_and_may_be_set_by_app_run() -> None:
    for name in server.ui_config(host="127.0.0.1", port=8501):
        option = st_config._config_options_template.get(name)
        assert option is not None, f"{name} is not an option of the installed Streamlit"
        assert not option.sensitive, f"App.run(config=...) refuses the sensitive option {name}"


def test_loopback_by_default_and_the_address_a_browser_uses() -> None:
    options = server.ui_config(host=server.DEFAULT_HOST, port=9000)
    assert (options["server.address"], options["server.port"]) == ("127.0.0.1", 9000)
    assert options["browser.gatherUsageStats"] is False
    assert server.urls(host="127.0.0.1", port=9000) == ["http://127.0.0.1:9000"]
    assert server.urls(host="::1", port=9000) == ["http://[::1]:9000"]
    wildcard = server.urls(host="0.0.0.0", port=9000)
    assert wildcard == ["http://127.0.0.1:9000", f"http://{socket.gethostname()}:9000"]
    assert "browser.serverAddress" not in server.ui_config(host="0.0.0.0", port=9000)


def test_app_serves_the_wizard_script_and_our_routes() -> None:
    assert server.app.script_path == server.APP_SCRIPT
    assert server.APP_SCRIPT == REPO / "ezrunner_ui" / "app.py"
    paths = {getattr(route, "path", None) for route in server.app._user_routes}
    assert "/api/artifacts/{record_id}/{kind}" in paths
    assert "/api/jobs/{job_id}" in paths


def test_busy_port_and_bad_port_fail_before_starting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"--port {port + 1}"):
            server.serve(host="127.0.0.1", port=port, open_browser=False)
    with pytest.raises(InvalidOptionsError):
        server.serve(host="127.0.0.1", port=70000, open_browser=False)
