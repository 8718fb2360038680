"""A fake `pulumi` CLI for driving the real Automation API (LocalWorkspace) in tests.

`install(tmp_path, monkeypatch)` writes an executable `pulumi` script into a fresh bin directory, puts it first
on PATH and returns a `FakePulumi` handle. Every run of the script appends one JSON line to `calls.jsonl`:
its argv, its environment and what it read on stdin. It keeps the stacks it knows in `stacks.json` and answers
the commands the Automation API runs the way the CLI does (pulumi/pulumi pkg/cmd/pulumi):
- `version` prints the SDK's own version (the Automation API refuses an older or unparsable CLI,
  pulumi/automation/_cmd.py `_parse_and_validate_pulumi_version`);
- `stack select --stack S` fails with "no stack named 'S' found" when S does not exist (errors.py turns that
  into StackNotFoundError); `stack init`, `stack rm`, `stack ls --json`, `stack output --json`,
  `stack history --json` (one summary: `up`/`destroy` assert there is one);
- `config set KEY --secret` with no value reads the value from stdin when stdin is not a terminal
  (config.go `configSetCmd.Run`) and, like the real CLI, writes `secure:` into `Pulumi.<stack>.yaml` in its
  working directory; `config set-all` writes its plaintext keys there too;
- `stack export` prints the deployment's resources given with `add_stack(state=...)`;
- `up`, `destroy`, `preview`, `plugin install`, `install` succeed unless `faults.json` says otherwise:
  {"up:<stack>": {"stderr": "...", "stdout": "...", "code": 255, "sleep": 0.2}} (also "up:*", "plugin:*").
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from pulumi._version import _VERSION as SDK_VERSION  # the CLI answers with the SDK's own version

SCRIPT = r'''#!{python}
import json, os, sys, time
from pathlib import Path

STATE = Path(os.environ["FAKE_PULUMI_DIR"])
args = sys.argv[1:]
words = [a for a in args if a != "--non-interactive"]
VALUE_FLAGS = {{"--stack", "-s", "--server", "--page-size", "--page", "--policy-pack", "--policy-pack-config",
               "--color", "--exec-kind", "--config-file", "--message", "--parallel"}}
cmd = []
skip = False
for w in words:
    if skip:
        skip = False
    elif w in VALUE_FLAGS:
        skip = True
    elif w == "--":
        continue
    elif not w.startswith("-"):
        cmd.append(w)
stdin_text = None


def flag(name, default=None):
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return default


def load(name, default):
    path = STATE / name
    return json.loads(path.read_text()) if path.exists() else default


def save(name, value):
    tmp = STATE / f"{{name}}.{{os.getpid()}}.tmp"
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(STATE / name)


def update_stacks(change):
    """Read-modify-write stacks.json under a lock: several fake CLIs run at once (`--parallel`)."""
    import fcntl

    with open(STATE / "stacks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = load("stacks.json", {{}})
        change(current)
        save("stacks.json", current)


def stack_file(stack):
    return Path.cwd() / f"Pulumi.{{stack.split('/')[-1]}}.yaml"


def set_config(stack, key, entry):
    import yaml

    path = stack_file(stack)
    doc = (yaml.safe_load(path.read_text()) if path.exists() else None) or {{}}
    doc.setdefault("config", {{}})[key] = entry
    path.write_text(yaml.safe_dump(doc))


if cmd[:2] == ["config", "set"] and len(cmd) == 3 and not os.isatty(0):
    stdin_text = sys.stdin.read()

with open(STATE / "calls.jsonl", "a") as log:
    log.write(json.dumps({{"argv": args, "env": dict(os.environ), "stdin": stdin_text, "cwd": os.getcwd()}}) + "\n")

stacks = load("stacks.json", {{}})
faults = load("faults.json", {{}})
stack = flag("--stack") or flag("-s")
op = cmd[0] if cmd else ""


def fault(key):
    f = faults.get(f"{{key}}:{{stack}}") or faults.get(f"{{key}}:*")
    if not f:
        return
    time.sleep(f.get("sleep", 0))
    if "code" in f:
        sys.stdout.write(f.get("stdout", ""))
        sys.stderr.write(f.get("stderr", ""))
        sys.exit(f["code"])


if op == "version":
    print("v{version}")
elif op == "whoami":
    print("tester")
elif cmd[:2] == ["stack", "select"]:
    if stack not in stacks:
        sys.stderr.write(f"error: no stack named '{{stack}}' found\n")
        sys.exit(255)
elif cmd[:2] == ["stack", "init"]:
    update_stacks(lambda current: current.setdefault(cmd[2], {{"resources": 0}}))
elif cmd[:2] == ["stack", "rm"]:
    update_stacks(lambda current: current.pop(cmd[2], None))
elif cmd[:2] == ["stack", "ls"]:
    print(json.dumps([{{"name": n, "current": False, "updateInProgress": False,
                       "resourceCount": s.get("resources", 0)}} for n, s in sorted(stacks.items())]))
elif cmd[:2] == ["stack", "output"]:
    entry = stacks.get(stack, {{}})
    shown = dict(entry.get("outputs", {{}}))
    if "--show-secrets" not in words:  # the CLI masks secret outputs unless asked
        shown.update({{k: "[secret]" for k in entry.get("secrets", []) if k in shown}})
    print(json.dumps(shown))
elif cmd[:2] == ["stack", "export"]:
    print(json.dumps({{"version": 3, "deployment": {{"resources": stacks.get(stack, {{}}).get("state", [])}}}}))
elif cmd[:2] == ["stack", "history"]:
    print(json.dumps([{{"kind": "update", "startTime": "2026-01-01T00:00:00.000000Z", "message": "",
                       "environment": {{}}, "config": {{}}, "result": "succeeded",
                       "endTime": "2026-01-01T00:00:01.000000Z"}}]))
elif cmd[:2] == ["config", "set-all"]:
    for i, w in enumerate(words):
        if w in ("--plaintext", "--secret") and i + 1 < len(words):
            key, value = words[i + 1].split("=", 1)
            set_config(stack, key, value if w == "--plaintext" else {{"secure": "v1:fake"}})
elif cmd[:2] == ["config", "set"]:
    key = cmd[2]
    set_config(stack, key, {{"secure": "v1:fake"}} if "--secret" in words else (cmd[3] if len(cmd) > 3 else stdin_text))
elif op == "config":
    print(json.dumps({{}}))
elif op in ("up", "destroy", "preview"):
    fault(op)
    print(f"{{'Destroying' if op == 'destroy' else 'Updating'}} ({{stack}})")
    if op in ("up", "destroy"):
        update_stacks(lambda current: current.setdefault(stack, {{}}).update(resources=5 if op == "up" else 0))
    fault(op + "-after")
elif op == "plugin":
    fault("plugin")
elif op == "install":
    fault("install")
else:
    sys.stderr.write(f"fake pulumi: unknown command {{args}}\n")
    sys.exit(2)
'''


class FakePulumi:
    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.state = root / "state"

    @property
    def calls(self) -> list[dict]:
        path = self.state / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def argvs(self) -> list[list[str]]:
        return [[a for a in c["argv"] if a != "--non-interactive"] for c in self.calls]

    def fault(self, key: str, **spec) -> None:
        path = self.state / "faults.json"
        faults = json.loads(path.read_text()) if path.exists() else {}
        faults[key] = spec
        path.write_text(json.dumps(faults))

    def add_stack(self, name: str, resources: int = 5, outputs: dict | None = None, secrets=(),
                  state: list | None = None) -> None:
        path = self.state / "stacks.json"
        stacks = json.loads(path.read_text()) if path.exists() else {}
        stacks[name] = {"resources": resources, "outputs": outputs or {}, "secrets": sorted(secrets),
                        "state": state or []}
        path.write_text(json.dumps(stacks))

    @property
    def stacks(self) -> dict:
        path = self.state / "stacks.json"
        return json.loads(path.read_text()) if path.exists() else {}


def install(tmp_path: Path, monkeypatch) -> FakePulumi:
    fake = FakePulumi(tmp_path / "fake-pulumi")
    fake.bin.mkdir(parents=True)
    fake.state.mkdir()
    script = fake.bin / "pulumi"
    script.write_text(SCRIPT.format(python=sys.executable, version=SDK_VERSION))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_PULUMI_DIR", str(fake.state))
    monkeypatch.delenv("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", raising=False)
    return fake
