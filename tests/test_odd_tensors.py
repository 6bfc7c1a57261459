"""Batch tensors a term cannot use (issue 21): complex, sparse (COO, CSR), meta and non-finite values are one
BatchError naming the key, its dtype/layout and the term, for every built-in term and on either side; a
non-contiguous (strided) tensor, integer and bool values work and give the same loss as the plain tensor."""

from __future__ import annotations

import pytest
import torch

import otplug
from otplug.errors import BatchError

CAM = "observation.images.front"
TERMS = {
    "label": {"type": "label", "name": "lab", "src_key": "observation.state"},
    "embedding": {"type": "embedding", "name": "emb", "src_key": "observation.state", "weight_label": 1.0},
    "image": {"type": "image", "name": "img", "src_key": CAM},
    "image-pixels": {"type": "image", "name": "pix", "src_key": CAM, "use_learned_embed": False,
                     "weight_label": 1.0},
    "action-slice": {"type": "action-slice", "name": "act", "src_key": "action", "dim_slice": [0, 3]},
}


class Encoder(torch.nn.Module):
    """A deterministic encoder of any key (its first 4 values per sample), with gradients."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64))

    def encode_feature_for_ot(self, key, x):
        return x.reshape(x.shape[0], -1)[:, :4].double() @ self.w


def _batches(seed=0, n=4):
    gen = torch.Generator().manual_seed(seed)

    def side():
        return {"observation.state": torch.randn(n, 4, generator=gen, dtype=torch.float64),
                CAM: torch.rand(n, 3, 6, 6, generator=gen, dtype=torch.float64),
                "action": torch.randn(n, 5, 4, generator=gen, dtype=torch.float64)}

    return side(), side()


def _loss(term):
    return otplug.OTLoss({"terms": [TERMS[term]], "reg": 0.5, "cost_normalization": "mean"})


def _flat2d(x):
    return x.reshape(x.shape[0], -1)


BAD = {
    "complex": (lambda x: torch.complex(x, x), "complex128", "strided", "is complex"),
    "sparse-coo": (lambda x: x.to_sparse(), "float64", "sparse_coo", "sparse"),
    "sparse-csr": (lambda x: _flat2d(x).to_sparse_csr(), "float64", "sparse_csr", "sparse"),
    "meta": (lambda x: x.to("meta"), "float64", "strided", "meta device"),
    "nan": (lambda x: x.clone().index_put_((torch.tensor([1]),), torch.tensor(float("nan"), dtype=x.dtype)),
            "float64", "strided", "non-finite"),
    "inf": (lambda x: x.clone().index_put_((torch.tensor([0]),), torch.tensor(float("inf"), dtype=x.dtype)),
            "float64", "strided", "non-finite"),
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("side", ["src", "tgt"])
@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("term", sorted(TERMS))
def test_a_tensor_the_term_cannot_use_is_one_error_naming_key_dtype_layout_and_term(term, bad, side):
    make, dtype, layout, what = BAD[bad]
    src, tgt = _batches()
    key = TERMS[term]["src_key"]
    batch = src if side == "src" else tgt
    batch[key] = make(batch[key])
    with pytest.raises(BatchError) as err:
        _loss(term)(src, tgt, encoder=Encoder())
    msg = str(err.value)
    name = TERMS[term]["name"]
    assert msg.startswith(f"term {name!r} (type {TERMS[term]['type']!r}): {side} batch[{key!r}]"), msg
    assert what in msg and "\n" not in msg, msg
    if bad not in ("nan", "inf"):
        assert f"dtype {dtype}" in msg and f"layout {layout}" in msg, msg


@pytest.mark.parametrize("term", sorted(TERMS))
def test_non_contiguous_integer_and_bool_values_work(term):
    src, tgt = _batches()
    key = TERMS[term]["src_key"]
    ref = _loss(term)(src, tgt, encoder=Encoder())
    # the same values through a non-contiguous view (a transposed copy, transposed back; a step-2 slice)
    strided = dict(src, **{key: src[key].transpose(0, -1).contiguous().transpose(0, -1)})
    doubled = torch.stack([src[key], torch.zeros_like(src[key])], dim=1)
    sliced = dict(src, **{key: doubled[:, 0]})
    assert not strided[key].is_contiguous() and not sliced[key].is_contiguous()
    for batch in (strided, sliced):
        res = _loss(term)(batch, tgt, encoder=Encoder())
        torch.testing.assert_close(res.loss, ref.loss)
        torch.testing.assert_close(res.plan, ref.plan)
    # integers and bools are read as float32 (what was accepted before) -- a finite loss
    for values in ((src[key] * 4).round().to(torch.int64), src[key] > 0.5):
        res = _loss(term)(dict(src, **{key: values}), tgt, encoder=Encoder())
        assert bool(torch.isfinite(res.loss)), term


def test_a_sparse_pad_mask_is_named_too():
    src, tgt = _batches()
    src["action_is_pad"] = torch.zeros(4, 5, dtype=torch.bool).to_sparse()
    with pytest.raises(BatchError, match=r"term 'act' .*src batch\['action_is_pad'\] \(dtype bool, layout "
                                         r"sparse_coo.*dense bool"):
        _loss("action-slice")(src, tgt)

