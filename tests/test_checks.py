"""The exercise checks: the reference solutions pass, each kind of wrong solution fails with its own message."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labutils import checks
from labutils.checks import ExerciseError
from labutils.models import get_layer


def passes(check, fn, capsys) -> str:
    check(fn)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("PASS: "), out
    return out.strip()


def fails(check, fn, *fragments: str) -> str:
    with pytest.raises(ExerciseError) as info:
        check(fn)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def not_implemented(*args):
    # YOUR CODE HERE
    raise NotImplementedError()


# ---------------------------------------------------------------- save_gradient


def capture_layer(model, layer, x, c, *, clone=True, remove=True, score=lambda s, c: s[:, c].sum()):
    """The exercise's solution (with switches that turn it into typical wrong solutions)."""
    saved = {}

    def save_gradient(grad):
        saved["gradients"] = grad

    def save_activations(module, inputs, output):
        saved["activations"] = output
        output.register_hook(save_gradient)
        return output.clone() if clone else None

    handle = get_layer(model, layer).register_forward_hook(save_activations)
    try:
        scores = model(x)
        score(scores, c).backward()
    finally:
        if remove:
            handle.remove()
    return saved["activations"].detach(), saved.get("gradients")


def test_save_gradient_reference_passes(capsys):
    line = passes(checks.check_save_gradient, capture_layer, capsys)
    assert line.startswith("PASS: save_gradient — ") and "no hook left" in line


def test_save_gradient_failures():
    fails(checks.check_save_gradient, not_implemented, "save_gradient: not implemented yet — write not_implemented")
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: capture_layer(m, l, x, c, remove=False),
        "a hook is still on the model",
        "features.9: 1 forward hook(s)",
        "handle.remove()",
    )
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: capture_layer(m, l, x, c, clone=False),
        "features.8 (a conv followed by an inplace ReLU)",
        "A^k of the conv layer features.8 was overwritten by the inplace ReLU",
    )
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: capture_layer(m, l, x, c, score=lambda s, c: s[0, c]),
        "2 images",
        "only image 0 got its gradient",
    )
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: capture_layer(m, l, x, c, score=lambda s, c: s.softmax(1)[:, c].sum()),
        "softmax probability",
    )
    fails(checks.check_save_gradient, lambda m, l, x, c: capture_layer(m, l, x, c)[::-1], "swapped")
    fails(checks.check_save_gradient, lambda m, l, x, c: capture_layer(m, l, x, c)[0], "wrong type: return a pair")
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: capture_layer(m, l, x, c, score=lambda s, c: s[:, c].sum().detach().requires_grad_()),
        "gradients is None: the gradient hook never ran",
    )
    fails(
        checks.check_save_gradient,
        lambda m, l, x, c: (capture_layer(m, l, x, c)[0], 2 * capture_layer(m, l, x, c)[1]),
        "wrong scale: your dy^c/dA^k is 2 × the reference",
    )


def test_save_gradient_reports_the_students_own_error():
    def with_module_backward_hook(model, layer, x, c):
        saved = {}
        handle = get_layer(model, layer).register_full_backward_hook(lambda m, gi, go: saved.update(g=go[0]))
        try:
            model(x)[:, c].sum().backward()
        finally:
            handle.remove()
        return saved["g"], saved["g"]

    message = fails(checks.check_save_gradient, with_module_backward_hook, "raised RuntimeError", "modified inplace")
    assert "model(x)[:, c].sum().backward()" in message  # the student's line that failed


# ---------------------------------------------------------------- alpha and counterfactual


def my_alpha(gradients):
    return gradients.mean(dim=(-2, -1))


def test_alpha_reference_passes(capsys):
    assert passes(checks.check_alpha, my_alpha, capsys).startswith("PASS: alpha — ")


