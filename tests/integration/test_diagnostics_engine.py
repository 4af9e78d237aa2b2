"""The diagnostics engine on this machine: real collectors, concurrency and timeouts,
streaming, the JSON lines of the SSH subsystem, the config file, the scheduled health
check, and ``backline-agent diagnose`` run as a customer would."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from backline.agent.diagnostics import engine, health, netcheck, runner
from backline.agent.diagnostics.collectors import ClockReference, Collector, Context
from backline.agent.diagnostics.config import (
    ENV_CONFIG,
    ConfigError,
    DiagnosticsConfig,
    from_tables,
    load_config,
    parse_endpoint,
)
from backline.common import protocol
from backline.common.diagnostics.schema import (
    CHEAP_SECTIONS,
    SECTIONS,
    STATUSES,
    field_problems,
    to_json,
)
from backline.common.tlspin import spki_pin_der
from tests.harness import AGENT, free_port, staged_diagnostics

#: Thresholds that follow this machine's load, not what a test stages: out of reach, so
#: a test that expects an exact set of findings does not fail when CI's two cores are
#: busy (cpu-saturated appeared under a parallel load).
MACHINE_LOAD_QUIET: dict[str, float] = {
    "cpu_pct": 101, "load_per_cpu": 1e6, "iowait_pct": 101, "memory_used_pct": 101,
    "memory_pressure_avg60": 101, "swap_used_pct": 101, "process_mem_pct": 101,
    "zombie_processes": 1e6, "log_errors": 1e9}


def staged_config(**thresholds: float) -> DiagnosticsConfig:
    return from_tables({"diagnostics": {"dns_names": ["does-not-exist.invalid", "localhost"],
                                        "endpoints": [f"127.0.0.1:{free_port()}"]},
                        "thresholds": {"disk_used_pct": 1, "disk_critical_pct": 100,
                                       **thresholds}})


def test_real_collectors_follow_the_catalogue() -> None:
    report = asyncio.run(engine.collect(staged_config()))
    assert [s.name for s in report.sections] == list(SECTIONS)
    for section in report.sections:
        assert section.status in STATUSES
        assert field_problems(section) == [], section.name
        if section.status == "ok":
            assert section.summary
        else:
            assert section.error
    found = {f.rule_id for f in report.findings}
    assert {"dns-lookup-failed", "endpoint-unreachable", "disk-almost-full"} <= found
    lookups = {x["name"]: x for x in report.section("dns").data["lookups"]}  # type: ignore[union-attr]
    assert lookups["localhost"]["ok"] and not lookups["does-not-exist.invalid"]["ok"]
    check = report.section("endpoints").data["checks"][0]  # type: ignore[union-attr]
    assert check["error"] == "connection refused"
    assert report.duration_ms < 3000


async def _raises(ctx: Context) -> tuple[dict[str, Any], str]:
    raise RuntimeError("the collector broke")


async def _hangs(ctx: Context) -> tuple[dict[str, Any], str]:
    await asyncio.sleep(60)
    raise AssertionError("not reached")


def _blocks_thread() -> tuple[dict[str, Any], str]:
    time.sleep(3)  # a stuck syscall, say; the thread is abandoned, the report is not
    return {}, "late"


async def _blocks(ctx: Context) -> tuple[dict[str, Any], str]:
    return await runner.in_thread(_blocks_thread, timeout=60)


async def _quick(ctx: Context) -> tuple[dict[str, Any], str]:
    return {"count": 0, "zombies": 0, "top_cpu": [], "top_memory": []}, "quick"


def test_failing_and_slow_collectors_still_give_a_report() -> None:
    config = DiagnosticsConfig(timeout_s=0.3)
    collectors = [Collector("cpu", _raises), Collector("memory", _hangs),
                  Collector("disk", _blocks), Collector("processes", _quick)]
    started = time.perf_counter()
    report = asyncio.run(engine.collect(config, collectors=collectors))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, "a collector's timeout must bound it"
    by_name = {s.name: s for s in report.sections}
    assert by_name["cpu"].status == "error"
    assert "RuntimeError: the collector broke" in (by_name["cpu"].error or "")
    assert by_name["memory"].status == "error" and "timed out" in (by_name["memory"].error or "")
    assert by_name["disk"].status == "error" and "timed out" in (by_name["disk"].error or "")
    assert by_name["processes"].status == "ok"
    finding = next(f for f in report.findings if f.rule_id == "diagnostics-incomplete")
    assert finding.summary == "failed or timed out: cpu, memory, disk"
    assert json.loads(to_json(report))["sections"][0]["status"] == "error"


def test_sections_stream_as_each_finishes() -> None:
    async def slow(ctx: Context) -> tuple[dict[str, Any], str]:
        await asyncio.sleep(0.6)
        return {}, "slow"

    async def run() -> list[tuple[str, float]]:
        started = time.perf_counter()
        seen = []
        collectors = [Collector("system", slow), Collector("processes", _quick)]
        async for section in engine.run_diagnostics(DiagnosticsConfig(),
                                                    collectors=collectors):
            seen.append((section.name, time.perf_counter() - started))
        return seen

    seen = asyncio.run(run())
    assert [name for name, _ in seen] == ["processes", "system"]
    assert seen[0][1] < 0.3 and seen[1][1] >= 0.6


def test_disabled_collectors_are_unavailable() -> None:
    config = from_tables({"diagnostics": {"disabled": ["processes"]}})
    report = asyncio.run(engine.collect(config, only={"processes", "memory"}))
    assert report.section("processes").status == "unavailable"  # type: ignore[union-attr]
    assert report.section("memory").status == "ok"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="unknown collectors"):
        from_tables({"diagnostics": {"disabled": ["keylogger"]}})


class FakeProcess:
    """What the SSH subsystem handler sees of an asyncssh server process."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.status: int | None = None
        self.stdout = self

    def write(self, data: str) -> None:
        self.out.append(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def exit(self, status: int) -> None:
        self.status = status


def test_subsystem_streams_json_lines_that_reassemble() -> None:
    process = FakeProcess()
    asyncio.run(engine.serve_subsystem(process, staged_config()))
    assert process.status == 0
    kinds = [json.loads(line)["type"] for line in process.out]
    assert kinds[0] == "begin" and kinds[-1] == "end"
    assert kinds.count("section") == len(SECTIONS)
    assert all(line.endswith("\n") and "\n" not in line[:-1] for line in process.out)
    report = engine.report_from_lines(process.out)
    assert {s.name for s in report.sections} == set(SECTIONS)
    assert "endpoint-unreachable" in {f.rule_id for f in report.findings}


def test_clock_offset_from_a_relay_time() -> None:
    reference = ClockReference.now(time.time() + 120)
    report = asyncio.run(engine.collect(DiagnosticsConfig(), only={"clock"}, clock=reference))
    clock = report.section("clock").data  # type: ignore[union-attr]
    assert clock["known"] and clock["source"] == "control"
    assert 119 < clock["offset_s"] < 121
    assert [f.rule_id for f in report.findings] == ["clock-skew"]
    unknown = asyncio.run(engine.collect(DiagnosticsConfig(), only={"clock"}))
    if netcheck.relay_clock() is None:
        assert unknown.section("clock").data["known"] is False  # type: ignore[union-attr]


def _self_signed(tmp_path: Path, days: int) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert.public_bytes(serialization.Encoding.DER)


def test_https_endpoint_certificate_facts(tmp_path: Path) -> None:
    import hashlib

    cert_path, key_path, der = _self_signed(tmp_path, days=5)

    async def run() -> list[dict[str, Any]]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert_path, key_path)

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            plain = await netcheck.check_endpoint(
                parse_endpoint(f"https://localhost:{port}/status"), 3)
            pinned = await netcheck.check_endpoint(parse_endpoint(
                f"https://127.0.0.1:{port}/healthz", pin=hashlib.sha256(der).hexdigest()), 3)
            wrong = await netcheck.check_endpoint(parse_endpoint(
                f"https://127.0.0.1:{port}/healthz", pin="ab" * 32), 3)
            # The key's pin (what agents hold since SPKI pins) is checked the same way.
            by_key = await netcheck.check_endpoint(parse_endpoint(
                f"https://127.0.0.1:{port}/healthz", pin=spki_pin_der(der)), 3)
            other_key = await netcheck.check_endpoint(parse_endpoint(
                f"https://127.0.0.1:{port}/healthz", pin="sha256//" + "A" * 43 + "="), 3)
        assert by_key["pinned"] is True and other_key["pinned"] is False
        return [plain, pinned, wrong]

    plain, pinned, wrong = asyncio.run(run())
    assert plain["reachable"] and plain["tls_verified"] is False
    assert "self-signed" in plain["tls_error"] or "self signed" in plain["tls_error"]
    assert 4 < plain["cert_days_left"] <= 5 and plain["cert_subject"] == "CN=localhost"
    assert plain["http_status"] == 503
    assert pinned["pinned"] is True and pinned["tls_verified"] is None
    assert pinned["http_status"] == 503
    assert wrong["pinned"] is False and wrong["http_status"] is None


