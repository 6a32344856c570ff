"""Every header field is held to its message type's schema before the state machine reads
it: whatever msgpack value a key holder puts in any field of any message (or leaves out, or
adds), the broker's only answer is ProtocolError, and its bookkeeping stays consistent."""

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbcluster.errors import ProtocolError
from nbcluster.wire import schema

from ..support.broker_sim import Sim, runs

# What a msgpack map may hold, and more: a dict built by a test can hold ints beyond
# msgpack's 64 bits, which the schema must refuse as well.
EDGE_INTS = st.sampled_from([0, 1, -1, 2, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
                             1 << 63, (1 << 64) - 1, -(1 << 63), -(1 << 63) - 1, 1 << 100])
SCALARS = (st.none() | st.booleans() | st.integers() | EDGE_INTS
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.binary(max_size=20))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(
    st.text(max_size=6) | st.binary(max_size=4), inner, max_size=4), max_leaves=12)

PEERS = {"client": b"c", "ctl": b"wc", "task": b"wt", "supervisor": b"s", "stranger": b"x"}
F = b"F" * 16


def cluster():
    """A client with tasks queued and running on a two-socket worker, a supervisor."""
    sim = Sim()
    sim.client(b"c")
    sim.msg(b"s", "hello", role="supervisor", token="tok", host="h", pid=9, workers=1)
    sim.msg(b"wc", "hello", role="worker", labels=["x"], host="h", pid=1, slots=1,
            task_identity=b"wt", session=1, supervisor="tok")
    sim.msg(b"wt", "ready", n=2)
    sim.msg(b"c", "submit", [b"f-pickle", b"a1", b"a2", b"a3"], fns=[[F, 1]],
            tasks=[[1, 1, [], None, 0, None, F], [2, 1, ["x"], None, 1, "h", F],
                   [3, 1, [], None, 0]])
    assert len(runs(sim.sent)) == 2
    return sim


def held(sim):
    """[gid, attempt] of a task the worker holds (else of any task, else made up)."""
    tasks = sorted(sim.state.tasks.values(), key=lambda t: (t.worker is None, t.gid))
    return [tasks[0].gid, tasks[0].attempt] if tasks else [1, 0]


def valid(sim, kind, role):
    """A header of this type that the broker takes (fields are then mutated), its payload;
    a hello of this role."""
    gid, attempt = held(sim)
    ledger = next(iter(sim.state.workers.values())).ledger if sim.state.workers else 1
    hellos = {
        "worker": {"role": "worker", "labels": ["x"], "host": "h", "pid": 1, "slots": 2,
                   "task_identity": b"wt", "session": 2, "supervisor": "tok",
                   "resume": ["w1", sim.state.epoch], "running": [[gid, attempt]]},
        "client": {"role": "client", "host": "h", "pid": 2},
        "supervisor": {"role": "supervisor", "token": "tok", "host": "h", "pid": 9,
                       "workers": 1}}
    return {
        "hello": (hellos[role], []),
        "hb": ({"info": {"rss": 1, "cpu_s": 0.5, "python": "3"}}, []),
        "bye": ({}, []),
        "submit": ({"tasks": [[9, 1, ["x"], None, 1, "h", F], [10, 1, [], None, 0]],
                    "fns": [[F, 1]]}, [b"f", b"a", b"b"]),
        "cancel": ({"ids": [1, 2]}, []),
        "query": ({"rid": 1}, []),
        "stop": ({"rid": 2, "workers": ["w1"], "broker": False}, []),
        "ready": ({"n": 1, "l": ledger}, []),
        "done": ({"e": sim.state.epoch, "ready": 1, "l": ledger,
                  "items": [[gid, attempt, "err", 1, {"s": 0.1, "kept": [1]}]]}, [b"r"]),
        "output": ({"items": [[gid, attempt, "stdout", "hi\n"]]}, []),
        "started": ({"items": [[gid, attempt]]}, []),
        "giveback": ({"keep": gid}, []),
        "refetch": ({"tasks": [[gid, attempt]]}, []),
        "exited": ({"pid": 1, "reason": "killed by SIGKILL", "memory": False, "left": False},
                   []),
        "debug": ({"w": "w1", "sid": "s1", "op": "open", "n": 1, "line": "p x"}, []),
        "debug_out": ({"sid": "b1", "g": gid, "text": "> f()\n(Pdb) ", "prompt": True,
                       "bp": True}, []),
    }[kind]