def test_alpha_failures():
    fails(checks.check_alpha, not_implemented, "alpha: not implemented yet — write not_implemented above")
    fails(
        checks.check_alpha,
        lambda g: g.mean(dim=(-2, -1), keepdim=True),
        "wrong shape: alpha should be (1, 512), got (1, 512, 1, 1) (extra or missing dimensions of size 1",
    )
    fails(checks.check_alpha, lambda g: g.mean(dim=(1, 2, 3)), "wrong shape: alpha should be (1, 512), got (1,)")
    fails(checks.check_alpha, lambda g: -g.mean(dim=(-2, -1)), "sign flipped", "counterfactual weights")
    fails(
        checks.check_alpha,
        lambda g: g.sum(dim=(-2, -1)),
        "wrong scale: your alpha is 196 × the reference — summed instead of averaged over the Z = h·w = 196",
    )
    fails(checks.check_alpha, lambda g: g.mean(dim=-2).sum(dim=-1), "averaged over one spatial axis and summed")
    fails(  # Z hard-coded for VGG-16: wrong on AlexNet's 13 x 13 maps
        checks.check_alpha,
        lambda g: g.sum(dim=(-2, -1)) / 196,
        "AlexNet",
        "wrong scale: your alpha is 0.8622 × the reference",
    )
    fails(checks.check_alpha, lambda g: g.abs().mean(dim=(-2, -1)), "|dy^c/dA^k|")

    def one_wrong(g):
        alpha = g.mean(dim=(-2, -1))
        alpha[0, 3] = 1.0
        return alpha

    fails(checks.check_alpha, one_wrong, "1 of 512 values of alpha are wrong; the first at index (0, 3): expected")
    fails(checks.check_alpha, lambda g: g.mean(dim=(-2, -1)) / 0 * 0, "alpha contains NaN (512 of 512 values")
    fails(checks.check_alpha, lambda g: g.mean(dim=(-2, -1)).numpy(), "wrong type: alpha should be a torch.Tensor")
    fails(checks.check_alpha, lambda g: g.mul_(2).mean(dim=(-2, -1)), "changed its input number 1 in place")
    fails(checks.check_alpha, my_alpha(torch.ones(1, 2, 3, 3)), "pass the function itself")


def test_alpha_edge_case_is_named():
    """A solution that only works for one image fails on the batch case, and the message says which case."""
    fails(
        checks.check_alpha,
        lambda g: g[0].mean(dim=(-2, -1))[None],
        "on a batch of 2 images × 3 classes",
        "wrong shape",
    )


def test_counterfactual():
    fails(checks.check_counterfactual, not_implemented, "counterfactual: not implemented yet")
    fails(checks.check_counterfactual, my_alpha, "these are the Grad-CAM weights")
    fails(checks.check_counterfactual, lambda g: F.relu(-my_alpha(g)), "clipped the weights with a ReLU")
    fails(checks.check_counterfactual, lambda g: -g.sum(dim=(-2, -1)), "wrong scale", "summed instead of averaged")
    fails(checks.check_counterfactual, lambda g: -g.mean(dim=-1), "wrong shape")
    fails(checks.check_counterfactual, lambda g: -my_alpha(g) * torch.nan, "contains NaN")


def test_counterfactual_reference_passes(capsys):
    assert passes(checks.check_counterfactual, lambda g: -my_alpha(g), capsys).startswith("PASS: counterfactual — ")


# ---------------------------------------------------------------- combine


def my_combine(alpha, activations):
    return F.relu((alpha[..., None, None] * activations).sum(dim=-3))


def test_combine_reference_passes(capsys):
    assert passes(checks.check_combine, my_combine, capsys).startswith("PASS: combine — ")


