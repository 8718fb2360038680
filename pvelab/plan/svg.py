"""The plan as a picture (SVG), laid out here without graphviz or any other program.

Top: the topology (the outer host, the nested nodes with address, VMID, size and Ceph roles, the corosync
links, the Ceph pool, the HA test VM on its preferred node). Below, in the same columns: one lane per
place a step runs (this machine, the outer host, each nested node), one row per topological level, so time
runs downwards and boxes on one row can run at the same time. Arrows are the dependencies that are not
implied by others (transitive reduction); the critical path is drawn in red.
"""
from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from .durations import HA_FAILOVER_S, format_duration, format_offset
from .model import Lane, Plan, Step, _gib, _num

FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif"
MARGIN = 20
GUTTER = 70  # level labels on the left of the step lanes
LANE_WIDTH = {"local": 165, "outer": 170, "node": 210, "other": 170}
ROW_H = 52
BOX_H = 38
NODE_BOX_H = 150
BAR_H = 36
SLOT_H = BOX_H + 6  # a second step of one lane on one level goes below the first
CHAR_W = 0.58  # average glyph width as a fraction of the font size (sans-serif)

PHASE_COLORS = {  # fill, stroke
    "credentials": ("#fff4c2", "#b8962e"),
    "outer": ("#e3e3e3", "#707070"),
    "install": ("#dbe9fb", "#3d6fb6"),
    "cluster": ("#d9f2dc", "#2e7d32"),
    "ceph": ("#fde3cf", "#c0602a"),
    "ha": ("#eadcf5", "#7b3fa6"),
    "other": ("#f0f0f0", "#888888"),
}
PHASE_NAMES = {"credentials": "credentials", "outer": "outer host", "install": "PVE install",
               "cluster": "cluster (corosync)", "ceph": "Ceph", "ha": "HA"}
CRITICAL = "#d32f2f"
CROSS_NODE = "#2f4f7f"
SAME_LANE = "#8a8a8a"


def _fit(text: str, width: float, size: float) -> str:
    """Cut `text` to what fits in `width` pixels at font `size`, with an ellipsis."""
    max_chars = max(3, int(width / (size * CHAR_W)))
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


@dataclass
class _Col:
    lane: Lane
    x: float
    w: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


class _Svg:
    def __init__(self):
        self.parts: list[str] = []

    def add(self, s: str) -> None:
        self.parts.append(s)

    def rect(self, x, y, w, h, fill, stroke="none", rx=6, width=1.0, dash: str = "", extra: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{rx}" fill="{fill}" '
                 f'stroke="{stroke}" stroke-width="{width}"{d}{extra}/>')

    def text(self, x, y, s: str, size: float = 12, weight: str = "normal", anchor: str = "start",
             fill: str = "#222", italic: bool = False) -> None:
        style = ' font-style="italic"' if italic else ""
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" font-weight="{weight}" '
                 f'text-anchor="{anchor}" fill="{fill}"{style}>{escape(s)}</text>')

    def line(self, x1, y1, x2, y2, stroke="#555", width=1.0, dash: str = "", marker: str = "") -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        m = f' marker-end="url(#{marker})"' if marker else ""
        self.add(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
                 f'stroke-width="{width}"{d}{m}/>')


