"""What crosses a socket: the wire format every process shares.

Frames and signing (`protocol`), objects to frames and back (`serialize`, `pickling`,
`oob_bytes`, `shm`), functions as payloads named by digest (`functions`), failures as data
and rebuilt (`tracebacks`, `remote`), sockets and stdin lines (`transport`), encryption
(`curve`), connection files (`connection`) and message limits (`message_limit`).

May import: `nbcluster.errors`, `nbcluster.runtime`. Nothing from a process's own package.
"""
