"""The reading order of the tutorials (sphinx-gallery's ``within_subsection_order``); unlisted ones go last."""
from pathlib import Path

ORDER = (
    "plot_task_families.py",
    "plot_rl3_transforms.py",
    "plot_training.py",
    "plot_own_ppo_loop.py",
    "plot_evaluation.py",
)


class TutorialOrder:
    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = Path(filename).name
        return (ORDER.index(name) if name in ORDER else len(ORDER), name)

    def __repr__(self):
        return "TutorialOrder()"
