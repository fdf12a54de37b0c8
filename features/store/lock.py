"""One writer per store: an advisory flock that the kernel drops when the writer dies (even by SIGKILL)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .model import StoreError


class WriterLock:
    def __init__(self, lock_path: Path, store_path: Path):
        self.lock_path = Path(lock_path)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{store_path}: cannot open for writing ({self.lock_path}: {exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StoreError(f"{store_path}: already open for writing by another process (pid {holder}); "
                             "a store has a single writer — use per-shard stores and `tal-store merge`") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
