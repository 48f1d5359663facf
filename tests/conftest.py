"""Suite-wide settings: one torch thread (tiny tensors; avoids thread contention on 2-core machines); this folder on
``sys.path`` for the helpers of ``_shared.py``; every matplotlib figure a test leaves open is closed after it."""
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
