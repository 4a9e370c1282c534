"""Runnable snippets of the README and docs/: find them by their marker, run them.

A snippet is marked by an HTML comment on the line before its fenced block
(GitHub does not render it).  Unmarked blocks are not run.  The grammar is in
CONTRIBUTING.md; in short::

    <!-- snippet: run -->                         run it; it must exit 0
    <!-- snippet: file=app.py -->                 write it to app.py (append: add to the file)
    <!-- snippet: server port=8000 -->           start it, wait until the port answers, stop it at the end
    <!-- snippet: skip (why) -->                  documented as not run (say why)

    options:  group=a,b       share a folder, environment and servers with the other snippets of
                              these groups in the same document, in document order
              cwd=checkout    run in a fresh copy of the repository instead of the group's folder
              venv            the group runs in a fresh virtualenv (tests/test_fresh_venv.py)
              port=N          the literal N in the group's snippets is replaced by a free port
              ready=/path     a server is ready when this path answers (default /)
              expect=TEXT     the output must contain TEXT (case-insensitive; repeatable)
              check=config    after it, Config.load() in its environment must pass, warning-free
              needs=go,curl   skipped (with a message) when a program is missing
              timeout=S       for run snippets (default 180)

Each group runs like a terminal session in a new temporary folder: ``export``
in one shell snippet is seen by the next ones (environment, not the working
directory), servers run until the group ends and are stopped with SIGINT (Ctrl-C),
then SIGTERM.  The environment is isolated: no ``OTEL*``/``OTELPROF_*``,
``DJANGO_*``, ``FLASK_*``, ``PYTHON*`` or virtualenv variables leak in; ``BROWSER``
is a no-op so ``--open`` opens nothing.  In the suite's own virtualenv ``pip`` is
a checker that verifies each requirement is present (extras of the checkout
included) and installs nothing; in a fresh virtualenv the real pip runs.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from typing import Iterable, Optional

from .wsgi_servers import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
DOCUMENTS = ("README.md", "docs/*.md")

_MARKER = re.compile(r"^\s*<!--\s*snippet:(.*?)-->\s*$")
_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
_ACTIONS = ("run", "server", "skip")
_OPTIONS = {"group", "cwd", "port", "ready", "expect", "check", "needs", "timeout", "file"}
_FLAGS = {"venv", "append"}
_SHELLS = ("bash", "sh", "shell", "console")

# variables of the developer's shell that would change what a snippet does
_DROP_ENV_PREFIXES = ("OTEL", "DJANGO_", "FLASK_", "PYTHON", "VIRTUAL_ENV", "CONDA_", "PIP_REQUIRE_VIRTUALENV",
                      "GUNICORN_", "UVICORN_", "WEB_CONCURRENCY", "BROWSER")
_VOLATILE_ENV = {"PWD", "OLDPWD", "SHLVL", "_", "SNIPPET_ENV_OUT"}


class SnippetError(AssertionError):
    """A marked snippet did not do what its document says."""


@dataclasses.dataclass
class Snippet:
    doc: str                      # path relative to the repository root
    line: int                     # line of the opening fence (1-based)
    lang: str
    code: str
    action: str                   # run, file, server, skip
    file: str = ""
    groups: tuple[str, ...] = ()
    cwd: str = ""                 # "" (the group's folder) or "checkout"
    venv: bool = False
    append: bool = False
    port: Optional[int] = None
    ready: str = "/"
    expect: tuple[str, ...] = ()
    check: str = ""
    needs: tuple[str, ...] = ()
    timeout: float = 180.0
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in _SHELLS


@dataclasses.dataclass
class Group:
    doc: str
    name: str
    snippets: list[Snippet]

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.name}"

    @property
    def venv(self) -> bool:
        return any(s.venv for s in self.snippets)

    @property
    def runnable(self) -> bool:
        return any(s.action != "skip" for s in self.snippets)


# ---------------------------------------------------------------------------- parsing


def documents(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    out: list[pathlib.Path] = []
    for pattern in DOCUMENTS:
        out.extend(sorted(root.glob(pattern)))
    return out


def _parse_marker(text: str, where: str) -> dict[str, object]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise SnippetError(f"{where}: bad snippet marker {text!r}: {exc}") from None
    if not words:
        raise SnippetError(f"{where}: empty snippet marker")
    spec: dict[str, object] = {"expect": []}
    first = words[0]
    if first == "skip":
        spec["action"] = "skip"
        spec["reason"] = " ".join(words[1:]).strip("() ")
        if not spec["reason"]:
            raise SnippetError(f"{where}: 'snippet: skip' needs a reason, e.g. <!-- snippet: skip (needs docker) -->")
        return spec
    for word in words:
        if word in _ACTIONS:
            spec["action"] = word
        elif word in _FLAGS:
            spec[word] = True
        elif "=" in word:
            key, value = word.split("=", 1)
            if key not in _OPTIONS:
                raise SnippetError(f"{where}: unknown snippet option {key!r} (known: {sorted(_OPTIONS | _FLAGS)})")
            if key == "expect":
                spec["expect"].append(value)  # type: ignore[union-attr]
            else:
                spec[key] = value
        else:
            raise SnippetError(f"{where}: unknown snippet word {word!r}")
    if "file" in spec:
        spec.setdefault("action", "file")
    if "action" not in spec:
        raise SnippetError(f"{where}: a snippet marker needs run, server, file=PATH or skip")
    if spec["action"] == "server" and "port" not in spec:
        raise SnippetError(f"{where}: a server snippet needs port=N")
    return spec


def parse(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[Snippet]:
    """The marked snippets of one document, in order."""
    rel = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = _MARKER.match(lines[i])
        if not m:
            i += 1
            continue
        where = f"{rel}:{i + 1}"
        spec = _parse_marker(m.group(1), where)
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        fence = _FENCE.match(lines[j]) if j < len(lines) else None
        if fence is None:
            raise SnippetError(f"{where}: a snippet marker must be followed by a fenced code block")
        indent, ticks, lang = fence.group(1), fence.group(2), fence.group(3).lower()
        k = j + 1
        body: list[str] = []
        while k < len(lines) and not lines[k].strip().startswith(ticks):
            body.append(lines[k][len(indent):] if lines[k].startswith(indent) else lines[k])
            k += 1
        if k == len(lines):
            raise SnippetError(f"{where}: the fenced block is not closed")
        code = "\n".join(body) + "\n"
        action = str(spec["action"])
        if action in ("run", "server") and lang not in _SHELLS + ("python", "py"):
            raise SnippetError(f"{where}: cannot {action} a {lang or 'plain'} block (bash or python)")
        if action == "server" and lang not in _SHELLS:
            raise SnippetError(f"{where}: a server snippet must be a shell block")
        out.append(Snippet(
            doc=rel, line=j + 1, lang=lang, code=code, action=action,
            file=str(spec.get("file", "")),
            groups=tuple(g for g in str(spec.get("group", "")).split(",") if g),
            cwd=str(spec.get("cwd", "")),
            venv=bool(spec.get("venv", False)),
            append=bool(spec.get("append", False)),
            port=int(str(spec["port"])) if "port" in spec else None,
            ready=str(spec.get("ready", "/")),
            expect=tuple(spec["expect"]),  # type: ignore[arg-type]
            check=str(spec.get("check", "")),
            needs=tuple(n for n in str(spec.get("needs", "")).split(",") if n),
            timeout=float(str(spec.get("timeout", 180))),
            reason=str(spec.get("reason", "")),
        ))
        if out[-1].cwd not in ("", "checkout"):
            raise SnippetError(f"{where}: cwd= must be 'checkout'")
        if out[-1].check not in ("", "config"):
            raise SnippetError(f"{where}: check= must be 'config'")
        i = k + 1
    return out


def groups(root: pathlib.Path = ROOT) -> list[Group]:
    """Every group of every document (a snippet without group= is a group of its own)."""
    result: list[Group] = []
    for path in documents(root):
        by_name: dict[str, Group] = {}
        for snip in parse(path, root):
            names = snip.groups or (f"line{snip.line}",)
            for name in names:
                if name not in by_name:
                    by_name[name] = Group(snip.doc, name, [])
                    result.append(by_name[name])
                by_name[name].snippets.append(snip)
    return result


# ---------------------------------------------------------------------------- running


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_written(snip: Snippet) -> bool:
    assert snip.port is not None
    code = "\n".join(line.split("#", 1)[0] for line in snip.code.splitlines())
    return re.search(rf"(?<![\d]){snip.port}(?![\d])", code) is not None


def copy_checkout(dst: pathlib.Path, root: pathlib.Path = ROOT) -> pathlib.Path:
    """A fresh copy of the repository's files (no git data, virtualenvs, build output or profiles)."""
    shutil.copytree(root, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "profiles", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache",
        ".mypy_cache", "*.so", "server-*.log"))
    return dst


