"""What the broker keeps about each task and peer, and the checks of a peer's header fields.

Plain records, no behaviour: `Task`, `Worker` and `Client` are the rows of `BrokerState`'s
tables; `Send` is what every handler returns. A peer's header is untrusted: `field` and
`label_set` read a field of the type expected or raise ProtocolError.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, NamedTuple, TypeAlias, TypeVar

from ..errors import ProtocolError
from ..wire.protocol import Frame
from .table import Table

__all__ = ["NEVER", "Header", "Frames", "Mac", "Send", "Task", "Worker", "Client", "Peer",
           "field", "label_set"]

NEVER = -(1 << 62)   # a time before every other: a task never lost, a worker never vouched for

# A message's msgpack map, as a peer sent it: its values are checked where they are read.
Header: TypeAlias = dict[str, Any]
# A message's payload: opaque frames, stored and forwarded, never looked into.
Frames: TypeAlias = list[Frame]
# The HMAC of a payload as received: a message forwarding that payload alone is signed with
# it, without reading the payload again.
Mac: TypeAlias = hmac.HMAC | None


class Send(NamedTuple):
    """A message to send: to `identity`, with `header`, `payload` and maybe a payload mac."""

    identity: bytes
    header: Header
    payload: Frames = []   # noqa: RUF012 (shared, but a Send is never changed once made)
    mac: Mac = None


@dataclass(slots=True, eq=False)
class Task:
    """A task from submit to its result. Slots and few objects of its own: a million may
    wait in the queues (labels, host and fn are the objects shared by their queue; the
    lost_* fields are the shared empty tuple until it is lost)."""

    gid: int
    owner: Client
    cid: int
    labels: frozenset[str]
    target: str | None
    host: str | None         # only a worker on this host may run it (its data is in shm)
    data: Frame | tuple[Frame, ...]   # its payload: one frame, else a tuple of them
    mac: Mac                 # kept for a large task alone in its message (see dispatch)
    retries: int
    fn: bytes | None = None  # digest of its function's payload (see functions)
    attempt: int = 0
    worker: str | None = None
    lost_on: tuple[str, ...] = ()   # ids of the workers it was lost on
    lost_pids: tuple[int, ...] = ()   # and their process ids
    lost_at: int = NEVER     # when it was last lost: it goes only to a worker heard since
    started: int = -1        # the attempt its worker reported as started

    @property
    def client(self) -> bytes:
        """Its client's socket identity."""
        return self.owner.identity

    @property
    def payload(self) -> tuple[Frame, ...]:
        return self.data if isinstance(self.data, tuple) else (self.data,)

    @property
    def size(self) -> int:
        return sum(memoryview(f).nbytes for f in self.payload)


@dataclass
class Worker:
    id: str
    identity: bytes          # its task socket: `run` goes here
    ctl: bytes               # its control socket: welcome, heartbeats, cancel
    host: str
    pid: int
    labels: frozenset[str]
    slots: int
    joined: int
    last_seen: int
    credit: int = 0
    tasks: set[int] = dataclass_field(default_factory=set)
    done: int = 0
    info: dict[str, int | float | str] = dataclass_field(default_factory=dict)
    stopping: bool = False   # asked to leave: finishes its task, gets no new ones
    fns: set[bytes] = dataclass_field(default_factory=set)  # digests of the payloads sent to it
    session: int = 0         # its latest hello's `session`, echoed in welcome and run
    ledger: int = 0          # the session of the hello that made it: its credit carries it (`l`)
    supervisor: str = ""     # the token of the supervisor that vouches for it (see supervisors)
    sparse: bool = False     # told to heartbeat every SUPERVISED_HEARTBEATS (see liveness)
    stuck_on: int | None = None   # the task it gave back behind (see dispatch.stuck)
    nonce: bytes = b""       # its registration's session nonce, and the last seq seen on
    seq: dict[bytes, int] = dataclass_field(default_factory=dict)   # each socket (sessions)


@dataclass(eq=False)
class Client:
    identity: bytes
    host: str
    pid: int
    last_seen: int
    tasks: Table[int] = dataclass_field(default_factory=Table)   # client task id -> gid
    running: set[int] = dataclass_field(default_factory=set)   # gids of its tasks on workers
    # Its label queues, by (labels, host) (see queues): detached at once when it goes.
    queues: dict[tuple[frozenset[str], str | None], Any] = dataclass_field(default_factory=dict)
    served: int = 0          # when it was last handed a task (ties of fair share: round-robin)
    gone: bool = False       # dropped: its tasks still in the tables are being swept away
    nonce: bytes = b""       # its session nonce, and the last seq seen (see sessions)
    seq: dict[bytes, int] = dataclass_field(default_factory=dict)

    @property
    def queued(self) -> int:
        return len(self.tasks) - len(self.running)


Peer = Worker | Client

T = TypeVar("T")


def field(header: Header, name: str, kind: type[T], default: T | None = None) -> T:
    """header[name], which must be a `kind` (an int is not a bool); absent: default."""
    value = header.get(name, default)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"field {name!r} of a {header.get('t')!r} message is not {kind}")
    return value


def label_set(value: object) -> frozenset[str]:
    """A label set, from a list of strings."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise ProtocolError("labels must be a list of strings")
    return frozenset(value)
