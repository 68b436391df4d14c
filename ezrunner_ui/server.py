"""`ezrunner ui`: the wizard (ezrunner_ui/app.py) on Streamlit's own server, plus our /api routes.

``app`` is a module-level ``st.App``, so ``streamlit run ezrunner_ui/server.py`` also finds it; the
``ezrunner ui`` command calls ``serve()``, which passes every setting we rely on to ``App.run`` so
they hold whatever folder the user starts it from (a ``.streamlit/config.toml`` is only read from
the current folder). ``.streamlit/config.toml`` in the repository mirrors ``UI_CONFIG`` for
development runs, and a test keeps the two equal.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import webbrowser
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from streamlit import config as st_config

from core import tryout
from core.errors import EzRunnerError, InvalidOptionsError, PortInUseError
from ezrunner_ui.routes import IdentityDownloads, LoopbackHostOnly, api_routes, is_loopback

APP_SCRIPT = Path(__file__).resolve().with_name("app.py")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501

#: Settings for every run, whatever the current folder. Address and port are added by ``ui_config``.
UI_CONFIG: dict[str, Any] = {
    "global.developmentMode": False,
    "server.headless": True,  # we open the browser ourselves, once the URL is printed
    "server.fileWatcherType": "none",  # an installed tool, not a script being edited
    "server.runOnSave": False,
    "server.showEmailPrompt": False,
    "server.enableStaticServing": False,  # downloads go through /api/artifacts, not ./static (200 MB cap)
    "browser.gatherUsageStats": False,  # the tool is meant for offline machines: no telemetry
    "client.toolbarMode": "minimal",
    "logger.hideWelcomeMessage": True,  # we print our own URL line (and a warning off loopback)
    "theme.base": "light",
    "theme.primaryColor": "#2563eb",
}


@dataclass
class _Launch:
    """What ``serve`` asked for, read by the startup hook once the port is bound."""

    open_browser: bool = False


_LAUNCH = _Launch()


def ui_config(*, host: str, port: int) -> dict[str, Any]:
    """The Streamlit options ``serve`` runs with: ``UI_CONFIG`` plus where to listen."""
    options = {**UI_CONFIG, "server.address": host, "server.port": port}
    if host not in ("0.0.0.0", "::", ""):
        options["browser.serverAddress"] = host
    return options


def urls(*, host: str, port: int) -> list[str]:
    """Where a browser reaches the server: the address itself, or this machine and its name for a wildcard."""
    if host in ("0.0.0.0", "::", ""):
        return [f"http://127.0.0.1:{port}", f"http://{socket.gethostname()}:{port}"]
    shown = f"[{host}]" if ":" in host else host
    return [f"http://{shown}:{port}"]


def _listening_on() -> str | None:
    address = st_config.get_option("server.address")
    return str(address) if address else None


@asynccontextmanager
async def _on_start(_app: st.App) -> AsyncIterator[None]:
    # Runs after the socket is bound (so port 0 is already resolved) and before the first request.
    found = urls(host=_listening_on() or "0.0.0.0", port=int(st_config.get_option("server.port")))
    print(f"\n  EZ Runner wizard: {found[0]}", flush=True)
    for other in found[1:]:
        print(f"  also at:          {other}", flush=True)
    print("  Press Ctrl+C to stop.\n", flush=True)
    if _LAUNCH.open_browser:
        # webbrowser can block while it starts a browser; the server must not wait for it.
        threading.Thread(target=webbrowser.open, args=(found[0],), daemon=True).start()
    # test servers a killed wizard left behind; a slow or absent Docker must not hold the start-up
    threading.Thread(target=_remove_orphan_servers, daemon=True).start()
    try:
        yield
    finally:
        tryout.SERVERS.stop_all()  # Ctrl+C: every test server this wizard started goes with it


def _remove_orphan_servers() -> None:
    with contextlib.suppress(EzRunnerError):
        for name in tryout.remove_orphans():
            print(f"  Removed {name}, a test server left by a wizard that is gone.", flush=True)


app = st.App(
    str(APP_SCRIPT),
    routes=api_routes(),
    middleware=[
        Middleware(LoopbackHostOnly, listening_on=_listening_on),
        Middleware(IdentityDownloads),
    ],
    lifespan=_on_start,
)


def _check_port(*, host: str, port: int) -> None:
    """Fail with a next step before Streamlit does (its message names neither the flag nor a fix)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        # create_server sets SO_REUSEADDR, as uvicorn does, so a port in TIME_WAIT is not refused here.
        with socket.create_server((host, port), family=family):
            pass
    except OSError as exc:
        raise PortInUseError(
            f"Cannot listen on {host}:{port}: {exc.strerror or exc}.",
            hint=f"Another `ezrunner ui` may be running there; open it, or pick another port: "
            f"ezrunner ui --port {port + 1}",
        ) from exc


def serve(*, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, open_browser: bool = True) -> None:
    """Serve the wizard until Ctrl+C. Listens on loopback unless ``host`` says otherwise."""
    if not 0 <= port <= 65535:
        raise InvalidOptionsError(f"--port {port} is out of range.", hint="Use a port from 1 to 65535.")
    _check_port(host=host, port=port)
    if not is_loopback(host):
        print(
            f"WARNING: listening on {host}:{port}, so other machines can reach this wizard. It has no login, "
            "and it drives this machine's Docker engine and serves its packs to anyone who opens it. "
            "Use --host only on a network you trust; otherwise keep the default and reach it through "
            f"an SSH tunnel (ssh -L {port}:127.0.0.1:{port} this-host).",
            file=sys.stderr,
            flush=True,
        )
    _LAUNCH.open_browser = open_browser
    # App.run treats argv[0] as the launcher script (config folder, sys.path) and hands the rest to the
    # app: make it this module, as `streamlit run ezrunner_ui/server.py` would, not the `ezrunner` shim.
    sys.argv = [str(Path(__file__).resolve())]
    app.run(config=ui_config(host=host, port=port))