def test_config_file_sources_and_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "agent.toml").write_text(
        '[diagnostics]\ndns_names = ["a.example"]\nendpoints = ["[::1]:443", '
        '"https://x.example/p?q=1"]\n[thresholds]\ndisk_used_pct = 70\n'
        '[policy]\nshell = "ask"\n')
    cfg = load_config(state, environ={})
    assert cfg.dns_names == ["a.example"] and cfg.thresholds["disk_used_pct"] == 70
    assert parse_endpoint("[::1]:443").host == "::1"
    assert parse_endpoint("https://x.example/p?q=1").path == "/p?q=1"
    other = tmp_path / "other.toml"
    other.write_text("[thresholds]\nmemory_used_pct = 50\n")
    cfg = load_config(state, environ={ENV_CONFIG: str(other)})
    assert cfg.thresholds["memory_used_pct"] == 50 and cfg.dns_names == []
    assert load_config(tmp_path / "empty", environ={}).source == "defaults"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(state, explicit=tmp_path / "missing.toml")
    for bad, complaint in [("[thresholds]\ndisk_used_pc = 9\n", "unknown threshold"),
                           ("[thresholds]\ndisk_used_pct = '9'\n", "must be a number"),
                           ("[diagnostics]\nendpoints = ['nope']\n", "host:port"),
                           ("[diagnostics]\nendpoints = ['ftp://x']\n", "http"),
                           ("[diagnostics]\ntimeout_s = -1\n", "seconds"),
                           ("[diagnostics]\ndns_name = []\n", "unknown setting"),
                           ("[diagnostics\n", "other.toml")]:
        other.write_text(bad)
        with pytest.raises(ConfigError, match=complaint):
            load_config(state, explicit=other)


