"""The schema of every message a peer may send the broker, checked before the broker acts.

A peer's header is untrusted: a key holder with a bug (or worse) may put any msgpack value
in any field. `check(header)` holds the header against its message type's schema, one
msgspec Struct per type (docs/protocol.md, "Message types"), and raises ProtocolError naming
the field (``$.tasks[3][2]``) if a field is missing, of the wrong type or out of range, or
if the header has a field its type does not define. The broker calls it first thing, so its
state machine reads only checked values (it keeps reading the dict: checking does not
change it).

    header (dict) ──► SCHEMAS[header["t"]] ──► msgspec.convert ──► ok, or ProtocolError

Nested lists (a submit's task specs, a done's items) are checked element by element as
array-like Structs, which also take the optional trailing fields of a task spec. Integers
are held to msgpack's range, so a value a Python dict could hold (2**100) but msgpack could
not is refused too. A field the type does not define is refused rather than ignored: the
protocol's version byte changes whenever a message's meaning does (no negotiation), and an
unchecked field the broker read would be exactly what this module is here to prevent.

Cost (CPU time, measured with time.process_time on the development machine): 0.4 to 0.7
microseconds for a heartbeat, a `ready` or a `done` of one result, about 0.13 microseconds
per task spec of a submit: less than msgpack takes to decode the same header.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ..errors import ProtocolError

__all__ = ["SCHEMAS", "check"]

# Integers within int64 (msgpack's range, less the upper half of uint64 that no field of
# ours needs): a Python dict could hold 2**100, a header cannot, and neither may reach us.
Int = Annotated[int, Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
Count = Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]    # frames, credit, slots
Pid = Annotated[int, Meta(ge=0, le=(1 << 32) - 1)]
Digest = Annotated[bytes, Meta(min_length=1, max_length=64)]   # a function payload's name
Nonce = Annotated[bytes, Meta(min_length=16, max_length=64)]
Seq = Annotated[int, Meta(ge=1, le=(1 << 63) - 1)]
Identity = Annotated[bytes, Meta(min_length=1, max_length=255)]   # a ZeroMQ routing id
Token = Annotated[str, Meta(min_length=1, max_length=64)]


class _Message(Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Fields every message but `hello` may carry: the session nonce its welcome gave and
    a sequence number above the last one sent on the socket (see sessions in
    docs/protocol.md). Optional here: a peer that has no session yet sends without them,
    and the broker's session check decides."""

    t: str
    nonce: Nonce | None = None
    seq: Seq | None = None


class _Item(Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """An element of a list in a header: a msgpack array of fixed fields."""


class TaskSpec(_Item):
    cid: Int
    nframes: Count
    labels: list[str]
    target: str | None
    retries: Int
    host: str | None = None
    fn: Digest | None = None


class FunctionSpec(_Item):
    digest: Digest
    nframes: Annotated[int, Meta(ge=1, le=(1 << 32) - 1)]


class Tag(_Item):
    """A task at an attempt: [gid, attempt]."""

    gid: Int
    attempt: Int


class Result(_Item):
    gid: Int
    attempt: Int
    status: Literal["ok", "err"]
    nframes: Count
    info: dict[str, Any]


class Output(_Item):
    gid: Int
    attempt: Int
    stream: Literal["stdout", "stderr", "display", "clear"]
    text: str


class Registration(_Item):
    """A worker's earlier registration, named when it says hello again: [worker id, epoch]."""

    id: str
    epoch: Int | None


class Hello(Struct, forbid_unknown_fields=True, kw_only=True, gc=False):
    """Any peer registering. `ts` (its wall clock, ms since the Unix epoch) and
    `hello_nonce` (fresh random bytes) make a recorded hello useless later."""

    t: str
    role: Literal["worker", "client", "supervisor"]
    ts: Int
    hello_nonce: Nonce
    host: str = ""
    pid: Pid = 0
    # workers
    labels: list[str] = []
    slots: Count = 1
    session: Int = 0
    task_identity: Identity | None = None
    supervisor: str = ""
    resume: Registration | None = None
    running: list[Tag] = []
    # supervisors
    token: Token | None = None
    workers: Count = 0


class Heartbeat(_Message):
    info: dict[str, Int | float | str] | None = None   # a worker's load and memory
    alive: list[Pid] | None = None                      # a supervisor's vouch


class Bye(_Message):
    pass


class Submit(_Message):
    tasks: list[TaskSpec]
    fns: list[FunctionSpec] = []


class Cancel(_Message):
    ids: list[Int]


class Query(_Message):
    rid: Int


class Stop(_Message):
    rid: Int
    workers: list[str] | None = None
    broker: bool = False


class Ready(_Message):
    n: Count
    l: Int | None = None   # noqa: E741 - the protocol's name: the ledger of this credit


class Done(_Message):
    items: list[Result]
    e: Int | None = None
    ready: Count = 0
    l: Int | None = None   # noqa: E741


class OutputMessage(_Message):
    items: list[Output]


class Started(_Message):
    items: list[Tag]


class Giveback(_Message):
    keep: Int


class Refetch(_Message):
    tasks: list[Tag]


SessionId = Annotated[str, Meta(min_length=1, max_length=64)]


class Debug(_Message):
    """A client to the debugger of a failure kept on worker w, or of a paused task."""

    w: Annotated[str, Meta(max_length=255)]
    sid: SessionId
    op: Literal["open", "eval", "attend", "line", "eof", "close", "release"]
    n: Int = 0                                              # open, eval, release: the failure
    line: Annotated[str, Meta(max_length=1 << 20)] = ""     # line, eval: what the user typed
    frame: Int = -1                                         # eval: which of its frames


class DebugOut(_Message):
    """A worker's debugger output to its client (up to the prompt, or the end)."""

    sid: SessionId
    g: Int
    text: str
    prompt: bool
    bp: bool = False
    end: str | None = None


class Exited(_Message):
    pid: Pid
    reason: str
    memory: bool = False
    left: bool = False


# Message type ("t") -> its schema. Which peer may send which is the state machine's
# business (a client's "done" is refused there); here, each type has one shape.
SCHEMAS: dict[str, type[Struct]] = {
    "hello": Hello, "hb": Heartbeat, "bye": Bye,
    "submit": Submit, "cancel": Cancel, "query": Query, "stop": Stop,
    "ready": Ready, "done": Done, "output": OutputMessage, "started": Started,
    "giveback": Giveback, "refetch": Refetch, "exited": Exited,
    "debug": Debug, "debug_out": DebugOut,
}


def check(header: dict[str, Any]) -> None:
    """Hold a peer's header to its message type's schema.

    Raises:
        ProtocolError: the type is not one a peer sends the broker, or a field is missing,
            unknown, of the wrong type or out of range (the message names it).
    """
    kind = header.get("t")
    schema = SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise ProtocolError(f"{kind!r} is not a message type a peer may send the broker")
    try:
        msgspec.convert(header, schema)
    except msgspec.ValidationError as e:
        raise ProtocolError(f"bad {kind!r} message: {e}") from None
