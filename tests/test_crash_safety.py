"""`classroom render` killed at every write, and two renders racing: nothing moves, nothing is lost.

The allocation file is the class's lock file: a student's slot (VMIDs, subnet, VLAN) must never change and a
stack file's encryption salt and secrets must never disappear, whatever happens to a render.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from pvelab import atomicfile
from pvelab.classroom import render as render_mod
from pvelab.classroom.allocate import allocation_path
from pvelab.classroom.render import render_class
from pvelab.classroom.roster import RosterError
from pvelab.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "classroom.yaml"
SECRETS = ("encryptionsalt: v1:SALT-{sid}:abc\n", "  pve-lab:outerApiToken:\n    secure: v1:CIPHER-{sid}\n")


def NO_POLICY(plan):  # noqa: N802 - the policy rules are tested elsewhere; here only the files matter
    return {}


class Killed(BaseException):
    """Stands for SIGKILL at one step of a write (BaseException: no `except Exception` may swallow it)."""


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(".lock") and not p.name.endswith(".tmp")}


def vmid_bases(folder: Path) -> dict[str, int]:
    out = {}
    for path in folder.glob("Pulumi.ha101-*.yaml"):
        lab = yaml.safe_load(path.read_text())["config"]["pve-lab:lab"]
        out[lab["student"]["id"]] = lab["vmidBase"]
    return out


def add_secrets(folder: Path) -> None:
    """What `pulumi config set --secret` adds to each stack file: a salt and a ciphertext render must keep."""
    for path in folder.glob("Pulumi.ha101-*.yaml"):
        sid = path.name[len("Pulumi.ha101-"):-len(".yaml")]
        text = path.read_text()
        text = SECRETS[0].format(sid=sid) + text.replace("config:\n", "config:\n" + SECRETS[1].format(sid=sid), 1)
        path.write_text(text)


@pytest.fixture
def rendered(tmp_path):
    """A class rendered once (6 students), secrets set, then the roster changed: s02 leaves, s07 joins."""
    roster = tmp_path / "classroom.yaml"
    shutil.copy(EXAMPLE, roster)
    render_class(roster, tmp_path)
    add_secrets(tmp_path)
    text = roster.read_text().replace("  - {id: s02, name: Ben Carter}\n", "")
    roster.write_text(text + "  - {id: s07, name: Gil Moreau}\n")
    return tmp_path


def copy_class(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def count_steps(folder: Path, monkeypatch) -> list[tuple[str, str]]:
    steps = []
    monkeypatch.setattr(atomicfile, "step_hook", lambda step, path: steps.append((step, path.name)))
    render_class(folder / "classroom.yaml", folder)
    monkeypatch.setattr(atomicfile, "step_hook", None)
    return steps


def test_a_render_killed_at_any_write_loses_and_moves_nothing(rendered, tmp_path_factory, monkeypatch):
    before = snapshot(rendered)
    expected_dir = copy_class(rendered, tmp_path_factory.mktemp("expected") / "c")
    steps = count_steps(expected_dir, monkeypatch)
    expected = snapshot(expected_dir)
    written = {name for _, name in steps}
    assert {"classroom.alloc.yaml", "Pulumi.ha101-s07.yaml"} <= written and len(steps) >= 8
    assert vmid_bases(expected_dir)["s07"] == 20060  # s02's slot 1 stays retired: s07 gets slot 6

    folder = copy_class(rendered, tmp_path_factory.mktemp("killed") / "c")
    for k, (step, name) in enumerate(steps):
        restore(folder, before)

        def kill_at_k(s, p, calls=[0]):  # noqa: B006 - a counter shared by the calls of this render
            if calls[0] == k:
                raise Killed(f"{s} {p.name}")
            calls[0] += 1

        monkeypatch.setattr(atomicfile, "step_hook", kill_at_k)
        with pytest.raises(Killed):
            render_class(folder / "classroom.yaml", folder, violations_of=NO_POLICY)
        monkeypatch.setattr(atomicfile, "step_hook", None)
        after_kill = snapshot(folder)
        for file_name, content in after_kill.items():  # every file whole: the old or the new version
            assert content in (before.get(file_name), expected.get(file_name)), f"step {k} ({step} {name}): {file_name}"
        for file_name in before:
            assert file_name in after_kill, f"step {k}: {file_name} lost"
        assert all(b"v1:SALT-" in c for n, c in after_kill.items() if n.startswith("Pulumi.ha101-s0")
                   and n in before)

        render_class(folder / "classroom.yaml", folder, violations_of=NO_POLICY)  # the next render finishes the job
        assert snapshot(folder) == expected, f"after a kill at step {k} ({step} {name}) the next render differs"
    restore(folder, before)
    assert main(["classroom", "render", str(folder / "classroom.yaml"), "--project-dir", str(folder)]) == 0
    assert snapshot(folder) == expected


def restore(folder: Path, files: dict[str, bytes]) -> None:
    for path in folder.iterdir():
        if path.is_file() and path.name not in files:
            path.unlink()
    for name, content in files.items():
        (folder / name).write_bytes(content)


@pytest.mark.parametrize("where", [0, 3, -1])
def test_a_real_kill_leaves_whole_files(rendered, where, monkeypatch, tmp_path_factory):
    """SIGKILL-like (os._exit: no cleanup runs) in a child process at a write step; then render again."""
    before = snapshot(rendered)
    expected_dir = copy_class(rendered, tmp_path_factory.mktemp("expected") / "c")
    steps = count_steps(expected_dir, monkeypatch)
    expected = snapshot(expected_dir)
    k = where % len(steps)
    child = (
        "import os, sys\n"
        "from pvelab import atomicfile\n"
        "from pvelab.classroom.render import render_class\n"
        "calls = [0]\n"
        "def hook(step, path):\n"
        f"    if calls[0] == {k}:\n"
        "        os._exit(137)\n"
        "    calls[0] += 1\n"
        "atomicfile.step_hook = hook\n"
        "render_class(sys.argv[1] + '/classroom.yaml', sys.argv[1])\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(rendered)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 137, result.stderr
    for file_name, content in snapshot(rendered).items():
        assert content in (before.get(file_name), expected.get(file_name)), file_name
    assert main(["classroom", "render", str(rendered / "classroom.yaml"), "--project-dir", str(rendered)]) == 0
    assert snapshot(rendered) == expected


@pytest.mark.parametrize("damage,message", [
    ("empty", "classroom.alloc.yaml: the file is empty"),
    ("missing", "classroom.alloc.yaml: missing, but the class's stack files exist"),
    ("forgotten", "classroom.alloc.yaml: Pulumi.ha101-s02.yaml holds student s02, whom the allocation file does not "
                  "record, and its VMIDs 20010 would go to s07"),
    ("other-node", "classroom.alloc.yaml: student s05 would move from outer node {old} (Pulumi.ha101-s05.yaml) to {new}"),
])
def test_a_damaged_allocation_file_is_refused_and_nothing_is_written(rendered, damage, message, capsys):
    alloc = allocation_path(rendered / "classroom.yaml")
    doc = yaml.safe_load(alloc.read_text())
    if damage == "empty":
        alloc.write_text("")
    elif damage == "missing":
        alloc.unlink()
    elif damage == "forgotten":  # s01 and s02 lost: s02's slot (its lab may still exist) would go to s07
        for sid in ("s01", "s02"):
            del doc["students"][sid]
        alloc.write_text(yaml.safe_dump(doc))
    else:  # the file says another node than the stack file (edited by hand, or an older copy)
        old = doc["students"]["s05"]["node"]
        new = {"pve1": "pve2", "pve2": "pve1"}[old]
        doc["students"]["s05"]["node"] = new
        alloc.write_text(yaml.safe_dump(doc))
        message = message.format(old=old, new=new)
    before = snapshot(rendered)
    assert main(["classroom", "render", str(rendered / "classroom.yaml"), "--project-dir", str(rendered)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert snapshot(rendered) == before


def test_an_allocation_file_cut_anywhere_never_moves_anyone(rendered, capsys):
    """An older, in-place writer killed mid-write left a prefix of the file: each prefix is refused, or the
    render reproduces every student's slot and node exactly."""
    alloc = allocation_path(rendered / "classroom.yaml")
    full = alloc.read_bytes()
    before = vmid_bases(rendered)
    nodes = {p.name: yaml.safe_load(p.read_text())["config"]["pve-lab:lab"]["outer"]["node"]
             for p in rendered.glob("Pulumi.ha101-*.yaml")}
    cuts = sorted({i + 1 for i, b in enumerate(full) if b == ord("\n")} | {len(full) // 3, len(full) // 2})
    outcomes = {"refused": 0, "kept": 0}
    for cut in cuts:
        alloc.write_bytes(full[:cut])
        untouched = snapshot(rendered)
        code = main(["classroom", "render", str(rendered / "classroom.yaml"), "--project-dir", str(rendered)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == 2:
            outcomes["refused"] += 1
            assert snapshot(rendered) == untouched, f"cut at {cut}: refused but wrote something"
        else:
            assert code == 0
            outcomes["kept"] += 1
            after = vmid_bases(rendered)
            assert all(after[sid] == vmid for sid, vmid in before.items()), f"cut at {cut}: someone moved"
            assert all(yaml.safe_load((rendered / name).read_text())["config"]["pve-lab:lab"]["outer"]["node"] == node
                       for name, node in nodes.items()), f"cut at {cut}: someone changed node"
        alloc.write_bytes(full)
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == len(cuts)


@pytest.mark.parametrize("content", ["- not\n- a mapping\n", "config: [1]\n", "config: {a: &x 1}\n", b"\xff\xfe"])
def test_a_stack_file_render_cannot_read_is_never_overwritten(rendered, content, capsys):
    path = rendered / "Pulumi.ha101-s03.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(rendered)
    assert main(["classroom", "render", str(rendered / "classroom.yaml"), "--project-dir", str(rendered)]) == 2
    err = capsys.readouterr().err
    assert "Pulumi.ha101-s03.yaml" in err and "Traceback" not in err
    assert snapshot(rendered) == before  # not even the allocation file changed


# ---------------------------------------------------------------- two renders at once


def _race(folder: Path, monkeypatch, use_lock: bool) -> dict[str, int]:
    """Render A (roster + s07) is stopped right before its first write; meanwhile the roster is edited
    (+ s08 instead) and render B starts. With the lock B waits for A; without it both read the same file."""
    roster = folder / "classroom.yaml"
    original = roster.read_text()
    a_at_write, a_go, b_started = threading.Event(), threading.Event(), threading.Event()
    b_read_allocation = threading.Event()
    a_thread: list[threading.Thread] = []

    def hook(step, path):
        if threading.current_thread() is a_thread[0] and not a_go.is_set():
            a_at_write.set()
            assert a_go.wait(30)

    real_load = render_mod.load_allocation

    def spy_load(path):
        if threading.current_thread() is not a_thread[0]:
            b_read_allocation.set()
        return real_load(path)

    monkeypatch.setattr(atomicfile, "step_hook", hook)
    monkeypatch.setattr(render_mod, "load_allocation", spy_load)
    if not use_lock:
        import contextlib

        monkeypatch.setattr(render_mod, "locked", lambda path: contextlib.nullcontext(path))
    errors = []

    def run(label):
        try:
            render_class(roster, folder)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append((label, exc))

    roster.write_text(original + "  - {id: s07, name: Gil Moreau}\n")
    a = threading.Thread(target=run, args=("A",))
    a_thread.append(a)
    a.start()
    assert a_at_write.wait(60), "render A never reached its first write"
    roster.write_text(original + "  - {id: s08, name: Hana Ito}\n")  # edited while A is still working
    b = threading.Thread(target=lambda: (b_started.set(), run("B")))
    b.start()
    assert b_started.wait(10)
    blocked = not b_read_allocation.wait(1.0)  # with the lock, B cannot even read the allocation yet
    a_go.set()
    a.join(60)
    b.join(60)
    assert not errors, errors
    monkeypatch.setattr(atomicfile, "step_hook", None)
    return {"blocked": blocked, **vmid_bases(folder)}


def test_two_renders_at_once_never_share_a_slot(rendered, monkeypatch):
    shutil.copy(EXAMPLE, rendered / "classroom.yaml")  # back to the rendered roster
    result = _race(rendered, monkeypatch, use_lock=True)
    assert result.pop("blocked") is True
    assert result["s07"] == 20060 and result["s08"] == 20070  # s07 kept its slot (now retired), s08 got the next
    assert len(set(result.values())) == len(result)
    alloc = yaml.safe_load(allocation_path(rendered / "classroom.yaml").read_text())
    assert alloc["students"]["s08"]["slot"] == 7
    assert {"slot": 6, "student": "s07", "node": alloc["retired"][0]["node"]} in alloc["retired"]


def test_without_the_lock_the_same_interleaving_collides(rendered, monkeypatch):
    """The race test can fail: without the lock, B allocates from the file A has not written yet."""
    shutil.copy(EXAMPLE, rendered / "classroom.yaml")
    result = _race(rendered, monkeypatch, use_lock=False)
    assert result.pop("blocked") is False
    assert result["s07"] == result["s08"] == 20060  # two students, one slot: what the lock prevents


def test_a_render_waits_for_another_process_holding_the_lock(rendered):
    alloc = allocation_path(rendered / "classroom.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with atomicfile.locked(alloc):
        child = subprocess.Popen([sys.executable, "-m", "pvelab", "classroom", "render", str(rendered / "classroom.yaml"),
                                  "--project-dir", str(rendered)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert child.poll() is None, "the render did not wait for the lock"
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err
    assert "wrote" in out


def test_atomic_write_failure_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "keep.yaml"
    path.write_text("old\n")

    def no_space(step, p):
        if step == "fsync":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicfile, "step_hook", no_space)
    with pytest.raises(atomicfile.FileWriteError) as err:
        atomicfile.atomic_write(path, "new\n")
    assert err.value.problems == [f"{path}: cannot write (No space left on device); nothing was changed in it"]
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["keep.yaml"]


def test_render_refuses_before_any_write_when_the_roster_is_bad(rendered):
    (rendered / "classroom.yaml").write_text("class: [\n")
    before = snapshot(rendered)
    with pytest.raises(RosterError):
        render_class(rendered / "classroom.yaml", rendered)
    assert snapshot(rendered) == before
