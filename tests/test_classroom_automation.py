"""The real classroom backends: gated on the `pulumi` CLI, the Automation API calls they make (against a stand-in
of `pulumi.automation`), the class-images inline program under Pulumi's mock runtime, and `classroom up/down`
as commands."""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import types
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from pvelab.classroom import automation, run_cli
import fake_pulumi
from pvelab.classroom.allocate import ImageDownload
from pvelab.classroom.automation import (
    CLASS_PROJECT, IMAGES_TOKEN_KEY, AutomationBackend, ClassImagesBackend, PulumiCliMissing, check_downloads,
    class_outer_endpoint, images_job, images_program, proxmoxve_plugin, require_pulumi_cli,
)
from pvelab.classroom.runner import StackJob, StackNotFound
from pvelab.evaluate import LabMocks, RecordingMonitor, _resolve_exports, plaintext_strings, unwrap
from pvelab.provider_types import check_all

TOKEN = "root@pam!pvelab=00000000-1111-2222-3333-444444444444"
ENDPOINT = "https://pve.example:8006/"
NO_CLI = lambda name: None  # noqa: E731
FAKE_CLI = lambda name: f"/opt/pulumi/bin/{name}"  # noqa: E731


DEBIAN = "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2"
DOWNLOADS = [
    ImageDownload("pve-a", "local", DEBIAN, "debian-13-genericcloud-amd64.qcow2", "ab" * 64, "sha512",
                  "local:import/debian-13-genericcloud-amd64.qcow2"),
    ImageDownload("pve-b", "nvme-dir", DEBIAN, "debian-13-genericcloud-amd64.qcow2", None, None,
                  "nvme-dir:import/debian-13-genericcloud-amd64.qcow2"),
]


def lab_config(endpoint: str = ENDPOINT, insecure: bool = True) -> dict[str, str]:
    return {"pve-lab:lab": json.dumps({"outer": {"endpoint": endpoint, "insecure": insecure, "node": "pve-a"}})}


def student(i: int, **kw) -> StackJob:
    return StackJob(stack=f"c1-s{i:02d}", student_id=f"s{i:02d}", config=lab_config(**kw),
                    secrets={"pve-lab:outerApiToken": TOKEN})


# ---------------------------------------------------------------- gating on the CLI


def test_without_the_pulumi_cli_the_backends_refuse_with_how_to_install_it():
    with pytest.raises(PulumiCliMissing) as caught:
        require_pulumi_cli(NO_CLI)
    message = str(caught.value)
    assert "`pulumi` CLI is not on PATH" in message and "https://get.pulumi.com" in message
    assert "pulumi login" in message
    with pytest.raises(PulumiCliMissing):
        AutomationBackend(which=NO_CLI)
    with pytest.raises(PulumiCliMissing):
        ClassImagesBackend(DOWNLOADS, ENDPOINT, which=NO_CLI)
    assert require_pulumi_cli(FAKE_CLI) == "/opt/pulumi/bin/pulumi"


@pytest.mark.skipif(shutil.which("pulumi") is not None, reason="the pulumi CLI is installed here")
def test_this_machine_has_no_pulumi_cli_and_the_default_gate_sees_it():
    with pytest.raises(PulumiCliMissing):
        AutomationBackend()


# ---------------------------------------------------------------- the real Automation API against a fake `pulumi`


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """The real LocalWorkspace driving tests/fake_pulumi.py's `pulumi` script (records argv, env, stdin)."""
    return fake_pulumi.install(tmp_path, monkeypatch)


def ops(cli, *names):
    """The fake CLI's calls whose first words are one of `names` ("up", "config set", ...)."""
    out = []
    for argv in cli.argvs():
        words = [a for a in argv if not a.startswith("-")]
        if any(words[: len(n.split())] == n.split() for n in names):
            out.append(argv)
    return out


