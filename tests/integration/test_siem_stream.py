"""SIEM streaming against a real relay (issue 14, acceptance 4): a syslog collector run
by the test holds every event of the trail exactly once, across a SIGKILL of the relay
in the middle of the stream; the HTTPS destination survives a collector that fails and
recovers, and refuses a collector whose certificate its CA did not issue."""

from __future__ import annotations

import json
import random
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx

from backline.relay.webhooks import verify
from tests.harness import RelayProcess, admin_api, audit_actions, wait_for
from tests.siem_receivers import HttpsReceiver, SyslogReceiver, make_ca, server_context

SECRET = "siem-secret-for-tests-0123"


def _relay(root: Path, template: Path, destinations: list[dict[str, Any]]) -> RelayProcess:
    relay = RelayProcess(root, template=template)
    lines = []
    for d in destinations:
        lines.append("[[siem.destinations]]")
        lines += [f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}"
                  for k, v in d.items()]
    (relay.data_dir / "relay.toml").write_text("\n".join(lines) + "\n")
    return relay


class EventMaker:
    """Makes audit events through the API as fast as the relay answers (a group each),
    in a thread, until stopped or until the relay is gone."""

    def __init__(self, relay: RelayProcess, prefix: str) -> None:
        self.prefix = prefix
        self.api = admin_api(relay)
        self.made = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.api.post("/api/v1/groups", json={"name": f"{self.prefix}-{self.made}"})
            except httpx.HTTPError:
                return
            if not r.is_success:
                return
            self.made += 1

    def __enter__(self) -> EventMaker:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.thread.join(30)
        self.api.close()


BACKLOG = 3000


def _backlog(data_dir: Path, count: int) -> None:
    """``count`` events in the trail before the relay starts: the streamer's backlog."""
    from backline.relay import config as relay_config
    from backline.relay.store import open_store

    store = open_store(relay_config.load(None, {"data_dir": data_dir}, environ={}))
    store.audit.append_many([("cli:test", "group.create", f"group:backlog-{i}",
                              {"address": "127.0.0.1"}) for i in range(count)])
    store.engine.dispose()


def _exactly_once(relay: RelayProcess, received: list[dict[str, Any]]) -> None:
    trail = audit_actions(relay)
    want = [(e["seq"], e["hash"]) for e in trail]
    got = [(m["seq"], m["hash"]) for m in received]
    dupes = len(got) - len(set(got))
    assert dupes == 0, f"{dupes} events arrived twice"
    assert sorted(got) == want, (f"missing {sorted(set(want) - set(got))[:5]}, "
                                 f"extra {sorted(set(got) - set(want))[:5]}")
    by_seq = {e["seq"]: e for e in trail}
    for m in received:
        assert m["event"] == by_seq[m["seq"]], "the message's JSON is the exported event"


def head_seq(relay: RelayProcess) -> int:
    """The trail's last seq, read from the database (quicker than ``audit export``)."""
    import sqlite3

    with sqlite3.connect(relay.data_dir / "relay.db") as db:
        return int(db.execute("SELECT max(seq) FROM audit_events").fetchone()[0])


def actions_in_trail(relay: RelayProcess) -> list[str]:
    import sqlite3

    with sqlite3.connect(relay.data_dir / "relay.db") as db:
        return [r[0] for r in db.execute("SELECT action FROM audit_events ORDER BY seq")]


def _caught_up(relay: RelayProcess, seqs: Any) -> bool:
    return bool(seqs()) and max(seqs()) >= head_seq(relay)


def cursor_seq(relay: RelayProcess, name: str) -> int:
    """What the destination's cursor file says was handed to the kernel last."""
    from backline.relay.siem.stream import CursorFile

    f = CursorFile(relay.data_dir / "siem" / f"{name}.cursor")
    try:
        found = f.read()
    finally:
        f.close()
    return found.seq if found else 0


