"""The atomic writers: the new content or the old one, never a truncated file, never a leftover temporary file."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from pml_recallk._io import replace_atomically, save_npz_atomic, save_torch_atomic, write_json_atomic


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_writes_and_creates_missing_folders(tmp_path):
    path = tmp_path / "a" / "b" / "out.bin"
    replace_atomically(path, lambda f: f.write(b"hello"))
    assert path.read_bytes() == b"hello"
    assert _entries(path.parent) == ["out.bin"]


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old content that is longer")
    replace_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert _entries(tmp_path) == ["out.bin"]


class _Boom(RuntimeError):
    pass


def _fail_half_way(f):
    f.write(b"half")
    raise _Boom("disk full")


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, existed):
    path = tmp_path / "out.bin"
    if existed:
        path.write_bytes(b"old")
    with pytest.raises(_Boom):
        replace_atomically(path, _fail_half_way)
    assert _entries(tmp_path) == (["out.bin"] if existed else [])
    if existed:
        assert path.read_bytes() == b"old"


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def refuse(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="read-only"):
        replace_atomically(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"old"
    assert _entries(tmp_path) == ["out.bin"]


def test_interrupt_leaves_the_old_file(tmp_path):
    # KeyboardInterrupt is not an Exception: the clean-up must still run.
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def interrupted(f):
        f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, interrupted)
    assert path.read_bytes() == b"old"
    assert _entries(tmp_path) == ["out.bin"]


@pytest.mark.skipif(os.name != "posix", reason="umask is POSIX")
def test_permissions_follow_the_umask_like_open(tmp_path):
    # A cache or a results file is shared like any other file (mkstemp would make it private, 0o600).
    replace_atomically(tmp_path / "atomic", lambda f: f.write(b"x"))
    (tmp_path / "plain").write_bytes(b"x")
    mode = stat.S_IMODE((tmp_path / "atomic").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_write_json_atomic_matches_json_dumps(tmp_path):
    obj = {"recall_at_1": 0.25, "name": "Größe", "ks": [1, 2, 4]}
    path = tmp_path / "r.json"
    write_json_atomic(obj, path)
    assert path.read_text(encoding="utf-8") == json.dumps(obj, indent=2) + "\n"
    assert json.loads(path.read_text(encoding="utf-8")) == obj


def test_write_json_atomic_unencodable_leaves_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic({"a": 1}, path)
    with pytest.raises(TypeError):
        write_json_atomic({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert _entries(tmp_path) == ["r.json"]


def test_save_torch_atomic_round_trip(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    state = {"weight": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    save_torch_atomic(state, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 3
    torch.testing.assert_close(loaded["weight"], state["weight"], rtol=0, atol=0)
    assert _entries(path.parent) == ["last.pt"]


def test_save_torch_atomic_unpicklable_leaves_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    save_torch_atomic({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickle's error type depends on the object
        save_torch_atomic({"epoch": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert _entries(tmp_path) == ["last.pt"]


def test_save_npz_atomic_round_trip_keeps_the_name(tmp_path):
    path = tmp_path / "table.cache"  # no .npz suffix: numpy.savez would append one, this must not
    images = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    save_npz_atomic(path, images=images, name=np.array("glyphs"))
    assert _entries(tmp_path) == ["table.cache"]
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["images"], images)
        assert str(f["name"]) == "glyphs"