def test_student_up_sets_plain_config_in_argv_and_the_token_only_through_stdin(cli, tmp_path):
    lines = []
    AutomationBackend(work_dir=tmp_path, which=FAKE_CLI).up(student(1), lines.append)
    assert ops(cli, "stack select")[0][-1] == "c1-s01" and ops(cli, "stack init")  # created: it did not exist
    (set_all,) = ops(cli, "config set-all")
    assert any(a.startswith("pve-lab:lab=") for a in set_all) and "--secret" not in set_all
    (secret_call,) = [c for c in cli.calls if "config" in c["argv"] and "set" in c["argv"]]
    assert secret_call["argv"][-4:] == ["pve-lab:outerApiToken", "--secret", "--stack", "c1-s01"]
    assert secret_call["stdin"] == TOKEN
    for call in cli.calls:  # never on a command line (`ps` shows argv to every local user), never in env
        assert TOKEN not in json.dumps(call["argv"]) and TOKEN not in json.dumps(call["env"])
    (up,) = ops(cli, "up")
    assert "--color" in up and "never" in up and "--show-secrets" not in up
    assert "Updating (c1-s01)" in lines


def test_the_instructors_secrets_in_the_environment_reach_no_pulumi_process(cli, tmp_path, monkeypatch):
    """`classroom up` reads the token from PVE_LAB_OUTER_API_TOKEN; the `pulumi` it starts (and its language host
    and provider plugins, which inherit its environment) get it only as a config secret on stdin."""
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    monkeypatch.setenv("PVE_LAB_ROOT_PASSWORD", "shared-root-pw-123")
    monkeypatch.setattr(automation, "_PULUMI_COMMAND", [])  # made again here: its `pulumi version` is checked too
    backend = AutomationBackend(work_dir=tmp_path, which=FAKE_CLI)
    backend.up(student(1), lambda line: None)
    backend.existing_stacks()
    backend.state_resources("c1-s01")
    backend.destroy(student(1), lambda line: None)
    assert all(ops(cli, kind) for kind in ("up", "config set", "destroy", "stack export", "stack ls"))
    for call in cli.calls:
        env = json.dumps(call["env"])
        assert TOKEN not in env and "shared-root-pw-123" not in env, call["argv"]
    (secret_call,) = [c for c in cli.calls if "config" in c["argv"] and "set" in c["argv"]]
    assert secret_call["stdin"] == TOKEN
    assert ["version"] in cli.argvs()
    assert os.environ["PVE_LAB_OUTER_API_TOKEN"] == TOKEN  # this process keeps them


def test_a_second_up_sets_no_secret_at_all(cli, tmp_path):
    backend = AutomationBackend(work_dir=tmp_path, which=FAKE_CLI)
    backend.up(student(1), lambda line: None)
    assert "secure" in (tmp_path / "Pulumi.c1-s01.yaml").read_text()
    before = len(cli.calls)
    backend.up(student(1), lambda line: None)
    again = cli.argvs()[before:]
    assert not [a for a in again if a[:2] == ["config", "set"]]
    assert [a for a in again if a[:1] == ["up"]]


def test_the_clis_stderr_reaches_the_log(cli, tmp_path):
    cli.fault("up:c1-s01", code=255, stdout="Updating (c1-s01)\n",
              stderr="error: could not load plugin proxmoxve: no such file\n")
    lines = []
    with pytest.raises(Exception, match="could not load plugin"):
        AutomationBackend(work_dir=tmp_path, which=FAKE_CLI).up(student(1), lines.append)
    assert "[stderr] error: could not load plugin proxmoxve: no such file" in lines
    assert "Updating (c1-s01)" in lines


def test_every_up_runs_the_policy_pack_with_the_class_config(cli, tmp_path):
    pack, config = tmp_path / "policy", tmp_path / "c1.policy.json"
    AutomationBackend(work_dir=tmp_path, which=FAKE_CLI, policy_pack=pack, policy_config=config).up(
        student(1), lambda line: None)
    (up,) = ops(cli, "up")
    assert up[up.index("--policy-pack") + 1] == str(pack)
    assert up[up.index("--policy-pack-config") + 1] == str(config)


def test_prepare_installs_every_provider_plugin_of_the_program_once(cli, tmp_path):
    lines = []
    AutomationBackend(work_dir=tmp_path, which=FAKE_CLI).prepare(lines.append)
    installs = ops(cli, "plugin install")
    names = [a[3] for a in installs]
    assert names == ["proxmoxve", "command", "random", "tls"]
    for argv, sdk in zip(installs, automation.PROGRAM_PROVIDER_SDKS):
        assert argv[4] == automation.provider_plugin(sdk)[1]  # the version the installed SDK asks for
    assert len(lines) == 4


