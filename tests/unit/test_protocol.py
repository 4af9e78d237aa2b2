"""Property-based tests of the sans-I/O control protocol: whatever arrives, the
result is a valid message or a ProtocolError, never another exception."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.common import keys, protocol
from backline.common.protocol import MAX_FRAME_BYTES, ProtocolError

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5),
                           max_leaves=20)


def decode_or_error(frame: Any) -> dict[str, Any] | None:
    try:
        return protocol.decode(frame)
    except ProtocolError:
        return None


@settings(max_examples=500)
@given(st.binary(max_size=2048))
def test_garbage_bytes_give_protocol_errors(frame: bytes) -> None:
    decode_or_error(frame)


@settings(max_examples=500)
@given(st.text(max_size=2048))
def test_garbage_text_gives_protocol_errors(frame: str) -> None:
    decode_or_error(frame)


@settings(max_examples=500)
@given(st.dictionaries(st.sampled_from(["v", "type", "nonce", "agent_id", "signature",
                                        "version", "stats", "alerts", "id", "token",
                                        "public_key", "hostname", "extra"]),
                       json_values, max_size=8),
       st.sampled_from(sorted(protocol.SCHEMAS)))
def test_wrongly_typed_messages_are_refused_cleanly(fields: dict[str, Any], kind: str) -> None:
    msg = {"v": 1, "type": kind, **{k: v for k, v in fields.items() if k not in ("v", "type")}}
    result = decode_or_error(json.dumps(msg))
    if result is not None:  # whatever passed must really satisfy the schema
        protocol.validate(result)


def _valid_frames() -> list[str]:
    key = keys.generate()
    challenge = protocol.RelayHandshake("ab" * 32).challenge(1.0)
    return [
        challenge,
        protocol.answer_challenge(challenge, "ag_" + "x" * 20, key, "ab" * 32, "1.0"),
        protocol.encode("hb", stats={"cpu_pct": 1.5}),
        protocol.encode("health", alerts=[{"id": "disk", "severity": "warning",
                                           "message": "disk 91% full"}]),
        protocol.encode("welcome", agent_id="ag_x", heartbeat_s=30, relay_time=1.0),
        *_session_frames(),
    ]


SID = "ss_" + "s" * 20


def _session_frames() -> list[str]:
    return [
        protocol.encode("dial", session_id=SID, url=f"wss://relay:8443/agent/tunnel/{SID}",
                        token="t" * 43, technician="alice", reason="printer", ticket="T-1",
                        capabilities=["info", "diagnostics"]),
        protocol.encode("session_end", session_id=SID, reason="technician"),
        protocol.encode("dial_failed", session_id=SID, reason="policy file unusable"),
        protocol.encode("tunnel", token="t" * 43),
        protocol.encode("join", code="123456789", public_key="A" * 43, hostname="pc",
                        os="Linux", os_version="6", arch="x86_64", version="0.1.0"),
        protocol.encode("join_offer", session_id=SID, principal="at_" + "p" * 20,
                        technician="alice", reason="", ticket="", ca_public_key="ssh-ed25519 AAAA",
                        capabilities=["info"]),
        protocol.encode("consent", answer="yes"),
    ]


@settings(max_examples=300)
@given(st.sampled_from(_valid_frames()), st.integers(min_value=0, max_value=400))
def test_truncated_frames_are_refused_cleanly(frame: str, cut: int) -> None:
    truncated = frame[: max(0, len(frame) - 1 - cut)]
    assert decode_or_error(truncated) is None


@settings(max_examples=200)
@given(st.sampled_from(_valid_frames()), st.binary(min_size=1, max_size=8),
       st.integers(min_value=0))
def test_corrupted_frames_never_raise_anything_else(frame: str, noise: bytes, at: int) -> None:
    raw = frame.encode()
    i = at % len(raw)
    decode_or_error(raw[:i] + noise + raw[i + len(noise):])


def test_valid_frames_round_trip() -> None:
    for frame in _valid_frames():
        assert protocol.decode(frame)["v"] == 1


@pytest.mark.parametrize("frame", [
    "x" * (MAX_FRAME_BYTES + 1),
    json.dumps({"v": 1, "type": "hb", "stats": {"a": 1}}) + " " * MAX_FRAME_BYTES,
    b"\xff" * (MAX_FRAME_BYTES + 10),
])
def test_oversized_frames_are_refused(frame: str | bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(frame)
    assert err.value.code == "too_large"


@pytest.mark.parametrize(("frame", "code"), [
    ("[1,2]", "bad_frame"),
    ('{"v":2,"type":"hb"}', "bad_version"),
    ('{"v":true,"type":"hb"}', "bad_version"),
    ('{"v":1,"type":"nope"}', "unknown_type"),
    ('{"v":1,"type":"hb","evil":1}', "unknown_field"),
    ('{"v":1,"type":"pong"}', "missing_field"),
    ('{"v":1,"type":"pong","id":5}', "bad_field"),
    ('{"v":1,"type":"hb","stats":{"cpu":true}}', "bad_field"),
    ('{"v":1,"type":"hb","stats":{"cpu":NaN}}', "bad_json"),
    ("[" * 100_000, "too_large"),
    ("[" * 5000 + "]" * 5000, "bad_json"),
    ('{"v":1,"type":"auth","agent_id":"<script>","signature":"AA","version":"1"}',
     "bad_field"),
])
def test_specific_refusals_have_stable_codes(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(frame)
    assert err.value.code == code


def _dial(**changes: object) -> str:
    msg = json.loads(_session_frames()[0])
    msg.update(changes)
    return json.dumps(msg)


@pytest.mark.parametrize(("frame", "code"), [
    (_dial(capabilities=["info", "info"]), "bad_field"),
    (_dial(capabilities=["Info"]), "bad_field"),
    (_dial(capabilities=["x" * 40]), "bad_field"),
    (_dial(capabilities=[f"c{i}" for i in range(17)]), "bad_field"),
    (_dial(capabilities="info"), "bad_field"),
    (_dial(session_id="ss_../../etc"), "bad_field"),
    (_dial(token="not base64!"), "bad_field"),
    (_dial(extra=1), "unknown_field"),
    ('{"v":1,"type":"join","code":"123-456-789","public_key":"AA","hostname":"h","os":"o",'
     '"os_version":"1","arch":"a","version":"1"}', "bad_field"),
    ('{"v":1,"type":"consent","answer":"maybe"}', "bad_field"),
    ('{"v":1,"type":"consent","answer":true}', "bad_field"),
])
def test_session_messages_are_strict(frame: str, code: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode(frame)
    assert err.value.code == code


def test_session_messages_go_one_way_each() -> None:
    frames = dict(zip(["dial", "session_end", "dial_failed", "tunnel", "join", "join_offer",
                       "consent"], _session_frames(), strict=True))
    for kind in ("dial", "session_end", "join_offer"):
        assert protocol.parse_relay_message(frames[kind])["type"] == kind
        with pytest.raises(ProtocolError):
            protocol.parse_agent_message(frames[kind])
    assert protocol.parse_agent_message(frames["dial_failed"])["type"] == "dial_failed"
    for kind in ("tunnel", "join", "consent"):
        with pytest.raises(ProtocolError):  # only on their own sockets
            protocol.parse_agent_message(frames[kind])
        with pytest.raises(ProtocolError):
            protocol.parse_relay_message(frames[kind])


def test_session_codes_parse_and_display() -> None:
    from backline.common import sessioncode

    assert sessioncode.parse(" 123-456 789 ") == "123456789"
    assert sessioncode.display("012345678") == "012-345-678"
    for bad in ("12345678", "1234567890", "abc-def-ghi", "\uff11" * 9, ""):
        with pytest.raises(sessioncode.BadCode):
            sessioncode.parse(bad)
    codes = {sessioncode.generate() for _ in range(200)}
    assert all(len(c) == 9 and c.isdigit() for c in codes) and len(codes) > 190


def test_handshake_signature_is_bound_to_nonce_and_certificate() -> None:
    key = keys.generate()
    agent_id = "ag_" + "a" * 20
    relay = protocol.RelayHandshake("cd" * 32)
    answer = protocol.answer_challenge(relay.challenge(1.0), agent_id, key, "cd" * 32, "1")
    assert relay.verify(relay.receive_auth(answer), keys.public_raw(key))
    # The same answer replayed to a new connection (new nonce) fails.
    replay_target = protocol.RelayHandshake("cd" * 32)
    assert not replay_target.verify(replay_target.receive_auth(answer), keys.public_raw(key))
    # An answer made for another certificate (a relaying attacker) fails.
    other = protocol.RelayHandshake("cd" * 32)
    forwarded = protocol.answer_challenge(other.challenge(1.0), agent_id, key, "ef" * 32, "1")
    assert not other.verify(other.receive_auth(forwarded), keys.public_raw(key))
    # Someone else's key fails.
    third = protocol.RelayHandshake("cd" * 32)
    answer = protocol.answer_challenge(third.challenge(1.0), agent_id, key, "cd" * 32, "1")
    assert not third.verify(third.receive_auth(answer), keys.public_raw(keys.generate()))


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=4e9))
def test_fast_hb_ack_is_the_generic_one(relay_time: float) -> None:
    fast = protocol.encode_hb_ack(relay_time)
    assert protocol.decode(fast) == protocol.decode(
        protocol.encode("hb_ack", relay_time=round(relay_time, 3)))


@given(st.dictionaries(st.text(max_size=70), st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.text(max_size=3), st.none()), max_size=40))
def test_hb_fast_path_checks_what_the_schema_says(stats: dict) -> None:
    """The heartbeat's own check agrees with the rules: short names, numbers, at most 32."""
    ok = len(stats) <= 32 and all(
        len(k) <= 64 and not isinstance(v, bool) and isinstance(v, int | float)
        for k, v in stats.items())
    frame = json.dumps({"v": 1, "type": "hb", "stats": stats})
    if ok:
        assert protocol.parse_agent_message(frame)["stats"] == stats
    else:
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_agent_message(frame)
    for extra in ({"stats": 5}, {"stats": [1]}, {"extra": 1}, {"stats": None}, {"ack": 1},
                  {"ack": "yes"}, {"ack": None}):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_agent_message(json.dumps({"v": 1, "type": "hb", **extra}))


