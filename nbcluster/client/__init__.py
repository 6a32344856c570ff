"""The client side: submit work to a broker, get futures back.

`client` (the Client's public face; `connect` makes one from a connection file), made
of `outbox` (what user threads queue), `io_thread` (the thread that owns the socket), `inbox`
(what the broker sends back) and `callbacks` (the thread that runs result callbacks);
`futures`, `options`, `waiting`, `chunks` (what `Client.map` ships, and gathering its
results), `executor` (concurrent.futures on a client), `status` (the types of the broker's
status reply), `bars` (progress), `broker_silence` (noticing a lost broker), `latest` (the
client made last, for operations given none), `english` (counts in words).

May import: `nbcluster.wire`, `nbcluster.errors`, `nbcluster.report`, `nbcluster.runtime`.
Never broker, worker, cluster, patterns or notebook code.
"""
