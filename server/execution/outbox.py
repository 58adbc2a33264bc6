"""The one object a generation shares between the event loop and the device thread.

The engine's executor owns a generation's progress; the request is immutable; what crosses the
thread boundary is this :class:`Outbox`. Its text, end and error are written on the event loop
only (the engine posts them there with ``call_soon_threadsafe``); the only thing the device
thread reads is :attr:`Outbox.cancelled`, a flag the loop sets when the caller goes away.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

R = TypeVar("R")


class Outbox(Generic[R]):
    """Tokens waiting for their request; whatever piled up is taken at once (coalescing).

    ``put`` / ``finish`` / ``fail`` / ``drop`` run on the event loop; the last three return
    whether they ended the outbox (False when it had already ended), so that whoever counts
    running generations counts each one exactly once.
    """

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._event = asyncio.Event()
        self.done = False
        self.cancelled = False  # set by the caller (loop), read by the engine (device thread)
        self.error: BaseException | None = None
        self.result: R | None = None  # set by ``finish``
        self.tokens = 0  # tokens put so far

    def cancel(self) -> None:
        """The caller is gone: the engine drops the generation at its next step boundary."""
        self.cancelled = True

    def put(self, text: str, tokens: int) -> None:
        if self.done:
            return
        if text:
            self._pieces.append(text)
        self.tokens += tokens
        self._event.set()

    def finish(self, result: R) -> bool:
        if self.done:
            return False
        self.result, self.done = result, True
        self._event.set()
        return True

    def fail(self, error: BaseException) -> bool:
        if self.done:
            return False
        self.error, self.done = error, True
        self._event.set()
        return True

    def drop(self) -> bool:
        """Ended without a result (cancelled)."""
        if self.done:
            return False
        self.done = True
        self._event.set()
        return True

    async def take(self) -> tuple[str, int]:
        """Wait for text (or the end); returns everything buffered and the tokens put so far.

        Raises the generation's error once the text before it has been taken.
        """
        while not self._pieces and not self.done:
            self._event.clear()
            await self._event.wait()
        if self.error is not None and not self._pieces:
            raise self.error
        text = "".join(self._pieces)
        self._pieces.clear()
        return text, self.tokens
