"""The Docker Engine API peer (tests/podman.py) that the docker builder and `stepkit run` use."""

from __future__ import annotations

import docker

from tests.images import ensure_images
from tests.podman import PodmanService


def test_podman_service_runs_containers_sharing_a_network_namespace() -> None:
    base = ensure_images()["base"]
    with PodmanService() as service:
        client = docker.DockerClient(base_url=service.url)
        try:
            assert client.ping()
            out = client.containers.run(base, ["sh", "-c", "echo hello; exit 0"], remove=True)
            assert out == b"hello\n"
            # The sandbox listens on its own loopback; a container that joins its network
            # namespace reaches it there, as the containers of one pod do.
            serve = (
                "import socket; s = socket.socket(); s.bind(('127.0.0.1', 47011)); s.listen();"
                " c, _ = s.accept(); c.sendall(b'same pod'); c.close()"
            )
            sandbox = client.containers.run(base, ["python3", "-c", serve], detach=True)
            try:
                connect = (
                    "import socket, time\n"
                    "for _ in range(100):\n"
                    "    try:\n"
                    "        c = socket.create_connection(('127.0.0.1', 47011)); break\n"
                    "    except OSError: time.sleep(0.1)\n"
                    "print(c.recv(100).decode())"
                )
                answer = client.containers.run(
                    base,
                    ["python3", "-c", connect],
                    network_mode=f"container:{sandbox.id}",
                    remove=True,
                )
                assert answer == b"same pod\n"
            finally:
                sandbox.remove(force=True)
        finally:
            client.close()
        socket_path = service.socket_path
        assert socket_path.exists()
    assert not socket_path.exists()
