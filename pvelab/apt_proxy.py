"""aptProxy: the class's package cache (e.g. apt-cacher-ng) every node and template builder fetches through.

Pure logic: the config check, and the preflight probe (does the proxy answer HTTP at all, from here).
components/apt_proxy.py adds the step that writes the node's apt.conf.d file (components/scripts/apt-proxy.sh).
"""
from __future__ import annotations

import http.client
import re
from typing import TYPE_CHECKING, Optional
from urllib.parse import urlparse

if TYPE_CHECKING:
    from .spec import LabSpec

PROXY_RE = re.compile(r"^http://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$")


def validate_apt_proxy(spec: "LabSpec") -> list[str]:
    from .spec import _key

    url = spec.apt_proxy
    if url is None or PROXY_RE.match(url):
        return []
    return [f"{_key('aptProxy')}: '{url}' is not an http://host[:port] URL (e.g. http://10.10.10.5:3142 for apt-cacher-ng)"]


def probe(url: str, timeout_s: float = 5.0) -> Optional[str]:
    """None when the proxy answers HTTP (any status: apt-cacher-ng says 406 to a bare GET); else why not."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname or "", parsed.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", "/")
        conn.getresponse().read(256)
        return None
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
