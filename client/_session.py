"""Session helpers: keep a server-side generation session open across calls.

The first ``generate``/``stream`` opens the session (``keep_session=True`` with no id) and
remembers the id the server returns; later calls continue it. Leaving the ``with`` block (or
``close()``) ends it with ``EndSession``, ignoring NOT_FOUND (already expired or evicted).
A session serves one request at a time: overlapping calls fail with ``AbortedError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._exceptions import NotFoundError
from ._types import Generation, GenerationChunk

if TYPE_CHECKING:
    from ._async_client import AsyncClient
    from ._client import Client

DECODING_OPTIONS = frozenset({"temperature", "top_k", "top_p", "seed", "stop"})


class _SessionState:
    """What both session helpers share: the id, the model, the decoding options."""

    def __init__(self, model: str, session_id: str, decoding: dict[str, Any]) -> None:
        unknown = set(decoding) - DECODING_OPTIONS
        if unknown:
            raise TypeError(f"unknown decoding options: {', '.join(sorted(unknown))}")
        self.model = model
        self.session_id = session_id
        """The server's id once the session is open, else ``""``."""
        self.total_tokens: int | None = None
        """Characters the session had seen, known once it was ended."""
        self._decoding = decoding

    def _call_kwargs(self, max_tokens: int, timeout: float | None) -> dict[str, Any]:
        return {
            "model": self.model,
            "max_tokens": max_tokens,
            "session_id": self.session_id,
            "keep_session": True,
            "timeout": timeout,
            **self._decoding,
        }

    def _observe(self, session_id: str) -> None:
        if session_id and not self.session_id:
            self.session_id = session_id

    def _take_id(self) -> str:
        session_id, self.session_id = self.session_id, ""
        return session_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, session_id={self.session_id!r})"


class Session(_SessionState):
    """A generation session over a :class:`Client`; use it as a context manager."""

    def __init__(
        self, client: Client, model: str = "", session_id: str = "", **decoding: Any
    ) -> None:
        super().__init__(model, session_id, decoding)
        self._client = client

    def generate(
        self, prefix: str = "", *, max_tokens: int = 0, timeout: float | None = None
    ) -> Generation:
        """Feed ``prefix`` into the session and generate up to ``max_tokens`` characters."""
        result = self._client.generate(prefix, **self._call_kwargs(max_tokens, timeout))
        self._observe(result.session_id)
        return result

    def stream(
        self, prefix: str = "", *, max_tokens: int = 0, timeout: float | None = None
    ) -> Iterator[GenerationChunk]:
        """Like :meth:`generate`, streamed chunk by chunk."""
        for chunk in self._client.stream(prefix, **self._call_kwargs(max_tokens, timeout)):
            self._observe(chunk.session_id)
            yield chunk

    def close(self) -> int | None:
        """End the session; returns its total tokens, or None if it was never opened or is gone.

        A later ``generate`` opens a fresh session.
        """
        session_id = self._take_id()
        if not session_id:
            return None
        try:
            self.total_tokens = self._client.end_session(session_id)
        except NotFoundError:
            self.total_tokens = None
        return self.total_tokens

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSession(_SessionState):
    """A generation session over an :class:`AsyncClient`; use it with ``async with``."""

    def __init__(
        self, client: AsyncClient, model: str = "", session_id: str = "", **decoding: Any
    ) -> None:
        super().__init__(model, session_id, decoding)
        self._client = client

    async def generate(
        self, prefix: str = "", *, max_tokens: int = 0, timeout: float | None = None
    ) -> Generation:
        """Feed ``prefix`` into the session and generate up to ``max_tokens`` characters."""
        result = await self._client.generate(prefix, **self._call_kwargs(max_tokens, timeout))
        self._observe(result.session_id)
        return result

    async def stream(
        self, prefix: str = "", *, max_tokens: int = 0, timeout: float | None = None
    ) -> AsyncIterator[GenerationChunk]:
        """Like :meth:`generate`, streamed chunk by chunk."""
        chunks = self._client.stream(prefix, **self._call_kwargs(max_tokens, timeout))
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                self._observe(chunk.session_id)
                yield chunk

    async def close(self) -> int | None:
        """End the session; returns its total tokens, or None if it was never opened or is gone.

        A later ``generate`` opens a fresh session.
        """
        session_id = self._take_id()
        if not session_id:
            return None
        try:
            self.total_tokens = await self._client.end_session(session_id)
        except NotFoundError:
            self.total_tokens = None
        return self.total_tokens

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