def render_svg(plan: Plan) -> str:
    svg = _Svg()
    cols: list[_Col] = []
    x = MARGIN + GUTTER
    for lane in plan.lanes:
        w = LANE_WIDTH.get(lane.kind, LANE_WIDTH["other"])
        cols.append(_Col(lane, x, w))
        x += w
    width = max(x + MARGIN, 900)
    col_of = {c.lane.id: c for c in cols}
    node_cols = [c for c in cols if c.lane.kind == "node"]

    # ---- title
    y = MARGIN + 18
    svg.text(MARGIN, y, f"pve-lab plan: stack {plan.stack}", 20, "bold")
    s = plan.summary
    facts = [f"cluster {plan.cluster_name or '-'}", f"{len(plan.nodes)} nested nodes"]
    if s.get("pve_version"):
        facts.append(f"PVE {s['pve_version']} (Debian {s.get('debian_suite')})")
    if s.get("ceph_release"):
        facts.append(f"Ceph {s['ceph_release']}")
    facts.append(f"estimated `pulumi up`: {format_duration(plan.estimate_s)}")
    svg.text(MARGIN, y + 22, " · ".join(facts), 13, fill="#444")
    svg.text(MARGIN, y + 40, "Drawn offline from the real Pulumi program (mock runtime). Durations are estimates.",
             11, fill="#666", italic=True)

    # ---- topology
    top = y + 60
    topo_bottom = _topology(svg, plan, cols, col_of, node_cols, top)

    # ---- steps
    steps_top = topo_bottom + 36
    height = _steps(svg, plan, cols, col_of, steps_top, width)

    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family={quoteattr(FONT)}>')
    defs = ("<defs>"
            + "".join(
                f'<marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" '
                f'markerWidth="9" markerHeight="9" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{color}"/></marker>'
                for mid, color in (("arrow", SAME_LANE), ("arrow-cross", CROSS_NODE), ("arrow-crit", CRITICAL)))
            + "</defs>")
    body = "\n".join(svg.parts)
    doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n{head}\n<title>{escape("pve-lab plan: stack " + plan.stack)}'
           f"</title>\n{defs}\n"
           f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>\n{body}\n</svg>\n')
    return plan.redact(doc)


