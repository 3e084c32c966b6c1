"""Results of a helper (commit, digest, …) for Kubernetes' termination message and Tekton's results dir."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from stepkit.errors import InputError, StepkitError
from stepkit.fsutil import SafeTree

log = logging.getLogger(__name__)

# Kubernetes keeps at most 4096 bytes of a termination message.
MAX_TERMINATION_BYTES = 4096


def _merge(existing: bytes, results: Mapping[str, str]) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    if existing.strip():
        try:
            loaded = json.loads(existing)
        except ValueError:
            loaded = None
        if isinstance(loaded, list) and all(
            isinstance(e, dict) and isinstance(e.get("key"), str) for e in loaded
        ):
            entries = [e for e in loaded if e["key"] not in results]
        else:
            log.warning("termination message held no result list; replacing it")
    entries.extend({"key": k, "value": v} for k, v in results.items())
    return entries


def write_results(
    results: Mapping[str, str],
    *,
    termination_path: str | None,
    results_dir: str | None,
    tekton_dir: str | None = None,
) -> None:
    """Merge results into the termination message and write one file per key into results_dir,
    and into tekton_dir (Tekton's /tekton/results, see contract.tekton_results_dir) when given.

    Values are written as they are: exact bytes, no newline added.
    """
    for key in results:
        if not key or not all(c.isalnum() or c in "-_." for c in key) or key.startswith("."):
            raise InputError(f"result key {key!r} is not a plain name")
    if termination_path:
        path = Path(termination_path)
        try:
            existing = path.read_bytes() if path.exists() else b""
        except OSError as exc:
            raise StepkitError(f"cannot read {path}: {exc.strerror}") from None
        payload = json.dumps(_merge(existing, results), separators=(",", ":")).encode()
        if len(payload) > MAX_TERMINATION_BYTES:
            raise StepkitError(
                f"results are {len(payload)} bytes; a termination message holds at most "
                f"{MAX_TERMINATION_BYTES}"
            )
        # The kubelet bind-mounts this file: write it in place, a rename would fail.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StepkitError(f"cannot write {path}: {exc.strerror}") from None
    seen: set[str] = set()
    for directory in (results_dir, tekton_dir):
        # The same directory named twice (-results-dir=/tekton/results in a Task) is written once.
        if not directory or os.path.realpath(directory) in seen:
            continue
        seen.add(os.path.realpath(directory))
        with SafeTree(Path(directory), label=directory) as tree:
            for key, value in results.items():
                tree.write(key, value.encode(), mode=0o644, dir_mode=0o755, durable=True)
