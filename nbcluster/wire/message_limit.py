"""The broker's `max_message_bytes`, checked by the peers before they send.

The broker refuses a larger message: libzmq drops it with the peer's connection (MAXMSGSIZE,
per frame), or the broker's check of the total drops it. The sender hears nothing, so a
result sent anyway would leave its future pending and its worker busy forever. Peers learn
the limit from the broker's welcome (`broker.max_message_bytes`) and check: a client fails
`submit`, a worker fails the one task, both with a MessageTooLarge that says how to raise the
limit. (Arguments and results that go through shared memory are only a short name here.)
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import MessageTooLarge
from .protocol import DEFAULT_MAX_MESSAGE_BYTES, Header

__all__ = ["HEADROOM_BYTES", "limit_from_welcome", "check"]

HEADROOM_BYTES = 64 * 1024   # for the magic, signature and header around a payload

HOW_TO_RAISE = (
    "raise the limit when starting the cluster (LocalCluster(max_message_bytes=...), "
    "`nbcluster start --max-message-bytes N` or `nbcluster broker --max-message-bytes N`), "
    "or move the data another way (e.g. write it to a file both sides can read and pass "
    "its path)")


def limit_from_welcome(header: Header, default: int = DEFAULT_MAX_MESSAGE_BYTES) -> int:
    """The broker's limit, from its welcome (a broker that does not say: the default)."""
    limit = (header.get("broker") or {}).get("max_message_bytes")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 \
        else default


def check(what: str | Callable[[], str], nbytes: int, limit: int) -> None:
    """Raise MessageTooLarge unless a message carrying nbytes of payload fits the limit.

    Args:
        what: names the payload in the message, e.g. "the result of task 7"; or a function
            that does, called only if it does not fit (a repr of a big result costs seconds).
    """
    if nbytes + HEADROOM_BYTES > limit:
        what = what if isinstance(what, str) else what()
        raise MessageTooLarge(
            f"{what} is {nbytes:,} bytes pickled, over the broker's limit of {limit:,} bytes "
            f"per message (max_message_bytes, less {HEADROOM_BYTES:,} for the message "
            f"header): {HOW_TO_RAISE}")
