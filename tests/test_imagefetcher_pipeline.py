"""image-fetcher's pipelined pulls against real peers: later layers download while earlier
ones are applied, each verified before it is applied, applied in order, nothing placed
unless every layer was."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from stepkit.oci.layers import RootFs
from tests.conftest import STEPKIT, Secrets, assert_no_leak
from tests.hostile_registry import HostileRegistry
from tests.ocipeers import LayerFile, layer_tar, push, write_layout
from tests.peers import FlakyProxy, Registry
from tests.test_imagefetcher import Staller, error_line, fetch, login, snapshot

USER = "puller"
PASSWORD = "pipe-p@ss"


def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def many_files(prefix: str, count: int, size: int = 2000) -> list[LayerFile]:
    """A layer body that takes a while to apply: many small files of incompressible data."""
    return [LayerFile(f"{prefix}/f{i}", os.urandom(size)) for i in range(count)]


def staging_dirs(dest: Path) -> list[Path]:
    return [p for p in dest.iterdir() if p.name.startswith(".stepkit-image-")]


def test_bad_digest_of_layer_3_stops_the_pull_while_layer_2_still_downloads(
    tmp_path: Path, dest: Path
) -> None:
    """Layer 1 is big (slow to apply), layer 2's storage never answers, layer 3's bytes do not
    match its digest: the pull fails on layer 3 at once (a one-layer-at-a-time pull would hang
    on layer 2 until its 300 s timeout), and nothing reaches the destination."""
    (dest / "old").write_text("old\n")
    layers = [
        layer_tar([LayerFile("app/a.txt", b"a1\n"), *many_files("big", 3000)]),
        layer_tar([LayerFile("app/b.txt", b"b2\n")]),
        layer_tar([LayerFile("app/c.txt", b"c3\n")]),
    ]
    bad = bytearray(layers[2])
    bad[len(bad) // 2] ^= 0xFF  # same size, other bytes
    staller = Staller()
    try:
        with HostileRegistry(tmp_path / "reg") as reg:
            reg.add_image("org/app", "v1", layers)
            reg.add_blob(layers[2], serve=bytes(bad))
            reg.redirect_blob(digest(layers[1]), f"http://{staller.host}/blob")
            result = fetch(
                f"-image={reg.host}/org/app:v1",
                f"-dest_dir={dest}",
                f"-ca-file={reg.ca_file}",
                f"-insecure-registry={staller.host}",
                "-timeout=300",
                timeout=90,
            )
            layer3_gets = [r for r in reg.requests if r.path.endswith(digest(layers[2]))]
    finally:
        staller.close()
    assert result.returncode == 1, result.output
    line = error_line(result)
    assert digest(layers[2]) in line and "refused" in line, line
    assert layer3_gets, "layer 3 was not downloaded while layer 2 was pending"
    assert staller.accepted.is_set()
    assert snapshot(dest) == {"old": "old\n"}
    assert not staging_dirs(dest)


def test_layers_apply_in_order_whatever_order_they_arrive(tmp_path: Path, dest: Path) -> None:
    """Layer 3 is small and arrives long before layers 1 and 2 are applied; whiteouts and an
    opaque directory still act on exactly the layers below them, as in a one-by-one pull
    (the expected tree is RootFs applying the same blobs in order, the differential)."""
    groups = [
        [
            LayerFile("etc/conf", b"c1\n"),
            LayerFile("etc/old", b"o1\n"),
            LayerFile("opq/l1", b"l1\n"),
            LayerFile("gone/x", b"x1\n"),
            *many_files("big1", 600),
        ],
        [
            LayerFile("etc/old", type="whiteout"),
            LayerFile("gone", type="whiteout"),
            LayerFile("opq/l2", b"l2\n"),
            LayerFile("etc/conf", b"c2\n"),
            *many_files("big2", 600),
        ],
        [
            LayerFile("opq", type="opaque"),
            LayerFile("opq/l3", b"l3\n"),
            LayerFile("gone/y", b"y3\n"),
            LayerFile("etc/conf", type="whiteout"),
            LayerFile("big1", type="whiteout"),
        ],
    ]
    layers = [layer_tar(group) for group in groups]
    # What one layer after the other gives, applied here in order by the same library.
    ref_root = tmp_path / "reference"
    ref_root.mkdir()
    reference = RootFs(ref_root)
    for index, blob in enumerate(layers):
        path = tmp_path / f"blob-{index}"
        path.write_bytes(blob)
        reference.apply(path, media_type="application/vnd.oci.image.layer.v1.tar+gzip",
                        label=f"layer {index + 1}")  # fmt: skip
    expected = snapshot(ref_root)
    assert "etc/old" not in expected and "etc/conf" not in expected
    assert expected["opq/l3"] == "l3\n" and "opq/l1" not in expected and "opq/l2" not in expected
    assert expected["gone/y"] == "y3\n" and "gone/x" not in expected
    assert not [k for k in expected if k.startswith("big1")]
    with HostileRegistry(tmp_path / "reg") as reg:
        reg.add_image("org/app", "v1", layers)
        result = fetch(f"-image={reg.host}/org/app:v1", f"-dest_dir={dest}",
                       f"-ca-file={reg.ca_file}", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.output
    assert snapshot(dest) == expected


def test_registry_dying_mid_pull_places_nothing(
    tmp_path: Path, dest: Path, secrets: Secrets
) -> None:
    """docker-registry, 0.5 s away behind a latency proxy, is stopped once the layers'
    downloads have begun: the pull fails with one line naming the registry, the destination
    keeps what it had and no staging directory is left."""
    (dest / "old").write_text("old\n")
    layers = [layer_tar([LayerFile(f"l{i}/data", os.urandom(300_000))]) for i in range(3)]
    layout = tmp_path / "layout"
    write_layout(layout, "v1", layers)
    registry = Registry(tmp_path / "registry", {USER: PASSWORD})
    with registry:
        push(layout, "v1", registry, "team/app", username=USER, password=PASSWORD)
        port = int(registry.host.rsplit(":", 1)[1])
        with FlakyProxy("127.0.0.1", port, latency=0.5) as proxy:
            login(secrets, proxy.host, username=USER, password=PASSWORD)
            proc = subprocess.Popen(
                [STEPKIT, "image-fetcher", f"-image={proxy.host}/team/app:v1",
                 f"-dest_dir={dest}", f"-ca-file={registry.ca_pem}", "-retries=0"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                # The layers' directory appears just before their downloads start; their
                # requests reach the registry only 0.5 s later.
                deadline = time.monotonic() + 60
                while not any((s / "layers").exists() for s in staging_dirs(dest)):
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "the layers' downloads never began"
                    time.sleep(0.005)
                registry.__exit__(None, None, None)
                _, stderr = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "team/app" in lines[-1] and "blob" in lines[-1], lines[-1]
    assert snapshot(dest) == {"old": "old\n"}
    assert not staging_dirs(dest)
    assert_no_leak(stderr, secrets.values)