def test_student_destroy_then_removes_the_stack_and_a_missing_stack_is_not_an_error(cli, tmp_path):
    cli.add_stack("c1-s01")
    backend = AutomationBackend(work_dir=tmp_path, which=FAKE_CLI)
    backend.destroy(student(1), lambda line: None)
    assert [a[0] + " " + a[1] for a in ops(cli, "stack select", "destroy", "stack rm")] == [
        "stack select", "destroy --skip-preview", "stack rm"]
    assert "c1-s01" not in cli.stacks
    with pytest.raises(StackNotFound, match="nothing to destroy"):
        backend.destroy(student(2), lambda line: None)
    cli.add_stack("c1-s01")
    before = len(cli.calls)
    backend.destroy(student(1), lambda line: None, remove_stack=False)
    assert not [a for a in cli.argvs()[before:] if a[:2] == ["stack", "rm"]]


def test_images_stack_is_inline_installs_its_provider_and_sets_its_token_through_stdin(cli, tmp_path):
    backend = ClassImagesBackend(DOWNLOADS, ENDPOINT, work_dir=tmp_path / "class", which=FAKE_CLI)
    backend.up(images_job("c1-images", TOKEN), lambda line: None)
    name, version, server = proxmoxve_plugin()
    (install,) = ops(cli, "plugin install")
    assert install[:5] == ["plugin", "install", "resource", name, version]
    assert version == json.loads((Path(__import__("pulumi_proxmoxve").__file__).parent
                                  / "pulumi-plugin.json").read_text())["version"]
    (secret_call,) = [c for c in cli.calls if c["argv"][1:3] == ["config", "set"]]
    assert secret_call["stdin"] == TOKEN and IMAGES_TOKEN_KEY in secret_call["argv"]
    assert secret_call["cwd"] == str(tmp_path / "class")
    assert all(TOKEN not in json.dumps(c["argv"]) for c in cli.calls)
    (up,) = ops(cli, "up")
    assert up[up.index("--exec-kind") + 1] == "auto.inline" and any(a.startswith("--client=127.0.0.1:") for a in up)
    backend.destroy(images_job("c1-images", None), lambda line: None)
    assert "c1-images" not in cli.stacks


def test_image_downloads_and_endpoints_are_checked():
    bad = ImageDownload("pve-a", "local", DEBIAN, "debian.qcow2", None, None, "local:iso/debian.qcow2")
    clash = ImageDownload("pve-a", "local", "https://mirror.example/debian.qcow2", "debian-13-genericcloud-amd64.qcow2",
                          None, None, "local:import/debian-13-genericcloud-amd64.qcow2")
    problems = check_downloads([*DOWNLOADS, bad, clash])
    assert problems == [
        "image download on pve-a: file_id 'local:iso/debian.qcow2' should be 'local:import/debian.qcow2'",
        f"image download on pve-a: local:import/debian-13-genericcloud-amd64.qcow2 comes from two URLs "
        f"({DEBIAN} and https://mirror.example/debian.qcow2)",
    ]
    with pytest.raises(ValueError, match="file_id"):
        ClassImagesBackend([bad], ENDPOINT, which=FAKE_CLI)
    assert class_outer_endpoint([student(1), student(2)]) == (ENDPOINT, True)
    with pytest.raises(ValueError, match=r"pve-lab:lab.outer.endpoint: the class needs exactly one outer endpoint"):
        class_outer_endpoint([student(1), student(2, endpoint="https://other:8006/")])


# ---------------------------------------------------------------- the inline program under mocks