def test_commands_are_bounded_and_killed_on_timeout() -> None:
    async def run() -> None:
        big = await runner.run_command(
            [sys.executable, "-c", "print('x' * 1_000_000)"], 10, limit=1000)
        assert big.returncode == 0 and len(big.stdout) == 1000
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await runner.run_command([sys.executable, "-c", "import time; time.sleep(30)"],
                                     0.3)
        assert time.perf_counter() - started < 3

    asyncio.run(run())


def test_a_stuck_call_is_not_piled_on() -> None:
    release = threading.Event()

    async def run() -> None:
        with pytest.raises(TimeoutError):
            await runner.in_thread(release.wait, timeout=0.1, key="stuck-mount")
        with pytest.raises(runner.StillStuck):
            await runner.in_thread(release.wait, timeout=0.1, key="stuck-mount")
        release.set()
        await asyncio.sleep(0.1)
        assert await runner.in_thread(lambda: 7, timeout=1, key="stuck-mount") == 7

    asyncio.run(run())


def test_health_loop_sends_alerts_when_they_change(tmp_path: Path) -> None:
    config_file = tmp_path / "agent.toml"
    quiet = "".join(f"{k} = {v}\n" for k, v in MACHINE_LOAD_QUIET.items())
    config_file.write_text("[diagnostics]\nhealth_interval_s = 0.3\n"
                           "[thresholds]\ndisk_used_pct = 1\ndisk_critical_pct = 100\n"
                           + quiet)
    sent: list[dict[str, Any]] = []
    arrived: list[asyncio.Event] = []

    async def send(frame: str) -> None:
        sent.append(protocol.decode(frame))
        arrived[len(sent) - 1].set()

    async def run() -> None:
        arrived.extend(asyncio.Event() for _ in range(10))
        task = asyncio.create_task(health.health_loop(send, tmp_path, relay_time=time.time()))
        await asyncio.wait_for(arrived[0].wait(), 10)
        await asyncio.sleep(1.0)  # a few more checks: same alerts, nothing more sent
        assert len(sent) == 1
        config_file.write_text("[diagnostics]\nhealth_interval_s = 0.3\n[thresholds]\n"
                               + quiet)
        await asyncio.wait_for(arrived[1].wait(), 10)
        task.cancel()

    asyncio.run(run())
    assert [a["id"] for a in sent[0]["alerts"]] == ["disk-almost-full"]
    assert sent[0]["alerts"][0]["severity"] == "warning"
    assert sent[1]["alerts"] == []


