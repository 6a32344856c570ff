"""How long a client has heard nothing from its broker, and what it says when that is too long.

The client's I/O thread calls `heard` on every message from the broker (at least a heartbeat
a second while it lives). A broker that is gone leaves the client's tasks without a result:
they keep waiting `broker_timeout` seconds, long enough for a restarted broker to take them
up again (the client submits them again once welcomed), and then fail with BrokerLost. A
request (status, workers...) that gets no reply fails with BrokerTimeout, a TimeoutError.
"""

from __future__ import annotations

import time

from ..errors import BrokerLost, BrokerTimeout

__all__ = ["BrokerSilence", "DEFAULT_BROKER_TIMEOUT_S"]

DEFAULT_BROKER_TIMEOUT_S = 300.0   # survives a broker restart, and a broker stalled that long


class BrokerSilence:
    """When a client last heard from the broker at `endpoint`, against its `broker_timeout`."""

    def __init__(self, endpoint: str, broker_timeout: float = DEFAULT_BROKER_TIMEOUT_S):
        if not broker_timeout > 0:
            raise ValueError(f"broker_timeout must be a positive number of seconds, "
                             f"not {broker_timeout!r}")
        self.endpoint, self.broker_timeout = endpoint, float(broker_timeout)
        self.heard(time.monotonic())

    def heard(self, now: float) -> None:
        """A message came from the broker (now: time.monotonic())."""
        self.last, self.last_wall = now, time.time() - (time.monotonic() - now)

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self.last)

    def lost(self, now: float) -> bool:
        """Silent for longer than broker_timeout."""
        return self.silent_for(now) > self.broker_timeout

    def _since(self, now: float) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.last_wall))
        return f"since {when} ({self.silent_for(now):.0f} s ago)"

    def lost_error(self, what: str, now: float) -> BrokerLost:
        """The failure of a task (`what`: "task 7") whose broker is lost."""
        return BrokerLost(
            f"{what} failed: lost the broker at {self.endpoint}: no word from it "
            f"{self._since(now)}, longer than this client's broker_timeout of "
            f"{self.broker_timeout:g} s. Check that the broker process is running (`nbcluster "
            f"status`, or LocalCluster.pids()['broker']) and that this host can reach "
            f"{self.endpoint}; a broker that comes back within broker_timeout is reconnected "
            f"to and its tasks go on (to wait longer: Client(..., broker_timeout=seconds) or "
            f"connect(..., broker_timeout=seconds))", self.endpoint, self.last_wall)

    def timeout_error(self, what: str, waited: float, now: float, expiry_s: float
                      ) -> BrokerTimeout:
        """A request (`what`: "a status query") the broker did not answer in `waited` s;
        expiry_s: how long a broker may be silent and still be alive."""
        if self.lost(now):   # not waited for
            return BrokerTimeout(
                f"{what} got no answer: the broker at {self.endpoint} has sent no word "
                f"{self._since(now)}, longer than this client's broker_timeout "
                f"({self.broker_timeout:g} s): is the broker running, and can this host reach "
                f"it?")
        if self.silent_for(now) > expiry_s:
            why = f"no word from it {self._since(now)}: is the broker running?"
        else:
            why = (f"though it is alive (last word {self.silent_for(now):.1f} s ago): it may be "
                   f"overloaded")
        return BrokerTimeout(f"the broker at {self.endpoint} did not answer {what} within "
                             f"{waited:.3g} s, {why}")
