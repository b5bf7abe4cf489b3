"""DiffusionGemmaForDiffusion equals transformers' DiffusionGemmaForBlockDiffusion on a canvas.

The reference call is the one ``generate`` makes: the encoder reads the prompt causally into
a DynamicCache, the decoder denoises one canvas bidirectionally over that cache, with or
without the previous step's logits as self-conditioning.
"""

from __future__ import annotations

import pytest
import torch

from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.models.diffusion_gemma import DiffusionGemmaForDiffusion

transformers = pytest.importorskip("transformers")
PREFIX, CANVAS = 80, 32  # prefix longer than sliding_window - 1 = 63: the window really cuts
PAGE = 16


@pytest.fixture(scope="module")
def perturbed_ckpt(tiny_path, tmp_path_factory):
    """The tiny checkpoint with every norm, scale and layer scalar moved off its init value.

    Encoder and decoder layer scalars get different values, so using the wrong one shows.
    """
    path = tiny_path("diffusion_gemma")
    hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "vision" not in name:
                p.add_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else 0.02))
        for name, b in hf.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.5 + torch.rand((), generator=g).item())
    out = tmp_path_factory.mktemp("dg") / "perturbed"
    hf.save_pretrained(str(out))
    return str(out)


@pytest.fixture(scope="module")
def models(perturbed_ckpt):
    hf = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(perturbed_ckpt, dtype=torch.float32).eval()
    ours = DiffusionGemmaForDiffusion(hf.config, dtype=torch.float32).eval()
    ours.load_weights(perturbed_ckpt)
    return hf, ours


def meta_for(seqs: list[tuple[int, int, int]], page_table=None, slots=None) -> AttentionMetadata:
    """Metadata for sequences ``(context_len, num_encoder_tokens, num_canvas_tokens)``.

    Encoder tokens are causal; canvas tokens see everything up to the canvas end.
    """
    pos, hi, cu = [], [], [0]
    for ctx, enc, can in seqs:
        p = torch.arange(ctx, ctx + enc + can)
        end = ctx + enc + can
        pos.append(p)
        hi.append(torch.cat([p[:enc] + 1, torch.full((can,), end)]))
        cu.append(cu[-1] + enc + can)
    n, s = cu[-1], len(seqs)
    return AttentionMetadata(
        cu_seqlens_q=torch.tensor(cu), positions=torch.cat(pos),
        context_lens=torch.tensor([c for c, _, _ in seqs]),
        page_table=page_table if page_table is not None else torch.full((s, 0), -1, dtype=torch.long),
        slot_mapping=slots if slots is not None else torch.full((n,), -1, dtype=torch.long),
        key_lo=torch.zeros(n, dtype=torch.long), key_hi=torch.cat(hi),
        cache_only=torch.zeros(s, dtype=torch.bool), logits_indices=torch.arange(n), page_size=PAGE)


def canvas_mask_for(seqs) -> torch.Tensor:
    return torch.cat([torch.cat([torch.zeros(enc, dtype=torch.bool), torch.ones(can, dtype=torch.bool)])
                      for _, enc, can in seqs])


def inputs(vocab: int, seed: int, prefix: int = PREFIX):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, vocab, (prefix,), generator=g), torch.randint(0, vocab, (CANVAS,), generator=g),
            torch.randn(CANVAS, vocab, generator=g) * 3)


def reference(hf, prefix, canvas, sc_logits):
    with torch.no_grad():
        out = hf(input_ids=prefix[None], decoder_input_ids=canvas[None],
                 self_conditioning_logits=None if sc_logits is None else sc_logits[None])
    return out.logits[0], out.encoder_last_hidden_state[0]


def ours_uncached(ours, prefix, canvas, sc_logits):
    """One flat forward: prompt as encoder tokens, canvas as decoder tokens, no cache."""
    seqs = [(0, len(prefix), CANVAS)]
    sc = None
    if sc_logits is not None:
        sc = torch.cat([torch.zeros(len(prefix), sc_logits.shape[1]), sc_logits.float().softmax(-1)])
    with torch.no_grad():
        h = ours(torch.cat([prefix, canvas]), meta_for(seqs).positions, meta_for(seqs),
                 self_conditioning=sc, canvas_mask=canvas_mask_for(seqs))
        return ours.compute_logits(h[len(prefix):]), h[:len(prefix)]


@pytest.mark.parametrize("self_conditioned", [False, True], ids=["first_step", "self_conditioned"])
def test_canvas_logits_match_transformers(models, self_conditioned):
    hf, ours = models
    prefix, canvas, sc_logits = inputs(hf.config.text_config.vocab_size, seed=1)
    sc_logits = sc_logits if self_conditioned else None
    ref_logits, ref_enc = reference(hf, prefix, canvas, sc_logits)
    logits, enc = ours_uncached(ours, prefix, canvas, sc_logits)
    assert (enc - ref_enc).abs().max() < 1e-4  # encoder role: causal, sliding window, encoder scalars
    assert (logits - ref_logits).abs().max() < 1e-4  # decoder role, softcapped logits
    assert logits.dtype == torch.float32 and logits.abs().max() <= hf.config.text_config.final_logit_softcapping


def test_self_conditioning_changes_logits(models):
    hf, ours = models
    prefix, canvas, sc_logits = inputs(hf.config.text_config.vocab_size, seed=2)
    plain, _ = ours_uncached(ours, prefix, canvas, None)
    conditioned, _ = ours_uncached(ours, prefix, canvas, sc_logits)
    assert (plain - conditioned).abs().max() > 1e-3


