"""The counting task (adaperceiver.data.counting): nine items per 64 px canvas, label = how many are tops."""

from __future__ import annotations

import numpy as np
import pytest

from adaperceiver.data.counting import TOPS, CountingFashionMNIST


def fake_items(n=40):
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 10
    images = rng.integers(1, 256, size=(n, 28, 28)).astype(np.uint8)  # every pixel lit: items are easy to find
    return images, labels


def test_label_is_the_number_of_tops_and_items_do_not_overlap():
    images, labels = fake_items()
    ds = CountingFashionMNIST("train", images=images, labels=labels, length=50, seed=3)
    canvases = ds.render(range(len(ds)))
    assert canvases.shape == (50, 64, 64)
    for i in range(len(ds)):
        tops = int(np.isin(labels[ds.source[i]], TOPS).sum())
        assert tops == ds.labels[i] == ds[i][1]
        assert int((canvases[i] > 0).sum()) == 9 * 14 * 14  # nine 14 px items, none covering another
    assert set(ds.labels.tolist()) <= set(range(10)) and len(set(ds.labels.tolist())) > 5
    x, y = ds.__getitems__([0, 1])[1]
    assert x.shape == (1, 64, 64) and y == ds.labels[1]


def test_deterministic_per_seed_and_split():
    images, labels = fake_items()
    a = CountingFashionMNIST("train", images=images, labels=labels, length=20, seed=1).render(range(20))
    b = CountingFashionMNIST("train", images=images, labels=labels, length=20, seed=1).render(range(20))
    c = CountingFashionMNIST("val", images=images, labels=labels, length=20, seed=1).render(range(20))
    assert (a == b).all() and (a != c).any()
    with pytest.raises(ValueError, match="top classes"):
        CountingFashionMNIST("train", images=images[labels == 1], labels=labels[labels == 1])


@pytest.mark.parametrize("items", [9, 16])
def test_odd_one_out_label_is_the_cell_of_the_one_item_of_another_class(items):
    from adaperceiver.data.counting import CELL, OddOneOutFashionMNIST

    images, labels = fake_items()
    ds = OddOneOutFashionMNIST("train", images=images, labels=labels, length=60, seed=2, items=items)
    canvases = ds.render(range(len(ds)))
    for i in range(len(ds)):
        cls = labels[ds.source[i]]
        values, counts = np.unique(cls, return_counts=True)
        assert sorted(counts.tolist()) == [1, items - 1]  # all of one class but one
        assert len(set(ds.cell[i].tolist())) == items and int((canvases[i] > 0).sum()) == items * 14 * 14
        odd_slot = int(np.flatnonzero(cls == values[counts == 1][0])[0])
        cell = int(ds.cell[i, odd_slot])
        assert cell == ds.labels[i] == ds[i][1]
        r, c = divmod(cell, 64 // CELL)  # the odd item is drawn inside that cell
        assert canvases[i, r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL].any()
    assert len(ds.classes) == 16 and len(set(ds.labels.tolist())) > 8
    again = OddOneOutFashionMNIST("train", images=images, labels=labels, length=60, seed=2, items=items)
    np.testing.assert_array_equal(again.render(range(5)), canvases[:5])
    with pytest.raises(ValueError, match="all ten classes"):
        OddOneOutFashionMNIST("train", images=images[:5], labels=labels[:5], length=3, items=items)
    for bad in (8, 17, 9.0):
        with pytest.raises(ValueError, match=f"items must be an int from 9 to 16.*{bad}"):
            OddOneOutFashionMNIST("train", images=images, labels=labels, length=3, items=bad)


def test_composed_sets_carry_the_preprocessing_a_trained_model_needs():
    from adaperceiver.data.counting import OddOneOutFashionMNIST

    images, labels = fake_items()
    for ds in (CountingFashionMNIST("train", images=images, labels=labels, length=3),
               OddOneOutFashionMNIST("train", images=images, labels=labels, length=3)):
        dc = ds.data_config
        assert (dc.input_size, dc.in_chans, dc.class_names) == (64, 1, ds.classes)
        x, _ = ds[0]  # what the model sees is the canvas normalised with the recorded statistics
        expected = (ds.render([0])[0] / 255.0 - dc.mean[0]) / dc.std[0]
        np.testing.assert_allclose(x[0].numpy(), expected, atol=2e-3)
