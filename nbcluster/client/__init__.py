"""The client side: submit work to a broker, get futures back.

`client` (the Client and its I/O thread), `futures`, `options`, `waiting`, `chunks` (what
`Client.map` ships), `executor` (concurrent.futures on a client), `bars` (progress),
`broker_silence` (noticing a lost broker), `english` (counts in words).

May import: `nbcluster.wire`, `nbcluster.errors`, `nbcluster.report`, `nbcluster.runtime`.
Never broker, worker, cluster, patterns or notebook code.
"""
