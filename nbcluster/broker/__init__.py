"""The broker process: the relay every client, worker and supervisor connects to.

`state` is the pure state machine (no sockets, no clock), split by job: `peers` (hello,
resume, dropping peers), `client_messages` and `worker_messages` (one handler per message
type), `queues` (tasks waiting), `dispatch` (tasks to workers with credit), `liveness`
(heartbeats, expiry, our own stalls), `inspection` (status, invariants), `records` (the rows
it keeps), `functions` (function payloads), `supervisors` (what supervisors vouch for).
`loop` is the ROUTER loop around it. Run it with `python -m nbcluster.broker`.

May import: `nbcluster.wire`, `nbcluster.errors`. Never client, worker or notebook code.
"""
