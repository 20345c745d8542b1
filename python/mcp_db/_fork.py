"""What a forked child does with the stores and buses its parent built; not public.

``gunicorn --preload`` builds the app in the master, then forks the workers; so does any
server started with ``multiprocessing``'s fork method. A fork copies memory but keeps only
the thread that forked: the core's tasks (the event writer, the connection's driver, the
subscriptions) stay with the parent, and an object built on them would wait for them
forever in the child. So, right after a fork, in the child (``os.register_at_fork``):

- the core builds a runtime of the child's own on first use (``src/runtime.rs``);
- every store and bus rebuilds its core parts with the same settings, on new connections
  (:meth:`_core.Deployment.reopen`), in the order they were built: a bus built from a store
  takes the store's new deployment. What the parent stored is in Redis, readable by them;
- each event loop gets a new wake-up socket (``_wake``): the parent's is shared with it.

The parent's parts are kept, never freed: freeing them in the child would close or touch
connections and locks that belong to the parent.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from typing import Any, Protocol

from mcp_db import _wake

logger = logging.getLogger("mcp_db")


class Reopens(Protocol):
    def _after_fork(self) -> None:
        """Rebuilds this object's core parts for this process (the child)."""


#: Stores and buses, by the order they were built in.
_objects: weakref.WeakValueDictionary[int, Reopens] = weakref.WeakValueDictionary()
_order = itertools.count()
#: What the parent's objects held, kept alive for good in the child.
_left_behind: list[Any] = []


def register(obj: Reopens) -> None:
    """Has ``obj._after_fork()`` called in every child forked from now on."""
    _objects[next(_order)] = obj


def leave_behind(*parts: Any) -> None:
    """Keeps the parent's ``parts`` alive in the child, never freed (see the module)."""
    _left_behind.extend(parts)


def _after_fork_in_child() -> None:
    leave_behind(_wake.forget())
    for key in sorted(_objects.keys()):
        obj = _objects.get(key)
        if obj is None:
            continue
        try:
            obj._after_fork()
        except Exception:  # the hook of os.fork: nothing may raise out of it
            logger.exception("%r cannot reconnect in the forked process %d", obj, os.getpid())


os.register_at_fork(after_in_child=_after_fork_in_child)
