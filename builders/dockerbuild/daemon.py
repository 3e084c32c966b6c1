"""The Docker daemon, found as the docker CLI finds it, pinged with a bounded backoff.

`DOCKER_HOST` (unix://, tcp://, ssh:// ...), with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH`
(ca.pem, cert.pem, key.pem; default $HOME/.docker) as a dind sidecar is reached; else
`/var/run/docker.sock`. The API version is negotiated with the daemon.
"""

from __future__ import annotations

import os
import time
from typing import Any

from stepkit.errors import InputError, StepkitError

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_WAIT = 30.0
WAIT_ENV = "STEPKIT_DOCKER_WAIT"
# The API version the first ping speaks: the oldest the docker SDK knows, which any daemon takes.
_PING_VERSION = "1.24"
_ADVICE = (
    "give the step a daemon: mount a Docker socket at /var/run/docker.sock (a hostPath or a "
    "sidecar's emptyDir volume), or run a docker:dind sidecar and set DOCKER_HOST "
    "(tcp://localhost:2376 with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH)"
)


def wait_seconds() -> float:
    value = os.environ.get(WAIT_ENV, "")
    if not value:
        return DEFAULT_WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise InputError(f"{WAIT_ENV}: {value!r} is not a number of seconds from 0 to 3600")
    return seconds


def _client_kwargs() -> tuple[dict[str, Any], str]:
    """The docker SDK's connection arguments from the environment, and what they name (for messages)."""
    from docker.errors import TLSParameterError
    from docker.utils import kwargs_from_env

    try:
        kwargs: dict[str, Any] = kwargs_from_env(environment=dict(os.environ))
    except TLSParameterError as exc:
        raise InputError(f"DOCKER_CERT_PATH: {exc}") from None
    if os.environ.get("DOCKER_HOST"):
        tried = f"DOCKER_HOST={os.environ['DOCKER_HOST']}"
    else:
        kwargs["base_url"] = DEFAULT_HOST
        tried = f"{DEFAULT_HOST} (DOCKER_HOST is not set)"
    if kwargs.get("tls"):
        tried += " with TLS"
    return kwargs, tried


def connect(logger: Any, timeout: float = 3600.0) -> Any:
    """A docker.APIClient speaking the daemon's API version; StepkitError with advice when none answers."""
    import docker
    from docker.errors import DockerException

    kwargs, tried = _client_kwargs()
    wait = wait_seconds()
    deadline = time.monotonic() + wait
    delay = 0.25
    attempts = 0
    while True:
        attempts += 1
        try:
            probe = docker.APIClient(version=_PING_VERSION, timeout=10, **kwargs)
            try:
                probe.ping()
            finally:
                probe.close()
            break
        except (DockerException, OSError) as exc:
            last = _reason(exc)
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepkitError(
                f"no Docker daemon answered at {tried} after {attempts} attempts in "
                f"{wait:g} s ({last}); {_ADVICE}"
            )
        if attempts == 1:
            logger.info("waiting up to %g s for the Docker daemon at %s", wait, tried)
        time.sleep(min(delay, left))
        delay = min(delay * 2, 4.0)
    try:
        client = docker.APIClient(version="auto", timeout=timeout, **kwargs)
    except DockerException as exc:
        raise StepkitError(
            f"the Docker daemon at {tried} answered a ping but not /version: {_reason(exc)}"
        ) from None
    logger.info("Docker daemon at %s, API version %s", tried, client.api_version)
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    return reason[:300]
