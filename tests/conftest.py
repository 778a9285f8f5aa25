"""Shared pytest set-up: the repo root on sys.path so tests import the top-level modules, and Triton's interpreter
switched on before anything imports triton (transformers and torch may import it early), so the log-prob kernel's
tests run the real kernel on CPU tensors."""
import os
import sys

import torch  # noqa: E402  (torch does not import triton eagerly)

if not torch.cuda.is_available():  # on a GPU machine the same tests run the compiled kernel
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
