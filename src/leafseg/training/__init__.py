"""Training: the shared ``engine`` (a :class:`Trainer` whose steps are overridable hooks) and the modules
it uses (``run_setup``: device, precision, run folder; ``optimisation``: schedules, EMA; ``clock``: wall time;
``handlers``: progress, logging, validation and selection, checkpoints; ``budget``: the time budget;
``checkpoints``: atomic saves, exact resume),
one module per method (``leaf``: LEAF; ``supervised``: the plain UNet baseline; ``peers``:
MONAI networks trained as nnU-Net trains), the ``caches`` of frozen targets and the training ``curves`` figure.
:func:`train` picks the method from the config."""

from __future__ import annotations

from omegaconf import DictConfig

from .checkpoints import BEST, CHECKPOINT, LAST
from .engine import Trainer, TrainResult, run_training
from .leaf import LeafMethod, LeafTrainingModel, build_alignment_teacher, build_components
from .peers import MonaiPeerMethod
from .supervised import SupervisedMethod

__all__ = ["BEST", "CHECKPOINT", "LAST", "METHODS", "LeafTrainingModel", "TrainResult", "Trainer",
           "build_alignment_teacher", "build_components", "train"]

#: ``method`` config value -> training method
METHODS = {"leaf": LeafMethod, "supervised_unet": SupervisedMethod,
           "dynunet": lambda cfg: MonaiPeerMethod(cfg, "dynunet"),
           "basicunet": lambda cfg: MonaiPeerMethod(cfg, "basicunet")}


def train(cfg: DictConfig, resume: bool = False, trainer_class: type[Trainer] = Trainer) -> TrainResult:
    """Train the configured method (``method``: ``leaf``, ``supervised_unet``, or a MONAI peer ``dynunet`` /
    ``basicunet``) into ``cfg.run.output_dir``.

    Args:
        cfg: a configuration from :func:`leafseg.load_config` (defaults, a recipe or file, ``key=value`` overrides).
        resume: continue the run in ``cfg.run.output_dir`` from its last checkpoint (bit for bit on the CPU); a
            changed key that decides what is learned is refused.
        trainer_class: :class:`Trainer`, or a subclass overriding some of its hooks (``on_train_start``,
            ``train_step``, ``validate``, ``export``, ...).

    Returns:
        A ``TrainResult``: the run folder, the last step, the best val Dice and its step (None without a val split),
        and the logged history. The run folder holds ``model-best/``, ``model-last/``, ``checkpoint-last/``,
        ``config.yaml`` and ``logs/``.

    Raises:
        ValueError: a wrong method, configuration value or dataset (the message names the key or file).
    """
    return run_training(METHODS[cfg.method](cfg), cfg, resume, trainer_class)
