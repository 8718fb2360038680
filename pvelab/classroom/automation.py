"""The real stack backends for `classroom up/down`: the Pulumi Automation API driving the `pulumi` CLI.

- `AutomationBackend`: one stack of this project (`__main__.py`) per student, config set from the job.
- `ClassImagesBackend`: the class-images stack, an inline program with one `download.FileLegacy` per outer
  node and image, so the Debian cloud image is fetched once per node for the whole class.

Both need the `pulumi` CLI on PATH; `require_pulumi_cli()` says how to get it, before any stack starts.
Pulumi is imported inside the functions so that `classroom plan/render` stay quick and CLI-free.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

from ..spec import SpecError
from ..stackfile import PROJECT_DIR, SECRET_ENV, load_stack
from .runner import StackJob, StackNotFound

CLASS_PROJECT = "pve-lab-class"
IMAGES_TOKEN_KEY = f"{CLASS_PROJECT}:outerApiToken"
LAB_KEY = "pve-lab:lab"
# The inline stack keeps its settings (incl. the secrets salt of a local backend) here, not in a temp dir.
CLASS_WORK_DIR_NAME = ".pve-lab-class"
CLASS_WORK_DIR = PROJECT_DIR / CLASS_WORK_DIR_NAME

PULUMI_INSTALL_HINT = (
    "the `pulumi` CLI is not on PATH; `classroom up` and `classroom down` drive one Pulumi stack per student "
    "through it (the Automation API). Install it: `curl -fsSL https://get.pulumi.com | sh` (or see "
    "https://www.pulumi.com/docs/install/), add ~/.pulumi/bin to PATH, log in to a state backend "
    "(`pulumi login`, or `pulumi login --local` with PULUMI_CONFIG_PASSPHRASE set), then run again. "
    "`classroom plan` and `classroom render` work without it."
)

# create/select/remove write the workspace's "current stack" file: never run them in parallel
# (pulumi/pulumi#8186). `up`/`destroy` name their stack explicitly and run in parallel.
_WORKSPACE_LOCK = threading.Lock()


class PulumiCliMissing(RuntimeError):
    pass


def require_pulumi_cli(which: Optional[Callable[[str], Optional[str]]] = None) -> str:
    path = (which or shutil.which)("pulumi")
    if not path:
        raise PulumiCliMissing(PULUMI_INSTALL_HINT)
    return path


def _auto():
    from pulumi import automation

    return automation


def child_env_overrides() -> dict[str, str]:
    """The instructor's secrets in this process's environment (the outer token, a shared root password), blanked
    for every `pulumi` this tool starts: its language host and provider plugins inherit its environment, and the
    stacks get these values as config secrets (on stdin), so no child needs them."""
    return {name: "" for name in SECRET_ENV.values()}


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **child_env_overrides(), **extra}


_PULUMI_COMMAND: list = []
_COMMAND_LOCK = threading.Lock()


def pulumi_command() -> Any:
    """One PulumiCommand for the process. Making one runs `pulumi version` with this process's own environment
    (pulumi automation/_cmd.py PulumiCommand.__init__, no way to pass another), so it is made once, with the
    secrets taken out of the environment for that moment (the first workspace is made before any stack runs;
    this process reads its secrets from the environment before that)."""
    with _COMMAND_LOCK:
        if not _PULUMI_COMMAND:
            saved = {name: os.environ.pop(name) for name in SECRET_ENV.values() if name in os.environ}
            try:
                _PULUMI_COMMAND.append(_auto().PulumiCommand())
            finally:
                os.environ.update(saved)
        return _PULUMI_COMMAND[0]


def workspace_options(work_dir: Path) -> Any:
    return _auto().LocalWorkspaceOptions(work_dir=str(work_dir), env_vars=child_env_overrides(),
                                         pulumi_command=pulumi_command())


def config_values(job: StackJob) -> dict[str, Any]:
    """The job's plain config as Automation API values. Secrets never go through here: `set_all_config` puts
    every value on the `pulumi` command line, which `ps` shows to every local user (see `set_missing_secrets`)."""
    auto = _auto()
    return {key: auto.ConfigValue(value=value) for key, value in job.config.items()}


def stack_config_keys(workspace: Any, stack_name: str) -> set[str]:
    """The config keys the stack's settings file (`Pulumi.<stack>.yaml` in the workspace) already holds."""
    try:
        settings = workspace.stack_settings(stack_name)
    except Exception:  # no file yet, or one the SDK cannot read: then the secret is set (again), never skipped
        return set()
    return set((getattr(settings, "config", None) or {}).keys())


