"""The ``diffusion_gemma`` canvas loop: decision rules on hand-built logits, and the engine
token for token against transformers' own ``DiffusionGemmaForBlockDiffusion.generate``.

The engine draws from the request's generator exactly what transformers draws from the
global RNG for one sequence (``randint`` per new canvas, ``multinomial`` + ``randint`` per
step), so ``torch.manual_seed(s)`` + ``generate`` and ``SamplingParams(seed=s)`` agree.
The tiny checkpoint's canvas is 32 (``canvas_length`` in its config.json), and both the engine
and transformers decode that canvas.
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest
import torch

from diffulex import Diffulex, SamplingParams
from diffulex.sampling.diffusion_gemma import (converged, denoise_step, entropy_accept, is_stable,
                                              schedule_temperature, token_entropy)

transformers = pytest.importorskip("transformers")
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (  # noqa: E402
    EntropyBoundSampler, EntropyBoundSamplerConfig, StableAndConfidentStoppingCriteria)

PROMPT = [5, 17, 33, 90, 120, 7, 8]
CANVAS = 32  # the tiny checkpoint's canvas_length (diffulex.tiny.gemma.CANVAS_LENGTH)


def knobs(**kw):
    base = dict(max_denoising_steps=4, t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.005,
                entropy_bound=0.1)
    return SimpleNamespace(**{**base, **kw})


# -- decision rules ------------------------------------------------------------------------

def test_temperature_schedule_runs_from_t_max_down_to_one_step_above_t_min():
    temps = [float(schedule_temperature(k, 4, 0.4, 0.8)) for k in range(4)]
    assert temps == pytest.approx([0.8, 0.7, 0.6, 0.5])
    assert schedule_temperature(0, 4, 0.4, 0.8).dtype == torch.float32  # as transformers' int32 cur_step


def test_entropy_bound_accepts_the_lowest_entropy_prefix():
    ent = torch.tensor([0.5, 0.01, 0.03, 0.2, 0.02])
    # sorted 0.01, 0.02, 0.03, 0.2, 0.5: cumsum - current = 0, .01, .03, .06, .26
    assert entropy_accept(ent, 0.05).tolist() == [False, True, True, False, True]
    assert entropy_accept(ent, 0.0).tolist() == [False, True, False, False, False]  # never empty
    assert entropy_accept(ent, 10.0).all()


def test_entropy_bound_equals_transformers_sampler_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 64, 50, generator=g) * torch.linspace(0.1, 8, 64)[None, :, None]
    ref = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=0.7), 64, 50, 4)
    ref.accept_canvas(torch.zeros(2, 64, dtype=torch.long), torch.ones(2, 64, dtype=torch.long), logits, 1)
    for b in range(2):
        assert torch.equal(entropy_accept(token_entropy(logits[b]), 0.7), ref.accepted_token_mask[b])


def test_denoise_step_samples_accepts_and_renoises_with_the_request_generator():
    c, v = 6, 10
    logits = torch.zeros(c, v)
    sharp = [0, 3, 4]
    for i in sharp:
        logits[i, i + 2] = 40.0  # near one-hot: entropy ~ 0
    logits[1] = torch.linspace(0, 2, v)  # flat-ish rows, row 1 the least flat
    logits[5] = torch.linspace(0, 1, v)
    cfg = knobs(entropy_bound=0.01)
    step = denoise_step(logits, 1, cfg, torch.Generator().manual_seed(7))
    t = 0.7  # steps_taken=1 of 4
    assert step.temperature == pytest.approx(t)
    # the bound excludes the largest entropy of the prefix: the three sharp rows sum to ~0,
    # so the next lowest (row 1) is accepted too, and nothing after it
    assert step.accept.tolist() == [i in sharp + [1] for i in range(c)]
    assert step.argmax[sharp].tolist() == [2, 5, 6]
    # the same draws in the same order: multinomial over the canvas, then one randint for it
    g = torch.Generator().manual_seed(7)
    probs = torch.softmax(logits / t, dim=-1)
    sample = torch.multinomial(probs, 1, generator=g)[:, 0]
    noise = torch.randint(0, v, (1, c), generator=g)[0]
    assert torch.equal(step.sample, sample)
    assert torch.equal(step.canvas, torch.where(step.accept, sample, noise))
    assert torch.allclose(step.probs, probs)  # next step's self-conditioning
    assert torch.allclose(step.confidence, probs.gather(1, sample[:, None])[:, 0])


def test_commit_needs_stability_for_threshold_steps_and_mean_entropy_below_the_bound():
    a, b = torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])
    assert not is_stable([], a, 1) and is_stable([a], a, 1) and not is_stable([b], a, 1)
    assert not is_stable([a], a, 2) and is_stable([a, a], a, 2) and not is_stable([b, a], a, 2)

    def step(argmax, mean_ent):
        return SimpleNamespace(argmax=argmax, entropy=torch.full((3,), mean_ent))

    cfg = knobs(stability_threshold=1, confidence_threshold=0.1, max_denoising_steps=5)
    assert converged(step(a, 0.05), [a], 2, cfg)
    assert not converged(step(a, 0.1), [a], 2, cfg)  # strictly below, as transformers
    assert not converged(step(a, 0.05), [b], 2, cfg)
    assert converged(step(a, 9.0), [b], 5, cfg)  # out of steps


def test_commit_rule_equals_transformers_stopping_criteria():
    g = torch.Generator().manual_seed(1)
    crit = StableAndConfidentStoppingCriteria(stability_threshold=2, confidence_threshold=2.5)
    cfg = knobs(stability_threshold=2, confidence_threshold=2.5, max_denoising_steps=100)
    history = []
    seq = [torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([[1, 2]]), torch.tensor([[3, 2]])]
    for k, am in enumerate(seq):
        logits = torch.randn(1, 2, 30, generator=g) * (1 + k)
        ours = converged(SimpleNamespace(argmax=am[0], entropy=token_entropy(logits[0])), history, k + 1, cfg)
        assert ours == bool(crit(am, logits)[0])
        history.append(am[0])


# -- end to end against transformers --------------------------------------------------------

@pytest.fixture(scope="module")
def sharp_ckpt(tiny_path, tmp_path_factory):
    """The tiny checkpoint with its (tied) embedding scaled by 8: sharp enough to converge early."""
    path = tiny_path("diffusion_gemma")
    out = tmp_path_factory.mktemp("dg") / "sharp"
    shutil.copytree(path, out)
    hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        hf.get_input_embeddings().weight.mul_(8.0)
    hf.save_pretrained(str(out))
    return str(out)


def hf_generate(path, prompt, seed, max_new, k):
    hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    torch.manual_seed(seed)
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new, max_denoising_steps=k.max_denoising_steps,
                      t_min=k.t_min, t_max=k.t_max, stability_threshold=k.stability_threshold,
                      confidence_threshold=k.confidence_threshold,
                      sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(k.entropy_bound)))
    return out.sequences[0, len(prompt):].tolist(), hf.generation_config.pad_token_id


def engine(path, k):
    return Diffulex(path, dtype="float32", device="cpu", max_model_len=512,
                    **{f"diffusion_gemma_{n}": v for n, v in vars(k).items()})


CASES = [  # (checkpoint, knobs, seed, max_tokens)
    ("tiny", knobs(max_denoising_steps=3), 0, 300),  # many canvases of 32
    ("tiny", knobs(max_denoising_steps=3), 1, 300),
    ("tiny", knobs(max_denoising_steps=3, stability_threshold=2, confidence_threshold=100.0, entropy_bound=50.0),
     1, 300),
    ("sharp", knobs(max_denoising_steps=10, t_min=0.05, t_max=0.1, confidence_threshold=100.0, entropy_bound=1e6),
     0, 300),  # commits at step 9 of 10: stable and confident
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_engine_equals_transformers_generate(case, tiny_path, sharp_ckpt):
    which, k, seed, max_tokens = CASES[case]
    path = tiny_path("diffusion_gemma") if which == "tiny" else sharp_ckpt
    ref, pad = hf_generate(path, PROMPT, seed, max_tokens, k)
    with engine(path, k) as eng:
        tr = eng.generate([PROMPT], SamplingParams(max_tokens=max_tokens, seed=seed)).trajectories[0]
    n = len(tr.token_ids)
    assert tr.token_ids == ref[:n]
    if tr.finish_reason == "eos":
        assert all(t == pad for t in ref[n:])  # transformers pads after the first EOS
    else:
        assert tr.finish_reason == "length" and n == max_tokens
    commits = [s.blocks[0]["denoise_steps"] for s in tr.steps if s.blocks[0]["state"] == "committing"]
    assert commits and all(1 <= c <= k.max_denoising_steps for c in commits)
    if which == "sharp":
        assert commits[0] < k.max_denoising_steps  # the stable-and-confident rule fired
    for s in tr.steps:  # every step: accepted fills + re-noised positions cover the canvas
        assert s.num_decided + s.num_remasked == CANVAS and s.num_decided >= 1
        assert {p for p, _, _ in s.decided}.isdisjoint(s.remasked)


def test_seeded_runs_are_deterministic_and_batched_equals_alone(tiny_path):
    path, k = tiny_path("diffusion_gemma"), knobs(max_denoising_steps=2)
    prompts = [PROMPT, [9, 8, 7, 6, 5, 11, 12, 13, 14]]
    params = [SamplingParams(max_tokens=280, seed=0), SamplingParams(max_tokens=280, seed=5)]
    with engine(path, k) as eng:
        both = [t.token_ids for t in eng.generate(prompts, params).trajectories]
        again = [t.token_ids for t in eng.generate(prompts, params).trajectories]
        alone = [eng.generate([p], [sp]).trajectories[0].token_ids for p, sp in zip(prompts, params)]
    assert both == again == alone
    assert both[0] != both[1]


def test_max_nfe_stops_with_the_committed_tokens(tiny_path):
    # CASES[0]'s run: the first canvas commits at nfe 3 (no EOS), the second is in flight at nfe 4
    with engine(tiny_path("diffusion_gemma"), knobs(max_denoising_steps=3)) as eng:
        tr = eng.generate([PROMPT], SamplingParams(max_tokens=300, seed=0, max_nfe=4)).trajectories[0]
    assert (tr.nfe, tr.finish_reason, len(tr.token_ids)) == (4, "max_nfe", CANVAS)


def test_sampling_knobs_the_canvas_loop_cannot_honour_are_refused(tiny_path):
    import pytest

    from diffulex import Diffulex, SamplingParams

    with Diffulex(tiny_path("diffusion_gemma")) as llm:
        with pytest.raises(ValueError, match="t_min"):
            llm.generate([[20, 21]], SamplingParams(max_tokens=4, temperature=0.7))


def test_the_canvas_is_the_checkpoints_and_another_block_size_is_refused(tiny_path):
    with Diffulex(tiny_path("diffusion_gemma")) as llm:
        assert llm.config.strategy.block_size == CANVAS and llm.config.cache.page_size == 256
    with pytest.raises(ValueError, match="canvas_length"):
        Diffulex(tiny_path("diffusion_gemma"), block_size=256)


def test_a_tokenizer_without_a_mask_token_is_accepted(tiny_path, tmp_path):
    import json

    path = tmp_path / "nomask"
    shutil.copytree(tiny_path("diffusion_gemma"), path)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((path / name).read_text())
        data.pop("mask_token", None)
        (path / name).write_text(json.dumps(data))
    with Diffulex(str(path), dtype="float32") as llm:
        assert llm.config.model.mask_token_id is None
        tr = llm.generate([PROMPT], SamplingParams(max_tokens=8, seed=0)).trajectories[0]
    with Diffulex(tiny_path("diffusion_gemma"), dtype="float32") as llm:
        same = llm.generate([PROMPT], SamplingParams(max_tokens=8, seed=0)).trajectories[0]
    assert tr.token_ids == same.token_ids  # the mask token never took part
