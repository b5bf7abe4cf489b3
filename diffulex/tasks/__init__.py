"""Synthetic tasks with seeded, disjoint train and held-out splits (the trained tiny models' data)."""

from diffulex.tasks.arithmetic import (SUBTASKS, TRAIN_MIX, Problem, first_number, held_out, is_correct,
                                       is_held_out, sample_train)

__all__ = ["Problem", "SUBTASKS", "TRAIN_MIX", "first_number", "held_out", "is_correct", "is_held_out",
           "sample_train"]
