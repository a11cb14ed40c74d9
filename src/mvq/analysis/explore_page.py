"""The page of `mvq explore`: index.html, style.css and app.js in the package folder page/
(package data; no external resources, so the page works offline)."""

from __future__ import annotations

from importlib import resources

FOLDER = "page"
KINDS = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8"}
FILES = {"/": "index.html", "/style.css": "style.css", "/app.js": "app.js"}  # path -> file


def read(name: str) -> bytes:
    """The bytes of the page's file ``name`` as installed with the package."""
    return (resources.files(__package__) / FOLDER / name).read_bytes()


def files() -> dict[str, tuple[bytes, str]]:
    """Each URL path of the page: its file's bytes and content type."""
    return {path: (read(name), KINDS[name[name.rindex("."):]]) for path, name in FILES.items()}
