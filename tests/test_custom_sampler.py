"""A researcher's own sampler with constructor arguments, from the command line (docs/strategies.md).

Pins: ``components.sampler={_target_: pkg.Class, k: 2}`` binds the argument with Hydra's
``instantiate(_partial_=True)`` and ``components.sampler.k=...`` sweeps it; the class uses only
public helpers of ``diffulex.sampling``; the documented code is the class the test runs.
"""

from __future__ import annotations

import inspect
import json
import re

import experiments_plugins
from experiments_helpers import REPO, run_script

from diffulex.engine.outputs import GenerationOutputs


def test_docs_show_the_sampler_the_test_runs():
    doc = (REPO / "docs" / "strategies.md").read_text()
    block = re.search(r"## A custom sampler.*?```python\n(.*?)```", doc, re.S).group(1)
    assert inspect.getsource(experiments_plugins.FixedKSampler) in block
    imports = re.findall(r"^from diffulex\.\S+ import .*$", block, re.M)
    assert imports == ["from diffulex.sampling import Decision, Sampler, fills_per_request, rows_on, select_tokens, "
                       "top_quota"]


def test_sampler_argument_comes_from_the_config_and_sweeps(tiny_root, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_script("generate.py", ["-m", "components.sampler={_target_:experiments_plugins.FixedKSampler,k:2}",
                                      "components.sampler.k=1,3", "experiment.prompt_set=mark",
                                      "experiment.sampling_params.max_tokens=16", "runtime.record_trajectory=true",
                                      f"hydra.sweep.dir={sweep}"], tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job, k in (("0", 1), ("1", 3)):
        results = json.loads((sweep / job / "results.json").read_text())
        assert results["component_classes"]["sampler"] == f"experiments_plugins.FixedKSampler(k={k})"
        outputs = GenerationOutputs.load_jsonl(sweep / job / "trajectories.jsonl")
        for t in outputs:
            per_block = [sum(1 for p, _, _ in s.decided if p // 32 == b) for s in t.steps
                         for b in {p // 32 for p, _, _ in s.decided}]
            assert max(per_block) == k and all(n <= k for n in per_block)  # exactly k while masks last


def test_a_bad_argument_is_a_clear_error(tiny_root, tmp_path):
    proc = run_script("generate.py", ["components.sampler={_target_:experiments_plugins.FixedKSampler,k:0}",
                                      "experiment.sampling_params.max_tokens=8"], tmp_path, tiny_root)
    assert proc.returncode != 0 and "FixedKSampler: k=0, expected an int >= 1" in proc.stderr
    proc = run_script("generate.py", ["components.sampler={_target_:experiments_plugins.FixedKSampler,kk:2}",
                                      "experiment.sampling_params.max_tokens=8"], tmp_path, tiny_root)
    assert proc.returncode != 0 and "kk" in proc.stderr
