"""Who may open the database file, and in what order (part of the store; see core.store.connection).

Two locks, one per level:

* :class:`FairLock`, inside a process: a re-entrant lock that hands itself to waiting threads
  in arrival order. ``threading.RLock`` lets a thread that has just released take it again at
  once, so with 50 sessions one of them could wait behind dozens of others' transactions.
* :class:`FileLock`, between processes: an advisory ``flock`` on ``<db>.lock`` plus a queue of
  tickets in ``<db>.queue/``. A process that finds the file taken (or others already waiting)
  writes a ticket named by the time it started waiting and may take the lock only when no older
  live ticket is left, so waiting processes are served in order and the holder's next thread
  cannot take the file back before the waiter has had its turn. The holder sees the tickets
  after each transaction (:meth:`FileLock.others_wait`) and lets go.

A ticket is alive while its owner holds a ``flock`` on it, so a process killed with -9 leaves
a ticket that the next reader of the queue recognises as dead and removes; nothing depends on
file contents or modification times (a marker with an mtime in the future means nothing). The
lock file itself may be deleted or replaced while someone holds it (an administrator cleaning
up): a lock taken on a file that is no longer at ``<db>.lock`` is given back and taken again on
the file that is there now.

Every failure to reach the lock (a directory where the lock file should be, a read-only or full
disk) is a :class:`~core.errors.StoreError` that says nothing was saved.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import threading
import time
import uuid

from core.errors import StoreBusy, StoreError

# How often a waiting process looks whether its turn has come.
POLL_S = 0.005


class FairLock:
    """A re-entrant lock that serves waiting threads first come, first served.

    >>> lock = FairLock()
    >>> with lock:
    ...     with lock:  # re-entrant
    ...         lock.owned()
    True
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._owner: int | None = None
        self._count = 0
        self._waiters: collections.deque[tuple[int, threading.Event]] = collections.deque()

    def acquire(self, blocking: bool = True) -> bool:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._count += 1
                return True
            if self._owner is None and not self._waiters:
                self._owner, self._count = me, 1
                return True
            if not blocking:
                return False
            handed = threading.Event()
            self._waiters.append((me, handed))
        try:
            handed.wait()
        except BaseException:  # interrupted while waiting: leave the queue (or pass the lock on)
            with self._mutex:
                if self._owner == me:
                    self._count = 1
                    self._release_locked()
                else:
                    self._waiters.remove((me, handed))
            raise
        return True

    def release(self) -> None:
        with self._mutex:
            if self._owner != threading.get_ident():
                raise RuntimeError("FairLock released by a thread that does not hold it")
            self._count -= 1
            if self._count == 0:
                self._release_locked()

    def _release_locked(self) -> None:
        if self._waiters:  # hand over directly: nobody can slip in between
            owner, handed = self._waiters.popleft()
            self._owner, self._count = owner, 1
            handed.set()
        else:
            self._owner, self._count = None, 0

    def owned(self) -> bool:
        return self._owner == threading.get_ident()

    def waiting(self) -> int:
        """Threads waiting for the lock (not counting the holder)."""
        return len(self._waiters)

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _nothing_saved(path: str, what: str, exc: OSError) -> StoreError:
    return StoreError(f"{path}: {what} ({exc.strerror or type(exc).__name__}); nothing was "
                      f"saved. Tell the administrator (is the disk full, or was the file "
                      f"replaced by a folder?)")


class FileLock:
    """The inter-process lock of one database file, with a queue served in order.

    Args:
        db_path: the database file; the lock is ``<db>.lock`` and the queue ``<db>.queue/``.
    """

    def __init__(self, db_path: str) -> None:
        self.lock_path = db_path + ".lock"
        self.queue_dir = db_path + ".queue"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    # -- the lock file -------------------------------------------------------------------------
    def _open_lock_file(self) -> int:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _nothing_saved(self.lock_path, "cannot open the database's lock file", exc) \
                from exc

    def _try_lock(self, fd: int) -> bool | None:
        """True: locked. False: someone else holds it. None: locked a file that is no longer
        at ``lock_path`` (deleted or replaced meanwhile); reopen and try again."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            here = os.stat(self.lock_path)
            mine = os.fstat(fd)
            same = (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        return True

    # -- the queue -------------------------------------------------------------------------------
    def _tickets(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.queue_dir)
                          if n.endswith(".ticket") and not n.startswith("."))
        except OSError:  # no queue yet, or not a folder: nobody is queued
            return []

    def _alive(self, name: str) -> bool:
        """A ticket is alive while its owner holds a flock on it; a dead one is removed."""
        path = os.path.join(self.queue_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(OSError):  # its owner died (kill -9): clear it away
                os.unlink(path)
            return False
        finally:
            os.close(fd)

    def _ahead(self, mine: str | None) -> bool:
        """Is a live ticket (of another waiter) ahead of ``mine`` (of any, when None)?"""
        for name in self._tickets():
            if mine is not None and name >= mine:
                return False
            if self._alive(name):
                return True
        return False

    def others_wait(self) -> bool:
        """Does any other process (or another Store of this one) wait for the file?"""
        return self._ahead(None)

    def _enqueue(self) -> tuple[str, int] | None:
        """Write this waiter's ticket; None when it cannot be written (e.g. the disk is full):
        then the waiter polls without a place in the queue rather than failing."""
        name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:12]}.ticket"
        tmp = os.path.join(self.queue_dir, "." + name)
        try:
            os.makedirs(self.queue_dir, exist_ok=True)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            # Locked before it gets its visible name, so nobody can take it for a dead one.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, os.path.join(self.queue_dir, name))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            os.close(fd)
            return None
        return name, fd

    def _dequeue(self, ticket: tuple[str, int] | None) -> None:
        if ticket is None:
            return
        name, fd = ticket
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.queue_dir, name))
        os.close(fd)

    # -- acquire and release -------------------------------------------------------------------
    def acquire(self, deadline: float, what: str = "the database") -> float:
        """Take the lock, waiting in turn until ``deadline`` (``time.monotonic()``).

        Returns:
            Seconds waited.
        Raises:
            StoreBusy: still not our turn at the deadline.
            StoreError: the lock file cannot be opened (nothing was saved).
        """
        if self._fd is not None:
            raise StoreError(f"{self.lock_path}: already held by this store")
        t0 = time.monotonic()
        fd = self._open_lock_file()
        ticket: tuple[str, int] | None = None
        queued = False
        try:
            while True:
                # Our turn: nobody queued ahead (or, when no ticket could be written, e.g. on a
                # full disk, whenever the lock is free: late rather than never).
                if (queued and ticket is None) or not self._ahead(ticket[0] if ticket else None):
                    got = self._try_lock(fd)
                    if got:
                        break
                    if got is None:  # the lock file was deleted or replaced: use the new one
                        os.close(fd)
                        fd = self._open_lock_file()
                        continue
                if not queued:
                    ticket, queued = self._enqueue(), True
                    continue
                if time.monotonic() > deadline:
                    raise StoreBusy(
                        f"{what}: database busy: another process kept the database for more "
                        f"than {deadline - t0:.0f} s; nothing was saved. Try again")
                time.sleep(POLL_S)
        except BaseException:
            os.close(fd)
            raise
        finally:
            self._dequeue(ticket)
        self._fd = fd
        return time.monotonic() - t0

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