def test_combine_failures():
    fails(checks.check_combine, not_implemented, "combine: not implemented yet")
    fails(checks.check_combine, lambda a, A: (a[..., None, None] * A).sum(dim=-3), "ReLU missing")
    fails(checks.check_combine, lambda a, A: my_combine(-a, A), "sign flipped: you used -alpha_k^c")
    fails(checks.check_combine, lambda a, A: -my_combine(a, A), "sign flipped: your L^c is -1 × the reference")
    fails(
        checks.check_combine,
        lambda a, A: F.relu((a[..., None, None] * A).mean(dim=-3)),
        "wrong scale: your L^c is 0.001953 × the reference — averaged over the K = 512 feature maps",
    )
    fails(checks.check_combine, lambda a, A: F.relu(a[..., None, None] * A).sum(dim=-3), "to each alpha_k^c A^k")
    fails(checks.check_combine, lambda a, A: F.relu((a[..., None, None] * A).sum(dim=1)), "2 images × 3 classes",
          "wrong shape: L^c should be (2, 3, 14, 14), got (2, 512, 14, 14)")  # fmt: skip

    def one_wrong(a, A):
        cam = my_combine(a, A)
        cam[0, 5, 6] = cam[0, 5, 6] + 1
        return cam

    fails(checks.check_combine, one_wrong, "1 of 196 values of L^c are wrong; the first at index (0, 5, 6)")

    def normalized(a, A):
        cam = my_combine(a, A)
        return cam / cam.amax(dim=(-2, -1), keepdim=True)

    fails(checks.check_combine, normalized, "you normalized L^c")  # the flat-map case: 0 / 0
    fails(checks.check_combine, lambda a, A: torch.relu_(my_combine(a, A)) + torch.inf, "contains inf")


def test_combine_reports_negative_values_as_missing_relu():
    def leaky(a, A):
        return F.leaky_relu((a[..., None, None] * A).sum(dim=-3), 0.5)

    fails(checks.check_combine, leaky, "ReLU missing", "values of L^c are negative")


# ---------------------------------------------------------------- postprocess


def my_postprocess(raw, size):
    flat = raw.reshape(-1, 1, *raw.shape[-2:])
    up = F.interpolate(flat, size=size, mode="bilinear", align_corners=False).reshape(*raw.shape[:-2], *size)
    up = F.relu(up)
    low = up.amin(dim=(-2, -1), keepdim=True)
    span = up.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (up - low) / span.clamp(min=1e-30), torch.zeros_like(up))


def test_postprocess_reference_passes(capsys):
    assert passes(checks.check_postprocess, my_postprocess, capsys).startswith("PASS: postprocess — ")


def resize(raw, size, **options):
    flat = raw.reshape(-1, 1, *raw.shape[-2:])
    return F.interpolate(flat, size=size, **options).reshape(*raw.shape[:-2], *size)


def naive_normalize(m):
    low = m.amin(dim=(-2, -1), keepdim=True)
    return (m - low) / (m.amax(dim=(-2, -1), keepdim=True) - low)


def test_postprocess_failures():
    fails(checks.check_postprocess, not_implemented, "postprocess: not implemented yet")
    fails(
        checks.check_postprocess,
        lambda raw, size: my_postprocess(F.relu(raw), size),
        "negative values",
        "ReLU applied before upsampling",
    )
    fails(
        checks.check_postprocess,
        lambda raw, size: naive_normalize(resize(raw, size, mode="bilinear")),
        "ReLU missing: negative values were kept",
    )
    fails(
        checks.check_postprocess,
        lambda raw, size: naive_normalize(F.relu(resize(raw, size, mode="bilinear"))),
        "on a flat map",
        "contains NaN (50176 of 50176 values, the first at index (0, 0, 0)) — a flat map (max = min) must become",
    )
    fails(
        checks.check_postprocess,
        lambda raw, size: my_postprocess(raw, (224, 224)),
        "non-square",
        "wrong shape: the map should be (1, 200, 300), got (1, 224, 224)",
    )
    fails(
        checks.check_postprocess,
        lambda raw, size: my_postprocess(raw, size[::-1]),
        "wrong shape: the map should be (1, 200, 300), got (1, 300, 200)",
    )
    fails(
        checks.check_postprocess,
        lambda raw, size: naive_normalize(F.relu(resize(raw, size, mode="bilinear", align_corners=True))),
        "align_corners=True",
    )
    fails(checks.check_postprocess, lambda raw, size: F.relu(resize(raw, size, mode="bilinear")), "not normalized")

    def per_batch(raw, size):
        up = F.relu(resize(raw, size, mode="bilinear"))
        return (up - up.min()) / (up.max() - up.min())

    fails(checks.check_postprocess, per_batch, "you normalized the whole batch at once")

    def ones_when_flat(raw, size):
        out = my_postprocess(raw, size)
        return torch.where(out.amax(dim=(-2, -1), keepdim=True) > 0, out, torch.ones_like(out))

    fails(checks.check_postprocess, ones_when_flat, "on a flat map", "50176 of 50176 values of the map are wrong",
          "expected 0, got 1")  # fmt: skip


