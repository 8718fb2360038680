"""aptProxy: the config check, the node step on every node and builder (apt-proxy.sh against a file tree),
and the preflight check that the proxy answers (an HTTP server on 127.0.0.1 plays apt-cacher-ng)."""
from __future__ import annotations

import http.server
import threading

import pytest

from harness import command_text, deep_merge, evaluate_lab, lab_raw
from node_runner import FakeNode
from ops_fixtures import FAST, TOKEN, ca, closed_port_url, ops_servers, outer_fake, serve  # noqa: F401
from pvelab.ops.connect import outer_client
from pvelab.ops.preflight import run_preflight
from pvelab.spec import SpecError, parse_spec

CONF = "etc/apt/apt.conf.d/00pve-lab-proxy"
PROXY = "http://10.10.10.5:3142"


def run_line(r) -> str:
    return command_text(r).rstrip("\n").splitlines()[-1]


def test_the_proxy_file_is_written_once_and_removed_when_unset(tmp_path):
    node = FakeNode("pve1", tmp_path / "state")
    r = node.run_script("apt-proxy", [], {"APT_PROXY": PROXY})
    assert r.returncode == 0, r.output
    assert (node.root / CONF).read_text() == f'Acquire::http::Proxy "{PROXY}";\n'
    r = node.run_script("apt-proxy", [], {"APT_PROXY": PROXY})
    assert r.returncode == 0 and "already uses the proxy" in r.stderr
    r = node.run_script("apt-proxy", [], {})
    assert r.returncode == 0 and not (node.root / CONF).exists()
    r = node.run_script("apt-proxy", [], {"APT_PROXY": "https://proxy:3142/x"})
    assert r.returncode == 1 and "is not an http://host[:port] URL" in r.stderr


@pytest.mark.parametrize("source", ["apt", "template"])
def test_every_node_and_the_builder_get_the_proxy_before_any_apt(source):
    ev = evaluate_lab({"aptProxy": PROXY, "nodes": {"source": source}})
    assert ev.error is None, ev.error
    steps = [r for r in ev.records if r.name.endswith("-apt-proxy")]
    assert len(steps) == (4 if source == "template" else 3)
    for step in steps:
        assert f"APT_PROXY={PROXY}" in run_line(step)
        prepare = ev.named(step.name.replace("-apt-proxy", "-prepare"))
        assert ev.depends_on(prepare, step)


def test_the_qdevice_vm_gets_the_proxy_before_it_installs_corosync_qnetd():
    ev = evaluate_lab({"aptProxy": PROXY, "nodes": {"count": 4, "qdevice": True}})
    assert ev.error is None, ev.error
    step, qnetd = ev.named("lab-qdevice-apt-proxy"), ev.named("lab-qdevice-qnetd")
    assert f"APT_PROXY={PROXY}" in run_line(step) and ev.depends_on(qnetd, step)
    assert step.plain("connection")["host"] == qnetd.plain("connection")["host"]


def test_without_a_proxy_the_step_removes_it(default_lab):
    step = default_lab.named("lab-pve1-apt-proxy")
    assert "APT_PROXY" not in run_line(step) and 'apt-proxy.sh"' in run_line(step)


def test_a_bad_proxy_url_is_one_clear_error():
    with pytest.raises(SpecError) as err:
        parse_spec(deep_merge(lab_raw(), {"aptProxy": "proxy.lab:3142"}))
    assert err.value.problems == ["pve-lab:lab.aptProxy: 'proxy.lab:3142' is not an http://host[:port] URL "
                                  "(e.g. http://10.10.10.5:3142 for apt-cacher-ng)"]


class _Cache(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - apt-cacher-ng answers a bare GET with 406
        self.send_response(406)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def cache():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Cache)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def preflight_with(fake, ca, proxy):
    spec = parse_spec(deep_merge(lab_raw(), {"aptProxy": proxy}))
    return {r.name: r for r in run_preflight(spec, outer_client(spec, fake.url, ca, FAST, token=TOKEN))}


def test_preflight_passes_when_the_proxy_answers_and_fails_when_it_does_not(serve, ca, cache):
    fake = serve(outer_fake())
    assert preflight_with(fake, ca, cache)["apt proxy"].status == "pass"
    closed = "http://" + closed_port_url().split("//", 1)[1]
    result = preflight_with(fake, ca, closed)["apt proxy"]
    assert result.status == "fail" and "does not answer: ConnectionRefusedError" in result.detail
    assert "apt-cacher-ng" in result.fix
