"""A small PVE API client on top of proxmoxer: endpoints with failover, bounded retries, clean errors.

Why not plain proxmoxer: its errors are tracebacks of requests/urllib3 exceptions, it never retries, and
it talks to one host. A nested cluster has one API per node and the drill stops one of them on purpose,
so every call here may move on to the next node's API when one does not answer.

Transient (retried, bounded): connection refused/reset, timeouts, and the proxy statuses PVE answers
while a node is away (502/503/504, 595 "no route to host", 596 "broken pipe"). Everything else (400
parameter errors, 403 permissions, 500 "no quorum", ...) is reported at once, in PVE's own words.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar
from urllib.parse import urlsplit

import requests
from proxmoxer import ProxmoxAPI
from proxmoxer.core import AuthenticationError, ResourceException

from ..spec import API_TOKEN_RE

TRANSIENT_STATUS = frozenset({502, 503, 504, 595, 596, 599})
T = TypeVar("T")


class ApiError(Exception):
    """One clear line about a failed API call; `status` is the HTTP status when PVE answered."""

    def __init__(self, message: str, status: Optional[int] = None, transient: bool = False, auth: bool = False):
        super().__init__(message)
        self.message = message
        self.status = status
        self.transient = transient
        self.auth = auth


class WaitTimeout(Exception):
    """A poll reached its deadline; the message says what was awaited and what was seen last."""


class Clock:
    """Monotonic time and sleeping, in one place so callers can pass their own."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wall(self) -> float:
        """UNIX time, for what the nodes' logs are matched against."""
        return time.time()


@dataclass(frozen=True)
class Retry:
    attempts: int = 3  # passes over all endpoints before giving up
    backoff_s: float = 2.0  # wait after a failed pass, times the pass number
    request_timeout_s: float = 10.0  # one HTTP request (connect + answer)


@dataclass(frozen=True)
class Endpoint:
    url: str  # https://host:port[/]
    verify: Any = True  # True, False, or the path of a CA bundle
    label: str = ""  # which node this is (nested clusters), for messages and failover

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url if "//" in self.url else f"https://{self.url}")
        if parts.scheme != "https" or not parts.hostname:
            raise ApiError(f"'{self.url}' is not an https:// API URL like https://host:8006/")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return host, parts.port or 8006

    @property
    def name(self) -> str:
        return f"{self.label} ({self.url})" if self.label else self.url


@dataclass(frozen=True)
class TokenAuth:
    """An API token 'user@realm!tokenid=secret'; the secret never appears in repr or messages."""

    token: str = field(repr=False)

    def __post_init__(self):
        if not API_TOKEN_RE.fullmatch(self.token or ""):
            raise ApiError("the API token is not of the form 'user@realm!tokenid=uuid' (value hidden)")

    @property
    def user(self) -> str:
        return self.token.split("!", 1)[0]

    @property
    def tokenid(self) -> str:
        return self.token.split("=", 1)[0]

    def kwargs(self) -> dict:
        user, rest = self.token.split("!", 1)
        name, value = rest.split("=", 1)
        return {"user": user, "token_name": name, "token_value": value}


@dataclass(frozen=True)
class PasswordAuth:
    user: str
    password: str = field(repr=False)

    def kwargs(self) -> dict:
        return {"user": self.user, "password": self.password}


def tls_error_message(what: str, ep: "Endpoint", exc: BaseException) -> str:
    """Which TLS failure happened: not HTTPS at all, a certificate not trusted, or another handshake failure."""
    text = str(exc)
    if re.search(r"WRONG_VERSION_NUMBER|wrong version number|record layer failure|UNKNOWN_PROTOCOL|http request",
                 text, re.IGNORECASE):
        return (f"{what}: not HTTPS: {ep.url} answered without TLS (plain HTTP on that port?); use the PVE API "
                f"port (8006) with https://")
    if re.search(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|hostname mismatch|doesn't match",
                 text, re.IGNORECASE):
        ca = f"the CA file {ep.verify}" if isinstance(ep.verify, str) else "the system CAs"
        return (f"{what}: certificate not trusted: {ep.url} ({_reason(exc)}) is not signed by {ca}; give the "
                f"host's CA certificate (e.g. a copy of /etc/pve/pve-root-ca.pem) or allow self-signed "
                f"certificates (see --help)")
    return f"{what}: TLS handshake with {ep.url} failed ({_reason(exc)})"


