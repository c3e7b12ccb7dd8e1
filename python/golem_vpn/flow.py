"""Write-side flow control shared by golem-vpn's asyncio transports.

A transport that queues bytes it could not send yet tells its protocol to pause writing when
the queue passes the high-water mark and to resume once it falls to the low-water mark; that
is what makes ``StreamWriter.drain()`` block. :class:`WriteFlowControl` holds the marks and
the paused state; the transport calls :meth:`~WriteFlowControl._maybe_pause_protocol` after
queueing and :meth:`~WriteFlowControl._maybe_resume_protocol` after sending, and reports its
queue size through ``get_write_buffer_size()``.
"""

from __future__ import annotations

import asyncio

__all__ = ["WriteFlowControl"]


class WriteFlowControl:
    """The ``set_write_buffer_limits`` half of ``asyncio.WriteTransport``, reusable."""

    _protocol: asyncio.BaseProtocol

    def _init_flow_control(self, high: int) -> None:
        self._high = high
        self._low = high // 4
        self._default_high = high
        self._protocol_paused = False

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError  # the transport knows its queue

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = self._default_high if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def _maybe_pause_protocol(self) -> None:
        if self.get_write_buffer_size() > self._high and not self._protocol_paused:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