def paths(value, prefix=()):
    """Every place in a header a value sits at (map keys and list positions)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += paths(v, (*prefix, i))
    return found


def mutate(header, path, action, value):
    """The header with the value at path replaced by `value`, or removed."""
    *parents, last = path
    node = header
    for p in parents:
        node = node[p]
    if action == "remove":
        del node[last]
    else:
        node[last] = value


KINDS = sorted(schema.SCHEMAS)


@pytest.mark.timeout(600)   # shrinking a failure takes a while
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_value_in_any_field_is_a_protocol_error_or_handled(data):
    """The fuzzer: a run of messages of every type, from every kind of peer and from a
    stranger, each with fields replaced by arbitrary msgpack values (nested ones too),
    removed, or added. Only ProtocolError may come out; the invariants hold after each."""
    sim = cluster()
    for _ in range(data.draw(st.integers(1, 8), label="steps")):
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        sender = PEERS[data.draw(st.sampled_from(sorted(PEERS)), label="sender")]
        role = data.draw(st.sampled_from(["worker", "client", "supervisor"]), label="role")
        header, payload = valid(sim, kind, role)
        header = msgpack.unpackb(msgpack.packb(header))   # a deep copy, as it would arrive
        for _ in range(data.draw(st.integers(0, 3), label="mutations")):
            action = data.draw(st.sampled_from(["replace", "remove", "add"]), label="action")
            spots = paths(header)
            if action == "add" or not spots:
                header[data.draw(st.text(max_size=8), label="new field")] = data.draw(VALUES)
            else:
                mutate(header, data.draw(st.sampled_from(spots), label="at"), action,
                       data.draw(VALUES, label="value"))
        if data.draw(st.booleans(), label="fuzz the session fields too"):
            header[data.draw(st.sampled_from(["nonce", "seq", "ts", "hello_nonce"]))] = \
                data.draw(VALUES)
        header.pop("t", None)
        try:
            sim.msg(sender, kind, payload, **header)
        except ProtocolError:
            sim.state.check_invariants()
        if data.draw(st.booleans(), label="tick"):
            sim.tick(data.draw(st.integers(0, 5000)), alive=(b"c", b"wc", b"s"))
        for identity, again in ((b"c", lambda: sim.client(b"c")),):   # keep a client around
            if identity not in sim.state.clients:
                again()


@pytest.mark.parametrize("header, field", [
    ({"t": "giveback", "keep": [1]}, "$.keep"),           # was: TypeError unhashable 'list'
    ({"t": "giveback", "keep": {"a": 1}}, "$.keep"),
    ({"t": "ready", "n": True}, "$.n"),                   # a bool is no int
    ({"t": "ready", "n": 1 << 70}, "$.n"),
    ({"t": "ready", "n": -1}, "$.n"),
    ({"t": "done", "items": [[1, 0, "ok", 1, {"s": 1}, "extra"]]}, "$.items[0]"),
    ({"t": "done", "items": [[1, 0, "fine", 1, {}]]}, "$.items[0][2]"),
    ({"t": "done", "items": [[1, [0], "ok", 1, {}]]}, "$.items[0][1]"),
    ({"t": "output", "items": [[1, 0, "stdout", b"bytes"]]}, "$.items[0][3]"),
    ({"t": "started", "items": [[[1], 0]]}, "$.items[0][0]"),
    ({"t": "refetch", "tasks": [[1, {}]]}, "$.tasks[0][1]"),
    ({"t": "hb", "info": {"rss": [1]}}, "$.info"),
    ({"t": "ready", "n": 1, "surprise": 1}, "surprise"),   # fields no type defines
])
def test_a_malformed_worker_message_names_its_field(header, field):
    sim = Sim()
    sim.client()
    sim.worker(b"w", credit=0)
    t = header.pop("t")
    with pytest.raises(ProtocolError, match=rf"'{t}' message: .*{_pattern(field)}"):
        sim.msg(b"w", t, **header)
    sim.state.check_invariants()


@pytest.mark.parametrize("header, field", [
    ({"t": "submit", "tasks": [[1, 1, [], None, 0, None, None, "eighth"]]}, "$.tasks[0]"),
    ({"t": "submit", "tasks": [[1, 1, [["x"]], None, 0]]}, "$.tasks[0][2][0]"),
    ({"t": "submit", "tasks": [[1, 1, [], None, 0]], "fns": [[b"", 1]]}, "$.fns[0][0]"),
    ({"t": "cancel", "ids": [[1]]}, "$.ids[0]"),
    ({"t": "stop", "rid": 1, "workers": "w1"}, "$.workers"),
    ({"t": "query"}, "rid"),
    ({"t": "query", "rid": "1"}, "$.rid"),
])
def test_a_malformed_client_message_names_its_field(header, field):
    sim = Sim()
    sim.client()
    t = header.pop("t")
    with pytest.raises(ProtocolError, match=rf"'{t}' message: .*{_pattern(field)}"):
        sim.msg(b"c", t, [b"f"], **header)
    sim.state.check_invariants()


@pytest.mark.parametrize("header, field", [
    ({"role": "worker", "running": [[1, 2, 3]]}, "$.running[0]"),
    ({"role": "worker", "resume": ["w1", "epoch"]}, "$.resume[1]"),
    ({"role": "worker", "task_identity": b""}, "$.task_identity"),
    ({"role": "worker", "labels": ["x", 1]}, "$.labels[1]"),
    ({"role": "supervisor", "token": "t" * 65}, "$.token"),
    ({"role": "client", "pid": -1}, "$.pid"),
    ({"role": "client", "ts": 1.5}, "$.ts"),
    ({"role": "client", "hello_nonce": b"short"}, "$.hello_nonce"),
])
def test_a_malformed_hello_names_its_field(header, field):
    sim = Sim()
    with pytest.raises(ProtocolError, match=rf"'hello' message: .*{_pattern(field)}"):
        sim.msg(b"p", "hello", **header)
    assert not sim.state.clients and not sim.state.workers


def test_a_supervisor_vouch_of_strings_is_refused():
    sim = Sim()
    sim.msg(b"s", "hello", role="supervisor", token="tok", host="h", pid=9)
    with pytest.raises(ProtocolError, match=r"\$\.alive\[0\]"):
        sim.msg(b"s", "hb", alive=["123"])
    with pytest.raises(ProtocolError, match=r"\$\.reason"):
        sim.msg(b"s", "exited", pid=1, reason=None)


def _pattern(field):
    import re
    return re.escape(field)