def _topology(svg: _Svg, plan: Plan, cols: list[_Col], col_of: dict[str, _Col], node_cols: list[_Col],
              top: float) -> float:
    o = plan.outer
    local, outer = col_of.get("local"), col_of.get("outer")
    links = [k for k in ("link0", "link1") if plan.network.get(k)]
    header_h = 44
    nodes_top = top + header_h
    links_top = nodes_top + NODE_BOX_H + 16
    bars_top = links_top + 30 * len(links) + 8
    bars = (1 if plan.pool else 0) + (1 if plan.ha else 0)
    outer_bottom = bars_top + (BAR_H + 6) * bars + 10

    # this machine
    if local is not None:
        bx, bw = local.x + 8, local.w - 48
        svg.rect(bx, nodes_top, bw, 96, "#fff9e0", "#b8962e")
        svg.text(bx + 8, nodes_top + 20, "this machine", 13, "bold")
        for i, line in enumerate(("pulumi, pvelab", "generates the", "root password", "and SSH key")):
            svg.text(bx + 8, nodes_top + 40 + 15 * i, _fit(line, bw - 12, 11), 11, fill="#555")
        if outer is not None:
            svg.line(bx + bw, nodes_top + 30, outer.x + 4, nodes_top + 30, CROSS_NODE, 1.4, marker="arrow-cross")
            svg.text(bx + bw + 6, nodes_top + 24, "API", 10, fill=CROSS_NODE)
            svg.line(bx + bw, nodes_top + 70, outer.x + 4, nodes_top + 70, CROSS_NODE, 1.4, dash="4 3",
                     marker="arrow-cross")
            svg.text(bx + bw + 6, nodes_top + 64, "SSH", 10, fill=CROSS_NODE)

    # the outer host
    first = outer or (node_cols[0] if node_cols else None)
    if first is None:
        return top
    last = node_cols[-1] if node_cols else first
    ox, ow = first.x, last.x + last.w - first.x
    svg.rect(ox, top, ow, outer_bottom - top, "#f7f7f7", "#555555", rx=10, width=1.5)
    svg.text(ox + 12, top + 20, f"outer PVE host '{o.node}'", 14, "bold")
    detail = " · ".join(p for p in (f"API {o.endpoint}" if o.endpoint else "",
                                     f"storage {', '.join(o.storages)}" if o.storages else "",
                                     f"bridge {', '.join(o.bridges)}" if o.bridges else "") if p)
    svg.text(ox + 12, top + 36, _fit(detail, ow - 24, 11), 11, fill="#555")
    if outer is not None:
        bx, bw = outer.x + 10, outer.w - 20
        image = o.image.split("/")[-1] if o.image else "?"
        lines = _wrap(image, bw - 14, 10, 3)
        svg.rect(bx, nodes_top, bw, 44 + 13 * len(lines), "#e9e9e9", "#707070")
        svg.text(bx + 8, nodes_top + 18, "cloud image", 12, "bold")
        for i, line in enumerate(lines):
            svg.text(bx + 8, nodes_top + 34 + 13 * i, line, 10, fill="#444")
        svg.text(bx + 8, nodes_top + 36 + 13 * len(lines), _fit(f"on {o.image.split(':')[0]}" if o.image else "",
                                                                 bw - 12, 10), 10, fill="#666")

    ha = plan.ha
    for n, col in zip(plan.nodes, node_cols):
        bx, bw = col.x + 10, col.w - 20
        svg.rect(bx, nodes_top, bw, NODE_BOX_H, "#ffffff", "#3d6fb6", width=1.5)
        svg.rect(bx, nodes_top, bw, 24, "#3d6fb6", "#3d6fb6")
        svg.text(bx + 8, nodes_top + 17, n.hostname, 14, "bold", fill="#ffffff")
        svg.text(bx + bw - 8, nodes_top + 17, f"VMID {n.vmid}", 11, anchor="end", fill="#ffffff")
        svg.text(bx + 8, nodes_top + 41, n.address or "?", 12)
        svg.text(bx + 8, nodes_top + 57, f"{n.cores} vCPU · {_gib(n.memory_mib)} RAM", 11, fill="#444")
        svg.text(bx + 8, nodes_top + 72, _fit(f"disks {n.disks_text()}", bw - 12, 11), 11, fill="#444")
        bxx = bx + 8
        for role in n.ceph_roles:
            rw = 12 + len(role) * 6.4
            svg.rect(bxx, nodes_top + 82, rw, 18, PHASE_COLORS["ceph"][0], PHASE_COLORS["ceph"][1], rx=4)
            svg.text(bxx + rw / 2, nodes_top + 95, role, 10, "bold", anchor="middle", fill="#7a3a12")
            bxx += rw + 5
        if ha and n.hostname in ha.priorities or (ha and n.hostname == ha.preferred_node):
            prio = ha.priorities.get(n.hostname)
            if n.hostname == ha.preferred_node:
                vm_text = (f"vm:{ha.vms[0]['vmid']} {ha.vms[0]['name']}" if len(ha.vms) == 1
                           else ", ".join(f"vm:{v['vmid']}" for v in ha.vms) or ", ".join(ha.resources))
                svg.rect(bx + 6, nodes_top + 108, bw - 12, 34, PHASE_COLORS["ha"][0], PHASE_COLORS["ha"][1], rx=5)
                svg.text(bx + 12, nodes_top + 122, _fit(vm_text, bw - 24, 10), 10, "bold", fill="#4a2068")
                svg.text(bx + 12, nodes_top + 136, f"HA preferred node (priority {prio})", 10, fill="#4a2068")
            else:
                svg.rect(bx + 6, nodes_top + 108, bw - 12, 34, "#ffffff", PHASE_COLORS["ha"][1], rx=5, dash="4 3")
                svg.text(bx + 12, nodes_top + 122, "HA fallback", 10, "bold", fill="#4a2068")
                svg.text(bx + 12, nodes_top + 136, f"priority {prio}: the VM restarts here", 10, fill="#4a2068")

    # corosync links: a bus under the nodes, a tick to each node
    for i, link in enumerate(links):
        ly = links_top + 30 * i + 10
        xs = [col.cx + (i * 24 - 12) for col in node_cols]
        if not xs:
            break
        color = "#2e7d32" if i == 0 else "#1b5e20"
        svg.line(min(xs) - 20, ly, max(xs) + 20, ly, color, 3 if i == 0 else 2, dash="" if i == 0 else "6 3")
        for n, xx in zip(plan.nodes, xs):
            svg.line(xx, nodes_top + NODE_BOX_H, xx, ly, color, 1.5, dash="" if i == 0 else "6 3")
            addr = n.link0 if link == "link0" else n.link1
            if addr:  # link0 labels left of their tick, link1 labels right: they never overlap
                svg.text(xx - 4 if i == 0 else xx + 4, ly - 3, addr, 9, anchor="end" if i == 0 else "start",
                         fill=color)
        if outer is not None:
            svg.text(outer.x + 12, ly - 2, f"corosync {link}", 10, "bold", fill=color)
            svg.text(outer.x + 12, ly + 10, plan.network[link] or "", 10, fill=color)
        else:
            svg.text(min(xs) - 20, ly + 14, f"corosync {link}: {plan.network[link]}", 10, "bold", fill=color)

    bar_x = node_cols[0].x + 10 if node_cols else ox + 10
    bar_w = (node_cols[-1].x + node_cols[-1].w - 10 - bar_x) if node_cols else ow - 20
    by = bars_top
    if plan.pool:
        p = plan.pool
        osds = sum(n.osd_count for n in plan.nodes)
        text = (f"Ceph pool {p.name}: size {p.size} / min_size {p.min_size}, {p.pg_num} PGs, {osds} OSDs"
                + (f" · RBD storage '{p.name}' for VM disks" if p.add_storages else ""))
        _bar(svg, bar_x, by, bar_w, text, "ceph")
        if outer is not None:
            svg.text(outer.x + 12, by + 17, "shared storage", 10, "bold", fill=PHASE_COLORS["ceph"][1])
        by += BAR_H + 6
    if ha:
        prio = ", ".join(f"{k}:{v}" for k, v in ha.priorities.items())
        strict = "" if ha.strict is None else (", strict" if ha.strict else ", not strict")
        text = (f"HA {ha.rule_type} rule '{ha.rule}'{strict}: {prio} · {', '.join(ha.resources)} restarts on "
                f"another node ~{HA_FAILOVER_S[0] // 60}-{HA_FAILOVER_S[1] // 60} min after its node fails")
        _bar(svg, bar_x, by, bar_w, text, "ha")
        if outer is not None:
            svg.text(outer.x + 12, by + 17, "high availability", 10, "bold", fill=PHASE_COLORS["ha"][1])
    return outer_bottom