def _login_status(exc: BaseException) -> Optional[int]:
    """The HTTP status proxmoxer saw when a login failed ("... code: 401"), if it says one."""
    m = re.search(r"code: (\d{3})", str(exc))
    return int(m.group(1)) if m else None


def _check_api_answer(result: Any, ep: "Endpoint", what: str) -> None:
    """proxmoxer returns {'errors': <body>} for a 2xx answer that is not JSON (an HTML page, a proxy)."""
    if isinstance(result, dict) and set(result) == {"errors"} and isinstance(result["errors"], (bytes, str)):
        raise ApiError(f"{what}: {ep.url} answered with something that is not the PVE API (HTML or text, not JSON); "
                       f"is it the right host and port (8006)?")


def _reason(exc: BaseException) -> str:
    """The useful tail of a requests/urllib3 error ('Connection refused', 'timed out', ...)."""
    text = str(exc)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"(timed out)", r"(Connection reset by peer)",
                    r"(Connection aborted)", r"(Remote end closed connection without response)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1).strip()
    return type(exc).__name__


class PveClient:
    """PVE API calls by path ('cluster/status'), over one or more endpoints of the same cluster."""

    def __init__(self, endpoints: Sequence[Endpoint], auth, retry: Retry = Retry(), clock: Optional[Clock] = None,
                 what: str = "PVE API"):
        if not endpoints:
            raise ApiError(f"{what}: no endpoint given")
        self.endpoints = list(endpoints)
        self.auth = auth
        self.retry = retry
        self.clock = clock or Clock()
        self.what = what
        self._apis: dict[str, ProxmoxAPI] = {}
        self.last_endpoint: Optional[Endpoint] = None
        for ep in self.endpoints:
            try:
                ep.host_port  # noqa: B018 - validates the URL now, not in the middle of a drill
            except ApiError as exc:
                raise ApiError(f"{what}: {exc.message}") from None

    # ---- endpoint order
    def prefer_not(self, label: str) -> None:
        """Try the endpoint of node `label` last (it is about to be stopped)."""
        self.endpoints.sort(key=lambda ep: ep.label == label)

    def only(self, labels: set[str]) -> None:
        """Use only the endpoints of these nodes (the others are stopped on purpose)."""
        kept = [ep for ep in self.endpoints if ep.label in labels]
        if kept:
            self.endpoints = kept

    def _promote(self, ep: Endpoint) -> None:
        self.endpoints.remove(ep)
        self.endpoints.insert(0, ep)
        self.last_endpoint = ep

    def _api(self, ep: Endpoint) -> ProxmoxAPI:
        api = self._apis.get(ep.url)
        if api is None:
            host, port = ep.host_port
            if ep.verify is False:
                warnings.filterwarnings("ignore", message="Unverified HTTPS request")
            api = ProxmoxAPI(host, port=port, verify_ssl=ep.verify, timeout=self.retry.request_timeout_s,
                             **self.auth.kwargs())
            self._apis[ep.url] = api
        return api

    # ---- calls
    def get(self, path: str, /, **params) -> Any:
        return self.call("get", path, params)

    def post(self, path: str, /, **data) -> Any:
        return self.call("post", path, data)

    def put(self, path: str, /, **data) -> Any:
        return self.call("put", path, data)

    def call(self, method: str, path: str, params: dict) -> Any:
        path = path.strip("/")
        last: Optional[ApiError] = None
        for attempt in range(max(1, self.retry.attempts)):
            all_auth = True
            for ep in list(self.endpoints):
                try:
                    result = getattr(self._api(ep)(path), method)(**params)
                    _check_api_answer(result, ep, self.what)
                    self._promote(ep)
                    return result
                except ResourceException as exc:
                    err = self._resource_error(method, path, ep, exc)
                    if not err.transient:
                        raise err from None
                    last, all_auth = err, False
                except AuthenticationError as exc:
                    code = _login_status(exc)
                    if code in (None, 401):
                        last = ApiError(f"{self.what}: login as {self.auth.user} at {ep.url} failed "
                                        f"(wrong credentials, or the node is not ready)", auth=True)
                    else:  # not PVE refusing the password: a proxy, another web server, a node starting
                        last, all_auth = ApiError(
                            f"{self.what}: the login at {ep.url} answered HTTP {code}, not like a PVE API "
                            f"(is it the right host and port 8006?)", code, transient=code in TRANSIENT_STATUS), False
                except requests.exceptions.SSLError as exc:
                    raise ApiError(tls_error_message(self.what, ep, exc)) from None
                except requests.exceptions.JSONDecodeError:  # e.g. a login answered with an HTML page
                    raise ApiError(f"{self.what}: {ep.url} did not answer like a PVE API (not JSON); is it the "
                                   f"right host and port (8006)?") from None
                except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                    last, all_auth = ApiError(f"{self.what}: {ep.name} unreachable ({_reason(exc)})",
                                              transient=True), False
                except requests.exceptions.RequestException as exc:  # e.g. an answer cut off mid-way
                    last, all_auth = ApiError(f"{self.what}: {ep.name}: {type(exc).__name__} ({_reason(exc)})",
                                              transient=True), False
                except (KeyError, TypeError, ValueError) as exc:  # e.g. a 200 answer that is not PVE's JSON
                    raise ApiError(f"{self.what}: {ep.url} did not answer like a PVE API ({type(exc).__name__}); "
                                   f"is it the right host and port (8006)?") from None
                except OSError as exc:  # e.g. requests refusing a CA bundle path
                    raise ApiError(f"{self.what}: {ep.url}: {exc.strerror or type(exc).__name__}") from None
                self._apis.pop(ep.url, None)  # reconnect (and log in again) next time
            if last is not None and last.auth and all_auth:
                raise last
            if attempt + 1 < self.retry.attempts:
                self.clock.sleep(self.retry.backoff_s * (attempt + 1))
        assert last is not None
        raise ApiError(f"{last.message} (gave up after {self.retry.attempts} attempt(s))", last.status,
                       transient=True)

    def _resource_error(self, method: str, path: str, ep: Endpoint, exc: ResourceException) -> ApiError:
        text = str(exc.content or exc.status_message or "").strip()
        if isinstance(exc.errors, dict) and exc.errors:
            text += " (" + "; ".join(f"{k}: {str(v).strip()}" for k, v in sorted(exc.errors.items())) + ")"
        where = f" at {ep.label}" if ep.label else ""
        return ApiError(f"{method.upper()} /{path}{where}: {exc.status_code} {text}", exc.status_code,
                        transient=exc.status_code in TRANSIENT_STATUS)

    # ---- tasks
    def wait_task(self, node: str, upid: str, deadline_s: float, interval_s: float = 1.0, what: str = "") -> None:
        """Wait until the task ends; raise ApiError when it failed, WaitTimeout at the deadline."""

        def done():
            st = self.get(f"nodes/{node}/tasks/{upid}/status")
            return st if st.get("status") == "stopped" else None

        what = what or f"task {upid} on {node}"
        st = poll(self.clock, deadline_s, interval_s, done, f"{what} to finish (task {upid})")
        if not task_succeeded(st.get("exitstatus")):
            raise ApiError(f"{what} failed: {st.get('exitstatus')} (task {upid})")


def task_succeeded(exitstatus: Optional[str]) -> bool:
    """'OK', or 'WARNINGS: N' (the task logged warnings but did its work): pve-common src/PVE/UPID.pm."""
    return exitstatus == "OK" or bool(re.fullmatch(r"WARNINGS: \d+", str(exitstatus or "")))


def poll(clock: Clock, deadline_s: float, interval_s: float, probe: Callable[[], Optional[T]], what: str,
         seen: Optional[Callable[[], str]] = None) -> T:
    """Call probe() every interval_s until it returns something not None; WaitTimeout after deadline_s."""
    end = clock.now() + deadline_s
    while True:
        result = probe()
        if result is not None:
            return result
        remaining = end - clock.now()
        if remaining <= 0:
            last = f"; last seen: {seen()}" if seen else ""
            raise WaitTimeout(f"timed out after {deadline_s:g} s waiting for {what}{last}")
        clock.sleep(min(interval_s, remaining))
