"""model/files.py: the project's one way to write a file (atomic, synced, readable by others) and to read JSON."""
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from model.files import atomic_path, read_json, sync_tree, write_atomic, write_json, write_jsonl


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_umask_mode_not_the_temp_files(tmp_path):
    # safetensors creates its file 0600; a shared export must be readable like every other file
    want = 0o666 & ~_umask()
    with atomic_path(str(tmp_path / "model.safetensors")) as tmp:
        save_file({"w": torch.zeros(2)}, tmp)
    write_json(str(tmp_path / "config.json"), {"a": 1})
    assert _mode(tmp_path / "model.safetensors") == want and _mode(tmp_path / "config.json") == want
    (tmp_path / "d").mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "d" / "trainable.safetensors"))
    assert _mode(tmp_path / "d" / "trainable.safetensors") == 0o600  # what the library leaves
    sync_tree(str(tmp_path / "d"))
    assert _mode(tmp_path / "d" / "trainable.safetensors") == want


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = str(tmp_path / "a.jsonl")
    write_jsonl(p, [{"x": 1}, {"x": "é"}])
    assert open(p, encoding="utf-8").read() == '{"x": 1}\n{"x": "é"}\n'
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("killed")
    assert open(p, encoding="utf-8").read() == '{"x": 1}\n{"x": "é"}\n' and os.listdir(tmp_path) == ["a.jsonl"]
    write_atomic(p, b"bytes\n")
    assert open(p, "rb").read() == b"bytes\n"


def test_read_json_names_the_file_line_and_column(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"a": 1,\n "b": }\n')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON \(.*line 2 column 7"):
        read_json(str(p))
    write_json(str(p), [1, {"k": None}])
    assert read_json(str(p)) == [1, {"k": None}]