def trail_seqs(relay: RelayProcess, upto: int) -> list[int]:
    import sqlite3

    with sqlite3.connect(relay.data_dir / "relay.db") as db:
        return [r[0] for r in db.execute(
            "SELECT seq FROM audit_events WHERE seq <= ? ORDER BY seq", (upto,))]


def test_syslog_stream_survives_kill9_exactly_once(tmp_path: Path,
                                                   initialised_relay: Path) -> None:
    """Four collectors on one relay, over TCP and over TLS (verified against the test's
    CA), each read at full speed or slowly, all through the same SIEM stream, SIGKILL
    and restart.

    The slow ones are the hostile case: at the kill, the kernels hold events the relay
    counted as sent and the collector has not read. The kernel still delivers them
    only if it closes the killed relay's connection with a FIN; a connection closed
    with bytes the relay had not read (a TLS 1.3 server's session tickets) is reset
    instead, and a reset throws away both kernels' buffers (the relay left those
    tickets unread until 2026-12: its cursor said 3,429 events sent, the slow TLS
    collector received 695)."""
    ca_file, cert, key = make_ca(tmp_path / "pki", "collector")
    tcp, tls = SyslogReceiver(), SyslogReceiver(server_context(cert, key))
    slow_tcp = SyslogReceiver(slow=True)
    slow_tls = SyslogReceiver(server_context(cert, key), slow=True)
    collectors = {"tcp": tcp, "tls": tls, "slow-tcp": slow_tcp, "slow-tls": slow_tls}
    relay = _relay(tmp_path, initialised_relay, [
        {"name": "tcp", "url": tcp.url, "batch_size": 4},
        {"name": "tls", "url": tls.url, "batch_size": 3, "ca_file": str(ca_file)},
        {"name": "slow-tcp", "url": slow_tcp.url, "batch_size": 100, "timeout_s": 30},
        {"name": "slow-tls", "url": slow_tls.url, "batch_size": 100, "timeout_s": 30,
         "ca_file": str(ca_file)},
    ])
    _backlog(relay.data_dir, BACKLOG)
    # Killed at a random point of the backlog's delivery, while the streamer is busy
    # (not waiting for the next event), and while the API makes events too.
    kill_at = random.randint(BACKLOG // 6, BACKLOG * 5 // 6)
    relay.start()
    try:
        with EventMaker(relay, "before") as maker:
            wait_for(lambda: len(tcp.messages) >= kill_at, 60,
                     "the streams to be under way", every=0.01)
            relay.kill9()
        killed_at = {name: max(rx.seqs(), default=0) for name, rx in collectors.items()}
        cursors = {name: cursor_seq(relay, name) for name in collectors}
        for rx in (slow_tcp, slow_tls):
            rx.hurry()
        # What the kernels still had to deliver: to the end of each killed connection.
        wait_for(lambda: all(rx.ended >= rx.connections for rx in collectors.values()), 30,
                 "the killed connections to end")
        for name, rx in collectors.items():
            seqs = rx.seqs()
            ahead = head_seq(relay) - max(seqs, default=0)
            print(f"{name}: killed (aim {kill_at}) holding up to #{killed_at[name]}, the "
                  f"cursor at #{cursors[name]}; {len(seqs)} messages after the kernel's "
                  f"last deliveries ({rx.partial} cut frames); the trail {ahead} ahead")
            # The kill came mid-stream for each: each had taken some, had more to take
            # (a slow one: the relay had handed its kernel events the collector had not
            # read; on loopback the kernel takes megabytes, up to the trail's head).
            assert killed_at[name] > 0, f"{name} had nothing when the relay was killed"
            if name.startswith("slow-"):
                assert cursors[name] - killed_at[name] >= 20, (
                    f"{name} was not behind the cursor at the kill: {killed_at[name]} of "
                    f"{cursors[name]}")
            else:
                assert ahead > 0, f"{name} had caught up before the kill: not mid-stream"
            # Everything the cursor counts as sent arrived, the kill notwithstanding.
            missing = sorted(set(trail_seqs(relay, cursors[name])) - set(seqs))
            assert not missing, (f"{name}: {len(missing)} events the cursor counted as "
                                 f"sent never arrived (#{missing[0]}..#{missing[-1]})")
        relay.start()
        with EventMaker(relay, "after") as maker:
            wait_for(lambda: maker.made >= 10, 60, "events after the restart")
        for name, rx in collectors.items():
            wait_for(lambda rx=rx: _caught_up(relay, rx.seqs), 60,
                     f"the {name} collector to catch up")
            assert rx.connections >= 2, name
            assert not rx.bad, rx.bad[:3]
            _exactly_once(relay, rx.messages)
            msgids = {m["msgid"] for m in rx.messages}
            assert {"relay.start", "group.create", "auth.login"} <= msgids
    finally:
        relay.stop()
        for rx in collectors.values():
            rx.close()


def test_https_destination_retries_and_recovers(tmp_path: Path,
                                                initialised_relay: Path) -> None:
    ca_file, cert, key = make_ca(tmp_path / "pki", "collector")
    _, other_cert, other_key = make_ca(tmp_path / "pki", "stranger")
    good = HttpsReceiver(cert, key, statuses=[503, 503])
    # Hostile: a collector with a certificate of a CA the destination does not trust.
    stranger = HttpsReceiver(other_cert, other_key, statuses=[])
    url_with_credentials = good.url.replace("https://", "https://user:hunter2pass@")
    relay = _relay(tmp_path, initialised_relay, [
        {"name": "https-good", "url": url_with_credentials, "ca_file": str(ca_file),
         "secret": SECRET, "batch_size": 7, "retry_max_s": 2},
        {"name": "https-stranger", "url": stranger.url, "ca_file": str(ca_file),
         "secret": SECRET, "retry_max_s": 2},
    ]).start()
    try:
        api = admin_api(relay)
        for i in range(12):
            assert api.post("/api/v1/groups", json={"name": f"https-{i}"}).is_success
        api.close()
        wait_for(lambda: "siem.recovered" in actions_in_trail(relay), 60,
                 "the destination to recover")
        wait_for(lambda: good.events() and good.events()[-1]["seq"] >= head_seq(relay), 60,
                 "the collector to catch up")
        trail = audit_actions(relay)
        got = [(e["seq"], e["hash"]) for e in good.events()]
        assert len(got) == len(set(got)), "an event arrived twice"
        assert got == [(e["seq"], e["hash"]) for e in trail][:len(got)]
        assert got[-1][0] == trail[-1]["seq"]
        for r in good.requests:
            assert r["headers"]["Authorization"] == "Basic dXNlcjpodW50ZXIycGFzcw=="
            assert verify(SECRET, r["body"], r["headers"]["X-Backline-Signature"])
            assert r["headers"]["Content-Type"] == "application/x-ndjson"
            assert len(r["body"].decode().splitlines()) <= 7
        first, retry = good.requests[0], good.requests[1]
        assert first["status"] == 503 and first["body"] == retry["body"]
        assert first["headers"]["Idempotency-Key"] == retry["headers"]["Idempotency-Key"]
        keys = [r["headers"]["Idempotency-Key"] for r in good.accepted]
        assert len(keys) == len(set(keys))
        # Aggregated, not one row per retry: one failure row for the good destination's
        # outage (two attempts failed), and the stranger's (it never took anything).
        failed = [e for e in trail if e["action"] == "siem.failed"]
        good_failed = [e for e in failed if e["target"] == "siem:https-good"]
        assert len(good_failed) == 1, good_failed
        assert good_failed[0]["details"]["destination"] == good.url.rsplit("/siem", 1)[0]
        stranger_failed = [e for e in failed if e["target"] == "siem:https-stranger"]
        assert stranger_failed and "CERTIFICATE_VERIFY_FAILED" in (
            stranger_failed[0]["details"]["reason"])
        assert not stranger.requests
        assert "hunter2pass" not in relay.log() and SECRET not in relay.log()
        assert "hunter2pass" not in relay.cli("config", "show").stdout
    finally:
        relay.stop()
        good.close()
        stranger.close()


def _cursor_relay(root: Path, template: Path, rx: SyslogReceiver) -> RelayProcess:
    relay = _relay(root, template, [{"name": "tcp", "url": rx.url, "batch_size": 50}])
    _backlog(relay.data_dir, 40)
    return relay


def test_cursor_past_the_trail_is_set_aside(tmp_path: Path, initialised_relay: Path) -> None:
    """As after restoring the database from a backup behind the cursor: the table's
    copy is the backup's (the trail confirms it), the file's names #500, past the
    head. Trusting the file would skip every event up to #500, new ones included."""
    from backline.relay import config as relay_config
    from backline.relay.siem.stream import Cursor, CursorFile, trail_hash, write_db_cursor
    from backline.relay.store import open_store

    tcp = SyslogReceiver()
    relay = _cursor_relay(tmp_path, initialised_relay, tcp)
    store = open_store(relay_config.load(None, {"data_dir": relay.data_dir}, environ={}))
    confirmed = trail_hash(store.engine, 10)
    assert confirmed
    write_db_cursor(store.engine, "tcp", Cursor(10, confirmed))
    store.engine.dispose()
    cursor_file = CursorFile(relay.data_dir / "siem" / "tcp.cursor")
    cursor_file.write(500, "ab" * 32)
    cursor_file.close()
    relay.start()
    try:
        wait_for(lambda: "siem.cursor_mismatch" in actions_in_trail(relay), 30,
                 "the mismatch to be audited")
        wait_for(lambda: _caught_up(relay, tcp.seqs), 60, "the collector to catch up")
        seqs = tcp.seqs()
        assert seqs == list(range(11, max(seqs) + 1)), "not resumed after #10, once each"
        trail = audit_actions(relay)
        [mismatch] = [e for e in trail if e["action"] == "siem.cursor_mismatch"]
        d = mismatch["details"]
        assert mismatch["target"] == "siem:tcp"
        assert (d["copy"], d["cursor_seq"], d["trail_hash"], d["resumed_after"]) == (
            "file", 500, "", 10)
        assert d["head"] < 500
        assert "the file cursor says #500" in relay.log()
    finally:
        relay.stop()
        tcp.close()


def test_cursor_whose_hash_the_trail_denies_is_set_aside(tmp_path: Path,
                                                         initialised_relay: Path) -> None:
    """The other case, on the streamer's own code (no process): the table's copy names
    #30 with a hash the trail does not have there; the file's, #12, is confirmed."""
    from types import SimpleNamespace

    from backline.relay import config as relay_config
    from backline.relay.config import SiemDestination
    from backline.relay.datadir import DataDir
    from backline.relay.siem.stream import (
        Cursor,
        CursorFile,
        DestinationStream,
        read_db_cursor,
        trail_hash,
        write_db_cursor,
    )
    from backline.relay.store import open_store

    relay = RelayProcess(tmp_path, template=initialised_relay)
    _backlog(relay.data_dir, 40)
    config = relay_config.load(None, {"data_dir": relay.data_dir}, environ={})
    store = open_store(config)
    try:
        write_db_cursor(store.engine, "tcp", Cursor(30, "cd" * 32))
        twelve = trail_hash(store.engine, 12)
        assert twelve
        fake = SimpleNamespace(engine=store.engine, config=config,
                               datadir=DataDir(relay.data_dir))
        stream = DestinationStream(fake, SiemDestination(  # type: ignore[arg-type]
            name="tcp", url="syslog+tcp://127.0.0.1:9"))
        stream.cursor_file.write(12, twelve)
        cursor, mismatches = stream.load_cursor()
        assert cursor == Cursor(12, twelve)
        assert [(m["copy"], m["cursor_seq"], m["resumed_after"]) for m in mismatches] == [
            ("table", 30, 12)]
        assert mismatches[0]["trail_hash"] == trail_hash(store.engine, 30)
        # Both copies now say #12: the next start meets no disagreement.
        assert read_db_cursor(store.engine, "tcp") == Cursor(12, twelve)
        assert CursorFile(relay.data_dir / "siem" / "tcp.cursor").read() == Cursor(12, twelve)
        assert stream.load_cursor() == (Cursor(12, twelve), [])
        stream.cursor_file.close()
    finally:
        store.engine.dispose()


class GarbageTls:
    """A TLS server that answers anything with a line that is not HTTP."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = server_context(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(10)
                    tls.recv(65536)
                    tls.sendall(b"SPAM SPAM SPAM\r\n\r\n")
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failing_destinations_never_show_credentials_or_secrets(
        tmp_path: Path, initialised_relay: Path) -> None:
    """Each way a destination fails (refused, a certificate the CA did not issue, an
    answer that is not HTTP), for syslog and HTTPS: the log and the trail name the
    destination as scheme://host:port, never the URL's credentials, its path or query
    (a token there), or the signing secret. And a destination that answers garbage
    fails like any other (retried, audited), rather than ending its stream."""
    ca_file, cert, key = make_ca(tmp_path / "pki", "collector")
    _, other_cert, other_key = make_ca(tmp_path / "pki", "stranger")
    stranger_syslog = SyslogReceiver(server_context(other_cert, other_key))
    stranger_https = HttpsReceiver(other_cert, other_key, statuses=[])
    garbage = GarbageTls(cert, key)
    secret_bits = ("hunter2pass", "t0kenInTheQuery", SECRET, "/siem", "user:")
    creds = "https://user:hunter2pass@127.0.0.1"
    query = "/siem/ingest?token=t0kenInTheQuery"
    refused = _closed_port()
    dests = {
        "https-refused": f"{creds}:{refused}{query}",
        "https-stranger": f"{creds}:{stranger_https.url.rsplit(':', 1)[1].split('/')[0]}"
                          f"{query}",
        "https-garbage": f"{creds}:{garbage.port}{query}",
        "tcp-refused": f"syslog+tcp://127.0.0.1:{refused}",
        "tls-stranger": stranger_syslog.url,
    }
    relay = _relay(tmp_path, initialised_relay, [
        {"name": name, "url": url, "ca_file": str(ca_file), "retry_max_s": 1,
         **({"secret": SECRET} if url.startswith("https") else {})}
        for name, url in dests.items()]).start()
    try:
        def failed() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {}
            for e in audit_actions(relay):
                if e["action"] == "siem.failed":
                    out.setdefault(e["target"].removeprefix("siem:"), []).append(e)
            return out

        wait_for(lambda: set(failed()) == set(dests), 60, "every destination to fail")
        # Still retrying (not a dead stream): a second attempt of the garbage one.
        wait_for(lambda: relay.log().count("siem https-garbage (") >= 3, 30,
                 "the garbage destination to be retried")
        for name, events in failed().items():
            d = events[0]["details"]
            port = dests[name].rsplit(":", 1)[1].split("/")[0]
            assert d["destination"] == f"{dests[name].split('://')[0]}://127.0.0.1:{port}"
            for bit in secret_bits:
                assert bit not in json.dumps(d), (name, bit, d)
        assert "CERTIFICATE_VERIFY_FAILED" in failed()["https-stranger"][0]["details"][
            "reason"]
        log_text = relay.log()
        for bit in secret_bits[:3]:
            assert bit not in log_text, bit
        for line in log_text.splitlines():
            if "siem " in line:
                assert "/siem" not in line and "user:" not in line, line
        assert "Traceback" not in log_text
        assert not stranger_https.requests
    finally:
        relay.stop()
        stranger_syslog.close()
        stranger_https.close()
        garbage.close()
