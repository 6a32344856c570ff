"""Large buffers through shared memory between processes on the same host.

A buffer of at least SHM_MIN_BYTES (a numpy array, bytes) that goes to a process on this host
is written once into a file in /dev/shm and the message carries only its name, so it is
neither copied through the sockets nor hashed for the signature. The file is created with
owner-only permissions: a process that could change it runs as the cluster's user and could
read the cluster key anyway. The reader maps the file copy-on-write, so a task that changes
its input never changes what a re-run of the task would see.

Who removes a file: the client removes its argument files when the task ends; the client
removes a result file as soon as it has mapped it (the mapping outlives the name); a worker
removes result files nobody took within ORPHAN_AFTER_S (a result dropped as late);
LocalCluster removes every file of its cluster when it closes, and if its owner is killed
before, its broker and supervisors do (`remove_cluster_files`) once they see it gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import shutil
import time

from .protocol import Frame

__all__ = ["SharedMemory", "SHM_MIN_BYTES", "available", "remove_cluster_files"]

SHM_DIR = "/dev/shm"
SHM_MIN_BYTES = 1 << 20
REF_PREFIX = b"nbc-shm:"
ORPHAN_AFTER_S = 300.0
WRITE_CHUNK = 1 << 30   # bytes per write (Linux writes at most ~2 GiB at once)


def available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


def cluster_prefix(key: bytes) -> str:
    """File names of a cluster start with this (derived from its key, so every peer agrees)."""
    return "nbc-" + hashlib.sha256(b"nbcluster shm" + key).hexdigest()[:12]


class SharedMemory:
    """Writes buffers to, and maps them from, this cluster's files in /dev/shm."""

    def __init__(self, key: bytes):
        self.prefix = cluster_prefix(key)
        self._name = re.compile(re.escape(self.prefix) + r"-[0-9a-f]{24}\Z")
        self.created: dict[str, float] = {}   # name -> time, for files this process made

    def put(self, buf: memoryview) -> bytes:
        """Copy buf into a new file; returns the reference frame that names it."""
        name = f"{self.prefix}-{os.urandom(12).hex()}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf
            os.ftruncate(fd, view.nbytes)
            # Written, not copied into a mapping: a write releases the GIL, so a worker
            # copying a GiB here still heartbeats meanwhile.
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:done + WRITE_CHUNK], done)
        finally:
            os.close(fd)
        self.created[name] = time.monotonic()
        return REF_PREFIX + name.encode()

    def get(self, ref: bytes, remove: bool = False) -> memoryview:
        """Map the file a reference names (copy-on-write); with remove, unlink it once mapped."""
        name = bytes(ref)[len(REF_PREFIX):].decode("ascii", "replace")
        if not bytes(ref).startswith(REF_PREFIX) or not self._name.match(name):
            raise ValueError(f"not a shared-memory reference of this cluster: {bytes(ref)[:80]!r}")
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            m = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else b""
        finally:
            os.close(fd)
            if remove:
                self.remove(name)
        return memoryview(m)

    @staticmethod
    def is_ref(frame: Frame) -> bool:
        view = memoryview(frame)
        return view.nbytes < 256 and bytes(view[:len(REF_PREFIX)]) == REF_PREFIX

    def remove(self, name: str) -> None:
        self.created.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))

    def remove_orphans(self) -> None:
        """Remove files this process made long ago that nobody took."""
        limit = time.monotonic() - ORPHAN_AFTER_S
        for name in [n for n, t in self.created.items() if t < limit]:
            self.remove(name)

    def remove_all_of_cluster(self) -> int:
        """Remove every file of this cluster (LocalCluster.close); returns how many."""
        n = 0
        for name in os.listdir(SHM_DIR):
            if self._name.match(name):
                self.remove(name)
                n += 1
        return n


def remove_cluster_files(key: bytes, cluster_dir: str | None = None) -> None:
    """Remove every shared-memory file of the cluster with `key`, and a LocalCluster's temp
    directory (named nbcluster-*: nothing else is removed): what its owner removes on close."""
    if available():
        SharedMemory(key).remove_all_of_cluster()
    if cluster_dir and os.path.basename(cluster_dir.rstrip("/")).startswith("nbcluster-"):
        shutil.rmtree(cluster_dir, ignore_errors=True)