def _steps(svg: _Svg, plan: Plan, cols: list[_Col], col_of: dict[str, _Col], top: float, width: float) -> float:
    svg.text(MARGIN, top, "Steps of `pulumi up`", 16, "bold")
    svg.text(MARGIN, top + 18, "Top to bottom in dependency order; one row = one level: the boxes of a row can run "
             "at the same time.", 11, fill="#555")
    svg.text(MARGIN, top + 32, "Arrow = waits for · red = critical path (the longest chain) · "
             "~ = estimated duration · t+ = estimated start.", 11, fill="#555")
    header_top = top + 42
    rows_top = header_top + 34

    # Row heights: a lane with several steps on one level stacks them inside the row.
    slot: dict[str, int] = {}
    per_cell: dict[tuple[str, int], int] = {}
    for st in plan.steps:
        cell = (st.lane, st.level)
        slot[st.id] = per_cell.get(cell, 0)
        per_cell[cell] = slot[st.id] + 1
    levels = len(plan.levels)
    row_top: list[float] = []
    y = rows_top
    for level in range(levels):
        row_top.append(y)
        stacked = max((n for (lane, lv), n in per_cell.items() if lv == level), default=1)
        y += ROW_H + (stacked - 1) * SLOT_H
    bottom = y + 6

    for i, col in enumerate(cols):
        svg.rect(col.x + 2, header_top, col.w - 4, bottom - header_top, "#f5f8fc" if i % 2 else "#fbfbfb",
                 "#dddddd", rx=6)
        title = col.lane.title + (f"  {col.lane.address}" if col.lane.kind == "node" and col.lane.address else "")
        svg.text(col.cx, header_top + 20, _fit(title, col.w - 8, 12), 12, "bold", anchor="middle")

    steps_by_id = {s.id: s for s in plan.steps}
    for level in range(levels):
        ly = row_top[level]
        starts = [steps_by_id[k].start_s for k in plan.levels[level]]
        svg.text(MARGIN, ly + 20, f"L{level}", 12, "bold", fill="#444")
        svg.text(MARGIN, ly + 34, format_offset(min(starts)) if starts else "", 10, fill="#777")

    pos: dict[str, tuple[float, float, float]] = {}  # id -> (x, y, w)
    for s in plan.steps:
        col = col_of.get(s.lane)
        if col is None:
            continue
        pos[s.id] = (col.x + 8, row_top[s.level] + (ROW_H - BOX_H) / 2 + slot[s.id] * SLOT_H, col.w - 16)

    occupied = {(s.lane, s.level) for s in plan.steps}
    critical_edges = set(zip(plan.critical_path, plan.critical_path[1:]))
    incoming: dict[str, list[str]] = {s.id: [d for d in s.depends_on if d in pos] for s in plan.steps}
    outgoing: dict[str, list[str]] = {k: [] for k in pos}
    for k, deps in incoming.items():
        for d in deps:
            outgoing[d].append(k)

    def spread(node: str, other: str, ends: list[str]) -> float:
        x, _, w = pos[node]
        ordered = sorted(ends, key=lambda e: pos[e][0])
        if len(ordered) <= 1:
            return x + w / 2
        i = ordered.index(other)
        span = min(w - 24, 18 * (len(ordered) - 1))
        return x + w / 2 - span / 2 + span * i / (len(ordered) - 1)

    edges: list[tuple[int, str]] = []
    for s in plan.steps:
        if s.id not in pos:
            continue
        for d in incoming[s.id]:
            src, dst = steps_by_id[d], s
            x1 = spread(d, s.id, outgoing[d])
            y1 = pos[d][1] + BOX_H
            x2 = spread(s.id, d, incoming[s.id])
            y2 = pos[s.id][1] - 1
            crit = (d, s.id) in critical_edges
            same = src.lane == dst.lane
            color, marker = (CRITICAL, "arrow-crit") if crit else ((SAME_LANE, "arrow") if same else
                                                                   (CROSS_NODE, "arrow-cross"))
            blocked = same and any((src.lane, lv) in occupied for lv in range(src.level + 1, dst.level))
            # Stacked boxes (several steps of one lane on one level): leave and enter at the sides, so the
            # arrow does not run under the box below the source or above the target.
            below_src = per_cell[(src.lane, src.level)] - 1 > slot[d]
            above_dst = slot[s.id] > 0
            sx, sy, sw = pos[d]
            tx, ty, tw = pos[s.id]
            if same and not (blocked or below_src or above_dst):
                path = f"M {x1:.1f} {y1:.1f} L {x2:.1f} {y2:.1f}"
            elif same:  # bow out to the right, around the boxes in between
                a_x, a_y, b_x, b_y = sx + sw, sy + BOX_H / 2, tx + tw + 1, ty + BOX_H / 2
                bow = max(a_x, b_x) + 14
                path = f"M {a_x:.1f} {a_y:.1f} C {bow:.1f} {a_y:.1f} {bow:.1f} {b_y:.1f} {b_x:.1f} {b_y:.1f}"
            else:
                rightwards = tx > sx
                if below_src:
                    x1, y1 = (sx + sw, sy + BOX_H / 2) if rightwards else (sx, sy + BOX_H / 2)
                    c1 = f"{x1 + (40 if rightwards else -40):.1f} {y1:.1f}"
                else:
                    c1 = f"{x1:.1f} {y1 + min(ROW_H * 0.8, (y2 - y1) / 2):.1f}"
                if above_dst:
                    x2, y2 = (tx - 1, ty + BOX_H / 2) if rightwards else (tx + tw + 1, ty + BOX_H / 2)
                    c2 = f"{x2 - (40 if rightwards else -40):.1f} {y2:.1f}"
                else:
                    c2 = f"{x2:.1f} {y2 - min(ROW_H * 0.8, max(10.0, (y2 - y1) / 2)):.1f}"
                path = f"M {x1:.1f} {y1:.1f} C {c1} {c2} {x2:.1f} {y2:.1f}"
            w = 2.2 if crit else (1.2 if same else 1.1)
            edges.append((1 if crit else 0, f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{w}" '
                                            f'marker-end="url(#{marker})" opacity="0.9"/>'))
    for _, e in sorted(edges, key=lambda item: item[0]):  # critical edges on top
        svg.add(e)

    for s in plan.steps:
        if s.id not in pos:
            continue
        x, y, w = pos[s.id]
        fill, stroke = PHASE_COLORS.get(s.phase, PHASE_COLORS["other"])
        svg.add(f"<g><title>{escape(_tooltip(s))}</title>")
        svg.rect(x, y, w, BOX_H, fill, CRITICAL if s.critical else stroke, rx=5, width=2.2 if s.critical else 1)
        svg.text(x + 7, y + 15, _fit(s.title, w - 12, 11), 11, "bold")
        svg.text(x + 7, y + 30, _fit(f"{format_duration(s.estimate_s)} · {s.id}", w - 12, 9.5), 9.5, fill="#555")
        svg.add("</g>")

    # legend and totals
    ly = bottom + 24
    lx = MARGIN
    for phase, name in PHASE_NAMES.items():
        fill, stroke = PHASE_COLORS[phase]
        svg.rect(lx, ly - 11, 14, 14, fill, stroke, rx=3)
        svg.text(lx + 19, ly, name, 11)
        lx += 28 + len(name) * 6.6
    svg.line(lx, ly - 4, lx + 30, ly - 4, CRITICAL, 2.2, marker="arrow-crit")
    svg.text(lx + 36, ly, "critical path", 11)
    lx += 130
    svg.line(lx, ly - 4, lx + 30, ly - 4, CROSS_NODE, 1.2, marker="arrow-cross")
    svg.text(lx + 36, ly, "waits for a step elsewhere", 11)
    t = plan.totals
    if t is not None:
        text = (f"Outer host total: {t.outer_vms} VMs, {t.vcpu} vCPU, {_gib(t.memory_mib)} RAM, "
                f"{_num(t.disk_gib)} GiB disk")
        for f in t.fit:
            text += f" · {f.what}: {'fits' if f.fits else 'DOES NOT FIT'}"
        svg.text(MARGIN, ly + 24, text, 12, "bold")
    svg.text(MARGIN, ly + 42, f"Critical path: {len(plan.critical_path)} steps, estimated {format_duration(plan.estimate_s)}"
             " (estimates: pvelab/plan/durations.py)", 11, fill="#555")
    return ly + 60


