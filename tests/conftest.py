"""Shared pytest set-up: the repo root on sys.path so tests import the top-level modules, and Triton's interpreter
switched on before anything imports triton (transformers and torch may import it early), so the log-prob kernel's
tests run the real kernel on CPU tensors; the one_thread fixture."""
import os
import sys

import pytest
import torch  # noqa: E402  (torch does not import triton eagerly)

if not torch.cuda.is_available():  # on a GPU machine the same tests run the compiled kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (pytestmark = pytest.mark.usefixtures("one_thread")): on a
    shared 2-core machine a second OpenMP thread only adds barrier waits (10 ms per op)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def train_world(tmp_path_factory):
    """train.py's tests' inputs, built once for tests/test_train*.py: a 24-scene toy world, a tiny random checkpoint
    (llava-hf layout + tokenizer) and rule-injected pairs (tests/train_fixtures.py)."""
    from train_fixtures import build
    return build(tmp_path_factory.mktemp("train"))
