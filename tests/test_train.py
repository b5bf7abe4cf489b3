"""diffulex.train: objectives, the exact export, the training forward against the engine's, a smoke run."""

from __future__ import annotations

import json

import pytest
import torch

import diffulex.models  # noqa: F401
from diffulex.layers.attention_metadata import AttentionMetadata
from diffulex.models.weights import iter_checkpoint
from diffulex.registry import AutoModel
from diffulex.tiny import write_tiny_checkpoint
from diffulex.tiny.sizes import TinySize
from diffulex.tiny.weights import tensor_specs
from diffulex.train import Trainer, family_config, train
from diffulex.train import objectives as obj
from diffulex.train.attention import TrainingMetadata
from diffulex.train.model import export_tensors

SMALL = TinySize(hidden=32, heads=2, kv_heads=1, head_dim=16, inter=64, layers=2, max_pos=128, experts=8,
                 top_k=2, moe_inter=16)


@pytest.mark.parametrize("family", ["llada2", "llada", "sdar", "sdar_moe", "dream", "fast_dllm_v2"])
def test_export_is_the_inverse_of_loading(tmp_path, family):
    path = write_tiny_checkpoint(family, tmp_path / family, seed=3)
    cfg = json.loads((path / "config.json").read_text())
    model = AutoModel.get(family)(cfg, dtype=torch.float32)
    model.load_weights(path)
    original = dict(iter_checkpoint(path))
    exported = export_tensors(model, tensor_specs(family, cfg["vocab_size"]))
    assert exported.keys() == original.keys()
    for name, t in original.items():
        assert torch.equal(exported[name], t.float()), name


def _engine_meta(pos: torch.Tensor, key_hi: torch.Tensor) -> AttentionMetadata:
    n = len(pos)
    return AttentionMetadata(
        cu_seqlens_q=torch.tensor([0, n]), positions=pos, context_lens=torch.zeros(1, dtype=torch.long),
        page_table=torch.zeros(1, 0, dtype=torch.long), slot_mapping=torch.full((n,), -1),
        key_lo=torch.zeros(n, dtype=torch.long), key_hi=key_hi, cache_only=torch.zeros(1, dtype=torch.bool),
        logits_indices=torch.arange(n), page_size=1)