def _wrap(text: str, width: float, size: float, max_lines: int) -> list[str]:
    """Break `text` into lines that fit `width` (at spaces, '-' and '_', else anywhere)."""
    max_chars = max(4, int(width / (size * CHAR_W)))
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        if len(rest) <= max_chars:
            lines.append(rest)
            rest = ""
            break
        cut = max((rest.rfind(ch, 0, max_chars) for ch in " -_"), default=-1)
        cut = cut + 1 if cut > max_chars // 3 else max_chars
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        lines[-1] = _fit(lines[-1] + " " + rest, width, size)
    return lines


def _bar(svg: _Svg, x: float, y: float, w: float, text: str, phase: str) -> None:
    """A full-width box under the nodes with up to two lines of text."""
    fill, stroke = PHASE_COLORS[phase]
    lines = _wrap(text, w - 20, 11, 2)
    svg.rect(x, y, w, BAR_H, fill, stroke, rx=5)
    top = y + (BAR_H - 14 * len(lines)) / 2 + 11
    for i, line in enumerate(lines):
        svg.text(x + 10, top + 14 * i, line, 11, fill="#3a2a1a" if phase == "ceph" else "#4a2068")


def _tooltip(s: Step) -> str:
    deps = ", ".join(s.depends_on) or "nothing"
    return (f"{s.id} ({s.detail}) on {s.lane}: level {s.level}, starts {format_offset(s.start_s)}, "
            f"{format_duration(s.estimate_s)} (estimate: {s.estimate_source}); waits for {deps}")
