"""pvelab/node_script.py: the command ships lib/common.sh with every script, and the run line stays last."""
from __future__ import annotations

import re

import pytest

import pvelab.node_script as node_script
from node_runner import FakeNode
from pvelab.node_script import HEREDOC_MARK, script_command


def test_the_library_is_written_before_the_script_and_the_run_line_is_last():
    command = script_command("cluster-quorum", ["an arg"], {"EXPECTED_NODES": "3", "UNSET": None})
    lines = command.splitlines()
    assert lines[0] == f'mkdir -p "$HOME/pve-lab/lib" && cat > "$HOME/pve-lab/lib/common.sh" <<\'{HEREDOC_MARK}\''
    library_end = lines.index(HEREDOC_MARK)
    assert lines[library_end + 1] == f'cat > "$HOME/pve-lab/cluster-quorum.sh" <<\'{HEREDOC_MARK}\''
    assert lines.count(HEREDOC_MARK) == 2 and lines[-2] == HEREDOC_MARK
    assert lines[-1] == "env EXPECTED_NODES=3 bash \"$HOME/pve-lab/cluster-quorum.sh\" 'an arg'"
    assert "fail()" in "\n".join(lines[:library_end])


def test_a_script_left_on_the_node_runs_by_hand(tmp_path):
    node = FakeNode("pve1", tmp_path)
    node.run(script_command("cluster-quorum"))  # fails (no EXPECTED_NODES), but leaves both files
    assert (node.home / "pve-lab/lib/common.sh").is_file()
    by_hand = node.run('cd / && bash "$HOME/pve-lab/cluster-quorum.sh"')
    assert by_hand.returncode == 1
    assert by_hand.stderr == ("pve-lab: error: missing environment variable EXPECTED_NODES\n"
                              "pve-lab: Run as: EXPECTED_NODES=3 bash cluster-quorum.sh\n")


def test_a_heredoc_mark_in_the_library_is_refused(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/common.sh").write_text(f"log() {{ :; }}\n{HEREDOC_MARK}\n")
    (tmp_path / "x.sh").write_text("true\n")
    monkeypatch.setattr(node_script, "SCRIPTS_DIR", tmp_path)
    with pytest.raises(ValueError, match="common.sh: a line equal to PVE_LAB_EOF"):
        script_command("x")


def test_the_library_never_traces_commands():
    """cluster-join holds the root password in a variable: a trace in the shared helpers would print it."""
    text = (node_script.SCRIPTS_DIR / node_script.LIBRARY).read_text()
    assert not re.search(r"^\s*set\s+(-\w*x|-o\s+xtrace)", text, re.M)
    assert "bash -x" not in text


def test_the_bundle_ships_every_script_and_each_step_is_one_short_line(tmp_path):
    """pulumi-command prints a failed step's whole command first: a step's command is one line, no script text."""
    from pvelab.node_script import bundle_command, bundle_files, bundle_run_line, run_command

    files = bundle_files()
    assert "lib/common.sh" in files and "node-evict.sh" in files and "install-pve.sh" in files
    # every library, not only common.sh: ceph-osd.sh sources lib/disks.sh from the same folder
    libraries = {f"lib/{p.name}" for p in (node_script.SCRIPTS_DIR / "lib").glob("*.sh")}
    assert "lib/disks.sh" in libraries and libraries <= set(files)
    for name in files:
        if not name.startswith("lib/"):
            assert set(node_script.libraries_of(files[name])) <= set(files), name
    node = FakeNode("pve1", tmp_path)
    result = node.install_scripts()
    assert result.stdout.startswith("pve-lab scripts ") and result.stderr == ""
    for path, text in files.items():
        assert (node.home / "pve-lab" / path).read_text() == text
    assert not list((node.home / "pve-lab").rglob("*.tmp"))
    line = run_command("cluster-quorum", [], {"EXPECTED_NODES": "3", "DEADLINE_S": "5"})
    assert "\n" not in line and len(line) < 200
    assert line == 'env DEADLINE_S=5 EXPECTED_NODES=3 bash "$HOME/pve-lab/cluster-quorum.sh"'
    # a second run of the bundle changes nothing and says the same
    assert node.install_scripts().stdout == result.stdout
    assert bundle_command() == bundle_command()
    assert bundle_run_line() == "bash -s -- pve-lab-scripts " + result.stdout.split()[2]


def test_a_changed_script_changes_the_bundle_but_not_the_run_lines(tmp_path, monkeypatch):
    from pvelab.node_script import bundle_command, run_command

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib/common.sh").write_text("log() { :; }\n")
    (tmp_path / "x.sh").write_text("echo one\n")
    monkeypatch.setattr(node_script, "SCRIPTS_DIR", tmp_path)
    from pvelab.node_script import bundle_run_line

    before, version, line = bundle_command(), bundle_run_line(), run_command("x")
    (tmp_path / "x.sh").write_text("echo two\n")
    assert bundle_command() != before and bundle_run_line() != version and run_command("x") == line
    with pytest.raises(ValueError, match="no node script components/scripts/y.sh"):
        run_command("y")