@pytest.mark.parametrize("family", ["llada2", "llada", "sdar"])
def test_training_attention_equals_the_engine_forward(family):
    """The training op with a block-causal mask gives the engine's logits (reference paged attention)."""
    trainer = Trainer(family_config(family, size=SMALL, device="cpu", batch_size=4))
    model = trainer.model
    n, block = 20, 8
    ids = torch.randint(0, 200, (n,), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(n)
    key_hi = (pos // block + 1) * block
    tm = TrainingMetadata.build(pos[None], (pos[None, :] < key_hi[:, None])[None])
    with torch.no_grad():
        trained_path = model.compute_logits(model(ids, tm.positions, tm))
        for m in model.modules():  # back to the engine's reference attention
            if hasattr(m, "kernels") and not isinstance(m.kernels, str):
                m.kernels = "torch"
        engine_path = model.compute_logits(model(ids, pos, _engine_meta(pos, key_hi)))
    torch.testing.assert_close(trained_path, engine_path, rtol=1e-4, atol=1e-5)
    assert trained_path.std() > 0.01  # a real model, not zeros


def test_bd_mask_and_noise():
    rows = obj.make_rows([[1, 2, 3]], [[4, 5, 6, 7]], 0, 8)
    b = obj.bd(rows, 99, 4, torch.Generator().manual_seed(0))
    m = b.mask[0]
    noisy, clean = slice(0, 8), slice(8, 16)
    # noisy block 1 (positions 4..7) sees noisy block 1 and clean block 0, nothing else
    assert m[4, 4:8].all() and m[4, 8:12].all() and not m[4, 0:4].any() and not m[4, 12:16].any()
    assert m[0, 0:4].all() and not m[0, 4:].any()  # noisy block 0: itself only
    assert m[12, 8:16].all() and not m[12, :8].any()  # clean block 1: clean blocks 0 and 1
    assert not m[8, 12:16].any()  # clean block 0 does not see clean block 1
    assert (b.input_ids[0, :3] == torch.tensor([1, 2, 3])).all()  # the prompt is never noised
    masked = b.input_ids[0, noisy] == 99
    assert (b.weights[0, noisy][masked] >= 1).all() and (b.weights[0, noisy][~masked] == 0).all()
    assert (b.weights[0, clean] == 0).all() and torch.equal(b.targets[0, clean], rows.ids[0])


def test_edit_corrupts_only_visible_answer_tokens_and_trains_on_them():
    rows = obj.make_rows([[1, 2, 3]] * 64, [[4, 5, 6, 7]] * 64, 0, 16)
    b = obj.bd(rows, 99, 8, torch.Generator().manual_seed(1), edit=1.0, soft=1.0,
               edit_tokens=torch.tensor([50, 51]))
    noisy = b.input_ids[:, :16]
    corrupted = (noisy == 50) | (noisy == 51)
    assert corrupted.any() and not corrupted[:, :3].any()
    assert (b.weights[:, :16][corrupted] == 1).all()  # predict the original at corrupted tokens
    visible = (noisy != 99) & rows.generated
    assert (b.weights[:, :16][visible] > 0).all()
    assert (b.soft[:, :16][~visible] == 1).all() and (b.soft[:, :16][visible] < 1).any()


def test_d2f_mask_is_bidirectional_prompt_then_block_causal():
    rows = obj.make_rows([[1, 2, 3]], [[4, 5, 6, 7]], 0, 8)
    m = obj.d2f(rows, 99, 4, torch.Generator().manual_seed(0)).mask[0]
    assert m[0, :3].all() and not m[0, 3:].any()  # prompt sees the whole prompt only
    assert m[3, :4].all() and not m[3, 4:].any()  # position 3 (block 0) sees block 0
    assert m[5, :8].all()


def test_mdm_masks_only_the_answer_region():
    rows = obj.make_rows([[1, 2, 3]] * 32, [[4, 5]] * 32, 0, 10)
    b = obj.mdm(rows, 99, torch.Generator().manual_seed(0))
    assert not (b.input_ids[:, :3] == 99).any() and (b.input_ids[:, 3:] == 99).any()
    assert b.mask.all()


def test_smoke_run_learns_and_writes_a_loadable_checkpoint(tmp_path):
    from diffulex import Diffulex, SamplingParams

    cfg = family_config("llada2", size=SMALL, steps=40, batch_size=16, device="cpu", warmup_steps=5,
                        log_every=10, lr=3e-3)
    out = train(cfg, tmp_path / "ckpt")
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["mean_loss"] < 0.5 * log[0]["mean_loss"]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["family"] == "llada2" and saved["steps"] == 40 and saved["size"]["hidden"] == 32
    assert (out / "model.safetensors.index.json").is_file()  # llada2's real, sharded layout
    llm = Diffulex(str(out), decoding_strategy="multi_bd")
    try:
        outputs = llm.generate(["Solve: 1 + 2."], SamplingParams(temperature=0.0, max_tokens=8))
        assert outputs.trajectories[0].nfe >= 1
    finally:
        llm.exit()


def test_the_batch_worker_gives_the_same_stream():
    from diffulex.train.data import batch_stream

    trainer = Trainer(family_config("sdar", size=SMALL, device="cpu", batch_size=8))
    inline = list(batch_stream(trainer.batches, 3, workers=0))
    trainer2 = Trainer(family_config("sdar", size=SMALL, device="cpu", batch_size=8))
    worker = list(batch_stream(trainer2.batches, 3, workers=1))
    for (n1, b1), (n2, b2) in zip(inline, worker):
        assert n1 == n2 and torch.equal(b1.input_ids, b2.input_ids) and torch.equal(b1.weights, b2.weights)


@pytest.mark.parametrize("overrides, field", [
    (dict(seq_len=60), "seq_len"),
    (dict(block_sizes=(0,)), "block_sizes"),
    (dict(soft=0.5, edit=0.0), "soft"),
    (dict(objectives={"ar": 1.0}), "objectives"),
    (dict(task_mix={"div": 1.0}), "task_mix"),
    (dict(size=TinySize(heads=3, kv_heads=2)), "size.heads"),
])
def test_impossible_configs_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        family_config("llada2", **overrides)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="trainable families"):
        family_config("dream")


def test_cli_reports_a_bad_field_with_exit_2(tmp_path, capsys):
    from diffulex.train.__main__ import main

    assert main(["--family", "llada2", "--out", str(tmp_path / "x"), "--set", "seq_len=60"]) == 2
    assert "seq_len=60" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_hydra_train_app_writes_a_checkpoint(tmp_path, tiny_root):
    from experiments_helpers import run_script

    out = tmp_path / "ckpt"
    proc = run_script("train_tiny.py", ["train=sdar", "train.steps=3", "train.batch_size=4", "train.device=cpu",
                                        "train.size={hidden: 32, heads: 2, kv_heads: 1, head_dim: 16, inter: 64, "
                                        "layers: 1}", f"out={out}"], tmp_path, tiny_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["family"] == "sdar" and saved["steps"] == 3 and saved["size"]["layers"] == 1
    assert saved["size"]["max_pos"] == 256  # the family's size, merged with the override
    assert (out / "model.safetensors").is_file()
