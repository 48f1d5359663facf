"""Import every module of ``rl3_torchrl`` before pytest collects anything.

``pyproject.toml`` runs pytest with ``--import-mode=importlib`` and ``--doctest-modules``. In that mode a module
collected for its doctests before anything imported it is loaded from its file by pytest, while importing its
package loads it a second time by name, so two module objects with distinct classes exist, and objects that
collector workers unpickle by name (``MetaEpisodeCollector``) no longer match (``pytest rl3_torchrl/collectors.py
tests/test_distributed.py`` failed with "Worker 0 failed to initialize"). Imported here first, every module is found
in ``sys.modules`` and used as it is.
"""
import importlib
import pkgutil

import rl3_torchrl

for _module in pkgutil.walk_packages(rl3_torchrl.__path__, "rl3_torchrl."):
    importlib.import_module(_module.name)
