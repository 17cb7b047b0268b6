"""Hostile MLLP framing against the real listener: split frames, noise, missing end blocks,
oversized frames, tricklers, idle and connection limits. Every wait is bounded; after each
abuse the bridge must still answer a well-formed order with AA."""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from listener_rig import (
    FRAME_END,
    SB,
    BridgeThread,
    RawClient,
    accounted,
    fixture_message,
    frame,
    msa,
    open_junk,
    rig_config,
    still_open,
    with_control_id,
)
from peers import wait_for

LIMIT = 4096  # mllp.max_message_bytes for these tests
ORDER = fixture_message()
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    config = rig_config(tmp_path_factory.mktemp("mllp"), mllp__max_message_bytes=LIMIT)
    with BridgeThread(config) as running:
        yield running


def assert_alive(bridge: BridgeThread) -> None:
    """Another connection is served meanwhile: a normal order gets AA."""
    with RawClient(bridge.port) as client:
        assert msa(client.exchange(ORDER))[0] == "AA"


_counter = iter(range(10**9))


def order(i: int | None = None) -> tuple[bytes, str]:
    control = f"HOSTILE{next(_counter) if i is None else i}"
    return with_control_id(ORDER, control), control


@SETTINGS
@given(count=st.integers(1, 4), cuts=st.lists(st.integers(0, 4000), max_size=12),
       pause=st.sampled_from([0.0, 0.001]))
def test_frames_split_at_any_byte_get_one_ack_each_in_order(bridge, count, cuts, pause):
    messages = [order() for _ in range(count)]
    stream = b"".join(frame(m) for m, _ in messages)
    with RawClient(bridge.port) as client:
        client.send(stream, chunks=cuts, pause=pause)
        for _, control in messages:
            ack = client.read_ack()
            assert ack is not None
            assert msa(ack) == ("AA", control)


@SETTINGS
@given(noise=st.binary(max_size=300).filter(lambda b: FRAME_END not in b))
def test_bytes_before_the_start_block_are_skipped(bridge, noise):
    message, control = order()
    with RawClient(bridge.port) as client:
        client.send(noise + frame(message))
        assert msa(client.read_ack()) == ("AA", control)


@SETTINGS
@given(partial=st.binary(max_size=500).filter(lambda b: FRAME_END not in b))
def test_missing_end_block_then_close_is_a_clean_close(bridge, partial):
    with RawClient(bridge.port) as client:
        client.send(SB + ORDER[:100] + partial)
    assert_alive(bridge)


@SETTINGS
@given(partial=st.binary(max_size=200).filter(lambda b: FRAME_END not in b))
def test_a_frame_without_end_block_is_dropped_and_the_next_one_answered(bridge, partial):
    message, control = order()
    with RawClient(bridge.port) as client:
        # The unterminated frame runs into the next start block: only that one is whole.
        client.send(SB + partial + frame(message))
        assert msa(client.read_ack()) == ("AA", control)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(LIMIT + 1, 6 * LIMIT), cuts=st.lists(st.integers(0, 6 * LIMIT),
                                                                max_size=6))
def test_oversized_frame_gets_ar_and_the_connection_goes_on(bridge, size, cuts):
    big, big_control = order()
    big += b"NTE|1||" + b"x" * size + b"\r"
    message, control = order()
    with RawClient(bridge.port) as client:
        client.send(frame(big) + frame(message), chunks=cuts)
        # The frame's first bytes are kept: its ACK names it (MSA-2 was empty).
        assert msa(client.read_ack()) == ("AR", big_control)
        assert msa(client.read_ack()) == ("AA", control)


def test_oversized_frame_without_end_block_then_close(bridge):
    with RawClient(bridge.port) as client:
        client.send(SB + b"MSH|" + b"y" * (3 * LIMIT))
    assert_alive(bridge)


