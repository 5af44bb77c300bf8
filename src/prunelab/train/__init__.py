"""Recovery fine-tuning (full and LoRA) with pruning masks kept exactly, and iterative pruning schedules."""
from .api import finetune, iterative
from .trainer import FinetuneConfig
from .loop import IterativeConfig
from .masks import Masks
from .schedules import SCHEDULES, schedule_targets

__all__ = ["finetune", "iterative", "FinetuneConfig", "IterativeConfig", "Masks", "SCHEDULES", "schedule_targets"]
