"""Training tiny diffusion models on the synthetic tasks, in each family's real checkpoint layout.

``python -m diffulex.train --family llada2 --out DIR`` (argparse; no Hydra needed, so it runs
on the GPU machine) or ``python experiments/train_tiny.py train=llada2`` (Hydra).
"""

from diffulex.train.config import FAMILY_DEFAULTS, TRAINABLE_FAMILIES, TrainConfig, family_config
from diffulex.train.loop import Trainer, train, trained_tokenizer

__all__ = ["FAMILY_DEFAULTS", "TRAINABLE_FAMILIES", "TrainConfig", "Trainer", "family_config", "train",
           "trained_tokenizer"]
