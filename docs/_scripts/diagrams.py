"""Diagrams of the concepts page, drawn with matplotlib at build time (``.. plot:: _scripts/diagrams.py <name>``).

Nothing here touches the package: the figures are schematic, with the random-MDP defaults
(|A| = 5, |S| = 10, inner episodes of T = 10 steps) and a short meta-episode (H = 30) so that every step is visible.
"""
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

H, T = 30, 10
EPISODE_COLOURS = ("#c6dbef", "#c7e9c0", "#fdd0a2")


def _arrow(ax, start, end, colour="black", style="-|>", **kw):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color=colour, lw=1.2, **kw))


def meta_episode():
    """One meta-episode of H steps in one task: inner episodes, the Transformer context and the Q model."""
    fig, ax = plt.subplots(figsize=(10, 4.6))
    ax.set_xlim(-4.5, H + 9)
    ax.set_ylim(-0.6, 6.4)
    ax.axis("off")

    # step cells, coloured by inner episode
    for t in range(H):
        ax.add_patch(Rectangle((t, 4.0), 0.92, 0.8, color=EPISODE_COLOURS[t // T], lw=0))
    for k in range(H // T):
        ax.text(k * T + T / 2, 4.95, f"inner episode {k + 1}  (τ = 0 … {T - 1})", ha="center", fontsize=8.5)
    ax.text(-0.4, 4.4, "steps t", ha="right", va="center", fontsize=9)
    for t in (0, T, 2 * T, H - 1):
        ax.text(t + 0.46, 3.75, str(t), ha="center", va="top", fontsize=7.5, color="#555555")

    # the torchrl episode
    ax.annotate("", xy=(H, 5.75), xytext=(0, 5.75), arrowprops=dict(arrowstyle="<->", lw=1.2))
    ax.text(H / 2, 5.95, "meta-episode = torchrl episode: one task, H steps", ha="center", fontsize=10,
            weight="bold")
    ax.text(-0.4, 6.15, "reset: new task\nis_init = True\nfirst_step = 1", ha="right", va="top", fontsize=8,
            color="#08519c")
    ax.text(H + 0.3, 6.15, "t = H: done = terminated = True\n(no bootstrap; the next\nreset draws a new task)",
            ha="left", va="top", fontsize=8, color="#a50f15")

    # inner-episode restarts, inside the env
    for t in (T - 1, 2 * T - 1):
        _arrow(ax, (t + 0.46, 3.6), (t + 0.46, 3.05), colour="#6a51a3")
        ax.text(t + 0.46, 2.95, "inner_done = True\nreached_state = s′\nstate = start", ha="center", va="top",
                fontsize=7.5, color="#6a51a3")

    # Transformer context
    _arrow(ax, (0.2, 1.35), (24.0, 1.35), colour="#238b45")
    ax.add_patch(Rectangle((24.0, 1.1), 0.92, 0.5, color="#238b45"))
    ax.text(24.46, 1.75, "step t", ha="center", va="bottom", fontsize=7.5, color="#238b45")
    ax.text(-0.4, 1.35, "Transformer", ha="right", va="center", fontsize=9)
    ax.text(11.5, 1.55, "causal attention over steps 0 … t of this meta-episode (KV cache cleared where is_init)",
            ha="center", fontsize=8, color="#238b45")

    # Q model
    for t in range(H):
        height = 0.55 * (t + 1) / H
        ax.add_patch(Rectangle((t, 0.0), 0.92, height, color="#807dba", lw=0))
    ax.text(-0.4, 0.25, "Q model", ha="right", va="center", fontsize=9)
    ax.text(H + 0.3, 0.3, "counts N(s,a,s′) grow over the whole\nmeta-episode; inner restarts keep\nthem, a reset "
            "clears them", ha="left", va="center", fontsize=8, color="#54278f")
    fig.tight_layout()


def token():
    """The per-step input of the actor and the critic: the RL² token and RL³'s Q features."""
    A, S = 5, 10
    blocks = [
        ("prev_action\n(one-hot, A)", A, "#9ecae1"),
        ("prev_reward", 1, "#fdae6b"),
        ("first_step", 1, "#fd8d3c"),
        ("meta_step\nt / H", 1, "#a1d99b"),
        ("episode_step\nτ / T", 1, "#74c476"),
        ("observation\n(one-hot state, |S|)", S, "#d9d9d9"),
        ("advantages\n(Q(s,·) − V(s)) / 10", A, "#bcbddc"),
        ("V(s) / 10", 1, "#807dba"),
        ("counts\nN(s,·) / 10", A, "#9e9ac8"),
    ]
    fig, ax = plt.subplots(figsize=(10, 2.6))
    x = 0
    for i, (label, width, colour) in enumerate(blocks):
        ax.add_patch(Rectangle((x, 0), width, 1, facecolor=colour, edgecolor="white", lw=2))
        ax.text(x + width / 2, 1.12 + 0.55 * (i % 2), label, ha="center", va="bottom", fontsize=7.5)
        ax.text(x + width / 2, 0.5, str(width), ha="center", va="center", fontsize=8)
        x += width
    rl2 = A + 4 + S
    ax.annotate("", xy=(0, -0.25), xytext=(rl2, -0.25), arrowprops=dict(arrowstyle="<->"))
    ax.text(rl2 / 2, -0.45, f"RL² token ({rl2} floats)", ha="center", va="top", fontsize=9)
    ax.annotate("", xy=(rl2, -0.25), xytext=(x, -0.25), arrowprops=dict(arrowstyle="<->", color="#54278f"))
    ax.text((rl2 + x) / 2, -0.45, f"q_features (2A + 1 = {2 * A + 1}): RL³ only", ha="center", va="top",
            fontsize=9, color="#54278f")
    ax.set_xlim(-0.5, x + 0.5)
    ax.set_ylim(-1.0, 2.4)
    ax.axis("off")
    fig.tight_layout()
