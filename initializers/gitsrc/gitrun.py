"""Running git for git-init: the shared runner in stepkit.gitrun (git-push uses it too)."""

from __future__ import annotations

from stepkit.gitrun import (
    Git,
    NoShallow,
    ShaRefused,
    TransientError,
    UnknownRevision,
    remove_path,
)

__all__ = ["Git", "NoShallow", "ShaRefused", "TransientError", "UnknownRevision", "remove_path"]
