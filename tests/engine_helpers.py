"""Runner classes for engine-construction tests (importable by spawned workers)."""

from __future__ import annotations

from diffulex.engine.model_runner import ModelRunner


class FailOnRank1Runner(ModelRunner):
    """Builds normally on rank 0; raises during construction on rank 1."""

    def __init__(self, config, parallel):
        if parallel.rank == 1:
            raise RuntimeError("boom in worker rank 1")
        super().__init__(config, parallel)


class FailOnRank0Runner(ModelRunner):
    """Raises on rank 0 while the workers build their runners."""

    def __init__(self, config, parallel):
        if parallel.rank == 0:
            raise KeyError("boom on rank 0")
        super().__init__(config, parallel)
