"""Reading mounted Kubernetes secrets: `<dir>/<secret>/<key>`, through the kubelet's `..data` links only."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from stepkit import secret as secretreg
from stepkit.errors import DeniedError, InputError
from stepkit.validate import has_control

log = logging.getLogger(__name__)

MAX_SECRET_BYTES = 1 << 20  # Kubernetes' own limit for a whole secret


class SecretDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    def read_bytes(self, name: str, key: str, *, flag: str, required: bool = True) -> bytes | None:
        """A key's bytes. The kubelet mounts keys as symlinks into `..data`; follow them only inside the secret."""
        base = self.root / name
        if not base.is_dir():
            raise InputError(f"{flag}: secret '{name}' is not mounted (no directory {base})")
        path = base / key
        try:
            real = path.resolve(strict=True)
        except FileNotFoundError:
            if required:
                raise InputError(f"{flag}: secret '{name}' has no key '{key}'") from None
            return None
        except OSError as exc:
            raise InputError(f"{flag}: secret '{name}' key '{key}': {exc.strerror}") from None
        if not real.is_relative_to(base.resolve()):
            raise InputError(f"{flag}: secret '{name}' key '{key}' points outside the secret")
        try:
            with open(real, "rb") as fh:
                if not os.path.isfile(real):
                    raise InputError(f"{flag}: secret '{name}' key '{key}' is not a file")
                data = fh.read(MAX_SECRET_BYTES + 1)
        except PermissionError:
            raise DeniedError(f"{flag}: secret '{name}' key '{key}' is not readable") from None
        if len(data) > MAX_SECRET_BYTES:
            raise InputError(f"{flag}: secret '{name}' key '{key}' is larger than 1 MiB")
        return data

    def read_text(self, name: str, key: str, *, flag: str, required: bool = True) -> str | None:
        data = self.read_bytes(name, key, flag=flag, required=required)
        if data is None:
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{flag}: secret '{name}' key '{key}' is not UTF-8 text") from None

    def credential(self, name: str, key: str, *, flag: str, hidden: bool = True) -> str:
        """A username or password: one trailing newline stripped (with a warning), no control characters.

        hidden values are registered for redaction before any check can fail, so no error path
        can print them; usernames are not hidden (redacting "git" everywhere helps nobody).
        """
        text = self.read_text(name, key, flag=flag)
        assert text is not None
        if hidden:
            secretreg.register(text)
        if text.endswith("\n"):
            text = text[:-1]
            log.warning(
                "%s: secret '%s' key '%s' ends with a newline; using the value without it",
                flag,
                name,
                key,
            )
        if not text:
            raise InputError(f"{flag}: secret '{name}' key '{key}' is empty")
        if has_control(text):
            raise InputError(f"{flag}: secret '{name}' key '{key}' holds a control character")
        return text