def isolated_env(bin_dir: pathlib.Path, extra_path: Iterable[str] = ()) -> dict[str, str]:
    """The developer's environment without anything that changes what a snippet does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_ENV_PREFIXES)}
    # no virtualenv's bin on PATH but the one under test (a command missing there must fail)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and not (pathlib.Path(p).parent / "pyvenv.cfg").exists()]
    env["PATH"] = os.pathsep.join([*extra_path, str(bin_dir), *path])
    if (bin_dir.parent / "pyvenv.cfg").exists():
        env["VIRTUAL_ENV"] = str(bin_dir.parent)  # as `. .venv/bin/activate` would
    env["BROWSER"] = "true"  # `--open` runs `true URL`
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


PIP_CHECKER = '''#!{python}
"""pip, as the snippet test sees it: checks that each requirement is already installed
in this virtualenv (the checkout's extras included) and installs nothing."""
import importlib.metadata as md
import os
import re
import sys

args = sys.argv[1:]
if not args or args[0] != "install":
    sys.exit("pip checker: only 'pip install ...' is expected in a snippet, got: %r" % (args,))
reqs = []
skip_next = False
for a in args[1:]:
    if skip_next:
        skip_next = False
        continue
    if a in ("-e", "--editable"):
        continue
    if a in ("-r", "-c", "--index-url", "-i", "--extra-index-url", "-f", "--find-links"):
        skip_next = True
        continue
    if a.startswith("-"):
        continue
    reqs.append(a)
if not reqs:
    sys.exit("pip checker: nothing to install")


def need(name):
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        sys.exit("pip checker: %s is not installed in the test virtualenv (add it to the test extra)" % name)


for req in reqs:
    m = re.match(r"^(.*?)(?:\\[([^\\]]*)\\])?$", req)
    target, extras = m.group(1), [e.strip() for e in (m.group(2) or "").split(",") if e.strip()]
    if target.startswith((".", "/", "~")) or os.path.isdir(target):
        path = os.path.expanduser(target)
        project = os.path.join(path, "pyproject.toml")
        if not os.path.exists(project):
            sys.exit("pip checker: %s has no pyproject.toml (cwd %s)" % (target, os.getcwd()))
        import tomllib
        with open(project, "rb") as f:
            meta = tomllib.load(f)["project"]
        optional = meta.get("optional-dependencies", {{}})
        need(meta["name"])
        for extra in extras:
            if extra not in optional:
                sys.exit("pip checker: %s has no extra [%s] (extras: %s)" % (target, extra, ", ".join(optional)))
            for dep in optional[extra]:
                name = re.split(r"[<>=!~ ;\\[]", dep, maxsplit=1)[0]
                if name != meta["name"]:
                    need(name)
    else:
        need(re.split(r"[<>=!~ ;\\[]", req, maxsplit=1)[0])
print("pip checker: %s already installed" % " ".join(reqs))
'''


def write_pip_checker(directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("pip", "pip3"):
        path = directory / name
        path.write_text(PIP_CHECKER.format(python=sys.executable))
        path.chmod(0o755)
    return directory


@dataclasses.dataclass
class Outcome:
    snippet: Snippet
    output: str
    skipped: str = ""


class GroupRun:
    """Runs one group's snippets in order.  ``with GroupRun(...) as run: run.all()``;
    servers are stopped on exit.  ``folder`` is the group's working folder."""

    def __init__(self, group: Group, workdir: pathlib.Path, bin_dir: pathlib.Path, *,
                 pip_checker: bool, root: pathlib.Path = ROOT) -> None:
        self.group = group
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.root = root
        self.folder = workdir / "work"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._checkout: Optional[pathlib.Path] = None
        extra = [str(write_pip_checker(workdir / "pip-checker"))] if pip_checker else []
        self.env = isolated_env(bin_dir, extra)
        # ports written in a command are replaced by free ones; a server that listens on its
        # default port (not written, or only in a comment) keeps it
        self.ports = {s.port: free_port() for s in group.snippets if s.port is not None and _port_written(s)}
        self.servers: list[tuple[Snippet, subprocess.Popen, pathlib.Path]] = []
        self.outcomes: list[Outcome] = []

    # -------------------------------------------------------------- helpers
    @property
    def checkout(self) -> pathlib.Path:
        if self._checkout is None:
            self._checkout = copy_checkout(self.workdir / "checkout", self.root)
        return self._checkout

    def text(self, snip: Snippet) -> str:
        code = snip.code
        for old, new in self.ports.items():
            code = re.sub(rf"(?<![\d]){old}(?![\d])", str(new), code)
        return code

    def cwd(self, snip: Snippet) -> pathlib.Path:
        return self.checkout if snip.cwd == "checkout" else self.folder

    def fail(self, snip: Snippet, why: str, output: str = "") -> SnippetError:
        shown = textwrap.indent(self.text(snip).rstrip(), "    ")
        tail = f"\n--- output ---\n{output[-6000:]}" if output else ""
        return SnippetError(f"{snip.where} ({self.group.id}): {why}\n{shown}{tail}")

    # -------------------------------------------------------------- running
    def all(self) -> list[Outcome]:
        for snip in self.group.snippets:
            missing = [n for n in snip.needs if shutil.which(n, path=self.env["PATH"]) is None]
            if snip.action == "skip":
                continue
            if missing:
                self.outcomes.append(Outcome(snip, "", skipped=f"{snip.where}: needs {', '.join(missing)}"))
                continue
            if snip.action == "file":
                self._file(snip)
            elif snip.action == "server":
                self._server(snip)
            else:
                self.outcomes.append(Outcome(snip, self._run(snip)))
        return self.outcomes

    def _file(self, snip: Snippet) -> None:
        path = self.cwd(snip) / snip.file
        path.parent.mkdir(parents=True, exist_ok=True)
        text = self.text(snip)
        if snip.append:
            if not path.exists():
                raise self.fail(snip, f"append to {snip.file}, which does not exist")
            with path.open("a", encoding="utf-8") as f:
                f.write("\n" + text)
        else:
            path.write_text(text, encoding="utf-8")

    def _shell_script(self, snip: Snippet, env_out: Optional[pathlib.Path]) -> str:
        post = f'\nenv -0 > "{env_out}"\n' if env_out else "\n"
        return "set -e -o pipefail\n" + self.text(snip) + post

    def _run(self, snip: Snippet) -> str:
        cwd = self.cwd(snip)
        env_out = self.workdir / "env.out"
        if snip.is_shell:
            argv = ["bash", "-c", self._shell_script(snip, env_out)]
            stdin = None
        else:
            argv = [str(self.bin_dir / "python"), "-"]
            stdin = self.text(snip)
        try:
            proc = subprocess.run(argv, cwd=str(cwd), env=self.env, input=stdin, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=snip.timeout,
                                  start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise self.fail(snip, f"did not finish in {snip.timeout:g} s", str(exc.output or "")) from None
        output = proc.stdout
        if proc.returncode != 0:
            raise self.fail(snip, f"exit code {proc.returncode}", output + self.server_logs())
        for want in snip.expect:
            if want.lower() not in output.lower():
                raise self.fail(snip, f"output does not contain {want!r}", output)
        if snip.is_shell and env_out.exists():
            self._keep_exports(env_out)
        if snip.check == "config":
            self._check_config(snip)
        return output

    def _keep_exports(self, env_out: pathlib.Path) -> None:
        after = {}
        for item in env_out.read_bytes().split(b"\0"):
            if b"=" in item:
                k, v = item.decode("utf-8", "replace").split("=", 1)
                after[k] = v
        env_out.unlink()
        for k in list(self.env):
            if k not in after and k not in _VOLATILE_ENV:
                del self.env[k]
        for k, v in after.items():
            if k not in _VOLATILE_ENV:
                self.env[k] = v

    def _check_config(self, snip: Snippet) -> None:
        code = ("import logging, sys\n"
                "logging.basicConfig(level=logging.WARNING, format='%(message)s', stream=sys.stdout)\n"
                "from otelprof_middleware.config import Config\n"
                "c = Config.load()\n"
                "print('exporter', c.exporter, 'protocol', c.protocol, 'endpoint', c.endpoint)\n")
        proc = subprocess.run([str(self.bin_dir / "python"), "-c", code], cwd=str(self.cwd(snip)), env=self.env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if proc.returncode != 0 or "otelprof:" in proc.stdout:
            raise self.fail(snip, "the configuration it sets up does not load cleanly", proc.stdout)

    def _server(self, snip: Snippet) -> None:
        assert snip.port is not None
        port = self.ports.get(snip.port, snip.port)
        if snip.port not in self.ports:  # its default port: it may be taken on this machine
            if _port_busy(port):
                self.outcomes.append(Outcome(snip, "", skipped=f"{snip.where}: port {port} is busy on this machine"))
                return
        log = self.workdir / f"server-{snip.line}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", self._shell_script(snip, None)], cwd=str(self.cwd(snip)),
                                    env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append((snip, proc, log))
        deadline = time.monotonic() + 90
        traceback_seen: Optional[float] = None
        while True:
            if proc.poll() is not None:
                raise self.fail(snip, f"the server exited with {proc.returncode} before answering",
                                log.read_text(errors="replace"))
            # a server that logged a traceback and still does not answer (Django's autoreloader
            # keeps the process alive after the app failed to load) has failed
            if traceback_seen is None and "Traceback (most recent call last)" in log.read_text(errors="replace"):
                traceback_seen = time.monotonic()
            if traceback_seen is not None and time.monotonic() - traceback_seen > 10:
                raise self.fail(snip, "the server logged a traceback and does not answer",
                                log.read_text(errors="replace"))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", snip.ready)
                conn.getresponse().read()
                conn.close()
                break
            except (OSError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    raise self.fail(snip, f"nothing answered on port {port} within 90 s",
                                    log.read_text(errors="replace")) from None
                time.sleep(0.2)
        self.outcomes.append(Outcome(snip, f"(server on port {port})"))

    def server_logs(self) -> str:
        parts = []
        for snip, _proc, log in self.servers:
            try:
                parts.append(f"\n--- server {snip.where} ---\n" + log.read_text(errors="replace")[-4000:])
            except OSError:
                pass
        return "".join(parts)

    def stop_servers(self) -> str:
        """Ctrl-C every server (then SIGTERM, SIGKILL); returns their logs."""
        for _snip, proc, _log in self.servers:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        logs = self.server_logs()
        return logs

    def __enter__(self) -> "GroupRun":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_servers()
