"""Client-chosen sequence ids (the Open Inference Protocol's) on top of rnnserve sessions.

A sequence is a session whose id the client picked: ``start`` opens a session, later requests
with the same id continue it, ``end`` ends it after its request. The ids live in a namespace per
client identity (:func:`rnnserve.server.identity.current_client`, the bearer token's name), so one
client can never reach another's sequence, even with the same id. Everything goes through the
Generator's public API (``generate`` with ``keep_session``/``session_id``, ``end_session``), so
a sequence continues exactly as a session continued over ``rnnserve.v1`` does.

Misuse and its status (via the domain error table):
- ``start`` or ``end`` without an id: INVALID_ARGUMENT (``sequence_id``);
- a continuing request whose id this client has not started (or has ended): NOT_FOUND;
- the session behind the id expired or was evicted: NOT_FOUND, saying which, and the id is freed;
- two requests of one sequence at once: ABORTED (the session is busy);
- ``start`` on an id that is open: the old session is ended and a new one begins (a restart).

The table of ids is per server process and bounded (least recently used ids are forgotten past
``capacity``, which is the session cap, so a forgotten id's session is gone or about to be).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from rnnserve.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    SessionNotFoundError,
)
from rnnserve.server.identity import current_client
from rnnserve.server.serving.generation import Generator
from rnnserve.server.serving.requests import GenerateParams, GenerationChunk


@dataclass(frozen=True)
class SequenceFlags:
    """A request's sequence parameters. ``id`` is '' for none; ``5`` and ``"5"`` are distinct."""

    id: str = ""
    start: bool = False
    end: bool = False

    @property
    def shown(self) -> str:
        return self.id.partition(":")[2]


class SequenceNotFoundError(NotFoundError):
    def __init__(self, sequence_id: str, detail: str) -> None:
        super().__init__(f"sequence_id: sequence {sequence_id!r} {detail}")


class Sequences:
    """Maps (client, sequence id) → session id, and runs generations within sequences."""

    def __init__(self, generator: Generator, capacity: int) -> None:
        self._generator = generator
        self._capacity = max(1, capacity)
        self._ids: OrderedDict[tuple[str, str], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    async def generate(self, params: GenerateParams, flags: SequenceFlags
                       ) -> AsyncIterator[GenerationChunk]:
        """``Generator.generate`` within the sequence ``flags`` name (or none); yields its chunks."""
        if not flags.id:
            if flags.start or flags.end:
                raise InvalidArgumentError(
                    "sequence_id", "sequence_start and sequence_end need a sequence_id")
            async with contextlib.aclosing(self._generator.generate(params)) as chunks:
                async for chunk in chunks:
                    yield chunk
            return
        key = (current_client(), flags.id)
        if flags.start:
            old = self._ids.pop(key, None)
            if old is not None:
                with contextlib.suppress(NotFoundError):
                    await self._generator.end_session(old)
            params = dataclasses.replace(params, session_id="", keep_session=not flags.end)
        else:
            session_id = self._ids.get(key)
            if session_id is None:
                raise SequenceNotFoundError(
                    flags.shown, "is not open for this client (send sequence_start first)")
            self._ids.move_to_end(key)
            params = dataclasses.replace(params, session_id=session_id, keep_session=False)
        last: GenerationChunk | None = None
        try:
            async with contextlib.aclosing(self._generator.generate(params)) as chunks:
                async for chunk in chunks:
                    if chunk.finish_reason is not None:
                        last = chunk  # held back until the generator has stored the state
                        continue
                    yield chunk
        except SessionNotFoundError as exc:
            self._ids.pop(key, None)
            raise SequenceNotFoundError(flags.shown, f"has ended: {exc.message}") from exc
        if last is not None:
            await self._finish(key, last.session_id or params.session_id, flags)
            yield last

    async def _finish(self, key: tuple[str, str], session_id: str, flags: SequenceFlags) -> None:
        """A generation of the sequence completed: remember its session, or end it."""
        if not session_id:
            return
        if flags.end:
            self._ids.pop(key, None)
            with contextlib.suppress(NotFoundError):
                await self._generator.end_session(session_id)
            return
        self._ids[key] = session_id
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
