"""Tasks: seeded synthetic arithmetic (the trained tiny models' data) and evaluation tasks.

``diffulex.tasks.arithmetic`` makes problems with disjoint train / held-out splits; the task
classes (``ArithmeticTask``, ``JsonlTask``, ``GSM8K``, ``HumanEval``, ``MBPP``) turn data into
samples and score outputs; ``evaluate`` runs a task through an engine.
"""

from diffulex.tasks.arithmetic import (SUBTASKS, TRAIN_MIX, Problem, first_number, held_out, is_correct,
                                       is_held_out, sample_train)
from diffulex.tasks.base import Sample, Task
from diffulex.tasks.code import MBPP, HumanEval, run_program
from diffulex.tasks.evaluation import EvalResult, evaluate, score
from diffulex.tasks.gsm8k import GSM8K
from diffulex.tasks.jsonl_task import JsonlTask
from diffulex.tasks.synthetic import ArithmeticTask

__all__ = ["ArithmeticTask", "EvalResult", "GSM8K", "HumanEval", "JsonlTask", "MBPP", "Problem", "SUBTASKS",
           "Sample", "TRAIN_MIX", "Task", "evaluate", "first_number", "held_out", "is_correct", "is_held_out",
           "run_program", "sample_train", "score"]
