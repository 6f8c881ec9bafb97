"""RWLock: many readers or one writer, for the indexes' thread safety.

Searches and saves read (any number at once); add / upsert / remove / train / reserve write
(one at a time, with no reader inside). Writers are preferred: once a writer waits, new readers
wait behind it, so a stream of searches cannot starve an update, and a search waits at most for
the writes queued before it.
"""

from __future__ import annotations

import contextlib
import functools
import threading


class RWLock:
    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # readers inside
        self._writer = False  # a writer inside
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _holding(side: str):
    """A decorator running an index method under one side ("read" / "write") of `self._lock`."""

    def decorate(method):
        @functools.wraps(method)
        def locked(self, *args, **kwargs):
            with getattr(self._lock, side)():
                return method(self, *args, **kwargs)

        return locked

    return decorate


reads = _holding("read")  # searches, gets, saves: any number at once
writes = _holding("write")  # updates and training: one at a time, alone