def test_cached_canvas_equals_uncached(models):
    """Prefix encoded into the paged cache, then the canvas alone over it: same logits."""
    hf, ours = models
    prefix, canvas, sc_logits = inputs(hf.config.text_config.vocab_size, seed=3)
    expected, _ = ours_uncached(ours, prefix, canvas, sc_logits)
    num_pages = (PREFIX + CANVAS) // PAGE + 1
    caches = [(torch.zeros(num_pages, PAGE, hkv, d), torch.zeros(num_pages, PAGE, hkv, d))
              for hkv, d in ours.kv_cache_spec()]
    pages = torch.arange(num_pages)[None]
    with torch.no_grad():
        meta = meta_for([(0, PREFIX, 0)], pages, slots=torch.arange(PREFIX))
        ours(prefix, meta.positions, meta, caches)
        meta = meta_for([(PREFIX, 0, CANVAS)], pages)  # slot -1: the decoder never writes the cache
        h = ours(canvas, meta.positions, meta, caches, self_conditioning=sc_logits.float().softmax(-1),
                 canvas_mask=torch.ones(CANVAS, dtype=torch.bool))
    assert (ours.compute_logits(h) - expected).abs().max() < 1e-4
    ref_logits, _ = reference(hf, prefix, canvas, sc_logits)
    assert (ours.compute_logits(h) - ref_logits).abs().max() < 1e-4


def test_batched_sequences_keep_their_own_window(models):
    """Two sequences with different prefix lengths in one batch equal their solo runs."""
    hf, ours = models
    vocab = hf.config.text_config.vocab_size
    (p1, c1, s1), (p2, c2, s2) = inputs(vocab, seed=4), inputs(vocab, seed=5, prefix=20)
    seqs = [(0, PREFIX, CANVAS), (0, 20, CANVAS)]
    meta = meta_for(seqs)
    zeros = lambda n: torch.zeros(n, vocab)  # noqa: E731
    sc = torch.cat([zeros(PREFIX), s1.softmax(-1), zeros(20), s2.softmax(-1)])
    with torch.no_grad():
        h = ours(torch.cat([p1, c1, p2, c2]), meta.positions, meta, self_conditioning=sc,
                 canvas_mask=canvas_mask_for(seqs))
    logits = ours.compute_logits(h)
    solo1, _ = ours_uncached(ours, p1, c1, s1)
    solo2, _ = ours_uncached(ours, p2, c2, s2)
    assert (logits[PREFIX:PREFIX + CANVAS] - solo1).abs().max() < 1e-4
    assert (logits[PREFIX + CANVAS + 20:] - solo2).abs().max() < 1e-4


def test_kv_cache_spec_per_layer_type(models):
    _, ours = models
    text = ours.text_config
    assert ours.kv_cache_spec() == [(text.per_layer_config[0].num_key_value_heads, text.per_layer_config[0].head_dim),
                                    (text.per_layer_config[1].num_key_value_heads,
                                     text.per_layer_config[1].head_dim)]


def test_rejects_llada2_checkpoint(models, tiny_path):
    _, ours = models
    with pytest.raises(ValueError, match="unexpected checkpoint tensor"):
        ours.load_weights(tiny_path("llada2"))


def test_rejects_missing_tensor(models, perturbed_ckpt):
    from diffulex.models.weights import iter_checkpoint

    _, ours = models
    tensors = [(n, t) for n, t in iter_checkpoint(perturbed_ckpt) if "self_conditioning.pre_norm" not in n]
    with pytest.raises(ValueError, match="missing"):
        ours.load_named_tensors(tensors)


# ----- tensor parallelism: 2 CPU ranks over gloo reproduce the single-rank logits -----

def tp_logits(rank: int, size: int, path: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    from diffulex.config.checkpoint import load_hf_config
    from diffulex.layers.parallel import TPGroup

    model = DiffusionGemmaForDiffusion(load_hf_config(path), tp=TPGroup(rank, size), dtype=torch.float32)
    model.load_weights(path)
    prefix, canvas, sc_logits = inputs(model.text_config.vocab_size, seed=6)
    return ours_uncached(model, prefix, canvas, sc_logits)[0], model.kv_cache_spec()


def tp_worker(rank: int, size: int, port: int, path: str, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        torch.save(tp_logits(rank, size, path), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_tp2_matches_tp1(perturbed_ckpt, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    expected, _ = tp_logits(0, 1, perturbed_ckpt)
    mp.spawn(tp_worker, args=(2, port, perturbed_ckpt, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got, spec = torch.load(tmp_path / f"rank{rank}.pt")
        assert spec == [(1, 16), (1, 32)]  # sliding: 2 KV heads split; full: 1 KV head replicated
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_accepts_shared_weights_under_encoder_names(models, perturbed_ckpt):
    """A checkpoint that stores the shared weights under the encoder's names loads the same."""
    from diffulex.models.weights import iter_checkpoint

    hf, ours = models
    renamed = [(n.replace("model.decoder.layers.", "model.encoder.language_model.layers.")
                if "layer_scalar" not in n else n, t) for n, t in iter_checkpoint(perturbed_ckpt)]
    other = DiffusionGemmaForDiffusion(hf.config, dtype=torch.float32)
    other.load_named_tensors(renamed)
    for (name, a), (_, b) in zip(ours.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name
