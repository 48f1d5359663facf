"""Causal attention of the window path: this package's C++ kernel against torch's SDPA, forward and forward + backward.

Times ``causal_attention`` (``model.attention=causal_cpu``) and ``scaled_dot_product_attention(is_causal=True)`` on
the same q, k, v (strided views of one projection, as the Transformer makes them) for the window shapes of the
configs: a ``[minibatch_episodes, num_heads, H + 1, head_dim]`` call. Prints ms per call (best of ``--repeats``) and
SDPA's time over the kernel's, measured in the same run, on one torch thread unless ``--threads`` says otherwise.

    python benchmarks/attention.py                       # default, paper and long-H shapes
    python benchmarks/attention.py --shapes 8x4x512x16 --threads 2
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rl3_torchrl.modules import causal_attention
from rl3_torchrl.modules.attention_kernel import load_kernel

#: [B, H, L, D]: the default config's minibatch (8 episodes of H = 100, 2 heads of 16), the paper's (H = 512, 4 heads
#: of 16), and the paper's at longer meta-episodes.
SHAPES = ("8x2x101x16", "8x4x513x16", "8x4x1025x16", "4x4x2049x16")


def _best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def _time(attend, shape, repeats: int) -> tuple[float, float]:
    batch, heads, length, dim = shape
    qkv = torch.randn(batch, length, 3, heads, dim, requires_grad=True)
    grad = torch.randn(batch, heads, length, dim)

    def forward():
        with torch.no_grad():
            attend(*qkv.permute(2, 0, 3, 1, 4).unbind(0))

    def forward_backward():
        attend(*qkv.permute(2, 0, 3, 1, 4).unbind(0)).backward(grad)

    return _best_ms(forward, repeats), _best_ms(forward_backward, repeats)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), help="BxHxLxD shapes")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_kernel()
    sdpa = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    results = {}
    print(f"{'shape [B, H, L, D]':<20} {'pass':<18} {'sdpa ms':>9} {'kernel ms':>10} {'sdpa / kernel':>14}")
    for text in args.shapes:
        shape = tuple(int(n) for n in text.split("x"))
        reference, kernel = _time(sdpa, shape, args.repeats), _time(causal_attention, shape, args.repeats)
        for i, name in enumerate(("forward", "forward + backward")):
            results[(text, name)] = {"sdpa_ms": reference[i], "kernel_ms": kernel[i]}
            print(f"{text:<20} {name:<18} {reference[i]:>9.2f} {kernel[i]:>10.2f} {reference[i] / kernel[i]:>13.2f}x")
    return results


if __name__ == "__main__":
    main()