def set_secret_from_stdin(workspace: Any, stack_name: str, key: str, value: str) -> None:
    """`pulumi config set KEY --secret` with the value on stdin (the CLI reads stdin when no value is given and
    stdin is not a terminal: pkg/cmd/pulumi/config/config.go configSetCmd.Run), so it is never in argv."""
    command = getattr(getattr(workspace, "pulumi_command", None), "command", None) or "pulumi"
    env = {**child_env(), **(getattr(workspace, "env_vars", None) or {}), "PULUMI_AUTOMATION_API": "true"}
    done = subprocess.run([command, "--non-interactive", "config", "set", key, "--secret", "--stack", stack_name],
                          input=value, text=True, capture_output=True, cwd=workspace.work_dir, env=env, check=False)
    if done.returncode != 0:
        detail = " ".join((done.stderr or done.stdout or "").split()).replace(value, "[secret]")
        raise RuntimeError(f"error: setting the secret {key} of stack {stack_name} failed: {detail}")


def set_missing_secrets(stack: Any, job: StackJob) -> list[str]:
    """Set each of the job's secrets the stack does not have yet, through stdin; returns the keys set.

    A secret already in the stack is kept (rotate it by hand: `pulumi config set --secret KEY -s STACK`, value
    on stdin), so `classroom up` run again touches no secret at all."""
    present = stack_config_keys(stack.workspace, stack.name)
    missing = [key for key in job.secrets if key not in present]
    for key in missing:
        set_secret_from_stdin(stack.workspace, stack.name, key, job.secrets[key])
    return missing


def stderr_to(on_output: Callable[[str], None]) -> Callable[[str], None]:
    """The CLI's stderr lines, into the same log as its stdout (its own errors are written there)."""
    def write(line: str) -> None:
        on_output(f"[stderr] {line}")
    return write


def unchanged_config(job: StackJob, work_dir: Path) -> set[str]:
    """Plain config keys whose value `Pulumi.<stack>.yaml` in `work_dir` already holds (a structured YAML value
    counts as equal to the same JSON text)."""
    try:
        current = load_stack(job.stack, Path(work_dir)).values
    except SpecError:  # no stack file yet, or one the CLI will rewrite anyway
        return set()
    same = set()
    for key, text in job.config.items():
        if key not in current:
            continue
        try:
            wanted = json.loads(text) if not isinstance(current[key], str) else text
        except ValueError:
            continue
        if wanted == current[key]:
            same.add(key)
    return same


def _run_options(on_output: Callable[[str], None]) -> dict[str, Any]:
    # No colour codes in log files; never print secret config in the result summary; stderr logged too.
    return {"color": "never", "show_secrets": False, "on_output": on_output, "on_error": stderr_to(on_output)}


# The provider SDKs the lab program (`__main__.py`) uses: their plugins are installed once before a wave.
PROGRAM_PROVIDER_SDKS = ("pulumi_proxmoxve", "pulumi_command", "pulumi_random", "pulumi_tls")


def provider_plugin(sdk: str) -> tuple[str, str, Optional[str]]:
    """(name, version, server) of the provider plugin matching an installed provider SDK package."""
    from importlib import resources

    meta = json.loads(resources.files(sdk).joinpath("pulumi-plugin.json").read_text())
    return meta.get("name", sdk.removeprefix("pulumi_")), meta["version"], meta.get("server")


