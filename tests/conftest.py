"""Suite-wide settings: one torch thread (tiny tensors; avoids thread contention on 2-core machines)."""
import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
