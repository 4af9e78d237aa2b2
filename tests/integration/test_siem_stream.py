"""SIEM streaming against a real relay (issue 14, acceptance 4): a syslog collector run
by the test holds every event of the trail exactly once, across a SIGKILL of the relay
in the middle of the stream; the HTTPS destination survives a collector that fails and
recovers, and refuses a collector whose certificate its CA did not issue."""

from __future__ import annotations

import random
import threading
import time
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


def test_syslog_stream_survives_kill9_exactly_once(tmp_path: Path,
                                                   initialised_relay: Path) -> None:
    """Two collectors on one relay, one over TCP and one over TLS (verified against the
    test's CA), both through the same SIGKILL and restart."""
    ca_file, cert, key = make_ca(tmp_path / "pki", "collector")
    tcp, tls = SyslogReceiver(), SyslogReceiver(server_context(cert, key))
    relay = _relay(tmp_path, initialised_relay, [
        {"name": "tcp", "url": tcp.url, "batch_size": 4},
        {"name": "tls", "url": tls.url, "batch_size": 3, "ca_file": str(ca_file)},
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
        killed_at = {rx.url: len(rx.messages) for rx in (tcp, tls)}
        time.sleep(0.5)  # what the kernel still had to deliver
        for rx in (tcp, tls):
            print(f"{rx.url}: killed (aim {kill_at}) with {killed_at[rx.url]} messages "
                  "received "
                  f"({len(rx.messages)} after the kernel's last deliveries, {rx.partial} "
                  f"cut frames); the trail was {head_seq(relay) - max(rx.seqs())} ahead")
        relay.start()
        with EventMaker(relay, "after") as maker:
            wait_for(lambda: maker.made >= 10, 60, "events after the restart")
        for rx in (tcp, tls):
            wait_for(lambda rx=rx: _caught_up(relay, rx.seqs), 60, "the collector to catch up")
            assert rx.connections >= 2 and killed_at[rx.url] < len(rx.messages)
            assert not rx.bad, rx.bad[:3]
            _exactly_once(relay, rx.messages)
            msgids = {m["msgid"] for m in rx.messages}
            assert {"relay.start", "group.create", "auth.login"} <= msgids
    finally:
        relay.stop()
        tcp.close()
        tls.close()


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
