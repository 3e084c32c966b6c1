"""The pod contract (SPEC §0): where a helper finds home, workspace, secrets and result files."""

from __future__ import annotations

import os
import re
from pathlib import Path

from stepkit.errors import InputError

POD_HOME = "/builder/home"
POD_WORKSPACE = "/workspace"
KNATIVE_SECRETS_DIR = "/var/build-secrets"
TEKTON_SECRETS_DIR = "/tekton/creds-secrets"
TERMINATION_LOG = "/dev/termination-log"
TEKTON_TERMINATION = "/tekton/termination"
TEKTON_RESULTS_DIR = "/tekton/results"

# Paths end up inside ssh_config lines and git's sshCommand, which a shell runs: a home
# path with quotes, spaces or control characters would need quoting rules of three tools.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/@+=,-]*$")


def home(env: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The build's home: `$HOME`, as every container of the pod sets it."""
    environ = os.environ if env is None else env
    value = environ.get("HOME", "")
    if not value:
        raise InputError("HOME is not set; the pod contract sets HOME=/builder/home")
    if not _SAFE_PATH.fullmatch(value) or "/../" in value + "/" or "/./" in value + "/":
        raise InputError(
            "HOME must be an absolute, normalised path of letters, digits and ._/@+=,- "
            f"(got {value!r})"
        )
    return Path(value)


def default_secrets_dir() -> str:
    """Knative's mount point, or Tekton's when only that one exists in this pod."""
    if not os.path.isdir(KNATIVE_SECRETS_DIR) and os.path.isdir(TEKTON_SECRETS_DIR):
        return TEKTON_SECRETS_DIR
    return KNATIVE_SECRETS_DIR


def default_termination_path() -> str | None:
    """Kubernetes' termination log when this container can write it, else none."""
    for candidate in (TEKTON_TERMINATION, TERMINATION_LOG):
        if os.path.exists(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return None


def tekton_results_dir() -> str | None:
    """Tekton's results directory when this container runs in a TaskRun's pod, else none."""
    return TEKTON_RESULTS_DIR if os.path.isdir(TEKTON_RESULTS_DIR) else None