def test_health_check_reads_only_cheap_sections() -> None:
    report = asyncio.run(engine.collect(staged_config(**MACHINE_LOAD_QUIET),
                                        only=CHEAP_SECTIONS,
                                        network=False, cheap_rules=True))
    assert {s.name for s in report.sections} <= CHEAP_SECTIONS
    assert {f.rule_id for f in report.findings} == {"disk-almost-full"}


def _diagnose(*args: str, env: dict[str, str] | None = None, state: Path
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "--state-dir", str(state), "diagnose", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_diagnose_command_finds_staged_problems(tmp_path: Path) -> None:
    closed = free_port()
    config = tmp_path / "staged.toml"
    config.write_text(staged_diagnostics(closed))
    started = time.perf_counter()
    result = _diagnose("--json", env={ENV_CONFIG: str(config)}, state=tmp_path / "state")
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema_version"] == 1 and report["schema"] == "backline.diagnostics/1"
    found = {f["rule_id"] for f in report["findings"]}
    assert {"dns-lookup-failed", "endpoint-unreachable", "disk-almost-full"} <= found, found
    assert report["thresholds"]["disk_used_pct"] == 1
    assert elapsed < 10

    text = _diagnose("--config", str(config), state=tmp_path / "state")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert out.index("CRITICAL") < out.index("WARNING") < out.index("Sections")
    assert "[endpoint-unreachable]" in out and f"127.0.0.1:{closed}: connection refused" in out
    assert "does-not-exist.invalid does not resolve" in out
    assert "\x1b" not in out

    config.write_text("[thresholds]\nnope = 1\n")
    bad = _diagnose("--config", str(config), state=tmp_path / "state")
    assert bad.returncode == 2 and "unknown threshold" in bad.stderr


@pytest.mark.parametrize("lines", [
    ["[1]"], ['"text"'], ["not json"], [],
    ['{"type":"begin","schema_version":1}', '{"type":"section","section":5}'],
    ['{"type":"begin","schema_version":99}'],
])
def test_report_from_lines_refuses_what_is_not_a_run(lines: list[str]) -> None:
    """The relay reassembles what an agent sent: garbage is a clean error, not a crash."""
    with pytest.raises(ValueError):  # ReportError is a ValueError
        engine.report_from_lines(lines)


def test_report_from_lines_puts_sections_in_display_order() -> None:
    process = FakeProcess()
    asyncio.run(engine.serve_subsystem(process, staged_config()))
    report = engine.report_from_lines(process.out)
    assert [s.name for s in report.sections] == list(SECTIONS)