def install_plugins(workspace: Any, sdks: Sequence[str] = PROGRAM_PROVIDER_SDKS) -> list[tuple[str, str]]:
    """`pulumi plugin install resource NAME VERSION [--server URL]` for each SDK's plugin, one after another."""
    done = []
    for sdk in sdks:
        name, version, server = provider_plugin(sdk)
        if server:
            workspace.install_plugin_from_server(name, version, server)
        else:
            workspace.install_plugin(name, version)
        done.append((name, version))
    return done


class AutomationBackend:
    """Each student's stack of this project, driven through the `pulumi` CLI in `work_dir`.

    `policy_pack` + `policy_config`: passed to every `up` (`--policy-pack`, `--policy-pack-config`), so the
    class's guardrails are enforced by the engine itself before a resource is created."""

    def __init__(self, work_dir: Path = PROJECT_DIR, which: Optional[Callable[[str], Optional[str]]] = None,
                 policy_pack: Optional[Path] = None, policy_config: Optional[Path] = None):
        require_pulumi_cli(which)
        self.work_dir = Path(work_dir)
        self.policy_pack = Path(policy_pack) if policy_pack else None
        self.policy_config = Path(policy_config) if policy_config else None

    def prepare(self, on_output: Callable[[str], None]) -> None:
        """Install the program's provider plugins once, before stacks run in parallel: concurrent installs of
        the same plugin by several `pulumi up` interfere (pulumi/pulumi#22784)."""
        auto, command = _auto(), pulumi_command()
        with _WORKSPACE_LOCK:
            workspace = auto.LocalWorkspace(work_dir=str(self.work_dir), env_vars=child_env_overrides(),
                                            pulumi_command=command)
            for name, version in install_plugins(workspace):
                on_output(f"provider plugin {name} {version} installed")

    def existing_stacks(self) -> dict[str, Optional[int]]:
        """This project's stacks in the logged-in backend: name -> resource count (`pulumi stack ls --json`)."""
        auto, command = _auto(), pulumi_command()
        with _WORKSPACE_LOCK:
            workspace = auto.LocalWorkspace(work_dir=str(self.work_dir), env_vars=child_env_overrides(),
                                            pulumi_command=command)
            return {s.name: s.resource_count for s in workspace.list_stacks()}

    def state_resources(self, stack_name: str) -> list[dict]:
        """The stack's resources in its state (`pulumi stack export`, secrets left encrypted): [{urn, type}, ...]."""
        env = child_env(PULUMI_AUTOMATION_API="true")
        done = subprocess.run([require_pulumi_cli(), "--non-interactive", "stack", "export", "--stack", stack_name],
                              text=True, capture_output=True, cwd=self.work_dir, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pulumi stack export --stack {stack_name}: {' '.join(done.stderr.split())}")
        deployment = (json.loads(done.stdout or "{}").get("deployment") or {})
        return [{"urn": r.get("urn", ""), "type": r.get("type", "")} for r in deployment.get("resources") or []]

    def outputs(self, stack_name: str) -> dict[str, Any]:
        """The stack's outputs with secrets in plain text (`pulumi stack output --json --show-secrets`: the values
        come back on the CLI's stdout, never through argv). StackNotFound when the stack does not exist."""
        auto = _auto()
        with _WORKSPACE_LOCK:
            try:
                stack = auto.select_stack(stack_name=stack_name, work_dir=str(self.work_dir),
                                         opts=workspace_options(self.work_dir))
            except auto.StackNotFoundError:
                raise StackNotFound(f"no stack '{stack_name}': run `classroom up` first") from None
        return {key: out.value for key, out in stack.outputs().items()}

    def _policy_options(self) -> dict[str, Any]:
        if self.policy_pack is None:
            return {}
        options: dict[str, Any] = {"policy_packs": [str(self.policy_pack)]}
        if self.policy_config is not None:
            options["policy_pack_configs"] = [str(self.policy_config)]
        return options

    def up(self, job: StackJob, on_output: Callable[[str], None]) -> None:
        auto = _auto()
        values = config_values(job)
        for key in unchanged_config(job, self.work_dir):
            values.pop(key)  # keep the stack file `classroom render` wrote (structured YAML, comments)
        with _WORKSPACE_LOCK:
            stack = auto.create_or_select_stack(stack_name=job.stack, work_dir=str(self.work_dir),
                                                opts=workspace_options(self.work_dir))
            if values:
                stack.set_all_config(values)
            set_missing_secrets(stack, job)
        stack.up(**self._policy_options(), **_run_options(on_output))

    def destroy(self, job: StackJob, on_output: Callable[[str], None], remove_stack: bool = True) -> None:
        # Destroy needs neither the program nor a healthy lab (README "Destroy"): state has all it needs.
        _destroy(job, lambda auto: auto.select_stack(stack_name=job.stack, work_dir=str(self.work_dir),
                                                           opts=workspace_options(self.work_dir)),
                 on_output, remove_stack)


def _destroy(job: StackJob, select: Callable[[Any], Any], on_output: Callable[[str], None], remove_stack: bool) -> None:
    """Destroy the stack `select(auto)` opens, then remove it; StackNotFound when there is no such stack."""
    auto = _auto()
    with _WORKSPACE_LOCK:
        try:
            stack = select(auto)
        except auto.StackNotFoundError:
            raise StackNotFound("no such stack; nothing to destroy") from None
    stack.destroy(**_run_options(on_output))
    if remove_stack:
        with _WORKSPACE_LOCK:
            stack.workspace.remove_stack(job.stack)


# ---------------------------------------------------------------- the class-images stack


class ImageDownloadLike(Protocol):
    node: str
    storage: str
    url: str
    file_name: str
    checksum: Optional[str]
    checksum_algorithm: Optional[str]
    file_id: str


def image_resource_name(download: ImageDownloadLike) -> str:
    raw = f"image-{download.node}-{download.storage}-{download.file_name}"
    return re.sub(r"[^A-Za-z0-9._-]", "-", raw)


def check_downloads(downloads: Sequence[ImageDownloadLike]) -> list[str]:
    """Problems that would make the images stack ambiguous; one line each."""
    problems, seen = [], {}
    for d in downloads:
        key = (d.node, d.storage, d.file_name)
        expected = f"{d.storage}:import/{d.file_name}"
        if d.file_id != expected:
            problems.append(f"image download on {d.node}: file_id '{d.file_id}' should be '{expected}'")
        if key in seen and seen[key] != d.url:
            problems.append(f"image download on {d.node}: {d.storage}:import/{d.file_name} comes from two URLs "
                            f"({seen[key]} and {d.url})")
        seen.setdefault(key, d.url)
    return problems


def images_program(downloads: Sequence[ImageDownloadLike], endpoint: str, insecure: bool = False,
                   template_builds: Sequence[Any] = (), cache_site: Any = None) -> Callable[[], None]:
    """The inline Pulumi program of the class-images stack: one FileLegacy per (node, storage, file).

    The outer provider is built from the class's outer endpoint and the API token, which is read from the
    stack's secret config `pve-lab-class:outerApiToken` (so it is encrypted in state, never in the program).
    Exports `fileIds`: the volume id each student's stack uses as `image.fileId`.
    """
    unique = list({(d.node, d.storage, d.file_name): d for d in downloads}.values())

    def program() -> None:
        import pulumi
        import pulumi_proxmoxve as proxmoxve

        token = pulumi.Config(CLASS_PROJECT).require_secret("outerApiToken")
        outer = proxmoxve.Provider("outer", endpoint=endpoint, api_token=token, insecure=insecure)
        files = {}
        for d in unique:
            image = proxmoxve.download.FileLegacy(
                image_resource_name(d),
                content_type="import",
                datastore_id=d.storage,
                node_name=d.node,
                url=d.url,
                file_name=d.file_name,
                checksum=d.checksum or None,
                checksum_algorithm=(d.checksum_algorithm or "sha512") if d.checksum else None,
                overwrite=False,
                upload_timeout=1800,
                opts=pulumi.ResourceOptions(provider=outer),
            )
            files[f"{d.node}/{d.file_id}"] = image.id
        pulumi.export("fileIds", files)
        if template_builds or cache_site is not None:
            from .class_templates import build_class_extras

            for key, value in build_class_extras(template_builds, cache_site, files, token, outer).items():
                pulumi.export(key, value)

    return program


def class_outer_endpoint(jobs: Sequence[StackJob]) -> tuple[str, bool]:
    """The outer API endpoint (and `insecure`) every student's stack uses; they must all agree."""
    seen: set[tuple[str, bool]] = set()
    for job in jobs:
        try:
            lab = json.loads(job.config.get(LAB_KEY, "{}"))
        except ValueError:
            continue
        outer = (lab.get("outer") or {}) if isinstance(lab, dict) else {}
        if outer.get("endpoint"):
            seen.add((str(outer["endpoint"]), bool(outer.get("insecure", False))))
    if len(seen) != 1:
        found = ", ".join(sorted(e for e, _ in seen)) or "none"
        raise ValueError(f"{LAB_KEY}.outer.endpoint: the class needs exactly one outer endpoint (found: {found})")
    return seen.pop()


def proxmoxve_plugin() -> tuple[str, str, Optional[str]]:
    """(name, version, server) of the provider plugin matching the installed pulumi_proxmoxve SDK."""
    return provider_plugin("pulumi_proxmoxve")


class ClassImagesBackend:
    """The class-images stack (project `pve-lab-class`) as an Automation API inline program."""

    def __init__(self, downloads: Sequence[ImageDownloadLike], endpoint: str, insecure: bool = False,
                 work_dir: Path = CLASS_WORK_DIR, which: Optional[Callable[[str], Optional[str]]] = None,
                 template_builds: Sequence[Any] = (), cache_site: Any = None):
        require_pulumi_cli(which)
        problems = check_downloads(downloads)
        if problems:
            raise ValueError("; ".join(problems))
        self.downloads = list(downloads)
        self.template_builds = list(template_builds)
        self.cache_site = cache_site
        self.endpoint, self.insecure = endpoint, insecure
        self.work_dir = Path(work_dir)

    def _stack(self, job: StackJob, create: bool):
        auto = _auto()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        opts = workspace_options(self.work_dir)
        open_stack = auto.create_or_select_stack if create else auto.select_stack
        return open_stack(stack_name=job.stack, project_name=CLASS_PROJECT,
                          program=images_program(self.downloads, self.endpoint, self.insecure,
                                                 self.template_builds, self.cache_site), opts=opts)

    def up(self, job: StackJob, on_output: Callable[[str], None]) -> None:
        with _WORKSPACE_LOCK:
            stack = self._stack(job, create=True)
            # An inline program has no requirements file for the CLI to read: install the provider it uses.
            install_plugins(stack.workspace, ("pulumi_proxmoxve",))
            values = config_values(job)
            if values:
                stack.set_all_config(values)
            set_missing_secrets(stack, job)
        stack.up(**_run_options(on_output))

    def destroy(self, job: StackJob, on_output: Callable[[str], None], remove_stack: bool = True) -> None:
        _destroy(job, lambda auto: self._stack(job, create=False), on_output, remove_stack)


def images_job(stack: str, api_token: Optional[str]) -> StackJob:
    """The class-images stack's job; the token is only needed (and only set) for `up`."""
    secrets = {IMAGES_TOKEN_KEY: api_token} if api_token else {}
    return StackJob(stack=stack, student_id="(class)", config={}, secrets=secrets)
