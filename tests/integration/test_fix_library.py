"""The starter fix library (relay/fixes/library, issue 12 acceptance point 3): every
shipped manifest parses and is bounded, and every Linux fix runs for real against a
safe target its parameters point it at, with its verify script judging the result.

How a fix runs here: the way the agent runs it. A child Python process (this file run
as a script) loads the manifest with ``backline.common.fixes``, validates the
parameters with ``validate_params`` and runs script and verify script with the agent's
executor ``backline.agent.fixes.executor.run_fix`` (the one executor: under its
subreaper, so whatever a script leaves running ends with the run).

Safe targets: a folder under /tmp, processes the test starts, a tmpfs it mounts. Fixes
whose target is a fixed system path (/etc/environment, /etc/resolv.conf, /var/log,
/var/cache/apt, /var/log/journal, /etc/init.d, /etc/logrotate.conf) run in a private
mount namespace (``unshare -m``) in which the child first bind-mounts a folder or file
of the test over that path: the real script acts on its real path, and the machine's
own file is never touched. Fixes for a tool this container does not have run against
stand-ins in such a namespace, which a folder bound over /usr/local/sbin (first on the
fixed PATH) puts first: a stand-in ``chronyc`` (sync-clock), a stand-in ``dhclient`` on
one end of a veth pair in a private network namespace (renew-dhcp-lease), a stand-in
``systemctl`` with /run/systemd/system present and a stand-in agent service whose
process the stand-in service manager really restarts (restart-agent); each must pass
its verify script. Without a stand-in they must fail the way their manifest says: a
clear message and exit status 69. :data:`EXERCISED` says, for each Linux fix,
which of these paths the tests take; docs/fixes.md repeats it.

Exit statuses every library script uses: 0 done, 1 the action failed, 64 a parameter
refused by the script, 66 no such target, 69 the tool is not available here, 77 the fix
needs root (checked by running those fixes as nobody).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backline.common.fixes import FixManifest, ParamError, load_manifest, validate_params
from backline.common.fixes.params import check_value

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "relay" / "fixes" / "library"
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OK, FAILED, REFUSED, NO_TARGET, UNAVAILABLE, NEEDS_ROOT = 0, 1, 64, 66, 69, 77
#: The fixes that change system state check first that they run as root.
NEED_ROOT = {"clean-package-cache", "clear-proxy-settings", "remount-rw", "renew-dhcp-lease",
             "restart-agent", "restart-service", "rotate-logs", "set-dns-servers", "set-proxy",
             "sync-clock", "vacuum-journal"}


def as_root(status: int) -> int:
    """``status``, or 77 when these tests run as another user (outside a namespace)."""
    return status if os.geteuid() == 0 else NEEDS_ROOT

#: For each shipped Linux fix, what the tests below run (kept true by
#: test_every_linux_fix_is_exercised; docs/fixes.md shows the same).
EXERCISED = {
    "clean-package-cache": "real: apt-get clean on a bind-mounted /var/cache/apt",
    "clean-rotated-logs": "real: a bind-mounted /var/log",
    "check-filesystem": "real: a loop-mounted ext4 image, clean and with errors recorded",
    "clean-temp-files": "real: a folder under /tmp",
    "clear-proxy-settings": "real: a bind-mounted /etc",
    "find-large-files": "real: a folder under /tmp",
    "flush-dns-cache": "real: SIGHUP to a stand-in dnsmasq process; 69 path (no DNS cache here)",
    "free-inodes": "real: a folder under /tmp",
    "remount-rw": "real: a read-only tmpfs in a private namespace",
    "renew-dhcp-lease": "real: a stand-in dhclient on a veth pair in a private network "
                        "namespace; refusals: fake interface (66), loopback (64), "
                        "no DHCP client (69)",
    "restart-agent": "real: a stand-in systemctl restarting a stand-in agent service in a "
                     "private namespace; 69 path (systemd is not PID 1 here)",
    "rotate-logs": "real: logrotate -f with bind-mounted config, state and /var/log",
    "show-service-log": "real: a bind-mounted /var/log/syslog (no journal entries here)",
    "restart-service": "real: a throwaway SysV service on a bind-mounted /etc/init.d; "
                       "the systemd path is not available here (69)",
    "set-dns-servers": "real: a bind-mounted /etc (plain file and resolved drop-in)",
    "set-proxy": "real: a bind-mounted /etc",
    "stop-runaway-process": "real: processes the test starts",
    "sync-clock": "real: a stand-in chronyc in a private namespace; 69 path (no chrony, "
                  "timesyncd, ntpdate or sntp here)",
    "vacuum-journal": "real: journalctl --vacuum-size on a bind-mounted /var/log/journal",
}


def manifests() -> dict[str, FixManifest]:
    return {p.parent.name: load_manifest(p) for p in sorted(LIBRARY.glob("*/*.toml"))}


# --- running a fix the way the agent does ----------------------------------------------


@dataclass
class Ran:
    runner: str
    exit_status: int | None
    timed_out: bool
    output: str
    verify_passed: bool | None
    verify_exit: int | None
    verify_output: str


async def _run_with_executor(m: FixManifest, env_params: Mapping[str, str]) -> dict[str, Any]:
    from backline.agent.fixes.executor import run_fix

    chunks: list[bytes] = []
    verify: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "output":
            chunks.append(base64.b64decode(event["b64"]))
        elif event["type"] == "verify":
            verify.update(event)

    result = await run_fix(m, env_params, 1 << 20, on_event)
    return {"runner": "executor", "exit_status": result.exit_status,
            "timed_out": result.timed_out, "output": b"".join(chunks).decode("utf-8", "replace"),
            "verify_passed": verify.get("passed"), "verify_exit": verify.get("exit_status"),
            "verify_output": base64.b64decode(verify.get("output_b64", "")).decode(
                "utf-8", "replace")}


def _child(spec: dict[str, Any]) -> None:
    """Run in a child process: mount what the spec asks (in its private namespace),
    then run the fix and its verify script, and print the result as one JSON line."""
    for kind, *args in spec["mounts"]:
        if kind == "bind":
            subprocess.run(["mount", "--rbind", args[0], args[1]], check=True)
        elif kind == "loop":
            subprocess.run(["mount", "-o", "loop", args[0], args[1]], check=True)
        elif kind == "tmpfs":
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"{args[1]},size=1m", "tmpfs",
                            args[0]], check=True)
        elif kind == "veth":  # in the private network namespace: a pair, both up
            subprocess.run(["ip", "link", "add", args[0], "type", "veth", "peer", "name",
                            args[1]], check=True)
            for name in args:
                subprocess.run(["ip", "link", "set", name, "up"], check=True)
        elif kind == "sysfs":  # /sys/class/net of the private network namespace
            subprocess.run(["mount", "-t", "sysfs", "sysfs", "/sys"], check=True)
        elif kind == "daemon":  # started before the fix, outside its run (a service)
            subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    m = load_manifest(spec["manifest"])
    if spec.get("raw"):  # the schema bypassed: what the script's own checks must catch
        env_params = {f"BACKLINE_PARAM_{k}": str(v) for k, v in spec["params"].items()}
    else:
        env_params = validate_params(m, spec["params"])
    print(json.dumps(asyncio.run(_run_with_executor(m, env_params))))


def _namespace_prefix(net: bool = False) -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is needed for a private mount namespace")
    prefix = [unshare, "--mount", "--propagation", "private", *(["--net"] if net else [])]
    if os.geteuid() != 0:
        prefix.insert(1, "--map-root-user")
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.decode()[:200]}")
    return prefix


def run(fix_id: str, params: Mapping[str, object] | None = None,
        mounts: list[tuple[str, ...]] | None = None, *, raw: bool = False,
        net: bool = False) -> Ran:
    """Run one shipped fix (in a private mount namespace when ``mounts`` is given);
    ``raw`` hands the values to the script as they are, without the schema;
    ``net`` adds a private network namespace (for ``veth`` mounts)."""
    spec = {"manifest": str(LIBRARY / fix_id / f"{fix_id}.toml"), "params": dict(params or {}),
            "mounts": [list(m) for m in mounts or []], "raw": raw}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    if mounts:
        argv = [*_namespace_prefix(net), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"runner failed: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    result = Ran(**json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def refused_by_schema(fix_id: str, **params: object) -> str:
    """The parameters are refused before anything runs; returns the refusal's text."""
    m = manifests()[fix_id]
    with pytest.raises(ParamError) as caught:
        validate_params(m, params)
    return str(caught.value)


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A folder under /tmp itself (the temp-folder fixes only accept /tmp, /var/tmp)."""
    path = Path(tempfile.mkdtemp(prefix="blfix-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside_dir() -> Iterator[Path]:
    """A folder outside every root the library's deleting fixes accept."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(ROOT)
    path = Path(tempfile.mkdtemp(prefix="blfix-outside-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


def _wait_for(path: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then), follow_symlinks=False)


def _comm_pids(name: str, under: Path | None = None) -> list[int]:
    """Live processes named ``name``, on the whole machine; with ``under``, only those
    whose command line names a file in that folder (what this test started there).

    Never signal what this returns without ``under``: a name is not this test's own.
    The restart-agent test's cleanup once SIGKILLed every process named
    ``backline-agent`` to end its stand-in, and with it the real agents that the other
    pytest-xdist workers' tests were running (an agent killed mid-handshake: no log, no
    status.json, the relay saw it come and go)."""
    prefix = None if under is None else os.fsencode(f"{under}/")
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                state = (comm.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                argv = (comm.parent / "cmdline").read_bytes().split(b"\0")
                if state != "Z" and (prefix is None
                                     or any(a.startswith(prefix) for a in argv)):
                    pids.append(int(comm.parent.name))
        except (OSError, IndexError):
            continue
    return pids


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for PID 1 to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _systemd_runs() -> bool:
    return Path("/run/systemd/system").is_dir()


# --- the library as data --------------------------------------------------------------


def test_the_library_holds_at_least_15_fixes_and_every_manifest_parses() -> None:
    found = manifests()
    assert len(found) >= 15
    linux = [m for m in found.values() if "linux" in m.platforms]
    assert len(linux) >= 15, sorted(m.id for m in linux)
    assert {"windows", "macos"} <= {p for m in found.values() for p in m.platforms}
    for folder, m in found.items():
        assert m.id == folder, f"{folder}/ holds {m.id}"
        assert list((LIBRARY / folder).glob("*.toml")) == [LIBRARY / folder / f"{m.id}.toml"]
        assert m.verify, f"{m.id} has no verify script"
        assert 1 <= m.timeout_s <= 3600
        assert m.consent or m.risk == "low", f"{m.id}: a {m.risk}-risk fix asks consent"
        if "linux" in m.platforms:
            assert m.platforms == ("linux",) and m.interpreter == "sh", m.id


def test_every_default_validates_and_every_parameter_is_bounded() -> None:
    for m in manifests().values():
        assert len(m.parameters) <= 16
        for p in m.parameters:
            assert p.description, f"{m.id}.{p.name} has no description"
            if p.default is not None:
                check_value(p, p.default)
            if p.type == "string":
                assert p.enum is not None or p.pattern is not None, \
                    f"{m.id}.{p.name}: a free string parameter needs a pattern or an enum"
                assert p.max_length is not None and p.max_length <= 1024, f"{m.id}.{p.name}"
            if p.type == "integer":
                assert p.min is not None and p.max is not None, f"{m.id}.{p.name}"
        required = [p.name for p in m.parameters if p.required and p.default is None]
        if not required:
            validate_params(m, {})


def test_every_rule_a_fix_names_exists_in_the_knowledge_base() -> None:
    from backline.agent.diagnostics.rules import load_rules

    known = {rule.id for rule in load_rules()}
    for m in manifests().values():
        unknown = sorted(set(m.rules) - known)
        assert not unknown, f"{m.id} names rules no knowledge file defines: {unknown}"
    # only restart-agent addresses nothing a rule detects (said in its manifest)
    assert [m.id for m in manifests().values() if not m.rules] == ["restart-agent"]


def test_the_knowledge_base_lists_exactly_the_fixes_that_name_each_rule() -> None:
    """A finding's "Fixes:" line (the agent's report, the console) names the library
    fixes that address its rule, and no others: the manifests' ``rules`` are the one
    source (they are signed), and each rule's ``fixes`` list in agent/knowledge is
    their mirror, checked here both ways (it named fixes that were never written,
    such as restart-network and reboot, and missed vacuum-journal and free-inodes)."""
    from backline.agent.diagnostics.rules import load_rules

    addressing: dict[str, set[str]] = {}
    for m in manifests().values():
        for rule_id in m.rules:
            addressing.setdefault(rule_id, set()).add(m.id)
    for rule in load_rules():
        listed, expected = set(rule.fixes), addressing.get(rule.id, set())
        assert listed == expected, (
            f"rule {rule.id}: knowledge lists {sorted(listed)}, the library's fixes that "
            f"name it are {sorted(expected)}")
        assert list(rule.fixes) == sorted(rule.fixes), f"rule {rule.id}: keep fixes sorted"


def test_scripts_read_parameters_only_from_the_environment_and_never_eval() -> None:
    """Every read of a parameter is a quoted assignment from its variable (sh) or a
    [string] cast of $env: (PowerShell); no eval / Invoke-Expression; every parameter
    the schema declares is read, and nothing else is."""
    sh_read = re.compile(r'^\s*[a-z_]+="\$\{BACKLINE_PARAM_([A-Z0-9_]+)(:-[^}"$`\\]*)?\}"\s*$')
    ps_read = re.compile(r"\[(?:string|int)\]\$env:BACKLINE_PARAM_([A-Z0-9_]+)")
    for m in manifests().values():
        declared = {p.name for p in m.parameters}
        for label, text in (("script", m.script), ("verify", m.verify or "")):
            used: set[str] = set()
            for number, line in enumerate(text.splitlines(), 1):
                where = f"{m.id} {label} line {number}: {line.strip()}"
                if m.interpreter == "sh":
                    code = "" if line.lstrip().startswith("#") else line
                    assert not re.search(r"(^|[;&|(\s])(eval|source|\.)\s", code), where
                    if "BACKLINE_PARAM_" in line:
                        match = sh_read.match(line)
                        assert match, f"not a quoted read of a parameter: {where}"
                        used.add(match.group(1))
                else:
                    assert not re.search(r"Invoke-Expression|\biex\b|\[scriptblock\]", line,
                                         re.IGNORECASE), where
                    if "BACKLINE_PARAM_" in line:
                        names = ps_read.findall(line)
                        assert names and line.count("BACKLINE_PARAM_") == len(names), where
                        used.update(names)
            assert used <= declared, f"{m.id} {label} reads undeclared {used - declared}"
            if label == "script":
                assert used == declared, f"{m.id} never reads {declared - used}"


def test_the_fixes_that_need_root_check_for_it_first() -> None:
    for m in manifests().values():
        if "linux" in m.platforms:
            checks = 'if [ "$(id -u)" -ne 0 ]; then' in m.script
            assert checks == (m.id in NEED_ROOT), m.id
            assert ("77 needs root" in m.description) == (m.id in NEED_ROOT), m.id


def test_every_shell_script_parses() -> None:
    for m in manifests().values():
        if m.interpreter != "sh":
            continue
        for text in (m.script, m.verify or ""):
            done = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
            assert done.returncode == 0, f"{m.id}: {done.stderr}"


def test_the_library_ships_in_the_package() -> None:
    """pyproject's package-data globs cover every library file (test_wheel.py checks
    the built wheel holds them), and importlib.resources finds the library."""
    from importlib import resources

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["backline.relay"]
    covered = {p for pattern in patterns for p in (ROOT / "relay").glob(pattern) if p.is_file()}
    files = {p for p in LIBRARY.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert files and files <= covered, sorted(str(p) for p in files - covered)
    shipped = resources.files("backline.relay").joinpath("fixes/library")
    assert {e.name for e in shipped.iterdir()} >= set(manifests())


def test_every_linux_fix_is_exercised_and_documented() -> None:
    linux = {m.id for m in manifests().values() if "linux" in m.platforms}
    assert linux == set(EXERCISED)
    doc = (ROOT / "docs" / "fixes.md").read_text()
    section = doc[doc.index("## Starter library"):]
    for m in manifests().values():
        assert f"| `{m.id}` |" in section, f"docs/fixes.md's table lacks {m.id}"


# --- temp folders, inodes, logs, package cache, journal --------------------------------


def test_clean_temp_files_deletes_only_old_files_of_the_folder(tmp_dir: Path,
                                                             outside_dir: Path) -> None:
    (tmp_dir / "deep" / "er").mkdir(parents=True)
    old = [tmp_dir / "old.txt", tmp_dir / "deep" / "er" / "old.log"]
    for path in old:
        path.write_text("x" * 100)
        _age(path, 10)
    fresh = tmp_dir / "fresh.txt"
    fresh.write_text("keep")
    _age(fresh, 1)
    target = outside_dir / "target.txt"
    target.write_text("not ours")
    _age(target, 30)
    link = tmp_dir / "old-link"
    link.symlink_to(target)
    _age(link, 10)
    os.mkfifo(tmp_dir / "pipe")
    _age(tmp_dir / "pipe", 10)
    xlock = tmp_dir / ".X0-lock"
    xlock.write_text("1234")
    _age(xlock, 30)
    read = tmp_dir / "still-read.db"
    read.write_text("in use")
    _age(read, 30)
    os.utime(read, (time.time() - 3600, time.time() - 30 * 86400))  # read an hour ago
    (tmp_dir / "emptied").mkdir()
    _age(tmp_dir / "emptied", 10)

    ran = run("clean-temp-files", {"FOLDER": str(tmp_dir), "AGE_DAYS": 7})
    assert ran.runner == "executor"
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert "deleting 3 files" in ran.output
    assert not any(p.exists() for p in old) and not link.is_symlink()
    assert fresh.exists() and (tmp_dir / "pipe").exists() and xlock.exists() and read.exists()
    assert not (tmp_dir / "emptied").exists(), "an old empty folder is left"
    assert target.read_text() == "not ours", "the link was followed"


def test_clean_temp_files_refuses_folders_outside_tmp(tmp_dir: Path, outside_dir: Path) -> None:
    for folder in ("/etc", "/tmp/../etc", "/tmp/./x", "/var/tmpx", "tmp", "/tmp/a b",
                   "/tmp/$(touch X)", "/tmp/x\n/etc"):
        refused_by_schema("clean-temp-files", FOLDER=folder)
    victim = outside_dir / "victim.txt"
    victim.write_text("must stay")
    _age(victim, 30)
    escape = tmp_dir / "escape"
    escape.symlink_to(outside_dir)
    ran = run("clean-temp-files", {"FOLDER": str(escape), "AGE_DAYS": 1})
    assert ran.exit_status == REFUSED, ran.output
    assert "not inside /tmp or /var/tmp" in ran.output
    assert victim.read_text() == "must stay"
    assert run("clean-temp-files", {"FOLDER": str(tmp_dir / "nope")}).exit_status == NO_TARGET


def test_free_inodes_thins_out_a_folder_of_many_small_files(tmp_dir: Path) -> None:
    cache = tmp_dir / "sessions"
    for bucket in range(10):
        (cache / f"b{bucket}").mkdir(parents=True)
        for n in range(30):
            path = cache / f"b{bucket}" / f"sess_{n}"
            path.write_text("s")
            _age(path, 5)
    recent = cache / "b0" / "sess_new"
    recent.write_text("live session")
    ran = run("free-inodes", {"FOLDER": str(cache), "AGE_HOURS": 24})
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert "deleting 300 files" in ran.output and "inode use after" in ran.output
    assert [p for p in cache.rglob("*") if p.is_file()] == [recent]
    assert all((cache / f"b{b}").is_dir() for b in range(10)), "folders are kept"


def test_free_inodes_refuses_outside_its_roots(tmp_dir: Path, outside_dir: Path) -> None:
    for folder in ("/var/cache/../../etc", "/var/lib/php", "/home/user", "/var/cache;id"):
        refused_by_schema("free-inodes", FOLDER=folder)
    refused_by_schema("free-inodes")  # FOLDER is required
    refused_by_schema("free-inodes", FOLDER=str(tmp_dir), AGE_HOURS=0)
    victim = outside_dir / "victim"
    victim.write_text("x")
    _age(victim, 30)
    (tmp_dir / "link").symlink_to(outside_dir)
    ran = run("free-inodes", {"FOLDER": str(tmp_dir / "link"), "AGE_HOURS": 1})
    assert ran.exit_status == REFUSED and victim.exists(), ran.output


def test_clean_rotated_logs_on_a_bind_mounted_var_log(tmp_dir: Path, outside_dir: Path) -> None:
    logs = tmp_dir / "log"
    (logs / "apt").mkdir(parents=True)
    rotated = ["syslog.1", "syslog.2.gz", "messages-20240101", "apt/history.log.3.xz",
               "app.log.old"]
    live = ["syslog", "apt/history.log", "wtmp"]
    for name in rotated + live:
        (logs / name).write_text("line\n" * 10)
        _age(logs / name, 40)
    (logs / "kern.log.1").write_text("recent")
    victim = outside_dir / "other.log.1"
    victim.write_text("x")
    _age(victim, 40)
    (logs / "elsewhere").symlink_to(outside_dir)
    mounts = [("bind", str(logs), "/var/log")]

    ran = run("clean-rotated-logs", {"AGE_DAYS": 14}, mounts)
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert "deleting 5 rotated log files" in ran.output
    assert not any((logs / n).exists() for n in rotated)
    assert all((logs / n).exists() for n in [*live, "kern.log.1"])
    assert victim.exists(), "find followed a link out of /var/log"

    ran = run("clean-rotated-logs", {"FOLDER": "/var/log/elsewhere"}, mounts)
    assert ran.exit_status == REFUSED and "not inside /var/log" in ran.output
    for folder in ("/var/log/../../etc", "/var/logs", "/var/log/$(id)"):
        refused_by_schema("clean-rotated-logs", FOLDER=folder)


def test_clean_package_cache_runs_apt_get_clean_on_a_bind_mounted_cache(tmp_dir: Path) -> None:
    if shutil.which("apt-get", path=SAFE_PATH) is None:
        pytest.skip("apt-get is not installed here")
    cache = tmp_dir / "apt"
    (cache / "archives" / "partial").mkdir(parents=True)
    (cache / "archives" / "foo_1.0_amd64.deb").write_bytes(b"\0" * 4096)
    (cache / "archives" / "partial" / "bar_2.0_all.deb").write_bytes(b"\0" * 100)
    (cache / "pkgcache.bin").write_bytes(b"\0" * 100)
    ran = run("clean-package-cache", {"MANAGER": "apt"}, [("bind", str(cache), "/var/cache/apt")])
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert not list(cache.rglob("*.deb"))
    assert (cache / "archives" / "partial").is_dir()


def test_clean_package_cache_without_the_manager_says_so() -> None:
    absent = [m for m in ("dnf", "zypper", "pacman", "apk") if shutil.which(m, path=SAFE_PATH)
              is None]
    if not absent:
        pytest.skip("every package manager is installed here")
    ran = run("clean-package-cache", {"MANAGER": absent[0]})
    assert ran.exit_status == UNAVAILABLE and "not installed" in ran.output
    refused_by_schema("clean-package-cache", MANAGER="apt; rm -rf /")


def test_vacuum_journal_on_a_bind_mounted_journal(tmp_dir: Path) -> None:
    if shutil.which("journalctl", path=SAFE_PATH) is None:
        pytest.skip("journalctl is not installed here")
    machine = Path("/etc/machine-id").read_text().strip() if Path("/etc/machine-id").exists() \
        else ""
    if not re.fullmatch(r"[0-9a-f]{32}", machine):
        pytest.skip("no /etc/machine-id: journalctl vacuums only the machine's own folder")
    journal = tmp_dir / "journal"
    folder = journal / machine
    folder.mkdir(parents=True)
    names = [f"system@{'ab' * 16}-{n:016x}-{0x6000000000000 + n:016x}.journal"
             for n in (1, 2, 3)]
    for n, name in enumerate(names):  # archived files: journalctl removes by name order
        (folder / name).write_bytes(os.urandom(2 << 20))
        _age(folder / name, 30 - n)
    ran = run("vacuum-journal", {"MAX_SIZE_MB": 3}, [("bind", str(journal), "/var/log/journal")])
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert sorted(p.name for p in folder.iterdir()) == [names[2]]
    refused_by_schema("vacuum-journal", MAX_SIZE_MB=0)
    refused_by_schema("vacuum-journal", MAX_SIZE_MB="1; rm -rf /")


def test_rotate_logs_runs_logrotate_on_bind_mounted_config_and_logs(tmp_dir: Path) -> None:
    if shutil.which("logrotate", path=SAFE_PATH) is None:
        pytest.skip("logrotate is not installed here")
    if not Path("/etc/logrotate.conf").is_file() or not Path("/etc/logrotate.d").is_dir():
        pytest.skip("no /etc/logrotate.conf and /etc/logrotate.d to bind over")
    logs, confd, state = tmp_dir / "log", tmp_dir / "logrotate.d", tmp_dir / "state"
    for folder in (logs, confd, state):
        folder.mkdir(mode=0o755)
    (logs / "blfix.log").write_text("a line\n" * 1000)
    (confd / "blfix").write_text("/var/log/blfix.log {\n  rotate 2\n  missingok\n"
                                 "  compress\n  create 0640 root root\n}\n")
    conf = tmp_dir / "logrotate.conf"
    conf.write_text("include /etc/logrotate.d\n")
    mounts = [("bind", str(conf), "/etc/logrotate.conf"), ("bind", str(confd), "/etc/logrotate.d"),
              ("bind", str(logs), "/var/log")]
    if Path("/var/lib/logrotate").is_dir():
        mounts.append(("bind", str(state), "/var/lib/logrotate"))
    else:
        pytest.skip("no /var/lib/logrotate to bind over")
    ran = run("rotate-logs", {"FORCE": True}, mounts)
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert (logs / "blfix.log.1.gz").exists() and (logs / "blfix.log").stat().st_size == 0
    assert (state / "status").exists()


def test_show_service_log_prints_the_lines_naming_the_service(tmp_dir: Path) -> None:
    logs = tmp_dir / "log"
    logs.mkdir()
    (logs / "syslog").write_text("".join(
        f"Dec  1 10:00:{n:02d} host blfix-demo[42]: line {n}\n"
        f"Dec  1 10:00:{n:02d} host xblfix-demox[43]: other {n}\n" for n in range(20)))
    mounts = [("bind", str(logs), "/var/log")]
    ran = run("show-service-log", {"SERVICE": "blfix-demo", "LINES": 5}, mounts)
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    shown = [line for line in ran.output.splitlines() if "blfix" in line and "syslog" not in line]
    assert shown == [f"Dec  1 10:00:{n:02d} host blfix-demo[42]: line {n}" for n in range(15, 20)]
    ran = run("show-service-log", {"SERVICE": "blfix-none"}, mounts)
    assert ran.exit_status == NO_TARGET and ran.verify_passed is False
    for name in ("-e.", "a|b", "$(id)", "x" * 129):
        refused_by_schema("show-service-log", SERVICE=name)


# --- processes and services ------------------------------------------------------------


def _throwaway(tmp_dir: Path, name: str, program: str, *args: str) -> subprocess.Popen[bytes]:
    """A process whose command name is ``name``: a copy of a system program."""
    exe = tmp_dir / name
    if not exe.exists():
        shutil.copy2(shutil.which(program, path=SAFE_PATH) or program, exe)
    return subprocess.Popen([str(exe), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_stop_runaway_process_stops_every_process_of_that_name(
        tmp_dir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    name = f"blfix{os.getpid() % 100000}"
    processes += [_throwaway(tmp_dir, name, "sleep", "600") for _ in range(2)]
    bystander = _throwaway(tmp_dir, name + "x", "sleep", "600")
    processes.append(bystander)
    deadline = time.monotonic() + 15
    while len(_comm_pids(name)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ran = run("stop-runaway-process", {"NAME": name, "GRACE_S": 5})
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    for proc in processes[:2]:
        assert proc.wait(timeout=15) == -signal.SIGTERM
    assert bystander.poll() is None, "a process with a longer name was stopped too"
    again = run("stop-runaway-process", {"NAME": name})
    assert again.exit_status == NO_TARGET and again.verify_passed


def test_stop_runaway_process_escalates_to_sigkill(
        tmp_dir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    name = f"blfixt{os.getpid() % 100000}"
    ready = tmp_dir / "ready"
    stubborn = _throwaway(tmp_dir, name, "dash", "-c",
                          f"trap '' TERM INT; touch {ready}; while :; do sleep 0.1; done")
    processes.append(stubborn)
    _wait_for(ready)
    kept = run("stop-runaway-process", {"NAME": name, "GRACE_S": 1, "FORCE": False})
    assert kept.exit_status == FAILED and stubborn.poll() is None, kept.output
    assert kept.verify_passed is False
    ran = run("stop-runaway-process", {"NAME": name, "GRACE_S": 1})
    assert ran.exit_status == OK and "SIGKILL" in ran.output, ran.output
    assert ran.verify_passed, ran.verify_output
    assert stubborn.wait(timeout=15) == -signal.SIGKILL


def test_stop_runaway_process_refuses_shells_patterns_and_options(
        tmp_dir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    shell = _throwaway(tmp_dir, "sh", "dash", "-c", "sleep 600")
    processes.append(shell)
    for name in ("sh", "bash", "systemd", "sshd", "backline-agent"):
        ran = run("stop-runaway-process", {"NAME": name, "GRACE_S": 0})
        assert ran.exit_status == REFUSED, (name, ran.output)
    assert shell.poll() is None, "a shell was signalled"
    for name in (".*", "-9", "a b", "sleep;reboot", "x" * 16, "$(id)", ""):
        refused_by_schema("stop-runaway-process", NAME=name)
    refused_by_schema("stop-runaway-process", NAME="sleep", SIGNAL="STOP")
    refused_by_schema("stop-runaway-process", NAME="sleep", FORCE="yes")


INIT_SCRIPT = """#!/bin/sh
# a throwaway SysV service for the restart-service test
PIDFILE={pidfile}
case "$1" in
    start) setsid sleep 3600 </dev/null >/dev/null 2>&1 &
           pid=$!
           # like a real daemon's start: return once it has left this session (the
           # agent ends the fix's whole session when the fix exits)
           while [ "$(cut -d ' ' -f 6 /proc/$pid/stat 2>/dev/null)" != "$pid" ]; do sleep 0.02; done
           echo "$pid" > "$PIDFILE" ;;
    stop) [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null; rm -f "$PIDFILE" ;;
    restart) "$0" stop; "$0" start ;;
    status) [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null ;;
    *) exit 2 ;;
esac
"""


def test_restart_service_restarts_a_throwaway_sysv_service(tmp_dir: Path) -> None:
    if _systemd_runs():
        pytest.skip("systemd runs here: restart-service would use it, not the init script")
    initd = tmp_dir / "init.d"
    initd.mkdir()
    pidfile = tmp_dir / "demo.pid"
    script = initd / "blfix-demo"
    script.write_text(INIT_SCRIPT.format(pidfile=pidfile))
    script.chmod(0o755)
    subprocess.run([str(script), "start"], check=True, timeout=10)
    before = int(pidfile.read_text())
    try:
        ran = run("restart-service", {"SERVICE": "blfix-demo"},
                  [("bind", str(initd), "/etc/init.d")])
        assert ran.exit_status == OK, ran.output
        assert ran.verify_passed, ran.verify_output
        assert "systemd is not the init system" in ran.output
        after = int(pidfile.read_text())
        assert after != before
        assert _alive(after) and not _alive(before)
    finally:
        subprocess.run([str(script), "stop"], timeout=10)


def test_restart_service_without_a_service_manager_says_so() -> None:
    if _systemd_runs():
        pytest.skip("systemd runs here")
    ran = run("restart-service", {"SERVICE": "blfix-no-such-service"})
    assert ran.exit_status == as_root(UNAVAILABLE), ran.output
    if os.geteuid() != 0:
        return
    assert "systemd is not the init system here" in ran.output
    assert ran.verify_passed is False


def test_restart_service_refuses_names_that_are_not_services() -> None:
    for name in ("../../bin/sh", "-H", "cups; reboot", "$(touch X)", "a b", "x\ny", "",
                 "a" * 129):
        refused_by_schema("restart-service", SERVICE=name)
    for name in ("dbus", "systemd-logind.service", "backline-agent"):
        ran = run("restart-service", {"SERVICE": name})
        assert ran.exit_status == REFUSED, (name, ran.output)


def test_restart_agent_needs_systemd() -> None:
    if _systemd_runs():
        pytest.skip("systemd runs here: restarting the agent's unit is not safe in a test")
    ran = run("restart-agent")
    assert ran.exit_status == UNAVAILABLE and "restart the agent the way it was started" \
        in ran.output, ran.output
    for unit in ("sshd.service", "backline-agent.service; reboot", "backline-agent"):
        refused_by_schema("restart-agent", UNIT=unit)


# --- DNS, time, network, proxy ---------------------------------------------------------


def test_flush_dns_cache_signals_the_dnsmasq_that_runs(
        tmp_dir: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    """A stand-in for dnsmasq (a shell named dnsmasq that records SIGHUP, which is how
    dnsmasq(8) is told to clear its cache): the fix finds it by name and signals it."""
    if _comm_pids("dnsmasq"):
        pytest.skip("a real dnsmasq runs here")
    marker, ready = tmp_dir / "hup", tmp_dir / "ready"
    processes.append(_throwaway(tmp_dir, "dnsmasq", "dash", "-c",
                                f"trap 'echo hup >> {marker}' HUP; touch {ready}; "
                                "while :; do sleep 0.1; done"))
    _wait_for(ready)
    ran = run("flush-dns-cache", {"RESOLVER": "dnsmasq"})
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    _wait_for(marker)
    deadline = time.monotonic() + 15
    while not marker.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.read_text() == "hup\n"
    assert processes[-1].poll() is None, "the resolver must survive its flush"


def test_flush_dns_cache_where_no_cache_runs() -> None:
    if _comm_pids("dnsmasq") or _comm_pids("nscd") or Path("/run/systemd/resolve").exists():
        pytest.skip("a DNS cache runs here")
    ran = run("flush-dns-cache")
    assert ran.exit_status == UNAVAILABLE and "no DNS cache runs here" in ran.output
    assert ran.verify_passed is False
    assert run("flush-dns-cache", {"RESOLVER": "nscd"}).exit_status == UNAVAILABLE
    refused_by_schema("flush-dns-cache", RESOLVER="nscd; rm -rf /")


def test_sync_clock_where_no_time_sync_runs() -> None:
    if _systemd_runs() or any(shutil.which(t, path=SAFE_PATH)
                              for t in ("chronyc", "ntpdate", "sntp")):
        pytest.skip("a time synchronisation tool is present: not stepping this clock")
    ran = run("sync-clock")
    assert ran.exit_status == as_root(UNAVAILABLE), ran.output
    assert ran.verify_passed is False
    if os.geteuid() == 0:
        assert "no time synchronisation here" in ran.output
    for server in ("-p1 evil", "pool.ntp.org; date -s 2000", "$(touch X)", "a b"):
        refused_by_schema("sync-clock", SERVER=server)


def test_renew_dhcp_lease_refuses_fake_and_loopback_interfaces() -> None:
    ran = run("renew-dhcp-lease", {"INTERFACE": "blfixnope0"})
    assert ran.exit_status == NO_TARGET and "no such network interface" in ran.output
    assert ran.verify_passed is False
    assert run("renew-dhcp-lease", {"INTERFACE": "lo"}).exit_status == REFUSED
    for name in ("eth0; reboot", "../../x", "..", "-r", "x" * 16, "$(id)"):
        refused_by_schema("renew-dhcp-lease", INTERFACE=name)
    clients = ("dhclient", "dhcpcd", "udhcpc", "nmcli")
    real = [p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo"]
    if real and not any(shutil.which(c, path=SAFE_PATH) for c in clients) \
            and not Path("/run/systemd/netif").exists():
        ran = run("renew-dhcp-lease", {"INTERFACE": real[0]})
        assert ran.exit_status == as_root(UNAVAILABLE), ran.output
        assert os.geteuid() != 0 or "no DHCP client here" in ran.output


def _standins(tmp_dir: Path, programs: Mapping[str, str]) -> Path:
    """A folder of stand-in programs (shell scripts) to bind over /usr/local/sbin, the
    first folder of the fixed PATH, so the fix finds them before anything installed."""
    sbin = tmp_dir / "sbin"
    sbin.mkdir(exist_ok=True)
    for name, body in programs.items():
        exe = sbin / name
        exe.write_text("#!/bin/sh\n" + body)
        exe.chmod(0o755)
    return sbin


def test_sync_clock_steps_the_clock_through_a_stand_in_chronyd(tmp_dir: Path) -> None:
    """chronyc as the fix drives it: ``tracking`` answers (chrony runs), the burst and
    ``makestep`` are asked for, and the verify script reads a Normal leap status."""
    log = tmp_dir / "chronyc.log"
    sbin = _standins(tmp_dir, {"chronyc": f"""echo "$*" >> {log}
case "$*" in
    "-n tracking") echo "Reference ID    : 7F7F0101 (stand-in)"; echo "Stratum         : 2"
                   echo "Leap status     : Normal" ;;
    "-a makestep") echo "200 OK" ;;
esac
exit 0
"""})
    ran = run("sync-clock", {"SERVER": "ntp.example.org"}, [("bind", str(sbin),
                                                             "/usr/local/sbin")])
    assert ran.exit_status == OK, ran.output
    assert "chrony runs" in ran.output and "Leap status" in ran.output
    assert ran.verify_passed, ran.verify_output
    assert "chrony: synchronised" in ran.verify_output
    assert log.read_text().splitlines() == ["-n tracking", "-a burst 4/4", "-n waitsync 10 0.5",
                                            "-a makestep", "-n tracking", "-n tracking",
                                            "-n tracking"]


def test_renew_dhcp_lease_through_a_stand_in_dhclient_on_a_veth(tmp_dir: Path) -> None:
    """In a private network namespace: one end of a veth pair has no address; the
    stand-in dhclient releases (flushes) and requests (adds) a lease; verify sees it."""
    log = tmp_dir / "dhclient.log"
    sbin = _standins(tmp_dir, {"dhclient": f"""echo "$*" >> {log}
case "$1" in
    -r) ip -4 addr flush dev "$2" ;;
    -1) ip addr add 192.0.2.10/24 dev "$2" ;;
    *) exit 2 ;;
esac
"""})
    ran = run("renew-dhcp-lease", {"INTERFACE": "blfix0"},
              [("bind", str(sbin), "/usr/local/sbin"), ("veth", "blfix0", "blfix1"),
               ("sysfs",)], net=True)
    assert ran.exit_status == OK, ran.output
    assert "dhclient: releasing and requesting a lease on blfix0" in ran.output
    assert ran.verify_passed, ran.verify_output
    assert "blfix0 has 192.0.2.10/24" in ran.verify_output
    assert log.read_text().splitlines() == ["-r blfix0", "-1 blfix0"]


def test_restart_agent_restarts_a_stand_in_agent_service(tmp_dir: Path) -> None:
    """systemd as init, stood in for: /run/systemd/system exists (a bound folder), a
    stand-in systemctl hands the restart to a stand-in service manager (a loop the
    test starts outside the fix's run, as systemd is), which really stops the agent's
    process and starts a new one; the verify script waits until the unit is active."""
    state = tmp_dir / "svc"
    state.mkdir()
    run_systemd = tmp_dir / "run-systemd"
    (run_systemd / "system").mkdir(parents=True)
    agent = tmp_dir / "backline-agent"  # a copy of sleep: its process is named so
    shutil.copy2(shutil.which("sleep", path=SAFE_PATH) or "sleep", agent)
    manager = tmp_dir / "manager.sh"
    manager.write_text(f"""#!/bin/sh
start() {{ {agent} 1000 & echo $! > {state}/pid; touch {state}/active; }}
start
while :; do
    if [ -e {state}/restart ]; then
        rm -f {state}/active {state}/restart
        old=$(cat {state}/pid); echo "$old" >> {state}/stopped
        kill "$old"; wait "$old" 2>/dev/null
        start
    fi
    sleep 0.05
done
""")
    manager.chmod(0o755)
    sbin = _standins(tmp_dir, {"systemctl": f"""case "$*" in
    "show -p LoadState --value -- backline-agent.service") echo loaded ;;
    "show -p LoadState --value -- "*) echo not-found ;;
    "--no-block restart -- backline-agent.service") touch {state}/restart ;;
    "is-active --quiet -- backline-agent.service")
        [ -e {state}/active ] && kill -0 "$(cat {state}/pid)" 2>/dev/null ;;
    "is-active -- backline-agent.service")
        [ -e {state}/active ] && echo active || echo activating ;;
    *) echo "stand-in systemctl: $*" >&2; exit 1 ;;
esac
"""})
    ran = run("restart-agent", {}, [("bind", str(sbin), "/usr/local/sbin"),
                                    ("bind", str(run_systemd), "/run/systemd"),
                                    ("daemon", str(manager))])
    try:
        assert ran.exit_status == OK, ran.output
        assert "queueing a restart of backline-agent.service" in ran.output
        assert ran.verify_passed, ran.verify_output
        assert "backline-agent.service is active" in ran.verify_output
        stopped = (state / "stopped").read_text().split()
        assert len(stopped) == 1 and stopped[0] != (state / "pid").read_text().strip()
        assert not _alive(int(stopped[0]))
    finally:
        for comm in ("manager.sh", "backline-agent"):  # ours only: see _comm_pids
            for pid in _comm_pids(comm, under=tmp_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _etc(tmp_dir: Path, files: Mapping[str, str]) -> Path:
    """A folder to bind over /etc, holding ``files``."""
    etc = tmp_dir / "etc"
    etc.mkdir(exist_ok=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


def _over_etc(etc: Path) -> list[tuple[str, ...]]:
    """Bind ``etc`` over /etc, with the real /etc/alternatives inside it first: on Debian
    /usr/bin/awk and friends are links through /etc/alternatives."""
    mounts: list[tuple[str, ...]] = []
    if Path("/etc/alternatives").is_dir():
        (etc / "alternatives").mkdir(exist_ok=True)
        mounts.append(("bind", "/etc/alternatives", str(etc / "alternatives")))
    return [*mounts, ("bind", str(etc), "/etc")]


def _files(etc: Path) -> list[str]:
    return sorted(p.name for p in etc.iterdir() if p.name != "alternatives")


def test_set_proxy_writes_one_block_into_a_bind_mounted_etc(tmp_dir: Path) -> None:
    etc = _etc(tmp_dir, {"environment": 'PATH="/usr/bin:/bin"\nhttp_proxy=http://old:1\n'})
    (etc / "environment").chmod(0o644)
    mounts = _over_etc(etc)
    params = {"PROXY_URL": "http://proxy.example.com:3128"}
    for _ in range(2):  # twice: still one block
        ran = run("set-proxy", params, mounts)
        assert ran.exit_status == OK, ran.output
        assert ran.verify_passed, ran.verify_output
    text = (etc / "environment").read_text()
    assert text.count("# BEGIN backline proxy") == 1
    assert 'https_proxy="http://proxy.example.com:3128"' in text
    assert 'no_proxy="localhost,127.0.0.1,::1"' in text
    assert "# disabled by the backline set-proxy fix: http_proxy=http://old:1" in text
    assert text.startswith('PATH="/usr/bin:/bin"\n')
    assert (etc / "environment").stat().st_mode & 0o777 == 0o644
    assert _files(etc) == ["environment"], "a temporary file was left"


def test_set_proxy_refuses_values_that_could_break_out_of_the_file(tmp_dir: Path) -> None:
    for url in ('http://x"; touch /tmp/X; "', "http://user:secret@proxy:3128",
                "ftp://proxy:21", "http://proxy:3128\nLD_PRELOAD=/x.so", "http://$(id)",
                "http://proxy`id`", "http://proxy:3128 x"):
        refused_by_schema("set-proxy", PROXY_URL=url)
    refused_by_schema("set-proxy", PROXY_URL="http://p:1", NO_PROXY='a,"b"')
    refused_by_schema("set-proxy", PROXY_URL="http://p:1", NO_PROXY="a,$HOME")


def test_clear_proxy_settings_on_a_bind_mounted_etc(tmp_dir: Path) -> None:
    block = ("# BEGIN backline proxy (set-proxy fix; remove with clear-proxy-settings)\n"
             'http_proxy="http://p:1"\n# END backline proxy\n')
    etc = _etc(tmp_dir, {"environment": f"LANG=C\n{block}export HTTPS_PROXY=http://x:2\n"})
    ran = run("clear-proxy-settings", {}, _over_etc(etc))
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    text = (etc / "environment").read_text()
    assert "BEGIN backline" not in text and text.startswith("LANG=C\n")
    assert "# disabled by the backline clear-proxy-settings fix: export HTTPS_PROXY" in text
    (etc / "environment").unlink()
    ran = run("clear-proxy-settings", {}, _over_etc(etc))
    assert ran.exit_status == OK and ran.verify_passed


def test_set_dns_servers_rewrites_a_bind_mounted_resolv_conf(tmp_dir: Path) -> None:
    old = "nameserver 10.0.0.1\nsearch example.com\noptions ndots:2\n"
    etc = _etc(tmp_dir, {"resolv.conf": old})
    ran = run("set-dns-servers", {"SERVERS": "9.9.9.9 2620:fe::fe"}, _over_etc(etc))
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    lines = (etc / "resolv.conf").read_text().splitlines()
    assert lines[1:] == ["nameserver 9.9.9.9", "nameserver 2620:fe::fe", "search example.com",
                         "options ndots:2"]
    assert (etc / "resolv.conf.backline-old").read_text() == old
    again = run("set-dns-servers", {"SERVERS": "1.1.1.1"}, _over_etc(etc))
    assert again.exit_status == OK and again.verify_passed, again.output
    assert (etc / "resolv.conf.backline-old").read_text() == old, "the first backup is kept"


def test_set_dns_servers_with_resolved_or_network_manager(tmp_dir: Path) -> None:
    etc = _etc(tmp_dir, {})
    (etc / "resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    ran = run("set-dns-servers", {"SERVERS": "1.1.1.1"}, _over_etc(etc))
    assert ran.exit_status == OK and ran.verify_passed, ran.output
    dropin = etc / "systemd" / "resolved.conf.d" / "50-backline-dns.conf"
    assert "DNS=1.1.1.1" in dropin.read_text()
    (etc / "resolv.conf").unlink()
    (etc / "resolv.conf").write_text("# Generated by NetworkManager\nnameserver 10.0.0.1\n")
    ran = run("set-dns-servers", {"SERVERS": "1.1.1.1"}, _over_etc(etc))
    assert ran.exit_status == UNAVAILABLE and "nmcli" in ran.output


def test_set_dns_servers_refuses_what_is_not_an_address(tmp_dir: Path) -> None:
    for servers in ("9.9.9.9; reboot", "1.1.1.1 2.2.2.2 3.3.3.3 4.4.4.4", "dns.google",
                    "1.1.1.1\nnameserver 6.6.6.6", "*", ""):
        refused_by_schema("set-dns-servers", SERVERS=servers)
    etc = _etc(tmp_dir, {"resolv.conf": "nameserver 10.0.0.1\n"})
    for servers in ("999.1.1.1", "1.2.3", "1::2:::3"):
        ran = run("set-dns-servers", {"SERVERS": servers}, _over_etc(etc))
        assert ran.exit_status == REFUSED, (servers, ran.output)
    assert (etc / "resolv.conf").read_text() == "nameserver 10.0.0.1\n"


# --- file systems ----------------------------------------------------------------------


def test_remount_rw_on_a_read_only_tmpfs(tmp_dir: Path) -> None:
    mnt = tmp_dir / "mnt"
    mnt.mkdir()
    ran = run("remount-rw", {"MOUNTPOINT": str(mnt)}, [("tmpfs", str(mnt), "ro")])
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert f"remounting {mnt} (tmpfs) read-write" in ran.output
    ran = run("remount-rw", {"MOUNTPOINT": str(mnt)}, [("tmpfs", str(mnt), "rw")])
    assert ran.exit_status == OK and "already read-write" in ran.output and ran.verify_passed


def test_remount_rw_refuses_what_is_not_a_writable_mount(tmp_dir: Path) -> None:
    ran = run("remount-rw", {"MOUNTPOINT": str(tmp_dir)})
    assert ran.exit_status == NO_TARGET and "not a mount point" in ran.output
    assert run("remount-rw", {"MOUNTPOINT": "/proc"}).exit_status == REFUSED
    for path in ("relative", "/a b", "/x;reboot", "/$(id)", "//x", "/x/", "/-o"):
        refused_by_schema("remount-rw", MOUNTPOINT=path)


def test_check_filesystem_reads_the_state_of_a_loop_mounted_ext4(tmp_dir: Path) -> None:
    if not (shutil.which("mkfs.ext4", path=SAFE_PATH) and shutil.which("tune2fs", path=SAFE_PATH)):
        pytest.skip("e2fsprogs is not installed here")
    image, mnt = tmp_dir / "fs.img", tmp_dir / "mnt"
    mnt.mkdir()
    with image.open("wb") as fh:
        fh.truncate(8 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    mounts = [("loop", str(image), str(mnt))]
    probe = subprocess.run([*_namespace_prefix(), "mount", "-o", "loop", str(image), str(mnt)],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"no loop mounts here: {probe.stderr[:200]}")
    ran = run("check-filesystem", {"MOUNTPOINT": str(mnt)}, mounts)
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert "Filesystem state:         clean" in ran.output and "(ext4)" in ran.output
    # the flag the kernel sets when it finds an error ("clean with errors")
    subprocess.run(["tune2fs", "-E", "force_fsck", str(image)], check=True,
                   capture_output=True, timeout=60)
    ran = run("check-filesystem", {"MOUNTPOINT": str(mnt)}, mounts)
    assert ran.exit_status == FAILED and "records errors" in ran.output, ran.output
    assert ran.verify_passed is False
    assert run("check-filesystem", {"MOUNTPOINT": str(tmp_dir)}).exit_status == NO_TARGET
    for path in ("relative", "/a b", "/x;reboot", "/$(id)"):
        refused_by_schema("check-filesystem", MOUNTPOINT=path)


def test_find_large_files_lists_the_big_ones_and_changes_nothing(tmp_dir: Path) -> None:
    big = tmp_dir / "sub" / "big.iso"
    big.parent.mkdir()
    big.write_bytes(b"\0" * (2 << 20))
    small = tmp_dir / "small.txt"
    small.write_text("x")
    before = sorted(p.name for p in tmp_dir.rglob("*"))
    ran = run("find-large-files", {"FOLDER": str(tmp_dir), "MIN_SIZE_MB": 1, "COUNT": 5})
    assert ran.exit_status == OK, ran.output
    assert ran.verify_passed, ran.verify_output
    assert str(big) in ran.output and str(small) not in ran.output
    assert sorted(p.name for p in tmp_dir.rglob("*")) == before
    assert run("find-large-files", {"FOLDER": str(tmp_dir / "none")}).exit_status == NO_TARGET
    for folder in ("/tmp/x; rm -rf /", "relative", "/-delete", "/tmp/`id`"):
        refused_by_schema("find-large-files", FOLDER=folder)
    refused_by_schema("find-large-files", COUNT=0)


# --- parameters reach the scripts inert ------------------------------------------------


def test_hostile_text_a_pattern_allows_reaches_the_script_as_data(tmp_dir: Path) -> None:
    """No schema allows a quote, $, backtick or ;, so hostile text is refused before the
    script: checked for every string parameter of every fix with an injection payload."""
    payloads = ["$(touch X)", "`touch X`", "; touch X", "a\nb", "a\x00b", '"; touch X; "']
    for m in manifests().values():
        for p in m.parameters:
            if p.type != "string":
                continue
            for payload in payloads:
                with pytest.raises(ParamError):
                    check_value(p, payload)
    assert not (tmp_dir / "X").exists()


def test_fixes_that_change_the_system_say_they_need_root(tmp_dir: Path) -> None:
    """Run as nobody (as an agent would under a hardened unit: docs/fixes.md), each
    fix that changes system state says so and exits 77 before it touches anything."""
    interface = next((p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo"), None)
    params: dict[str, dict[str, object]] = {
        "clean-package-cache": {}, "clear-proxy-settings": {}, "restart-agent": {},
        "restart-service": {"SERVICE": "cron"}, "set-dns-servers": {"SERVERS": "1.1.1.1"},
        "set-proxy": {"PROXY_URL": "http://proxy:3128"}, "sync-clock": {},
        "vacuum-journal": {}, "rotate-logs": {},
    }
    if shutil.which("logrotate", path=SAFE_PATH) is None or \
            not Path("/etc/logrotate.conf").is_file():
        del params["rotate-logs"]
    if interface:
        params["renew-dhcp-lease"] = {"INTERFACE": interface}
    if not any(shutil.which(t, path=SAFE_PATH) for t in ("apt-get", "dnf", "yum", "zypper",
                                                          "pacman", "apk")):
        del params["clean-package-cache"]  # 69 comes first: nothing to clean with
    if shutil.which("journalctl", path=SAFE_PATH) is None or not (
            Path("/var/log/journal").is_dir() or Path("/run/log/journal").is_dir()):
        del params["vacuum-journal"]
    if not _systemd_runs():
        del params["restart-agent"]  # 69 comes first: no systemd to restart it with
    # remount-rw asks only when there is a read-only mount to change: nobody cannot make one
    assert set(params) <= NEED_ROOT
    for fix_id, values in params.items():
        ran = run_script_as_nobody(fix_id, values)
        assert ran.exit_status == NEEDS_ROOT and "needs root" in ran.output, (fix_id, ran.output)


def run_script_as_nobody(fix_id: str, params: Mapping[str, object]) -> Ran:
    """The fix's script alone, as the user nobody, in the environment the agent gives
    it (the contract's variables only), from a folder nobody can read. Not through the
    runner: a checkout in a private folder (a CI clone under a 0700 temporary
    directory) cannot be read by nobody, nor its virtualenv's interpreter run."""
    if os.geteuid() != 0:
        pytest.skip("dropping to nobody needs root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop to nobody")
    m = manifests()[fix_id]
    interpreter = shutil.which(m.interpreter, path=SAFE_PATH)
    assert interpreter, f"{m.interpreter} is not on this machine"
    folder = Path(tempfile.mkdtemp(prefix="blfix-nobody-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        script = folder / "script"
        script.write_text(m.script)
        script.chmod(0o644)
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(folder),
               "TMPDIR": str(folder), "BACKLINE_FIX_ID": m.id,
               "BACKLINE_FIX_VERSION": str(m.version), "BACKLINE_FIX_DIR": str(folder),
               **validate_params(m, params)}
        done = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                               interpreter, str(script)], env=env, cwd=folder,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=min(m.timeout_s, 120))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return Ran(runner="setpriv", exit_status=done.returncode, timed_out=False,
               output=done.stdout.decode("utf-8", "replace"), verify_passed=None,
               verify_exit=None, verify_output="")


#: Values each script must refuse by itself (exit 64) when the schema is bypassed, as
#: when a relay or an agent bug let one through: defence in depth.
BYPASS = {
    "check-filesystem": {"MOUNTPOINT": "/tmp/a b"},
    "clean-package-cache": {"MANAGER": "apt; touch {x}"},
    "clean-rotated-logs": {"FOLDER": "/etc"},
    "clean-temp-files": {"FOLDER": "/etc"},
    "find-large-files": {"FOLDER": "$(touch {x})"},
    "flush-dns-cache": {"RESOLVER": "`touch {x}`"},
    "free-inodes": {"FOLDER": "/home"},
    "remount-rw": {"MOUNTPOINT": "/tmp/$(touch {x})"},
    "renew-dhcp-lease": {"INTERFACE": "-r"},
    "restart-agent": {"UNIT": "sshd.service"},
    "restart-service": {"SERVICE": "--force"},
    "rotate-logs": {"FORCE": "$(touch {x})"},
    "show-service-log": {"SERVICE": "-e."},
    "set-dns-servers": {"SERVERS": "1.1.1.1;touch {x}"},
    "set-proxy": {"PROXY_URL": 'http://p"; touch {x}; "'},
    "stop-runaway-process": {"NAME": "*"},
    "sync-clock": {"SERVER": "-b"},
    "vacuum-journal": {"MAX_SIZE_MB": "1$(touch {x})"},
}


def test_each_script_refuses_what_its_schema_would_have(tmp_dir: Path) -> None:
    marker = tmp_dir / "X"
    linux = {m.id for m in manifests().values() if "linux" in m.platforms}
    assert set(BYPASS) == linux - {"clear-proxy-settings"}  # it takes no parameter
    for fix_id, params in BYPASS.items():
        values = {k: v.format(x=marker) for k, v in params.items()}
        refused_by_schema(fix_id, **values)
        ran = run(fix_id, values, raw=True)
        assert ran.exit_status == REFUSED, (fix_id, ran.output)
        assert "refused" in ran.output, (fix_id, ran.output)
    assert not marker.exists(), "a parameter was executed"


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    _child(json.loads(sys.argv[2]))
