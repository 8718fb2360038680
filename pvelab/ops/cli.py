"""Commands `preflight`, `status` and `drill` (registered by pvelab.cli)."""
from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from typing import Optional

from ..formats import PVE_NODE_RE, show, url_problem
from ..ha_guest import default_ping_address
from ..stackfile import SECRET_ENV, load_stack
from .api import ApiError, Clock, Retry
from .connect import MissingSecret, ca_problem, nested_client, outer_client
from .drill import DrillTiming, render_json as drill_json, render_text as drill_text, run_drill
from .i18n import LANGS, default_lang, translate, translating
from .migrate import run_migrate
from .partition import run_partition
from .preflight import failed, render_json as preflight_json, render_text as preflight_text, run_preflight
from .status import gather, ping_test_vm, render_json as status_json, render_text as status_text
from .watch import DrillView, TickingClock, watch

EXIT_STILL_STOPPED = 3


MAX_SECONDS = 86_400.0  # a day: longer is a typo, not a wait
MAX_COUNT = 100


def seconds(text: str) -> float:
    """argparse type: a positive, finite number of seconds, at most a day."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"{show(text)} is not a number of seconds (more than 0, at most {MAX_SECONDS:g})")
    return value


def ip_address(text: str) -> str:
    """argparse type: an IPv4 or IPv6 address."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an IP address") from None


def count(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 3) or not 1 <= int(text) <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{show(text)} is not a whole number from 1 to {MAX_COUNT}")
    return int(text)


def api_url(text: str) -> str:
    """argparse type: an https:// API URL (an empty value never falls back to the stack's address)."""
    if not text:
        raise argparse.ArgumentTypeError("empty; give an https:// URL like https://host:8006/, or leave the option out")
    problem = url_problem(text, base_only=True)
    if problem:
        raise argparse.ArgumentTypeError(f"{show(text)} {problem}")
    return text


def node_url(text: str) -> str:
    """argparse type: [NODE=]URL for a nested node's API."""
    label, sep, url = text.partition("=")
    if not sep or "//" in label:
        return api_url(text)
    if not PVE_NODE_RE.fullmatch(label) or len(label) > 63:
        raise argparse.ArgumentTypeError(f"{show(label)} is not a node name (NODE=URL, e.g. pve1=https://10.10.10.11:8006/)")
    api_url(url)
    return text


