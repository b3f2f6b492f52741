"""A graded set of Python function-writing tasks that the project generates itself.

Why: the embedded default model passes ~5% of HumanEval, which leaves a handful of passing samples;
on short easy tasks it passes far more, so both classes come in useful numbers. Tasks cycle through
the families; each family's levels follow `level_weights` (largest-deficit allocation), and a
statement seen before is redrawn. The same (n_tasks, seed, weights) always gives the same tasks.
"""

from __future__ import annotations

import random
from typing import Sequence

from common.logging import get_logger
from common.synthetic import families, pipelines
from common.synthetic.engine import Draft, SyntheticTask, finish

logger = get_logger("synthetic")

ALL_FAMILIES = tuple((f.name, f.draft) for f in pipelines.FAMILIES) + tuple((f.__name__, f) for f in families.FAMILIES)
FAMILY_NAMES = tuple(name for name, _ in ALL_FAMILIES)
DEFAULT_LEVEL_WEIGHTS = (0.7, 0.15, 0.1, 0.05)
_ATTEMPTS = 30


def draft_for(family: str, rng: random.Random, level: int) -> Draft:
    return dict(ALL_FAMILIES)[family](rng, level)


def generate_tasks(n_tasks: int, seed: int = 1234, level_weights: Sequence[float] = DEFAULT_LEVEL_WEIGHTS
                   ) -> list[SyntheticTask]:
    rng = random.Random(seed)
    weights = [w / sum(level_weights) for w in level_weights]
    assigned = {name: [0] * len(weights) for name in FAMILY_NAMES}
    statements: set[str] = set()
    tasks: list[SyntheticTask] = []
    n_pipelines = len(pipelines.FAMILIES)
    for index in range(n_tasks):
        # The family whose turn it is; if it has run out of distinct statements, a compositional family
        # (they have by far the most), then any other.
        turn = index % len(ALL_FAMILIES)
        order = [turn] + [(index + i) % n_pipelines for i in range(n_pipelines)] + list(range(len(ALL_FAMILIES)))
        for position in dict.fromkeys(order):
            name, build = ALL_FAMILIES[position]
            counts = assigned[name]
            level = 1 + max(range(len(weights)), key=lambda i: weights[i] * (sum(counts) + 1) - counts[i])
            task = _new_task(build, level, statements, rng, f"synthetic/{index:04d}")
            if task is not None:
                counts[level - 1] += 1
                statements.add(task.statement)
                tasks.append(task)
                break
        else:
            logger.warning("no family can make another distinct task: stopping at %d tasks", len(tasks))
            break
    return tasks


def _new_task(build, level: int, statements: set[str], rng: random.Random, task_id: str) -> SyntheticTask | None:
    for _ in range(_ATTEMPTS):
        draft = build(rng, level)
        if draft.statement not in statements:  # cheap check first: finishing runs the mutants
            # Its own rng, so that which tasks exist never depends on how many mutants each one has.
            task = finish(draft, task_id, random.Random(draft.statement))
            if task is not None:
                return task
    return None
