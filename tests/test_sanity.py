"""labutils.sanity: the tools of notebook 06, against answers computed independently, and the notebook's
pretrained branch with a generated VGG-16 state_dict file."""

from __future__ import annotations

import os

import nbformat
import pytest
import torch
from torch import nn

from labutils import sanity

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "06_can_you_trust_the_map.ipynb")


def brute_force_ranks(values: torch.Tensor) -> torch.Tensor:
    """rank_i = (number of values below) + (number equal, itself included, + 1) / 2: the average rank of ties."""
    v = values.flatten().double()
    below = (v[None, :] < v[:, None]).sum(dim=1).double()
    equal = (v[None, :] == v[:, None]).sum(dim=1).double()
    return below + (equal + 1) / 2


def test_ranks_average_ties_like_the_definition():
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (8, 9), generator=g).float()  # many ties, as in a ReLU'd map
    assert torch.equal(sanity.ranks(values), brute_force_ranks(values))


def test_rank_correlation_known_answers():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(16, 16, generator=g)
    assert sanity.rank_correlation(a, a.exp() * 3) == pytest.approx(1.0)  # any increasing function: same ranks
    assert sanity.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert sanity.rank_correlation(a, torch.zeros(16, 16)) == 0.0  # a flat map: defined as 0
    b = torch.rand(16, 16, generator=g)  # no ties: Spearman's formula 1 - 6 sum d^2 / (n (n^2 - 1))
    d = brute_force_ranks(a) - brute_force_ranks(b)
    n = a.numel()
    assert sanity.rank_correlation(a, b) == pytest.approx(1 - 6 * float((d * d).sum()) / (n * (n * n - 1)), abs=1e-9)


def test_pointing_game_known_answers():
    maps = torch.zeros(4, 10, 12)
    for i, (r, c) in enumerate([(2, 3), (6, 9), (0, 0), (9, 11)]):
        maps[i, r, c] = 1.0
    boxes = torch.tensor([[2.0, 3, 4, 5], [2, 3, 6, 8], [1, 1, 3, 3], [5, 5, 9, 11]])  # inclusive boxes
    assert sanity.pointing_game(maps, boxes).tolist() == [True, False, False, True]
    assert sanity.pointing_game(maps, boxes, tolerance=1).tolist() == [True, True, True, True]


def test_scenes_boxes_hold_the_objects_and_labels_name_the_larger():
    x, labels, boxes = sanity.scenes(20, seed=5)
    for i in range(20):
        areas = []
        for obj, channel in ((sanity.SQUARE, 0), (sanity.DISC, 2)):
            top, left, bottom, right = boxes[i, obj].long().tolist()
            strong = x[i, channel] > 0.6  # the object's colour channel (noise has sd 0.1)
            inside = strong[top : bottom + 1, left : right + 1].sum()
            assert inside >= 0.95 * strong.sum() - 1, (i, obj)
            areas.append(int(inside))
        assert labels[i] == (sanity.SQUARE if areas[0] > areas[1] else sanity.DISC)


def test_randomize_from_top_replaces_exactly_the_top_layers():
    net = sanity.scene_net(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    randomized = sanity.randomize_from_top(net, 2, seed=3)
    assert sanity.parametrized_layers(net) == ["classifier", "features.2", "features.0"]
    for name, value in randomized.state_dict().items():
        changed = not torch.equal(value, before[name])
        assert changed == (name.split(".weight")[0].split(".bias")[0] in ("classifier", "features.2")), name
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the original is untouched


def test_deletion_curve_ends_and_order_on_a_linear_model():
    """A model whose class-0 logit is the sum of the first channel: deleting the largest pixels first must
    lower p(class 0) at every step; at 0% and 100% the curve is the model's probability on the image and on
    the baseline."""

    class Linear(nn.Module):
        def forward(self, x):
            s = x[:, 0].sum(dim=(-2, -1)) / 10
            return torch.stack([s, torch.zeros_like(s)], dim=1)

    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 8, 8, generator=g)
    classes = torch.zeros(3, dtype=torch.long)
    model = Linear()
    curve = sanity.deletion_curve(model, x, x[:, 0], classes, steps=8)
    p = lambda images: model(images).softmax(dim=1)[:, 0]
    assert torch.allclose(curve[:, 0], p(x)) and torch.allclose(curve[:, -1], p(torch.zeros_like(x)))
    assert (curve[:, 1:] < curve[:, :-1]).all()
    best = curve.mean()
    worst = sanity.deletion_curve(model, x, -x[:, 0], classes, steps=8).mean()  # smallest pixels first
    assert best < worst
    insertion = sanity.deletion_curve(model, x, x[:, 0], classes, steps=8, insertion=True)
    assert torch.allclose(insertion[:, 0], p(torch.zeros_like(x))) and torch.allclose(insertion[:, -1], p(x))


def test_training_is_deterministic_and_leaves_no_grad():
    x, labels, _ = sanity.scenes(128, seed=0)
    first, second = sanity.scene_net(0), sanity.scene_net(0)
    losses = sanity.train(first, x, labels, steps=15), sanity.train(second, x, labels, steps=15)
    assert losses[0] == losses[1] and losses[0][-1] < losses[0][0]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert all(p.grad is None for p in first.parameters()) and not first.training


def test_the_pretrained_branch_of_notebook_06_runs_with_a_state_dict_file(tmp_path, monkeypatch):
    """The last code cell of notebook 06 with LABUTILS_WEIGHTS = a VGG-16 state_dict file (generated here:
    no pretrained weights exist on this machine). It must take the pretrained branch and label the results
    with the file, never as ImageNet weights."""
    import labutils

    path = tmp_path / "vgg16-generated.pth"
    torch.save(labutils.load_model("vgg16", weights="random").state_dict(), path)
    monkeypatch.setenv("LABUTILS_WEIGHTS", str(path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cell = [c.source for c in nb.cells if c.cell_type == "code" and "is_untrained(vgg)" in c.source]
    assert len(cell) == 1
    namespace = {"torch": torch, "sanity": sanity, "gradcam": labutils.gradcam, "guided_backprop": labutils.guided_backprop}
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(cell[0], namespace)  # noqa: S102 - the notebook's own cell
    text = out.getvalue()
    assert "skipped" not in text and "ImageNet" not in text
    assert "weights from vgg16-generated.pth" in text
    assert text.count("top classifier") == 3 and "random map" in text and "deletion curve" in text