def ca_file(text: str) -> str:
    """argparse type: a readable PEM file with at least one certificate."""
    problem = ca_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def _stack(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--stack", default="lab", help="the stack whose Pulumi.<stack>.yaml to use (default: lab)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.add_argument("--retries", type=count, default=3, metavar="N",
                   help="attempts per API call on transient errors (default: 3)")
    p.add_argument("--request-timeout", type=seconds, default=10.0, metavar="S",
                   help="seconds for one API request (default: 10)")


def _lang(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lang", choices=LANGS, default=None,
                   help="language of the text output (default: from the locale, LANG=ja_JP.UTF-8 gives ja); "
                        "JSON is the same in every language")


def _outer(p: argparse.ArgumentParser) -> None:
    p.add_argument("--outer-url", metavar="URL", type=api_url, help="outer host API URL instead of outer.endpoint "
                   f"(token from ${SECRET_ENV['outerApiToken']})")
    p.add_argument("--outer-ca", metavar="FILE", type=ca_file, help="CA certificate to verify the outer host with "
                   "(default: system CAs, or none when outer.insecure is true)")


def _nested(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nested-url", metavar="[NODE=]URL", action="append", type=node_url,
                   help="a nested node's API URL instead of https://<node ip>:8006 (repeat for each node; "
                        f"root@pam with ${SECRET_ENV['rootPassword']})")
    p.add_argument("--nested-ca", metavar="FILE", type=ca_file, help="the nested cluster's CA (/etc/pve/pve-root-ca.pem of a "
                   "node) to verify its certificates; without it they are not checked")


def register(sub) -> None:
    p = sub.add_parser("preflight", help="check the outer PVE host before building",
                       description="Check the outer host: PVE version, node, nested virtualization, CPU, memory, "
                                   "storages and their content types, bridge, free VMIDs, API token privileges. "
                                   "Exit 1 if any check fails.")
    _stack(p)
    _outer(p)
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("status", help="the nested cluster's members, quorum, Ceph and HA",
                       description="What `pvecm status`, `ceph -s` and `ha-manager status` say, read through the "
                                   "nested cluster's API. Exit 1 when something is unhealthy.")
    _stack(p)
    _nested(p)
    p.add_argument("--logs", action="store_true",
                   help="also each node's recent corosync and pve-cluster log lines (journalctl -u corosync "
                        "-u pve-cluster, through the API)")
    p.add_argument("--lines", type=count, default=50, metavar="N", help="log lines per node (default 50)")
    p.add_argument("--watch", action="store_true", help="redraw every --interval seconds until Ctrl-C "
                   "(JSON Lines with --format json)")
    p.add_argument("--interval", type=seconds, default=5.0, metavar="S", help="--watch: seconds between frames "
                   "(default 5)")
    p.add_argument("--count", type=count, default=None, metavar="N", help="--watch: stop after N frames")
    _outer(p)
    p.add_argument("--no-ping", action="store_true",
                   help="do not ping the HA test VM (with ha.testVmImage, status pings it once per frame from a "
                        f"node through the outer host's guest agent when ${SECRET_ENV['outerApiToken']} is set)")
    _lang(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("drill", help="HA failover / quorum-loss / partition drill (stops or cuts nested nodes!)",
                       description="ha: hard-stop the nested node running the HA test VM (through the outer "
                                   "host), time the failover, start the node again. quorum: stop a majority of "
                                   "nodes, show the survivor without quorum, start them again. partition: cut the "
                                   "HA test VM's node off the network (link_down on its NICs), show both sides, "
                                   "restore the links. migrate: live-migrate the HA test VM (ha-manager migrate) "
                                   "and report the downtime.")
    p.add_argument("kind", choices=("ha", "quorum", "partition", "migrate"))
    _stack(p)
    _outer(p)
    _nested(p)
    d = DrillTiming()
    p.add_argument("--poll", type=seconds, default=d.poll_s, metavar="S", help=f"poll interval (default {d.poll_s:g})")
    p.add_argument("--task-timeout", type=seconds, default=d.task_deadline_s, metavar="S",
                   help=f"outer stop/start task deadline (default {d.task_deadline_s:g})")
    p.add_argument("--recovery-timeout", type=seconds, default=d.recovery_deadline_s, metavar="S",
                   help=f"deadline for HA recovery / quorum loss (default {d.recovery_deadline_s:g})")
    p.add_argument("--rejoin-timeout", type=seconds, default=d.rejoin_deadline_s, metavar="S",
                   help=f"deadline for stopped nodes to rejoin with quorum (default {d.rejoin_deadline_s:g})")
    p.add_argument("--observe", type=seconds, default=d.observe_s, metavar="S",
                   help=f"quorum drill: how long to watch HA not recover (default {d.observe_s:g})")
    p.add_argument("--settle-timeout", type=seconds, default=d.settle_deadline_s, metavar="S",
                   help=f"deadline for the HA VM to run again (and fail back) after the nodes rejoined "
                        f"(default {d.settle_deadline_s:g})")
    _lang(p)
    p.add_argument("--to", metavar="NODE", help="migrate drill: the target node (default: the next node)")
    pinging = p.add_mutually_exclusive_group()
    pinging.add_argument("--ping", type=ip_address, metavar="ADDRESS",
                         help="ping this address from a node the drill leaves alone, and report the downtime a "
                              "client sees (default: the HA test VM's address when it boots an OS, "
                              "ha.testVmImage; otherwise no ping)")
    pinging.add_argument("--no-ping", action="store_true", help="do not ping the HA test VM")
    p.add_argument("--watch", action="store_true", help="show the live status view (as status --watch) above the "
                   "drill's progress while it runs (on a terminal)")
    p.add_argument("--yes", action="store_true",
                   help="do not ask before hard-stopping nested nodes (needed when not run on a terminal)")
    p.set_defaults(func=cmd_drill)


def _retry(args) -> Retry:
    return Retry(attempts=args.retries, request_timeout_s=args.request_timeout)


def _fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 2


def cmd_preflight(args) -> int:
    spec = load_stack(args.stack).spec()
    try:
        client = outer_client(spec, args.outer_url, args.outer_ca, _retry(args))
    except ApiError as exc:
        return _fail(exc.message)
    results = run_preflight(spec, client)
    if args.format == "json":
        print(preflight_json(results))
    else:
        url = args.outer_url or spec.outer.endpoint
        print(preflight_text(results, f"preflight for stack '{args.stack}' on {url} (node {spec.outer.node}):"))
    return 1 if failed(results) else 0


def cmd_status(args) -> int:
    spec = load_stack(args.stack).spec()
    try:
        client = nested_client(spec, args.nested_url, args.nested_ca, _retry(args))
    except ApiError as exc:
        return _fail(exc.message)
    try:
        probe = _status_probe(args, spec)
    except ApiError as exc:
        return _fail(exc.message)
    lang = args.lang or default_lang()
    if args.watch:
        return watch(client, sys.stdout, args.interval, args.count, args.format, args.lines if args.logs else None,
                     translate=lambda text: translate(text, lang), probe=probe)
    report = gather(client, args.lines if args.logs else None, probe)
    print(status_json(report) if args.format == "json" else translate(status_text(report), lang))
    return 0 if report["healthy"] else 1


def _status_probe(args, spec):
    """`status` pings the HA test VM once per frame when it boots an OS (ha.testVmImage): from a node, through
    the outer host's guest agent, so only when the outer token is in the environment (status itself needs only
    the nested root password); without it the line says how to get the ping."""
    address = None if args.no_ping else default_ping_address(spec)
    if address is None:
        return None
    env = SECRET_ENV["outerApiToken"]
    if not os.environ.get(env):
        note = {"address": address, "from_node": None, "answers": None,
                "error": f"export {env} to ping it through the outer host's guest agent"}
        return lambda report: note
    outer = outer_client(spec, args.outer_url, args.outer_ca,
                         Retry(attempts=1, request_timeout_s=min(args.request_timeout, 5.0)))
    vmids = {p.hostname: p.vmid for p in spec.node_plans}
    return lambda report: ping_test_vm(outer, spec.outer.node, vmids, address, report)


def _confirm_drill(args, spec) -> bool:
    """A drill powers nodes off: say which, and go on only when the user agrees (or passed --yes)."""
    if args.yes:
        return True
    plans = spec.node_plans
    if args.kind == "migrate":  # nothing is stopped or cut: the VM only moves (and may fail back)
        return True
    stop = len(plans) // 2 if spec.nodes.qdevice else len(plans) // 2 + 1
    what = ("the nested node that runs the HA test VM" if args.kind in ("ha", "partition")
            else f"{stop} of the {len(plans)} nested nodes")
    vmids = ", ".join(str(p.vmid) for p in plans)
    action, undo = (("cuts the network links (link_down) of", "restores them") if args.kind == "partition"
                    else ("hard-stops", "starts them again"))
    question = (f"drill {args.kind} {action} {what} of stack '{args.stack}' (outer VMs {vmids} on "
                f"{spec.outer.node}), then {undo}.")
    if not sys.stdin.isatty():
        print(f"{question} Not on a terminal: pass --yes to go ahead.", file=sys.stderr)
        return False
    answer = input(f"{question} Continue? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def ping_target(args, spec) -> Optional[str]:
    """What the drill pings: --ping, else the HA test VM when it boots an OS (ha.testVmImage), unless --no-ping."""
    if getattr(args, "no_ping", False):
        return None
    return args.ping or default_ping_address(spec)


def cmd_drill(args) -> int:
    spec = load_stack(args.stack).spec()
    if not _confirm_drill(args, spec):
        return 2
    ping = ping_target(args, spec)
    timing = DrillTiming(poll_s=args.poll, task_deadline_s=args.task_timeout,
                         recovery_deadline_s=args.recovery_timeout, rejoin_deadline_s=args.rejoin_timeout,
                         observe_s=args.observe, settle_deadline_s=args.settle_timeout)
    try:
        # migrate powers nothing off and cuts nothing: it needs no outer host (nor its token)
        outer = (None if args.kind == "migrate" and not ping
                 else outer_client(spec, args.outer_url, args.outer_ca, _retry(args)))
        nested = nested_client(spec, args.nested_url, args.nested_ca, _retry(args))
    except MissingSecret as exc:
        if args.kind == "migrate" and ping and not args.ping:
            return _fail(f"{exc.message} (drill migrate pings the HA test VM at {ping} through the outer host's "
                         f"guest agent; --no-ping skips the ping and needs no outer token)")
        return _fail(exc.message)
    except ApiError as exc:
        return _fail(exc.message)
    lang = args.lang or default_lang()
    progress = translating((lambda line: print(line, file=sys.stderr)) if args.format == "json" else print, lang)
    clock = None
    if args.watch and args.format == "text":
        view_client = nested_client(spec, args.nested_url, args.nested_ca,
                                    Retry(attempts=1, request_timeout_s=min(args.request_timeout, 5.0)))
        view = DrillView(view_client, sys.stdout, args.poll, translate=lambda text: translate(text, lang))
        progress, clock = view.line, TickingClock(Clock(), view.tick)
    if args.kind == "partition":
        report = run_partition(spec, outer, nested, timing, clock, out=progress, ping=ping)
    elif args.kind == "migrate":
        report = run_migrate(spec, outer, nested, timing, clock, out=progress, target=args.to, ping=ping)
    else:
        report = run_drill(args.kind, spec, outer, nested, timing, clock, out=progress, ping=ping)
    print(drill_json(report) if args.format == "json" else translate(drill_text(report), lang))
    if report.still_stopped or report.still_cut:
        return EXIT_STILL_STOPPED
    return 0 if report.ok else 1