def run_inline(program, config: dict[str, str], secret_keys: list[str]):
    """Run an inline program on Pulumi's mock runtime (as pvelab/evaluate.py does for __main__.py)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    monitor = RecordingMonitor(LabMocks())
    pulumi.runtime.set_all_config(config, secret_keys)
    pulumi.runtime.set_mocks(LabMocks(), project=CLASS_PROJECT, stack="c1-images", preview=False, monitor=monitor)
    try:
        _sync_await(run_pulumi_func(program))
        outputs = _sync_await(_resolve_exports())
    finally:
        pulumi.runtime.settings.reset_options()
        loop.close()
        asyncio.set_event_loop(None)
    return monitor.records, outputs


@pytest.fixture(scope="module")
def images_graph():
    program = images_program([*DOWNLOADS, DOWNLOADS[0]], ENDPOINT, insecure=True)  # a duplicate: one download
    return run_inline(program, {IMAGES_TOKEN_KEY: TOKEN}, [IMAGES_TOKEN_KEY])


def test_images_program_downloads_each_image_once_per_node(images_graph):
    records, outputs = images_graph
    files = {r.plain("nodeName"): r for r in records if r.type == "proxmoxve:download/fileLegacy:FileLegacy"}
    assert len(files) == 2  # registration order is not fixed: look them up by node
    first = {k: unwrap(v) for k, v in files["pve-a"].inputs.items() if not k.startswith("__")}
    assert first == {
        "contentType": "import", "datastoreId": "local", "nodeName": "pve-a", "url": DEBIAN,
        "fileName": "debian-13-genericcloud-amd64.qcow2", "checksum": "ab" * 64, "checksumAlgorithm": "sha512",
        "overwrite": False, "uploadTimeout": 1800,
    }
    second = files["pve-b"]
    assert (second.plain("nodeName"), second.plain("datastoreId")) == ("pve-b", "nvme-dir")
    assert "checksum" not in second.inputs and "checksumAlgorithm" not in second.inputs
    assert outputs["fileIds"].value == {f"{d.node}/{d.file_id}": d.file_id for d in DOWNLOADS}


def test_images_program_uses_the_outer_provider_with_the_token_as_a_secret(images_graph):
    records, _ = images_graph
    (provider,) = [r for r in records if r.type == "pulumi:providers:proxmoxve"]
    assert provider.plain("endpoint") == ENDPOINT and provider.plain("insecure") in (True, "true")
    assert provider.plain("apiToken") == TOKEN
    assert TOKEN not in list(plaintext_strings(provider.inputs))
    for r in records:
        if r.type == "proxmoxve:download/fileLegacy:FileLegacy":
            assert r.provider.startswith(provider.urn + "::")
        assert TOKEN not in list(plaintext_strings(r.inputs))


def test_images_program_inputs_match_the_provider_sdk_types(images_graph):
    records, _ = images_graph
    assert check_all(records) == []


def test_images_program_without_the_token_fails_clearly():
    with pytest.raises(Exception, match="outerApiToken"):
        run_inline(images_program(DOWNLOADS, ENDPOINT), {}, [])


# ---------------------------------------------------------------- `classroom up/down` as commands


class FakePlan:
    class_id = "c1"

    def __init__(self, n=3, downloads=DOWNLOADS):
        self.image_downloads = list(downloads)
        self.students = [types.SimpleNamespace(stack=f"c1-s{i:02d}", student_id=f"s{i:02d}", name=f"Student {i}",
                                               outer_node="pve-a", config=lambda: lab_config())
                         for i in range(1, n + 1)]


class RecordingBackend:
    def __init__(self, fail=()):
        self.calls, self.fail = [], set(fail)

    def up(self, job, on_output):
        on_output(f"up {job.stack} with {sorted(job.secrets)}")
        self.calls.append(("up", job.stack, dict(job.secrets)))
        if job.stack in self.fail:
            raise RuntimeError("error: 500 no space left on device")

    def destroy(self, job, on_output, remove_stack=True):
        self.calls.append(("down", job.stack, remove_stack))


def parse(argv):
    parser = argparse.ArgumentParser()
    add = parser.add_subparsers(dest="command", required=True)
    run_cli.add_run_commands(add)
    return parser.parse_args(argv)


@pytest.fixture
def commands(monkeypatch, tmp_path):
    backend, images = RecordingBackend(fail={"c1-s02"}), RecordingBackend()
    monkeypatch.setattr(run_cli, "load_plan", lambda path: FakePlan())
    monkeypatch.setattr(run_cli, "check_guardrails", lambda plan, path: ([], None))
    monkeypatch.setattr(run_cli, "class_preflight_failures", lambda plan, args: [])
    monkeypatch.setattr(run_cli, "make_backends", lambda plan, jobs, **kw: (backend, images))
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        args = parse([*argv, "--log-dir", str(tmp_path / "logs"), "--backoff", "0"])
        code = run_cli.run_command(args.command, args, out, err)
        return code, out.getvalue(), err.getvalue()

    return types.SimpleNamespace(run=run, backend=backend, images=images, logs=tmp_path / "logs")


def test_classroom_up_runs_images_first_prints_progress_and_a_table(commands):
    code, out, err = commands.run("up", "class.yaml", "--parallel", "1")
    assert code == 1  # s02 failed
    assert commands.images.calls == [("up", "c1-images", {IMAGES_TOKEN_KEY: TOKEN})]
    assert [c[1] for c in commands.backend.calls] == ["c1-s01", "c1-s02", "c1-s03"]
    assert all(c[2] == {"pve-lab:outerApiToken": TOKEN} for c in commands.backend.calls)
    assert "[1/3] s01  up  running\n[1/3] s01  up  up\n" in err
    assert "[2/3] s02  up  failed: 500 no space left on device" in err
    rows = [line.split()[:3] for line in out.splitlines()[2:-1]]
    assert rows == [["(class)", "c1-images", "up"], ["s01", "c1-s01", "up"], ["s02", "c1-s02", "failed"],
                    ["s03", "c1-s03", "up"]]
    assert out.splitlines()[-1] == "3 up, 1 failed"
    assert TOKEN not in out + err
    assert (commands.logs / "c1-s02-up.log").read_text() == "up c1-s02 with ['pve-lab:outerApiToken']\n"


def test_classroom_up_json_and_only(commands):
    code, out, _ = commands.run("up", "class.yaml", "--only", "s03", "--json")
    assert code == 0
    doc = json.loads(out)
    assert [s["stack"] for s in doc["stacks"]] == ["c1-images", "c1-s03"]
    code, out, _ = commands.run("up", "class.yaml", "--only", "s01,s03", "--json")
    assert [s["stack"] for s in json.loads(out)["stacks"]] == ["c1-images", "c1-s01", "c1-s03"]


def test_classroom_up_needs_the_token_from_the_environment(commands, monkeypatch):
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN")
    code, out, err = commands.run("up", "class.yaml")
    assert code == 2 and out == ""
    assert err.startswith("pve-lab:outerApiToken: missing; export PVE_LAB_OUTER_API_TOKEN=")
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", "not-a-token")
    code, _, err = commands.run("up", "class.yaml")
    assert code == 2 and "not of the form" in err and "not-a-token" not in err
    assert commands.backend.calls == [] and commands.images.calls == []


def test_classroom_down_refuses_without_yes_when_no_terminal(commands, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a TTY: never asked
    code, _, err = commands.run("down", "class.yaml")
    assert code == 2
    assert err.strip() == ("classroom down: refusing to destroy 3 student lab(s) (s01, s02, s03) and the class "
                           "images without --yes (no terminal to ask on)")
    assert commands.backend.calls == []


def test_classroom_down_with_yes_destroys_students_then_images(commands, monkeypatch):
    monkeypatch.delenv("PVE_LAB_OUTER_API_TOKEN")  # not needed to destroy
    code, out, _ = commands.run("down", "class.yaml", "--yes")
    assert code == 0
    assert sorted(c[1] for c in commands.backend.calls) == ["c1-s01", "c1-s02", "c1-s03"]  # in parallel
    assert commands.images.calls == [("down", "c1-images", True)]
    assert out.splitlines()[-1] == "4 destroyed"


def test_classroom_down_asks_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    jobs = [student(1)]
    assert run_cli.confirm_down(jobs, True, False, stdin=Tty("yes\n"), stderr=io.StringIO()) is None
    refusal = run_cli.confirm_down(jobs, True, False, stdin=Tty("no\n"), stderr=io.StringIO())
    assert refusal == "classroom down: not confirmed; nothing destroyed"


def test_classroom_commands_without_the_cli_stop_before_any_stack(monkeypatch):
    monkeypatch.setattr(run_cli, "load_plan", lambda path: FakePlan())
    monkeypatch.setattr(run_cli, "check_guardrails", lambda plan, path: ([], None))
    monkeypatch.setattr(run_cli, "class_preflight_failures", lambda plan, args: [])
    monkeypatch.setattr(automation.shutil, "which", NO_CLI)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    out, err = io.StringIO(), io.StringIO()
    code = run_cli.run_command("up", parse(["up", "class.yaml"]), out, err)
    assert code == 2 and out.getvalue() == ""
    assert err.getvalue().startswith("classroom up: the `pulumi` CLI is not on PATH")


def test_bad_flags_are_named():
    with pytest.raises(SystemExit):
        parse(["up", "class.yaml", "--parallel", "0"])
    with pytest.raises(SystemExit):
        parse(["down", "class.yaml", "--retries", "-1"])
    args = parse(["down", "class.yaml"])
    assert (args.parallel, args.retries, args.yes, args.only) == (4, 2, False, None)
    assert callable(args.func)


# ---------------------------------------------------------------- with the real roster and allocation


def test_up_keeps_a_rendered_stack_file_and_sets_only_what_differs(cli, tmp_path):
    lab = json.loads(lab_config()["pve-lab:lab"])
    import yaml

    (tmp_path / "Pulumi.c1-s01.yaml").write_text(yaml.safe_dump({"config": {"pve-lab:lab": lab}}))
    backend = AutomationBackend(work_dir=tmp_path, which=FAKE_CLI)
    backend.up(student(1), lambda line: None)
    assert not ops(cli, "config set-all")  # the structured lab in the file is already right
    backend.up(student(1, endpoint="https://elsewhere:8006/"), lambda line: None)
    (set_all,) = ops(cli, "config set-all")
    assert any(a.startswith("pve-lab:lab=") and "elsewhere" in a for a in set_all)


@pytest.fixture
def roster(tmp_path):
    path = tmp_path / "classroom.yaml"
    path.write_text((Path(__file__).resolve().parent.parent / "examples" / "classroom.yaml").read_text())
    return path


def test_up_from_the_example_roster_records_the_allocation_and_uses_the_class_image(monkeypatch, tmp_path, roster):
    backend, images = RecordingBackend(), RecordingBackend()
    made = {}

    def make(plan, jobs, **kw):
        made.update(plan=plan, jobs=jobs)
        return backend, images

    monkeypatch.setattr(run_cli, "make_backends", make)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    args = parse(["up", str(roster), "--log-dir", str(tmp_path / "logs"), "--parallel", "3", "--no-preflight"])
    out, err = io.StringIO(), io.StringIO()
    assert run_cli.run_command("up", args, out, err) == 0, err.getvalue()
    alloc = roster.with_name("classroom.alloc.yaml")
    assert f"allocation recorded in {alloc}" in err.getvalue() and alloc.exists()
    assert images.calls[0][1] == "ha101-images"
    assert sorted(c[1] for c in backend.calls) == [f"ha101-s0{i}" for i in range(1, 7)]
    for job in made["jobs"]:
        lab = json.loads(job.config["pve-lab:lab"])
        assert lab["image"]["fileId"] in {d.file_id for d in made["plan"].image_downloads}
    # A second `up` of the same roster leaves the allocation file alone.
    before = alloc.read_text()
    err2 = io.StringIO()
    assert run_cli.run_command("up", args, io.StringIO(), err2) == 0
    assert "allocation recorded" not in err2.getvalue() and alloc.read_text() == before


def test_up_never_overwrites_an_allocation_written_while_it_started(monkeypatch, tmp_path, roster):
    """Another `classroom render` (or `up`) writes the allocation file after this run read it: this run must not
    put its older slots back over it; it refuses before any stack starts."""
    from pvelab.classroom.allocate import plan_class, save_allocation

    backend, images = RecordingBackend(), RecordingBackend()
    alloc = roster.with_name("classroom.alloc.yaml")

    def make(plan, jobs, **kw):  # runs after this run read the roster and the (missing) allocation file
        save_allocation(plan_class(roster), alloc)
        alloc.write_text(alloc.read_text() + "# written by another classroom render\n")
        return backend, images

    monkeypatch.setattr(run_cli, "make_backends", make)
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    args = parse(["up", str(roster), "--log-dir", str(tmp_path / "logs"), "--no-preflight"])
    err = io.StringIO()
    assert run_cli.run_command("up", args, io.StringIO(), err) == 2
    assert f"{alloc} changed while this run was starting" in err.getvalue() and "nothing started" in err.getvalue()
    assert alloc.read_text().endswith("# written by another classroom render\n")
    assert backend.calls == [] and images.calls == []


def test_the_real_backends_for_the_example_roster(monkeypatch, roster):
    monkeypatch.setattr(automation.shutil, "which", FAKE_CLI)
    plan = run_cli.load_plan(roster)
    jobs = run_cli.student_jobs(plan, TOKEN)
    backend, images = run_cli.make_backends(plan, jobs, project_dir=roster.parent)
    assert isinstance(backend, AutomationBackend) and isinstance(images, ClassImagesBackend)
    assert backend.work_dir == roster.parent and images.work_dir == roster.parent / ".pve-lab-class"
    assert (images.endpoint, images.insecure) == ("https://pve.example.internal:8006/", True)
    assert sorted(d.node for d in images.downloads) == ["pve1", "pve2"]  # once per outer node, not per student
    assert len(jobs) == 6 and run_cli.images_stack_name(plan, roster) == "ha101-images"


# ---------------------------------------------------------------- `classroom up` end to end: real backends, fake CLI


def run_up(roster, tmp_path, *extra):
    args = parse(["up", str(roster), "--log-dir", str(tmp_path / "logs"), "--project-dir", str(tmp_path),
                  "--backoff", "0", "--no-preflight", *extra])
    out, err = io.StringIO(), io.StringIO()
    code = run_cli.run_command("up", args, out, err)
    return code, out.getvalue(), err.getvalue()


def test_classroom_up_refuses_a_class_the_policy_rules_refuse_before_any_pulumi_command(cli, monkeypatch, tmp_path,
                                                                                         roster):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    roster.write_text(roster.read_text().replace("maxCores: 12", "maxCores: 4"))
    code, out, err = run_up(roster, tmp_path)
    assert code == 2
    assert "the policy rules refuse this class (nothing started)" in err and "class-limits" in err
    assert "6 vCPUs" in err
    assert not [a for a in cli.argvs() if a[:1] in (["up"], ["plugin"], ["stack"])]


def test_classroom_up_installs_plugins_once_then_runs_every_student_with_the_policy_pack(cli, monkeypatch, tmp_path,
                                                                                        roster):
    monkeypatch.setenv("PVE_LAB_OUTER_API_TOKEN", TOKEN)
    code, out, err = run_up(roster, tmp_path, "--parallel", "3", "--only", "s01", "s02", "s03")
    assert code == 0, err + out
    argvs = cli.argvs()
    ups = [i for i, a in enumerate(argvs) if a[:1] == ["up"]]
    student_ups = [i for i in ups if "--policy-pack" in argvs[i]]
    assert len(student_ups) == 3 and len(ups) == 4  # the images stack (no policy: it has no student) + 3
    installs = [i for i, a in enumerate(argvs) if a[:2] == ["plugin", "install"]]
    names = [argvs[i][3] for i in installs]
    # proxmoxve for the images stack, then every plugin of the program once, all before the first student starts
    assert sorted(names) == sorted(["proxmoxve", "proxmoxve", "command", "random", "tls"])
    assert max(installs) < min(student_ups)
    policy_json = roster.with_name("classroom.policy.json")
    for i in student_ups:
        up = argvs[i]
        assert up[up.index("--policy-pack") + 1] == str(run_cli.POLICY_PACK_DIR)
        assert up[up.index("--policy-pack-config") + 1] == str(policy_json)
    assert json.loads(policy_json.read_text())["pve-lab-class-limits"]["maxCores"] == 12
    assert all(TOKEN not in json.dumps(c["argv"]) for c in cli.calls)
    log = (tmp_path / "logs" / "class-plugins-up.log").read_text()
    assert "provider plugin tls" in log