def test_a_trickling_sender_does_not_hold_up_others(bridge):
    message, control = order()
    data = frame(message)
    with RawClient(bridge.port) as trickler:
        sent_half = threading.Event()

        def trickle() -> None:
            for i in range(len(data)):
                trickler.send(data[i:i + 1])
                if i == len(data) // 2:
                    sent_half.set()
                threading.Event().wait(0.002)

        worker = threading.Thread(target=trickle)
        worker.start()
        assert sent_half.wait(20)
        # Half a frame is in the bridge's buffer: another sender is served all the same.
        assert_alive(bridge)
        worker.join(30)
        assert msa(trickler.read_ack()) == ("AA", control)


def test_noise_only_connections_close_cleanly(bridge):
    for noise in (b"", b"\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", FRAME_END * 3,
                  bytes(range(256)) * 4):
        with RawClient(bridge.port) as client:
            client.send(noise)
    assert_alive(bridge)


def closed_count(bridge: BridgeThread, reason: str) -> float:
    registry = bridge.bridge.metrics.registry
    return registry.get_sample_value("hl7bridge_mllp_connections_closed_total",
                                     {"reason": reason}) or 0.0


def test_idle_and_stuck_senders_are_closed(tmp_path):
    config = rig_config(tmp_path, mllp__idle_timeout="0.5")
    with BridgeThread(config) as bridge:
        with RawClient(bridge.port) as silent, RawClient(bridge.port) as half:
            half.send(SB + ORDER[:50])  # a frame begun and never finished
            assert silent.wait_closed()
            assert half.wait_closed()
        assert closed_count(bridge, "idle_timeout") >= 2
        # A sender that keeps talking within the timeout stays connected.
        with RawClient(bridge.port) as busy:
            for _ in range(3):
                message, control = order()
                assert msa(busy.exchange(message)) == ("AA", control)
                threading.Event().wait(0.2)


def test_connection_limit(tmp_path):
    config = rig_config(tmp_path, mllp__max_connections="2")
    with BridgeThread(config) as bridge:
        first, second = RawClient(bridge.port), RawClient(bridge.port)
        try:
            # Once each has had an ACK, both are surely counted by the bridge.
            assert msa(first.exchange(order()[0]))[0] == "AA"
            assert msa(second.exchange(order()[0]))[0] == "AA"
            with RawClient(bridge.port) as third:
                assert third.wait_closed(), "a third connection must be closed at once"
            assert closed_count(bridge, "max_connections") == 1
            # The two admitted connections are still served.
            assert msa(first.exchange(order()[0]))[0] == "AA"
            second.close()
            # A freed place is given to the next sender (it may take a moment to be freed).
            for _ in range(100):
                with RawClient(bridge.port, timeout=2) as fourth:
                    fourth.send(frame(order()[0]))
                    ack = fourth.read_ack()
                if ack is not None:
                    break
                threading.Event().wait(0.05)
            assert ack is not None and msa(ack)[0] == "AA"
        finally:
            first.close()
            second.close()


# --- floods: idle, trickling and many connections (issue 15, item 3) -----------------------

RIS = "127.0.0.2"  # the legitimate sender's address; the floods come from 127.0.0.1


def trickle(socks: list[socket.socket], stop: threading.Event) -> threading.Thread:
    """Send the first bytes of a frame, one byte per socket every 50 ms, until `stop`."""
    def run() -> None:
        data = frame(ORDER)
        i = 0
        while not stop.wait(0.05):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(data[i % len(data):i % len(data) + 1])
            i += 1

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker


def test_idle_and_trickling_floods_do_not_lock_out_another_sender(tmp_path):
    # The shipped limits: 64 connections; 100 idle or byte-at-a-time ones from one address
    # used to take every place, and the RIS was refused until idle_timeout (an hour).
    config = rig_config(tmp_path)
    per_peer = config.mllp.max_connections_per_peer
    assert per_peer < config.mllp.max_connections
    with BridgeThread(config) as bridge:
        junk = open_junk(bridge.port, 100)
        stop = threading.Event()
        worker = trickle(junk[::2], stop)
        try:
            wait_for(lambda: accounted(bridge) >= 100)
            for _ in range(5):
                with RawClient(bridge.port, source=RIS, timeout=10) as ris:
                    message, control = order()
                    assert msa(ris.exchange(message)) == ("AA", control)
            # One address holds at most its share; the rest were closed, not left waiting.
            wait_for(lambda: still_open(junk) <= per_peer)
        finally:
            stop.set()
            worker.join(5)
            for sock in junk:
                sock.close()


