"""Messages over the broker's max_message_bytes: the sender hears why, nothing hangs.

A result over the limit fails its task with MessageTooLarge and the worker takes the next
one; arguments over it fail at submit; results that fit one by one but not together still
arrive; a raw oversized message does not stall the broker, and its sender is told."""

import pytest
import zmq

from nbcluster import MessageTooLarge, NBClusterError
from nbcluster.testing import throwaway_cluster
from nbcluster.wire import protocol
from nbcluster.wire.freshness import Freshness

pytestmark = pytest.mark.timeout(120)

LIMIT = 1 << 20
RESULT_WAIT_S = 60   # generous: a hang is what a failure looks like


def text_of(n):
    """A result of n bytes pickled in-band (a str never goes out of band or to shm)."""
    return "x" * n


def test_a_result_over_the_limit_fails_its_task_and_frees_the_worker():
    with throwaway_cluster(1, max_message_bytes=LIMIT) as cluster:
        client = cluster.client()
        assert client.max_message_bytes == LIMIT   # learned from the broker's welcome
        fut = client.submit(text_of, 2 * LIMIT)
        with pytest.raises(MessageTooLarge) as info:
            fut.result(RESULT_WAIT_S)
        message = str(info.value)
        assert f"{LIMIT:,}" in message and "2,097,1" in message           # limit and size
        assert "max_message_bytes" in message and "--max-message-bytes" in message
        # the one worker is free again: it takes the next task (before: "running 1" forever)
        assert client.submit(text_of, 10).result(RESULT_WAIT_S) == "x" * 10
        [worker] = client.workers()
        assert worker["running"] == 0


def two_bytearrays():
    """A result whose buffers stay in frames even on one host (each under shm's 1 MiB)."""
    return [bytearray(600_000), bytearray(600_000)]


def test_a_too_big_result_is_described_in_a_few_words_not_in_full():
    """The error names the result and its traceback shows locals, each in a few hundred
    characters, not the megabytes of the result (a repr of a GiB would take seconds)."""
    with throwaway_cluster(1, max_message_bytes=LIMIT) as cluster:
        client = cluster.client()
        with pytest.raises(MessageTooLarge, match="a list of 2 items") as info:
            client.submit(two_bytearrays).result(RESULT_WAIT_S)
        assert len(str(info.value)) < 2000
        assert all(len(text) < 1000 for frame in info.value.frames
                   for text in frame.locals.values())


def test_results_that_fit_alone_but_not_together_all_arrive():
    """A worker sends the results of short tasks in batches: a batch never goes over the
    limit (before, a batch of 50 KB results went over 256 KiB and was dropped: they hung)."""
    with throwaway_cluster(1, max_message_bytes=256 * 1024) as cluster:
        client = cluster.client()
        futures = [client.submit(text_of, 50_000) for _ in range(200)]
        assert all(f.result(RESULT_WAIT_S) == "x" * 50_000 for f in futures)


def test_arguments_over_the_limit_fail_at_submit_and_nothing_is_sent():
    with throwaway_cluster(1, max_message_bytes=LIMIT) as cluster:
        client = cluster.client()
        with pytest.raises(MessageTooLarge, match="max_message_bytes"):
            client.submit(len, text_of(2 * LIMIT))
        with pytest.raises(MessageTooLarge):
            client.map(len, [text_of(2 * LIMIT)])
        big = text_of(2 * LIMIT)
        with pytest.raises(MessageTooLarge, match="function"):   # captured by the function
            client.submit(lambda: len(big))
        assert client.sent["tasks"] == 0
        assert client.submit(len, "abc").result(RESULT_WAIT_S) == 3


def raw_dealer(ctx, cluster):
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster.endpoint)
    return sock


def test_an_oversized_message_is_refused_with_a_word_and_the_broker_serves_on():
    signer_key = None
    with throwaway_cluster(1, max_message_bytes=LIMIT) as cluster:
        signer_key = cluster.key
        client = cluster.client()
        ctx = zmq.Context()
        try:
            sock = raw_dealer(ctx, cluster)
            signer = protocol.Signer(signer_key)
            # every frame under the limit, the whole over it: the broker answers TOO_BIG
            half = b"y" * (LIMIT // 2 + 1)
            sock.send_multipart(protocol.encode(signer, {"t": "hb"}, [half, half]))
            assert sock.poll(RESULT_WAIT_S * 1000), "no answer to an oversized message"
            reply = sock.recv_multipart()
            with pytest.raises(NBClusterError, match="max_message_bytes"):
                protocol.decode(signer, reply)
            # a frame over the limit: libzmq drops the connection (nobody can answer); the
            # peer reconnects by itself and is served again
            sock.send_multipart(protocol.encode(signer, {"t": "hb"}, [b"z" * (2 * LIMIT)]))
            hello = Freshness().stamp({"t": "hello", "role": "client"})
            sock.send_multipart(protocol.encode(signer, hello))
            assert sock.poll(RESULT_WAIT_S * 1000), "the peer was not served again"
            header, _ = protocol.decode(signer, sock.recv_multipart(), max_bytes=None)
            assert header["t"] in ("welcome", "hb")
            sock.close()
            # the broker serves everyone else meanwhile
            assert client.submit(len, "abcd").result(RESULT_WAIT_S) == 4
        finally:
            ctx.term()


def test_nbcluster_start_takes_the_limit(tmp_path):
    """`nbcluster start --max-message-bytes N`, which the error message points to."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from nbcluster.testing import wait_for

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "nbcluster.cli", *args], text=True,
                              capture_output=True, timeout=90, stdin=subprocess.DEVNULL)

    conn = str(tmp_path / "cluster.json")
    out = cli("start", "-n", "1", "--daemon", "--max-message-bytes", str(3 * LIMIT),
              "--connection-file", conn, "--log-file", str(tmp_path / "log"))
    assert out.returncode == 0, out.stdout + out.stderr
    daemon = int(out.stdout.split("(pid ")[1].split(")")[0])
    try:
        status = json.loads(cli("status", "--json", "--connection-file", conn).stdout)
        assert status["broker"]["max_message_bytes"] == 3 * LIMIT
    finally:
        cli("stop", "--connection-file", conn)
        try:
            wait_for(lambda: subprocess.run(["kill", "-0", str(daemon)],
                                            capture_output=True).returncode, timeout=60,
                     what="the daemon gone")
        except TimeoutError:
            os.kill(daemon, signal.SIGKILL)