def test_hb_ack_field_is_a_boolean_and_survives_encoding() -> None:
    for ask in (True, False):
        msg = protocol.parse_agent_message(protocol.encode("hb", stats={"cpu_pct": 1.0}, ack=ask))
        assert msg["ack"] is ask
    assert "ack" not in protocol.parse_agent_message('{"v":1,"type":"hb"}')  # older agents
    with pytest.raises(protocol.ProtocolError):
        protocol.encode("hb", ack=1)


def test_welcome_heartbeat_period_is_bounded() -> None:
    """A relay's ``welcome`` sets the agent's heartbeat loop: 0 or less would send
    heartbeats without pause, and a huge one would hide failures for days."""
    low, high = protocol.HEARTBEAT_S_RANGE
    for ok in (low, 30, high):
        msg = protocol.parse_relay_message(
            protocol.encode("welcome", agent_id="ag_x", heartbeat_s=ok, relay_time=1.0))
        assert msg["heartbeat_s"] == ok
    for bad in (0, -30, low - 1, high + 1, 10**12):
        frame = json.dumps({"v": 1, "type": "welcome", "agent_id": "ag_x",
                            "heartbeat_s": bad, "relay_time": 1.0})
        with pytest.raises(protocol.ProtocolError, match="heartbeat_s must be between"):
            protocol.parse_relay_message(frame)


