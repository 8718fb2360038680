"""Build the API clients from a lab spec, the environment (secrets) and explicit overrides.

Overrides exist so that tests (and unusual set-ups: a tunnel, a jump host) point the tools at another
URL than the lab's configured addresses; the lab's addresses are only the defaults.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from ..spec import LabSpec
from ..stackfile import SECRET_ENV
from .api import ApiError, Clock, Endpoint, PasswordAuth, PveClient, Retry, TokenAuth


class MissingSecret(ApiError):
    pass


def secret(key: str) -> str:
    env = SECRET_ENV[key]
    value = os.environ.get(env)
    if not value:
        hint = {"outerApiToken": "the outer host's API token 'user@realm!tokenid=uuid'",
                "rootPassword": "the nested nodes' root password (`pulumi stack output --show-secrets rootPassword`)"}
        raise MissingSecret(f"{env} is not set: export {env} with {hint[key]} (secrets are never taken from the "
                            f"command line)")
    return value


def ca_problem(path: str) -> Optional[str]:
    """Why `path` cannot serve as a CA bundle ("CA file unreadable: ..."), or None when it can."""
    if not path:
        return "CA file unreadable: empty path"
    try:
        with open(path, "rb") as fh:
            data = fh.read(1_048_576)
    except OSError as exc:
        return f"CA file unreadable: {path} ({exc.strerror or type(exc).__name__})"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"CA file unreadable: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


def _checked_ca(ca: Optional[str], what: str) -> Optional[str]:
    if ca is not None:
        problem = ca_problem(ca)
        if problem:
            raise ApiError(f"{what}: {problem}")
    return ca


def outer_client(spec: LabSpec, url: Optional[str] = None, ca: Optional[str] = None, retry: Retry = Retry(),
                 clock: Optional[Clock] = None, token: Optional[str] = None) -> PveClient:
    """The outer host's API with the API token: `url` overrides outer.endpoint, `ca` a CA bundle to trust."""
    verify = _checked_ca(ca, "outer host") if ca else (not spec.outer.insecure)
    if url is not None and not url:
        raise ApiError("outer host: the URL override is empty; give an https:// URL or leave it out")
    auth = TokenAuth(token if token is not None else secret("outerApiToken"))
    return PveClient([Endpoint(url or spec.outer.endpoint, verify, spec.outer.node)], auth, retry, clock,
                     what="outer host")


def nested_endpoints(spec: LabSpec, urls: Optional[Sequence[str]] = None, ca: Optional[str] = None) -> list[Endpoint]:
    """One endpoint per nested node (https://<ip>:8006), or the given URLs.

    A given URL may name its node as NODE=URL; unnamed URLs are matched to the nodes in order.
    Without a CA the certificate is not checked: nested nodes use their cluster's own CA.
    """
    verify = _checked_ca(ca, "nested cluster") if ca else False
    plans = spec.node_plans
    if not urls:
        return [Endpoint(f"https://{p.ip}:8006/", verify, p.hostname) for p in plans]
    out = []
    for i, item in enumerate(urls):
        label, sep, url = item.partition("=")
        if not sep or "//" in label:
            label, url = (plans[i].hostname if i < len(plans) else ""), item
        out.append(Endpoint(url, verify, label))
    return out


def nested_client(spec: LabSpec, urls: Optional[Sequence[str]] = None, ca: Optional[str] = None,
                  retry: Retry = Retry(), clock: Optional[Clock] = None, password: Optional[str] = None) -> PveClient:
    """The nested cluster's API as root@pam, over every node's endpoint (the first that answers)."""
    auth = PasswordAuth("root@pam", password if password is not None else secret("rootPassword"))
    return PveClient(nested_endpoints(spec, urls, ca), auth, retry, clock, what="nested cluster")