def test_a_full_listener_makes_room_for_a_new_peer(tmp_path):
    config = rig_config(tmp_path, mllp__max_connections="12",
                        mllp__max_connections_per_peer="4")
    with BridgeThread(config) as bridge:
        # Three other addresses hold every place, within their own limit.
        junk = [s for n in (10, 11, 12) for s in open_junk(bridge.port, 4, f"127.0.0.{n}")]
        try:
            wait_for(lambda: accounted(bridge) >= 12)
            assert closed_count(bridge, "max_connections") == 0
            with RawClient(bridge.port, source=RIS, timeout=10) as ris:
                message, control = order()
                assert msa(ris.exchange(message)) == ("AA", control)
            # It took the place of a waiting connection of one of the biggest peers.
            assert closed_count(bridge, "evicted") == 1
            wait_for(lambda: still_open(junk) == 11)
        finally:
            for sock in junk:
                sock.close()


def test_a_new_connection_replaces_the_oldest_waiting_one_of_its_peer(tmp_path):
    # A sender that reconnects while its old connection is half open (a network blip) is
    # not locked out by its own leftovers.
    config = rig_config(tmp_path, mllp__max_connections_per_peer="2")
    with BridgeThread(config) as bridge:
        with RawClient(bridge.port, source=RIS) as old, RawClient(bridge.port, source=RIS) as mid:
            assert msa(old.exchange(order()[0]))[0] == "AA"
            assert msa(mid.exchange(order()[0]))[0] == "AA"
            with RawClient(bridge.port, source=RIS) as new:
                message, control = order()
                assert msa(new.exchange(message)) == ("AA", control)
                assert old.wait_closed(), "the oldest waiting connection must make room"
                assert msa(mid.exchange(order()[0]))[0] == "AA"
            assert closed_count(bridge, "evicted") == 1
        # Another address is not affected by that peer's limit.
        assert_alive(bridge)


def test_only_allowed_peers_get_a_hearing(tmp_path):
    config = rig_config(tmp_path, mllp__allowed_peers="127.0.0.2, 127.0.1.0/24")
    with BridgeThread(config) as bridge:
        before = bridge.journal_count()
        with RawClient(bridge.port) as stranger:  # from 127.0.0.1: not on the list
            stranger.send(frame(order()[0]))
            assert stranger.read_ack() is None
        assert closed_count(bridge, "not_allowed") == 1
        assert bridge.journal_count() == before  # closed before a byte was read
        for source in ("127.0.0.2", "127.0.1.9"):
            with RawClient(bridge.port, source=source) as friend:
                message, control = order()
                assert msa(friend.exchange(message)) == ("AA", control)


def test_a_frame_must_be_complete_in_frame_timeout(tmp_path):
    config = rig_config(tmp_path, mllp__frame_timeout="0.5")
    with BridgeThread(config) as bridge:
        with RawClient(bridge.port, timeout=5) as trickler:
            stop = threading.Event()
            worker = trickle([trickler.sock], stop)
            try:
                # It sends a byte every 50 ms: never idle, yet never done.
                assert trickler.wait_closed()
            finally:
                stop.set()
                worker.join(5)
        assert closed_count(bridge, "frame_timeout") == 1
        # Waiting between frames is idle time, not frame time: a quiet sender stays.
        with RawClient(bridge.port) as quiet:
            threading.Event().wait(1.0)
            message, control = order()
            assert msa(quiet.exchange(message)) == ("AA", control)
