"""What crosses a socket: the wire format every process shares.

Frames and signing (`protocol`), objects to frames and back (`serialize`, `oob_bytes`, `shm`),
failures as data and rebuilt (`tracebacks`, `remote`), sockets (`transport`), encryption
(`curve`), connection files (`connection`) and message limits (`message_limit`).

May import: `nbcluster.errors`, `nbcluster.runtime`. Nothing from a process's own package.
"""
