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
from collections.abc import Callable, Iterator

from stepkit import secret

MARK = secret.REDACTED.encode()
# An incomplete line longer than this is released (minus the held-back tail) without
# waiting for its end: a tool printing megabytes without a newline must still be seen.
MAX_PENDING = 64 * 1024
_LINE_ENDS = (b"\n", b"\r")


# Forms are found in two stages: bytes.find of their first bytes (at most _QUICK of each)
# gives candidate positions, then the forms themselves are compared there, longest first.
# A regex alternation of the forms would have the engine try each one (a key's are
# kilobytes long) at every position of the output; find() is memchr-fast.
_QUICK = 8


class _Matcher:
    """Leftmost-longest search for the forms in a buffer, and the tail that must wait."""

    def __init__(self, forms: tuple[bytes, ...]) -> None:
        self.forms = forms
        self.heads = tuple({f[:_QUICK] for f in forms})
        # Proper prefixes up to _QUICK bytes, by length: the cheap first test of held_start.
        self.quick = [frozenset(f[:k] for f in forms if len(f) > k) for k in range(_QUICK + 1)]

    def scan(self, buf: bytes) -> Iterator[tuple[int, int]]:
        """(start, end) of each leftmost-longest occurrence of a form in buf, in order."""
        upcoming: dict[bytes, int] = {}  # each head's next position found so far (-1: none)
        pos = 0
        while True:
            best = -1
            for head in self.heads:
                at = upcoming.get(head, -2)
                if -1 < at < pos or at == -2:
                    at = upcoming[head] = buf.find(head, pos)
                if at != -1 and (best == -1 or at < best):
                    best = at
            if best == -1:
                return
            for form in self.forms:
                if buf.startswith(form, best):
                    yield best, best + len(form)
                    pos = best + len(form)
                    break
            else:
                pos = best + 1

    def held_start(self, buf: bytes, start: int) -> int:
        """The earliest index >= start from which buf's tail is a proper prefix of some form
        (the bytes that must wait, since more input could complete a secret); len(buf) if none."""
        end = len(buf)
        if not self.forms:
            return end
        low = max(start, end - len(self.forms[0]) + 1)
        # Candidates: where a form's first _QUICK bytes occur whole, and the last few positions,
        # whose shorter tails are looked up among the forms' short prefixes.
        candidates: set[int] = set()
        for head in self.quick[_QUICK]:
            at = buf.find(head, low, end)
            while at != -1:
                candidates.add(at)
                at = buf.find(head, at + 1, end)
        short = range(max(low, end - _QUICK + 1), end)
        candidates.update(i for i in short if buf[i:] in self.quick[end - i])
        for i in sorted(candidates):
            tail = buf[i:]
            if any(len(f) > len(tail) and f.startswith(tail) for f in self.forms):
                return i
        return end


_cached: _Matcher | None = None


def _matcher() -> _Matcher:
    """The matcher of the registry as it is now (rebuilt when a secret is registered)."""
    global _cached
    forms = secret.byte_forms()
    if _cached is None or _cached.forms is not forms:
        _cached = _Matcher(forms)
    return _cached


def mask_bytes(data: bytes) -> bytes:
    """data with every registered form replaced: what a Masker emits for it in total."""
    out = []
    pos = 0
    for start, end in _matcher().scan(data):
        out += [data[pos:start], MARK]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


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
        matcher = _matcher()
        hold = len(buf) if mode == "all" else matcher.held_start(buf, 0)
        # (raw start, raw end, the mark or None for plain bytes) of each piece, in order.
        pieces: list[tuple[int, int, bytes | None]] = []
        pos = 0
        for start, end in matcher.scan(buf):
            if start >= hold:
                break
            if start > pos:
                pieces.append((pos, start, None))
            pieces.append((start, end, MARK))
            pos = end
            if pos > hold:
                # The match ran past where the held tail began: what waits now starts after it.
                hold = len(buf) if mode == "all" else matcher.held_start(buf, pos)
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
