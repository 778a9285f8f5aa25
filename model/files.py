"""Files that survive a crash, and JSON errors that name the file: the one place the whole project writes through.

A reader never sees half a file: each writer fills a temporary file beside the target, flushes it to the disk
(fsync, so that a power loss - not only a killed process - leaves the old file or the new one whole), gives it the
mode any new file gets here (0644 under the usual umask; a temporary file made by a library may be 0600, which
would keep a shared checkpoint from its readers), renames it over the target and syncs the directory that holds
the name.

    from model.files import atomic_path, write_atomic, write_json, write_jsonl, read_json
    write_json("out/metrics.json", {"loss": 0.69})
    with atomic_path("out/model.safetensors") as tmp:     # for writers that take a path (safetensors, torch.save)
        save_file(state, tmp)
    cfg = read_json("ckpt/config.json")                   # ValueError: 'ckpt/config.json: not valid JSON (...)'

`fingerprint(dir)` names a checkpoint directory's contents in 16 hex digits (2 MiB read per file), so a resumed job
(reference cache, eval.py generate, hallucinate.py noise / clip-rank) can tell the same model from another.

Imports nothing of the project (model/ never does), so every layer can use it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os

_UMASK = os.umask(0)  # os.umask can only be read by setting it: put it straight back
os.umask(_UMASK)


def fsync(path: str) -> None:
    """Flush a file's bytes, or a directory's names (a rename is an entry in its directory), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(path: str) -> None:
    """Give every file under directory `path` the umask's mode and flush files and names to the disk: call it on
    a finished temporary directory before renaming it into place."""
    for root, _, names in os.walk(path):
        for name in names:
            os.chmod(os.path.join(root, name), 0o666 & ~_UMASK)
            fsync(os.path.join(root, name))
        fsync(root)


def publish(tmp: str, path: str) -> None:
    """Flush the file `tmp`, give it the umask's mode, rename it over `path` and sync the directory."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside `path` to write to; published over `path` when the block ends without error,
    removed when it raises. The temporary name carries the pid, so two processes never write the same one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str, obj, indent: int | None = 2) -> None:
    write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_jsonl(path: str, rows) -> None:
    """One JSON object per line (the JSONL every tool of the field reads)."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_json(path: str):
    """json.load with errors that name the file (and the line and column, from the decoder)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def fingerprint(directory: str) -> str:
    """A checkpoint directory's identity without reading 14 GB: each weight, config and tokenizer file's name, size,
    first and last MiB, hashed (16 hex digits). Two copies of one checkpoint agree; retrained or re-saved weights
    differ (their headers or their last tensors change). Used to refuse resuming a run with another model."""
    key = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        if name.endswith((".json", ".safetensors", ".bin", ".model")) and os.path.isfile(p):
            size = os.path.getsize(p)
            key.update(f"{name}:{size};".encode())
            with open(p, "rb") as f:
                key.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                key.update(f.read())
    return key.hexdigest()[:16]
