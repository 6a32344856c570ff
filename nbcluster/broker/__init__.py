"""The broker process: the relay every client, worker and supervisor connects to.

`state` is the pure state machine (no sockets, no clock); `loop` is the ROUTER loop around
it; `functions` keeps function payloads; `supervisors` keeps what supervisors vouch for.
Run it with `python -m nbcluster.broker`.

May import: `nbcluster.wire`, `nbcluster.errors`. Never client, worker or notebook code.
"""
