"""Every spelling SPEC §0 names for the result options, taken by every helper that writes results.

`--termination-message-path` and Tekton's `-terminationMessagePath`, each with one or two
dashes and `=` or a separate value, and `--results-dir` likewise: gcs-fetcher, gcs-uploader
and image-fetcher, each run for real against its peer (git-init's are in test_gitinit.py).
"""

from __future__ import annotations

import io
import itertools
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Secrets, run_stepkit
from tests.gcspeers import FakeGcs
from tests.ocipeers import LayerFile, layer_tar, push, write_layout
from tests.peers import Registry
from tests.spellings import SPELLINGS, result_args, spelling_id, written

USER, PASSWORD = "puller", "spell-reg-pw"
_buckets = itertools.count()


@pytest.mark.parametrize("spelling", SPELLINGS, ids=spelling_id)
def test_gcs_fetcher_takes_every_result_spelling(
    gcs: FakeGcs, tmp_path: Path, spelling: tuple[str, str, bool]
) -> None:
    bucket = f"spell-{next(_buckets)}"
    gcs.make_bucket(bucket, versioning=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("README", b"hi\n")
    generation = gcs.put(bucket, "src.zip", buf.getvalue())
    dest = tmp_path / "dest"
    result = run_stepkit(
        "gcs-fetcher",
        "-type=ZipArchive",
        f"-location=gs://{bucket}/src.zip",
        f"-dest_dir={dest}",
        *result_args(tmp_path, spelling),
        env=gcs.env,
    )
    assert result.returncode == 0, result.output
    assert (dest / "README").read_text() == "hi\n"
    assert written(tmp_path) == {"location": f"gs://{bucket}/src.zip#{generation}"}


@pytest.mark.parametrize("spelling", SPELLINGS, ids=spelling_id)
def test_gcs_uploader_takes_every_result_spelling(
    gcs: FakeGcs, tmp_path: Path, spelling: tuple[str, str, bool]
) -> None:
    bucket = f"spell-up-{next(_buckets)}"
    gcs.make_bucket(bucket)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    result = run_stepkit(
        "gcs-uploader",
        f"-dir={src}",
        f"-location=gs://{bucket}/m/manifest.json",
        *result_args(tmp_path, spelling),
        env=gcs.env,
    )
    assert result.returncode == 0, result.output
    assert written(tmp_path)["manifest"].startswith(f"gs://{bucket}/m/manifest.json#")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, str]]:
    """A registry with one small image in it; yields (registry, its digest)."""
    work = tmp_path_factory.mktemp("spell-image")
    with Registry(work / "registry", {USER: PASSWORD}) as registry:
        layout = work / "layout"
        write_layout(layout, "v1", [layer_tar([LayerFile("hello.txt", b"hello\n")])])
        digest = push(layout, "v1", registry, "team/spell", username=USER, password=PASSWORD)
        yield registry, digest


@pytest.mark.parametrize("spelling", SPELLINGS, ids=spelling_id)
def test_image_fetcher_takes_every_result_spelling(
    image: tuple[Registry, str], secrets: Secrets, tmp_path: Path, spelling: tuple[str, str, bool]
) -> None:
    registry, digest = image
    secrets.add("reg", {"username": USER, "password": PASSWORD})
    login = run_stepkit(
        "creds-init", f"-basic-docker=reg={registry.host}", "--secrets-dir", str(secrets.root)
    )
    assert login.returncode == 0, login.output
    dest = tmp_path / "dest"
    result = run_stepkit(
        "image-fetcher",
        f"-image={registry.host}/team/spell:v1",
        f"-dest_dir={dest}",
        f"--ca-file={registry.ca_pem}",
        *result_args(tmp_path, spelling),
    )
    assert result.returncode == 0, result.output
    assert (dest / "hello.txt").read_text() == "hello\n"
    assert written(tmp_path)["digest"] == digest