# ---------------------------------------------------------------- guided_relu


def my_guided_relu(relu_input, grad_out):
    return grad_out.clamp(min=0) * (relu_input > 0)


def test_guided_relu_reference_passes(capsys):
    assert passes(checks.check_guided_relu, my_guided_relu, capsys).startswith("PASS: guided_relu — ")


def test_guided_relu_failures():
    fails(checks.check_guided_relu, not_implemented, "guided_relu: not implemented yet")
    fails(checks.check_guided_relu, lambda x, g: g * (x > 0), "plain ReLU backward")
    fails(checks.check_guided_relu, lambda x, g: g.clamp(min=0), "deconvnet rule")
    fails(checks.check_guided_relu, lambda x, g: g.clamp(min=0) * (x >= 0), "exactly 0", "input > 0")
    fails(checks.check_guided_relu, lambda x, g: -my_guided_relu(x, g), "sign flipped")
    fails(checks.check_guided_relu, lambda x, g: 2 * my_guided_relu(x, g), "wrong scale: your grad_in is 2 ×")
    fails(checks.check_guided_relu, lambda x, g: (g > 0) & (x > 0), "wrong dtype", "torch.bool")
    fails(checks.check_guided_relu, lambda x, g: g.clamp_(min=0) * (x > 0), "changed its input number 2 in place")
    fails(checks.check_guided_relu, lambda x, g: my_guided_relu(x, g)[0], "wrong shape")

    def one_wrong(x, g):
        out = my_guided_relu(x, g)
        out.view(-1)[10] = 5.0
        return out

    fails(checks.check_guided_relu, one_wrong, "1 of 100352 values of grad_in are wrong", "(0, 0, 0, 10)",
          "got 5")  # fmt: skip


# ---------------------------------------------------------------- the error in Jupyter


def test_render_traceback_is_one_line():
    assert ExerciseError("alpha: wrong shape")._render_traceback_() == ["FAIL: alpha: wrong shape"]


def test_ipython_shows_one_line(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        result = shell.run_cell("from labutils.checks import check_alpha\ncheck_alpha(lambda g: g.sum(dim=-1))")
    finally:
        InteractiveShell.clear_instance()
    assert isinstance(result.error_in_exec, ExerciseError)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert shown == [
        "FAIL: alpha, on gradients (1, 512, 14, 14) like VGG-16's features.29: wrong shape: alpha should be "
        "(1, 512), got (1, 512, 14)"
    ]


def test_checks_leave_no_state():
    """The checks use their own seeded generators and restore the thread count: the caller's state is untouched."""
    torch.manual_seed(123)
    before, threads = torch.random.get_rng_state(), torch.get_num_threads()
    checks.check_alpha(my_alpha)
    assert torch.equal(torch.random.get_rng_state(), before)
    checks.check_save_gradient(capture_layer)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.get_num_threads() == threads  # the checks run on one thread, then restore the setting
    fails(checks.check_alpha, not_implemented, "not implemented")
    assert torch.get_num_threads() == threads  # also after a failure
