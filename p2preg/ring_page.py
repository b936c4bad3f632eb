"""The live ring page: ``GET /`` of the admin API.

One self-contained HTML file (``p2preg/web/ring.html``: inline SVG, CSS and a little vanilla
JavaScript, nothing fetched from elsewhere) that polls this node's own JSON endpoints
(``/v1/ring``, ``/v1/node``) and draws the ring as a circle. The server side only hands out the
file, with a Content-Security-Policy that allows exactly its own inline script and style (by
hash) and requests to this origin, so that addresses and ids reported by other peers can never
run as code in an operator's browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

from aiohttp import web

PAGE_RESOURCE = "ring.html"
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


@cache
def page_bytes() -> bytes:
    """The page as shipped in the package (read once)."""
    return resources.files("p2preg.web").joinpath(PAGE_RESOURCE).read_bytes()


def _hashes(html: str, tag: str) -> list[str]:
    out = []
    for found, body in _INLINE.findall(html):
        if found == tag:
            digest = hashlib.sha256(body.encode("utf-8")).digest()
            out.append(f"'sha256-{base64.b64encode(digest).decode('ascii')}'")
    return out


@cache
def content_security_policy() -> str:
    html = page_bytes().decode("utf-8")
    scripts = " ".join(_hashes(html, "script")) or "'none'"
    styles = " ".join(_hashes(html, "style")) or "'none'"
    return (
        "default-src 'none'; "
        f"script-src {scripts}; "
        f"style-src {styles}; "
        "connect-src 'self'; "
        "img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


async def get_ring_page(request: web.Request) -> web.Response:
    return web.Response(
        body=page_bytes(),
        content_type="text/html",
        charset="utf-8",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": content_security_policy(),
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


def add_ring_page(app: web.Application) -> None:
    """Serve the ring page at ``/`` (and ``/ring``) of ``app``."""
    app.router.add_get("/", get_ring_page)
    app.router.add_get("/ring", get_ring_page)
