"""Suite-wide settings: one torch thread (tiny tensors; avoids thread contention on 2-core machines); this folder on
``sys.path`` for the helpers of ``_shared.py``; every module of ``rl3_torchrl`` imported before collection (see
below); every matplotlib figure a test leaves open is closed after it."""
import importlib
import pkgutil
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

matplotlib.use("Agg")
torch.set_num_threads(1)

# Every module of the package, imported before pytest collects the doctests (after the thread setting above, so that
# no import runs torch on more threads: forked test children would hang on the inherited thread pool). With
# --import-mode=importlib, a module whose doctest is collected before anything imported it is otherwise loaded a
# second time from its file, with classes distinct from those that collector workers unpickle by name.
_package = importlib.import_module("rl3_torchrl")
for _module in pkgutil.walk_packages(_package.__path__, "rl3_torchrl."):
    importlib.import_module(_module.name)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
