"""The configuration of a PPO meta-training run: an OmegaConf tree with a schema.

``rl3_torchrl/configs/ppo.yaml`` holds every key with its default and a comment; the named configs beside it
(:func:`named_configs`) override some of them. :func:`load_config` merges the defaults, a named config and
``key=value`` overrides; :func:`validate_config` checks every key against its allowed values before any work;
:func:`flat_config` / :func:`unflatten_config` convert to and from ``{"dotted.key": value}`` (the form stored in
checkpoints); :func:`commented_config` renders a configuration as the text of ``ppo.yaml``, comments kept, with
the changed values marked (what ``recipes/ppo_rl3.py --help`` prints); :func:`save_config` writes the resolved
``config.yaml`` of a run.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from rl3_torchrl._validation import check_choice, check_float, check_int, optional as _optional
from rl3_torchrl.collectors import BACKENDS
from rl3_torchrl.modules import ATTENTIONS, POSITIONS
from rl3_torchrl.tasks import ALGOS, TASKS

__all__ = [
    "COMPILE_MODES",
    "CONFIG_DIR",
    "MAX_REWARD_SCALE",
    "commented_config",
    "flat_config",
    "load_config",
    "named_configs",
    "save_config",
    "unflatten_config",
    "validate_config",
]

#: The folder of ``ppo.yaml`` (every key, its default and a comment) and the named configs.
CONFIG_DIR = Path(__file__).parent / "configs"


def named_configs() -> list[str]:
    """The named configurations shipped with the package.

    Examples:
        >>> "paper_random_mdp" in named_configs()
        True
    """
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "ppo")


def load_config(overrides: list[str] | None = None, config: str | None = None) -> DictConfig:
    """The default configuration, merged with a named config and ``key=value`` overrides.

    ``overrides`` may itself hold ``config=NAME``. ``NAME`` is one of :func:`named_configs` or the path of a YAML
    file, e.g. the ``config.yaml`` a run wrote into its ``output_dir``. Unknown keys are rejected (the tree is
    struct-locked).

    Examples:
        >>> cfg = load_config(["algo=rl2", "ppo.lr=1e-4"])
        >>> cfg.algo, cfg.ppo.lr
        ('rl2', 0.0001)
        >>> load_config(config="paper_random_mdp").horizon
        512
    """
    overrides = list(overrides or [])
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("config=")]
    overrides = [o for o in overrides if not o.startswith("config=")]
    config = names[-1] if names else config
    cfg = OmegaConf.load(CONFIG_DIR / "ppo.yaml")
    OmegaConf.set_struct(cfg, True)
    if config is not None:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(_config_file(config)))
    malformed = [o for o in overrides if "=" not in o]
    if malformed:
        raise ValueError(f"overrides must look like key=value, got {malformed}.")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except Exception as err:  # omegaconf raises ConfigKeyError & co. for unknown keys
        raise ValueError(f"bad override in {overrides}: {err}") from None
    validate_config(cfg)
    return cfg


def _config_file(config: str) -> Path:
    """The YAML file of ``config``: a named config or a path ending in ``.yaml``/``.yml``."""
    if str(config).endswith((".yaml", ".yml")):
        if not Path(config).is_file():
            raise FileNotFoundError(f"config={config!r}: no such file.")
        return Path(config)
    check_choice("config", config, named_configs())
    return CONFIG_DIR / f"{config}.yaml"


#: ``ppo.reward_scale`` at most this: the critic's squared error of scaled returns must stay far from float32 overflow.
MAX_REWARD_SCALE = 1e6
#: The allowed values of ``compile.mode`` (besides ``null``).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _integer(low=None, high=None):
    return lambda name, value: check_int(name, value, low=low, high=high)


def _real(low=None, high=None, low_inclusive=True):
    return lambda name, value: check_float(name, value, low=low, high=high, low_inclusive=low_inclusive)


def _one_of(choices):
    return lambda name, value: check_choice(name, value, choices)


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be true or false, got {value!r} ({type(value).__name__}).")


def _text(name, value):
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty string, got {value!r} ({type(value).__name__}).")


def _device(name, value):
    _text(name, value)
    try:
        torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name}={value!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps.") from None


def _widths(name, value):
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of positive integers (e.g. [64, 64]), got {value!r}.")
    for i, width in enumerate(value):
        check_int(f"{name}[{i}]", width, low=1)


# Every key of the configuration with its allowed values: validate_config checks each one before any work.
_SCHEMA = {
    "algo": _one_of(ALGOS),
    "env": _one_of(TASKS),
    "horizon": _optional(_integer(low=1)),
    "num_envs": _integer(low=1),
    "iterations": _integer(low=1),
    "seed": _integer(low=0, high=2**63 - 1),
    "device": _device,
    "progress": _flag,
    "output_dir": _text,
    "model.hidden_sizes": _widths,
    "model.d_model": _integer(low=1),
    "model.num_layers": _integer(low=0),
    "model.num_heads": _integer(low=1),
    "model.ffn_dim": _integer(low=1),
    "model.dropout": _real(low=0.0, high=0.99),
    "model.positions": _one_of(POSITIONS),
    "model.attention": _one_of(ATTENTIONS),
    "model.prev_observation": _flag,
    "ppo.epochs": _integer(low=1),
    "ppo.minibatch_episodes": _integer(low=1),
    "ppo.clip_epsilon": _real(low=0.0, low_inclusive=False),
    "ppo.gamma": _real(low=0.0, high=1.0),
    "ppo.lmbda": _real(low=0.0, high=1.0),
    "ppo.normalize_advantage": _flag,
    "ppo.reward_scale": _real(low=0.0, high=MAX_REWARD_SCALE, low_inclusive=False),
    "ppo.lr": _real(low=0.0, low_inclusive=False),
    "ppo.adam_eps": _real(low=0.0, low_inclusive=False),
    "ppo.critic_weight_decay": _real(low=0.0),
    "ppo.fused_optimizer": _flag,
    "ppo.critic_coeff": _real(low=0.0),
    "ppo.loss_critic_type": _one_of(("l1", "l2", "smooth_l1")),
    "ppo.target_kl": _optional(_real(low=0.0, low_inclusive=False)),
    "ppo.decoupled": _flag,
    "ppo.update_threads": _integer(low=1),
    "ppo.entropy_coeff": _real(low=0.0),
    "ppo.entropy_schedule": _one_of(("linear", "constant")),
    "ppo.max_grad_norm": _real(low=0.0, low_inclusive=False),
    "ppo.on_nonfinite": _one_of(("stop", "skip")),
    "eval.every": _integer(low=0),
    "eval.num_tasks": _integer(low=1),
    "logger.backend": _one_of(("csv", "tensorboard", "wandb", "")),
    "logger.exp_name": _text,
    "checkpoint.every": _integer(low=1),
    "checkpoint.resume": _flag,
    "checkpoint.overwrite": _flag,
    "checkpoint.keep_last": _integer(low=0),
    "checkpoint.keep_best": _flag,
    "collector.backend": _one_of(BACKENDS),
    "collector.workers": _integer(low=1),
    "collector.threads_per_worker": _integer(low=1),
    "collector.ray.address": _optional(_text),
    "collector.ray.num_cpus_per_worker": _real(low=0.0, low_inclusive=False),
    "collector.ray.num_gpus_per_worker": _real(low=0.0),
    "compile.enabled": _flag,
    "compile.backend": _text,
    "compile.mode": _optional(_one_of(COMPILE_MODES)),
}


def validate_config(cfg: DictConfig) -> None:
    """Check every key of a configuration against its allowed values, then the keys that depend on each other.

    Errors name the key, the value and what is allowed (``ValueError``; ``TypeError`` for a value of the wrong
    type, e.g. ``ppo.lr=abc`` or ``model.hidden_sizes=16``). ``ppo.reward_scale`` is at most
    :data:`MAX_REWARD_SCALE`.

    Examples:
        >>> cfg = load_config()
        >>> cfg.num_envs = 5
        >>> validate_config(cfg)
        Traceback (most recent call last):
        ...
        ValueError: ppo.minibatch_episodes=8 exceeds num_envs=5 (a minibatch holds whole meta-episodes ...).
        >>> load_config(["ppo.gamma=2"])
        Traceback (most recent call last):
        ...
        ValueError: ppo.gamma=2 is out of range; allowed: [0.0, 1.0].
    """
    flat = flat_config(cfg)
    for key in flat:
        if key not in _SCHEMA:
            settings = [k for k in _SCHEMA if k.startswith(key + ".")]
            if settings:
                raise ValueError(
                    f"{key}={flat[key]!r} is a group of settings ({', '.join(settings[:3])}, ...), not a value: "
                    f"set its keys instead, e.g. {settings[0]}=..."
                )
            raise ValueError(f"unknown configuration key {key!r} (allowed keys: rl3_torchrl/configs/ppo.yaml).")
    missing = [key for key in _SCHEMA if key not in flat]
    if missing:
        raise ValueError(f"the configuration lacks the keys {missing} (see rl3_torchrl/configs/ppo.yaml).")
    for key, check in _SCHEMA.items():
        check(key, flat[key])
    if cfg.model.d_model % cfg.model.num_heads:
        raise ValueError(
            f"model.d_model={cfg.model.d_model} must be a multiple of model.num_heads={cfg.model.num_heads}."
        )
    if cfg.checkpoint.resume and cfg.checkpoint.overwrite:
        raise ValueError(
            "checkpoint.resume=true and checkpoint.overwrite=true contradict each other: resume continues the run "
            "in output_dir, overwrite deletes it and starts over; pass one."
        )
    if cfg.ppo.minibatch_episodes > cfg.num_envs:
        raise ValueError(
            f"ppo.minibatch_episodes={cfg.ppo.minibatch_episodes} exceeds num_envs={cfg.num_envs} "
            "(a minibatch holds whole meta-episodes of one iteration)."
        )
    if cfg.compile.enabled and cfg.ppo.update_threads > 1:
        raise ValueError(
            f"compile.enabled=true with ppo.update_threads={cfg.ppo.update_threads}: pick one. While one thread "
            "compiles, torch's compiling flag and torchrl's recurrent mode are process-wide, so the other threads "
            "take the wrong (window or step) path."
        )
    workers = cfg.collector.workers
    if cfg.collector.backend == "single" and workers != 1:
        raise ValueError(
            f"collector.workers={workers} needs collector.backend=multiprocess or ray (backend=single is one process)."
        )
    if cfg.collector.backend == "async" and workers != 1:
        raise ValueError(
            f"collector.workers={workers} with collector.backend=async: the overlapped collector runs one worker "
            "process (use backend=multiprocess or ray for several)."
        )
    if cfg.num_envs % workers:
        raise ValueError(
            f"num_envs={cfg.num_envs} is not a multiple of collector.workers={workers}: each worker steps "
            "num_envs / workers envs (one meta-episode each per iteration)."
        )


def flat_config(cfg) -> dict:
    """A configuration tree as one ``{"dotted.key": value}`` dict (lists stay values).

    Examples:
        >>> flat_config(OmegaConf.create({"ppo": {"lr": 0.1}, "seed": 0}))
        {'ppo.lr': 0.1, 'seed': 0}
    """
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = value

    walk(OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg, "")
    return flat


def unflatten_config(flat: dict) -> dict:
    """The nested dict of a flat ``{"dotted.key": value}`` configuration (the inverse of :func:`flat_config`).

    Examples:
        >>> unflatten_config({"ppo.lr": 0.1, "seed": 0})
        {'ppo': {'lr': 0.1}, 'seed': 0}
    """
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


_COMMENT_COLUMN = 26  # where ppo.yaml's comments start


def _yaml_value(value) -> str:
    """``value`` as YAML text on one line (flow style)."""
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return json.dumps(value)
    text = str(value)
    return text if isinstance(value, (int, float)) or yaml.safe_load(text) == value else json.dumps(value)


def commented_config(overrides: list[str] | None = None, config: str | None = None) -> str:
    """The text of ``ppo.yaml``, comments kept, with the values of :func:`load_config` ``(overrides, config)``.

    Each value that differs from the default is replaced in place and marked ``# ← NAME`` (set by the named
    config) or ``# ← override`` (set on the command line), before the line's own comment. OmegaConf drops
    comments, hence this rendering of the file's own text.

    Examples:
        >>> text = commented_config(["ppo.lr=0.001"], config="paper_random_mdp")
        >>> print(next(line for line in text.splitlines() if line.strip().startswith("lr:")))
          lr: 0.001               # ← override
        >>> print(next(line for line in text.splitlines() if line.startswith("horizon:")))
        horizon: 512              # ← paper_random_mdp; H, the meta-episode length; null = the task preset's
    """
    overrides = list(overrides or [])
    names = [o.split("=", 1)[1] for o in overrides if o.startswith("config=")]
    config = names[-1] if names else config
    merged = flat_config(OmegaConf.to_container(load_config(overrides, config), resolve=False))
    default = flat_config(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "ppo.yaml"), resolve=False))
    named = {}
    if config is not None:
        named = flat_config(OmegaConf.to_container(OmegaConf.load(_config_file(config)), resolve=False))
    lines, path = [], []
    for line in (CONFIG_DIR / "ppo.yaml").read_text().splitlines():
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            lines.append(line)
            continue
        indent = (len(line) - len(stripped)) // 2
        key, rest = stripped.split(":", 1)
        value, sep, comment = rest.partition(" #")
        path[indent:] = [key]
        if not value.strip():  # a group
            lines.append(line)
            continue
        name = ".".join(path)
        if merged[name] == default[name]:
            lines.append(line)
            continue
        source = config if name in named and named[name] == merged[name] else "override"
        note = f"# ← {source}" + (f";{comment}" if sep else "")
        setting = f"{line[: len(line) - len(stripped)]}{key}: {_yaml_value(merged[name])}"
        lines.append(f"{setting.ljust(_COMMENT_COLUMN - 1)} {note}")
    return "\n".join(lines) + "\n"


def save_config(cfg: DictConfig, path) -> Path:
    """Write the resolved configuration of a run as YAML (``config.yaml`` in its ``output_dir``).

    :func:`load_config` reads it back (``config=PATH``), e.g. to rerun it elsewhere.

    Examples:
        >>> import tempfile, os
        >>> path = save_config(load_config(["seed=3"]), os.path.join(tempfile.mkdtemp(), "config.yaml"))
        >>> OmegaConf.load(path).output_dir
        'runs/random_mdp_rl3_s3'
        >>> load_config([f"config={path}"]).seed
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path
