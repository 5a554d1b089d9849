"""The web console at `/ui/`: static files shipped in the package (no CDN, works offline).

The console is a browser app over the same JSON API as everyone else (`/v1/...`, bearer token for
operator endpoints); this module only serves its files. See `static/README.md` for the vendored libraries.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"


def mount_console(app: FastAPI) -> None:
    """Serve the console at `/ui/` (and send `/` there)."""

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", StaticFiles(directory=STATIC_DIR, html=True), name="console")