def test_only_an_older_relays_refusal_of_ack_counts_as_one() -> None:
    # What a relay from before the field sends at the first heartbeat that carries it
    # (its validator refused any field of hb but stats).
    older = protocol.parse_relay_message(protocol.encode(
        "error", code="unknown_field", message="hb: unexpected field 'ack'"))
    assert protocol.refuses_hb_ack(older)
    for code, message in [("unknown_field", "hb: unexpected field 'stats'"),
                          ("bad_field", "hb: unexpected field 'ack'"),
                          ("unknown_field", "health: unexpected field 'ack'")]:
        other = protocol.parse_relay_message(protocol.encode("error", code=code,
                                                             message=message))
        assert not protocol.refuses_hb_ack(other)
    assert not protocol.refuses_hb_ack(protocol.parse_relay_message(
        protocol.encode_hb_ack(1.0)))


def test_heartbeat_clock_asks_every_fourth_tick_and_gives_up_on_a_silent_relay() -> None:
    period = 30.0
    clock = protocol.HeartbeatClock(period, now=0.0)
    # An answering relay: asked every fourth heartbeat, never given up on.
    asked = []
    for tick in range(1, 13):
        now = tick * period
        ask = clock.tick(now)
        assert ask is not None
        asked.append(ask)
        if ask:
            clock.heard_from_relay(now + 0.01)
    assert asked == [False, False, False, True] * 3
    # Any frame from the relay counts, not only hb_ack.
    clock = protocol.HeartbeatClock(period, now=0.0)
    for tick in range(1, 30):
        clock.heard_from_relay(tick * period - 1)
        assert clock.tick(tick * period) is False
    # A relay that stops answering: asked at the fourth tick and the fifth, dropped
    # at the sixth (three minutes without a word at 30 s heartbeats).
    clock = protocol.HeartbeatClock(period, now=0.0)
    outcomes = [clock.tick(tick * period) for tick in range(1, 7)]
    assert outcomes == [False, False, False, True, True, None]


@given(st.one_of(
    st.text(max_size=80),
    st.builds(lambda pre, stats, post: pre + json.dumps({"v": 1, "type": "hb",
                                                          "stats": stats}) + post,
              st.sampled_from(["", " ", "\n", "x"]),
              st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
              st.sampled_from(["", " ", "\t\n", "}", "{}", "x"]))))
def test_the_scanner_shortcut_reads_json_as_the_decoder_does(frame: str) -> None:
    """``decode`` runs the JSON scanner alone when the object fills the frame; with
    whitespace around it, bytes after it or anything broken it is the decoder's say."""
    def outcome(parse: Any) -> object:
        try:
            return parse()
        except protocol.ProtocolError as err:
            return err.code

    def reference() -> object:
        try:
            msg = protocol._DECODER.decode(frame)
        except (ValueError, RecursionError):
            raise protocol.ProtocolError("bad_json", "") from None
        protocol.validate(msg)
        return msg

    assert outcome(lambda: protocol.decode(frame)) == outcome(reference)
