"""The static inputs of a captured step shape (``diffulex.layers.graph_inputs``): one buffer of
typed views, written from host tensors in one copy, smaller values padded with the field's fill."""

from __future__ import annotations

import pytest
import torch

from diffulex.layers.graph_inputs import StaticInputs


def _inputs() -> StaticInputs:
    fields = [("ids", torch.long, (5,)), ("flags", torch.bool, (3,)), ("table", torch.long, (3, 4)),
              ("rows", torch.long, (5,))]
    return StaticInputs(fields, torch.device("cpu"), fill={"table": -1})


def test_fields_are_aligned_views_of_one_buffer():
    inp = _inputs()
    assert [inp.views[k].dtype for k in ("ids", "flags", "table", "rows")] == [torch.long, torch.bool, torch.long,
                                                                                 torch.long]
    assert all(off % 8 == 0 for off, _ in inp.offsets.values())
    base = inp.buffer.data_ptr()
    for name, (off, _) in inp.offsets.items():
        assert inp.views[name].data_ptr() == base + off  # no copies: views of the one buffer
    ends = sorted((off, off + size) for off, size in inp.offsets.values())
    assert all(a[1] <= b[0] for a, b in zip(ends, ends[1:])) and ends[-1][1] <= inp.nbytes  # no overlap


def test_write_fills_every_view_and_pads_smaller_values():
    inp = _inputs()
    table = torch.tensor([[7, 8], [9, -1], [3, 4]])  # a narrower page table: the rest is -1
    inp.write({"ids": torch.arange(5) + 10, "flags": torch.tensor([True, False, True]), "table": table,
               "rows": torch.tensor([4, 1])})
    assert inp.views["ids"].tolist() == [10, 11, 12, 13, 14]
    assert inp.views["flags"].tolist() == [True, False, True]
    assert inp.views["table"].tolist() == [[7, 8, -1, -1], [9, -1, -1, -1], [3, 4, -1, -1]]
    assert inp.views["rows"][:2].tolist() == [4, 1]
    # A wider write, then a narrower one: nothing of the wider one survives in the padding.
    inp.write({"table": torch.arange(12).view(3, 4)})
    inp.write({"table": torch.tensor([[5], [6], [7]])})
    assert inp.views["table"].tolist() == [[5, -1, -1, -1], [6, -1, -1, -1], [7, -1, -1, -1]]
    assert inp.views["ids"].tolist() == [10, 11, 12, 13, 14]  # fields not written keep their values


def test_a_value_larger_than_its_static_shape_is_refused():
    inp = _inputs()
    with pytest.raises(ValueError, match="table.*does not fit"):
        inp.write({"table": torch.zeros(4, 4, dtype=torch.long)})
    with pytest.raises(ValueError, match="bfloat16"):
        StaticInputs([("x", torch.bfloat16, (2,))], torch.device("cpu"))
