"""A real Docker Engine API on this machine for the tests: podman's API service.

    with PodmanService(insecure_registries=["127.0.0.1:5000"]) as service:
        client = docker.DockerClient(base_url=service.url)   # "unix:///.../docker.sock"

The service starter lives in controller/run/podman.py, which `make demo` uses too; this module
keeps the tests' names.
"""

from __future__ import annotations

from controller.run.podman import RUNC, STORAGE_DRIVER, PodmanService

__all__ = ["RUNC", "STORAGE_DRIVER", "PodmanService"]
