"""A model of worker.py's credit ledger and registration, message by message, wired to the
broker's real state machine (for tests/broker/test_credit.py).

The worker: a main thread that runs the tasks of `run` messages in order, an I/O thread that
handles cancel, given, welcome and reconnect and may say hello again at any time (it heard
nothing for its expiry), and one FIFO channel per socket and direction (the two sockets are
not ordered with each other). The broker may expire a worker (the others heartbeat), so the
paths of re-registration are met: resumed, or a new registration that keeps the running task.
"""

from nbcluster.errors import ProtocolError

from .broker_sim import HB, Sim, next_seq, stamp

PREFETCH = 3   # the model's prefetch while its tasks are short (worker.py: up to MAX_PREFETCH)


class WorkerModel:
    """worker.py's ledger, cancel/giveback and registration handling. Flags break it on
    purpose: without `topup_after_given` the fuzzer finds the starvation of issue 11;
    without `wait_for_given` a task given back runs twice; without `wait_for_welcome` a task
    of a registration the broker dropped runs here while it is queued elsewhere."""

    def __init__(self, name: bytes, topup_after_given: bool = True, wait_for_given: bool = True,
                 wait_for_welcome: bool = True):
        self.task_id, self.ctl = name, name + b"/ctl"
        self.topup_after_given = topup_after_given
        self.wait_for_given = wait_for_given
        self.wait_for_welcome = wait_for_welcome
        self.awaiting_given = False
        self.started: list = []               # tasks started since the last check, each with
        self.resumed_by_broker = 0            # whether it may not know yet (Cluster.check)
        self.session = 0
        self.registration = None              # (worker id, epoch) of our registration
        self.registered = False               # the welcome of our latest hello is read
        self.ledger = 0
        self.granted = self.done = 0
        self.cancelled: set = set()
        self.batches: list[list] = []         # [(w, e, s), tags] of runs not yet run
        self.current = None                   # (gid, attempt) running
        self.current_ledger = None            # the ledger it counts in
        self.to_release: list = []
        self.interrupted = False
        self.gave_back_for = None
        self.short = True                     # its tasks are short: it prefetches
        self.wake = False                     # the I/O thread asked the main thread to top up
        self.down = {"task": [], "ctl": []}   # broker -> worker, in flight
        self.up = {"task": [], "ctl": []}     # worker -> broker, in flight
        self.nonce = None                     # our registration's session nonce (welcome)
        self.stale = 0                        # messages the broker dropped: an old nonce

    @property
    def wid(self):
        return self.registration[0] if self.registration else None

    def window(self) -> int:
        return 1 + (PREFETCH if self.short else 0)

    def top_up(self) -> tuple[int, int]:
        if not self.registered:
            return 0, self.ledger
        n = max(0, self.window() - (self.granted - self.done))
        self.granted += n
        return n, self.ledger

    def send(self, sock: str, header: dict, payload=()) -> None:
        if header["t"] != "hello" and self.nonce is not None:   # as sent: the nonce we know
            header = {**header, "nonce": self.nonce}   # (seq: when delivered, see Cluster)
        self.up[sock].append((header, list(payload)))

    def ours(self, batch: tuple):
        """worker.py's _ours: True, False (skip, uncounted) or None (wait for the welcome)."""
        wid, epoch, session = batch
        if session == self.session:
            return not self.registered or self.registration == (wid, epoch)
        if self.registration != (wid, epoch):
            return False
        return True if self.registered or not self.wait_for_welcome else None

    # -- main thread
    def step_main(self) -> bool:
        """Start the next task, or skip it, or top up between run messages; False if idle."""
        if self.current is not None:
            return False
        if self.batches and not self.batches[0][1]:
            self.batches.pop(0)
        if not self.batches:
            if not self.wake:
                return False
            self.wake = False
            if self.to_release:
                self.send("task", {"t": "refetch", "tasks": self.to_release})
                self.to_release = []
            n, ledger = self.top_up()
            if n:
                self.send("task", {"t": "ready", "n": n, "l": ledger})
            return True
        batch, tags = self.batches[0]
        ours = self.ours(batch)
        if ours is None or (ours and self.awaiting_given):
            return False
        tag = tags.pop(0)
        if not ours:
            return True
        if tag in self.cancelled:
            self.cancelled.discard(tag)
            self.done += 1
            self.finish_send([], batch[1])
        else:
            self.current, self.current_ledger, self.epoch = tag, self.ledger, batch[1]
            # Could it know whether the task is still its own? Yes once its latest hello is
            # answered (registered), or if the broker has resumed it (a test oracle).
            self.started.append((tag, self.registered or self.resumed_by_broker == self.session))
        return True

    def finish(self, short: bool) -> bool:
        if self.current is None:
            return False
        status = "err" if self.interrupted else "ok"
        self.short = short if not self.interrupted else self.short
        item = [*self.current, status, 1, {}]
        if self.current_ledger == self.ledger:
            self.done += 1
        self.current, self.interrupted = None, False
        self.finish_send([item], self.epoch)
        return True

    def finish_send(self, items: list, epoch: int) -> None:
        n, ledger = self.top_up()
        if items or n:
            self.send("task", {"t": "done", "e": epoch, "items": items, "ready": n, "l": ledger},
                      [b"r"] * len(items))

    # -- I/O thread
    def hello(self) -> bool:
        self.registered = False
        self.session += 1
        header = {"t": "hello", "role": "worker", "labels": [], "host": "h", "pid": 1,
                  "task_identity": self.task_id, "session": self.session,
                  "running": [list(self.current)] if self.current else []}
        if self.registration is not None:
            header["resume"] = list(self.registration)
        self.send("ctl", header)
        return True

    def giveback(self) -> bool:
        if self.current is None or self.gave_back_for == self.current[0] or not self.registered:
            return False
        self.gave_back_for = self.current[0]
        self.short = False
        if self.granted - self.done > 1:
            self.awaiting_given = self.wait_for_given
            self.send("ctl", {"t": "giveback", "keep": self.current[0]})
        return True

    def receive(self, sock: str) -> bool:
        if not self.down[sock]:
            return False
        header = self.down[sock].pop(0)
        kind = header["t"]
        if kind == "run":
            self.batches.append([(header["w"], header["e"], header["s"]),
                                 [(g, a) for g, a, *_ in header["tasks"]]])
        elif kind == "cancel":
            for gid in header["ids"]:
                if self.current and self.current[0] == gid:
                    self.interrupted = True
                else:
                    self.cancelled.update((gid, a) for a in range(16))
        elif kind == "given":
            self.cancelled.update(tuple(x) for x in header["ids"])
            self.granted -= header["dropped"]
            self.wake = self.wake or self.topup_after_given
            self.awaiting_given = False
        elif kind == "welcome" and header["session"] == self.session:
            self.welcome(header)
        elif kind == "reconnect" and sock == "ctl" and self.registered:
            self.hello()
        return True

    def welcome(self, header: dict) -> None:
        """worker.py's _welcome."""
        self.registered = True
        self.wake = True
        self.nonce = header["nonce"]
        if header.get("resumed") and header["ledger"] == self.ledger:
            return
        self.registration = (header["id"], header["epoch"])
        self.ledger = header["ledger"]
        self.granted = self.done = 0
        self.cancelled.clear()
        self.awaiting_given = False
        for tag in header.get("kept", []):
            if tuple(tag) == self.current:
                self.current_ledger = self.ledger
                self.granted += 1
            else:
                self.to_release.append(tag)

    # -- the broker's view, as this ledger implies it
    def expected_credit(self, registration) -> int:
        """The credit the broker's `registration` of us must have, by our ledger."""
        if registration.ledger != self.ledger:
            return 0   # its welcome is not read yet: its credit can only come from us after
        asked = sum(h.get("n", 0) + h.get("ready", 0) for h, _ in self.up["task"]
                    if h.get("l") == self.ledger)
        voided = sum(h["dropped"] for h in self.down["ctl"] if h["t"] == "given")
        unfinished = sum(len(tags) for (w, _, _), tags in self.batches if w == registration.id) \
            + sum(len(h["tasks"]) for h in self.down["task"]
                  if h["t"] == "run" and h["w"] == registration.id) \
            + (self.current is not None and self.current_ledger == self.ledger)
        return self.granted - self.done - asked - voided - unfinished

    def idle(self) -> bool:
        return self.registered and not (
            self.current or any(tags for _, tags in self.batches) or self.wake
            or self.to_release or any(self.up.values()) or any(self.down.values()))


