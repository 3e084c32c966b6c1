"""The streaming masker: a byte stream in, the same stream out with every registered secret form replaced.

Output is released line by line (a carriage return ends a line too, as progress bars use
it). A line that stays incomplete (a prompt, a very long line) is released when the owner
calls `flush()` (after an idle time, or a size bound), except for the longest tail that
could still grow into a secret form: that tail waits for the next bytes. So a secret split
across reads, pipe buffers or `write()` calls is masked exactly as if it had arrived whole.

Matching is leftmost-longest over the registered forms (stepkit.secret.byte_forms). Every
decision made before the held-back tail is final (no later byte can change it), which is
why the output is the same for every way of cutting the input into pieces.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from stepkit import secret

MARK = secret.REDACTED.encode()
# An incomplete line longer than this is released (minus the held-back tail) without
# waiting for its end: a tool printing megabytes without a newline must still be seen.
MAX_PENDING = 64 * 1024
_LINE_ENDS = (b"\n", b"\r")


def _held_start(buf: bytes, start: int, forms: tuple[bytes, ...]) -> int:
    """The earliest index >= start from which buf's tail is a proper prefix of some form
    (the bytes that must wait, since more input could complete a secret); len(buf) if none."""
    if not forms:
        return len(buf)
    longest = len(forms[0])
    firsts = {f[0] for f in forms}
    for i in range(max(start, len(buf) - longest + 1), len(buf)):
        if buf[i] not in firsts:
            continue
        tail = buf[i:]
        if any(len(f) > len(tail) and f.startswith(tail) for f in forms):
            return i
    return len(buf)


def mask_bytes(data: bytes) -> bytes:
    """data with every registered form replaced: what a Masker emits for it in total."""
    pattern, _ = secret.byte_forms()
    return pattern.sub(MARK, data) if pattern is not None else data


class Masker:
    """Masks a byte stream on its way to `write`; thread-safe. `close()` releases everything."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._buf = b""
        self._lock = threading.Lock()
        self._closed = False

    @property
    def pending(self) -> int:
        """Bytes received but not yet released."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Take more of the stream; release every complete line that is safe to release."""
        if not data:
            return
        with self._lock:
            self._buf += data
            self._release("lines")
            if len(self._buf) > MAX_PENDING:
                self._release("partial")

    def flush(self) -> None:
        """Release an incomplete line too, holding back only what could start a secret."""
        with self._lock:
            self._release("partial")

    def close(self) -> None:
        """End of stream: release everything, masked."""
        with self._lock:
            self._release("all")
            self._closed = True

    def _release(self, mode: str) -> None:
        buf = self._buf
        if not buf:
            return
        pattern, forms = secret.byte_forms()
        hold = len(buf) if mode == "all" else _held_start(buf, 0, forms)
        # (raw end, bytes out) for each piece, in order: plain runs and marks.
        pieces: list[tuple[int, int, bytes | None]] = []
        pos = 0
        while pattern is not None:
            match = pattern.search(buf, pos)
            if match is None or match.start() >= hold:
                break
            if match.start() > pos:
                pieces.append((pos, match.start(), None))
            pieces.append((match.start(), match.end(), MARK))
            pos = match.end()
            if pos > hold:
                # The match ran past where the held tail began: what waits now starts after it.
                hold = len(buf) if mode == "all" else _held_start(buf, pos, forms)
        if hold > pos:
            pieces.append((pos, hold, None))
        cut = hold if mode != "lines" else self._last_line_end(buf, pieces)
        if cut <= 0:
            return
        out = b"".join(
            (mark if mark is not None else buf[start : min(end, cut)])
            for start, end, mark in pieces
            if start < cut
        )
        self._buf = buf[cut:]
        if out:
            self._write(out)

    @staticmethod
    def _last_line_end(buf: bytes, pieces: list[tuple[int, int, bytes | None]]) -> int:
        """Where to cut so that only whole lines go out: just after the last line end found in
        a plain piece (a mark is never cut), or 0 when there is none."""
        for start, end, mark in reversed(pieces):
            if mark is not None:
                # The line end inside a masked secret: the cut goes after the whole mark,
                # when the secret itself ended a line.
                if buf[end - 1 : end] in _LINE_ENDS:
                    return end
                continue
            cut = max(buf.rfind(b"\n", start, end), buf.rfind(b"\r", start, end))
            if cut >= 0:
                return cut + 1
        return 0
