"""aptProxy: the class's package cache (e.g. apt-cacher-ng) every node and template builder fetches through.

Pure logic: the preflight probe (does the proxy answer HTTP at all, from here); the config check of
`aptProxy` is its rule in pvelab/spec.py FIELD_RULES.
components/apt_proxy.py adds the step that writes the node's apt.conf.d file (components/scripts/apt-proxy.sh).
"""
from __future__ import annotations

import http.client
from typing import Optional
from urllib.parse import urlparse


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