class Cluster:
    """A broker state, model workers and clients; every message goes through a channel."""

    def __init__(self, n_workers: int = 2, **worker_kw):
        self.sim = Sim(audit=False)   # (fair share is audited by test_fair_share)
        self.state = self.sim.state
        self.now = 0
        self.results: list = []
        self.clients = [b"c0", b"c1"]
        self.expired: set = set()             # registrations the broker found silent
        for c in self.clients:
            self.sim.client(c)
        self.workers = [WorkerModel(f"w{i}".encode(), **worker_kw) for i in range(n_workers)]
        self.by_identity = {}
        for w in self.workers:
            self.by_identity[w.task_id], self.by_identity[w.ctl] = (w, "task"), (w, "ctl")
            w.hello()
        self.check()

    def handle(self, identity: bytes, header: dict, payload=()) -> None:
        self.route(self.state.handle(identity, stamp(self.state, identity, header, self.now),
                                     list(payload), None, self.now))

    def route(self, out) -> None:
        for s in out:
            if s.header["t"] == "hb":
                continue   # the broker's heartbeats change nothing the model tracks
            if s.identity in self.by_identity:
                w, sock = self.by_identity[s.identity]
                w.down[sock].append(s.header)
            elif s.header["t"] == "results":
                self.results += [(s.identity, item[0], item[1]) for item in s.header["items"]]

    def deliver_up(self, w: WorkerModel, sock: str) -> bool:
        if not w.up[sock]:
            return False
        header, payload = w.up[sock].pop(0)
        self.from_worker(w, sock, header, payload)
        return True

    def from_worker(self, w: WorkerModel, sock: str, header: dict, payload=()) -> None:
        identity = w.task_id if sock == "task" else w.ctl
        # A seq drawn when delivered is one drawn when sent: each socket is FIFO.
        header = stamp(self.state, identity, header, self.now) if header["t"] == "hello" \
            else {**header, "seq": next_seq(self.state, identity)} if "nonce" in header \
            else header
        try:
            out = self.state.handle(identity, header, payload, None, self.now)
        except ProtocolError:
            peer = self.state.peer(identity)
            if peer is None or header.get("nonce") == peer.nonce:
                raise   # only a message of an earlier registration may be dropped
            w.stale += 1   # sent before the welcome of a new registration: dropped
            return
        if any(s.header["t"] == "welcome" and s.header.get("resumed") for s in out):
            w.resumed_by_broker = header["session"]
        self.route(out)

    def client(self, identity: bytes, t: str, payload=(), **header) -> None:
        self.handle(identity, {"t": t, **header}, payload)

    def expire(self, victim: WorkerModel) -> None:
        """Time passes, ticked every heartbeat; every peer but `victim` heartbeats."""
        for _ in range(4):
            self.now += HB
            for peer in self.clients:
                self.handle(peer, {"t": "hb"})
            for w in self.workers:
                if w is not victim and w.ctl in self.state.worker_by_identity:
                    self.from_worker(w, "ctl", {"t": "hb", "nonce": w.nonce})
            before = set(self.state.workers)
            self.route(self.state.tick(self.now))
            self.expired |= before - set(self.state.workers)

    def check(self) -> None:
        # A task starts only where the broker holds it, or on a registration the broker has
        # dropped with it (charged as lost there) if the worker cannot know yet: it runs twice
        # only if its worker "died". A worker waiting for the welcome of a hello the broker
        # has not resumed must not start a task of its old registration.
        for w in self.workers:
            for (gid, attempt), innocent in w.started:
                t = self.state.tasks.get(gid)   # None: cancelled or done meanwhile (fine)
                assert t is None or (t.worker, t.attempt) == (w.wid, attempt) or \
                    (w.wid in t.lost_on and innocent), \
                    f"{w.wid} started task {gid} at attempt {attempt}, which the broker has " \
                    f"at attempt {t.attempt} on {t.worker or 'its queue'}: it may run twice"
            w.started.clear()
        for t in self.state.tasks.values():   # registering again is no loss
            assert set(t.lost_on) <= self.expired, \
                f"task {t.gid} was charged a loss on {t.lost_on}, of which only " \
                f"{sorted(self.expired & set(t.lost_on))} were found silent"
        ledgers = {}
        for w in self.workers:
            wid = self.state.worker_by_identity.get(w.ctl)
            if wid is not None:   # else dropped: it registers again once it hears of it
                reg = self.state.workers[wid]
                ledgers[wid] = (w.expected_credit(reg), w.window(), w.idle())
        self.state.check_invariants(workers=ledgers)

    def settle(self) -> None:
        """Deliver everything and let every task run to its end; then all are idle. A worker
        the broker dropped heartbeats, as worker.py does, and so hears it must register."""
        for _ in range(10_000):
            progress = False
            for w in self.workers:
                progress |= w.receive("ctl") | w.receive("task") | w.step_main() | \
                    w.finish(short=True) | self.deliver_up(w, "ctl") | self.deliver_up(w, "task")
                if w.ctl not in self.state.worker_by_identity and not w.up["ctl"] \
                        and not w.down["ctl"]:
                    w.send("ctl", {"t": "hb"})
                    progress = True
                self.check()
            if not progress:
                return
        raise AssertionError("the cluster did not settle")
