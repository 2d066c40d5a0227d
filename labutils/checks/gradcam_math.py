"""Notebook 03's exercises: equations (1) and (2), post-processing, the whole pipeline, a layer
sweep, and Grad-CAM = CAM on a network with global average pooling."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..exercise import Case, Exercise, Net
from ..gradcam import alpha_weights, combine, gradcam, normalize, postprocess, upsample
from ..steps import reference_steps
from ._common import compare, diagnosis, pick, randn

NOTEBOOK = "03_gradcam_math.ipynb"
STEPS = Net("labutils.steps:reference_steps", 0)  # labutils' steps, for the exercise that assembles them
PIPELINE = Net("labutils.pipeline:pipeline_steps", 0)  # the steps and the assembled pipeline, for the sweep


# ---------------------------------------------------------------- alpha: equation (1)


def gradient_cases(g: Optional[torch.Generator]) -> list[Case]:
    """dy^c/dA^k as VGG-16 and AlexNet give them, a non-square batch of images × classes, negative only."""
    h, w = pick(g, 7, 3, 12), pick(g, 10, 3, 12)
    w = w + 1 if w == h else w  # never square: a sum divided by w*w must not pass
    s = [pick(g, i, 100, 10_000) for i in range(1, 5)]
    return [
        Case("gradients (1, 512, 14, 14) like VGG-16's features.29", (randn(1, 512, 14, 14, seed=s[0]) * 1e-3,)),
        Case("gradients (1, 256, 13, 13) like AlexNet's features.11", (randn(1, 256, 13, 13, seed=s[1]) * 1e-3,)),
        Case(f"a batch of 2 images × 3 classes with non-square maps, gradients (2, 3, 64, {h}, {w})",
             (randn(2, 3, 64, h, w, seed=s[2]),)),
        Case("only negative gradients (1, 512, 14, 14)", (-randn(1, 512, 14, 14, seed=s[3]).abs(),)),
    ]  # fmt: skip


def spatial_scales(g: torch.Tensor) -> dict[float, str]:
    h, w = g.shape[-2:]
    z = f"Z = h·w = {h} × {w} = {h * w}"
    scales = {
        float(h * w): f"summed instead of averaged over the {z} positions: divide by Z (or use mean)",
        float(h): f"averaged over one spatial axis and summed over the other: average over both ({z})",
        float(w): f"averaged over one spatial axis and summed over the other: average over both ({z})",
    }
    if h != w:
        scales[h / w] = f"divided by w·w = {w * w}, but the map is not square: {z}"
        scales[w / h] = f"divided by h·h = {h * h}, but the map is not square: {z}"
    return scales


def _alpha(case: Case, got: object) -> Optional[str]:
    (g,) = case.args
    wrong_axes = ("you averaged over other dimensions than the positions of each map: alpha has one weight per "
                  "feature map k (and per image and class), so only the h·w positions of each map are averaged")
    return compare(
        "alpha", got, alpha_weights(g), scales=spatial_scales(g),
        mistakes=[
            (lambda: -alpha_weights(g), "sign flipped: alpha is -1 × the reference (those are the counterfactual "
             "weights; equation (1) has no minus sign)"),
            (lambda: g.abs().mean(dim=(-2, -1)), "you averaged |dy^c/dA^k|: keep the sign of the gradients"),
            (lambda: F.relu(g).mean(dim=(-2, -1)), "you dropped the negative gradients: average all of them"),
            (lambda: g.amax(dim=(-2, -1)), "you took the maximum over the positions: equation (1) averages them"),
            (lambda: g.mean(dim=-3), "you averaged over the K feature maps: average over the h·w positions of "
             "each map, dimensions (-2, -1)"),
            *[(lambda dims=dims: g.mean(dim=dims), wrong_axes) for dims in ((-3, -2), (-3, -1), -1, -2, (-4, -2, -1))],
        ],
        axes={4: ("images", "K feature maps"), 5: ("images", "classes", "K feature maps")}.get(g.ndim),
    )  # fmt: skip


ALPHA = Exercise(
    "alpha", NOTEBOOK, "my_alpha", (), gradient_cases, diagnosis("my_alpha", _alpha),
    reference="labutils.equations:alpha_weights",
)


# ---------------------------------------------------------------- combine: equation (2)


def combine_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, i, 100, 10_000) for i in range(5, 12)]
    h, w = pick(g, 7, 3, 12), pick(g, 10, 3, 12)
    relu_maps = randn(2, 64, h, w, seed=s[0]).clamp(min=0)
    return [
        Case("a conv layer's output, with negative values: alpha (1, 256) and A^k (1, 256, 13, 13)",
             (randn(1, 256, seed=s[1]), randn(1, 256, 13, 13, seed=s[2]))),
        Case("alpha (1, 512) and A^k (1, 512, 14, 14) like VGG-16's features.29 (a ReLU: A^k >= 0)",
             (randn(1, 512, seed=s[3]) * 1e-2, randn(1, 512, 14, 14, seed=s[4]).clamp(min=0))),
        Case(f"a batch of 2 images × 3 classes, alpha (2, 3, 64) and A^k (2, 3, 64, {h}, {w})",
             (randn(2, 3, 64, seed=s[5]), relu_maps[:, None].expand(2, 3, 64, h, w).contiguous())),
        Case("all-zero weights (a flat map), alpha (1, 512) and A^k (1, 512, 14, 14)",
             (torch.zeros(1, 512), randn(1, 512, 14, 14, seed=s[6]).clamp(min=0))),
    ]  # fmt: skip


def _combine(case: Case, got: object) -> Optional[str]:
    alpha, a = case.args
    weighted = alpha[..., None, None] * a
    k = a.shape[-3]
    dropped = ("you dropped the negative weights alpha_k^c (a ReLU on alpha): keep all of them; the ReLU comes "
               "once, after the sum over k")
    if bool((a >= 0).all()):  # then a ReLU on each term and a ReLU on alpha give the same numbers
        dropped = ("you dropped the negative terms: a ReLU on alpha_k^c, or on each alpha_k^c A^k, before the "
                   "sum; keep all of them; the ReLU comes once, after the sum over k")
    return compare(
        "L^c", got, combine(alpha, a), nonnegative=True,
        scales={1 / k: f"averaged over the K = {k} feature maps instead of summed: equation (2) is a sum over k"},
        mistakes=[
            (lambda: weighted.sum(dim=-3), "ReLU missing: L^c = ReLU(sum_k alpha_k^c A^k) keeps only the positive "
             "values"),
            (lambda: F.relu(-weighted.sum(dim=-3)), "sign flipped: you used -alpha_k^c (the counterfactual "
             "weights); equation (2) uses alpha_k^c"),
            (lambda: (F.relu(alpha)[..., None, None] * a).sum(dim=-3), dropped),
            (lambda: F.relu(weighted).sum(dim=-3), "you applied the ReLU to each alpha_k^c A^k before summing: "
             "apply it once, to the sum over k"),
            (lambda: normalize(combine(alpha, a)), "you normalized L^c: return it as it is; normalizing is "
             "post-processing (section 5.5, the next exercise)"),
        ],
    )  # fmt: skip


COMBINE = Exercise(
    "combine", NOTEBOOK, "my_combine", (), combine_cases, diagnosis("my_combine", _combine),
    reference="labutils.equations:combine",
)


# ---------------------------------------------------------------- postprocess: section 5.5


def postprocess_cases(g: Optional[torch.Generator]) -> list[Case]:
    s = [pick(g, i, 100, 10_000) for i in range(10, 16)]
    size = (pick(g, 200, 60, 240), pick(g, 300, 60, 320))
    return [
        Case("L^c (1, 14, 14) like VGG-16's, to (224, 224)", (randn(1, 14, 14, seed=s[0]).clamp(min=0), (224, 224))),
        Case("a weighted sum with negative values (1, 14, 14), to (224, 224)", (randn(1, 14, 14, seed=s[1]), (224, 224))),
        Case("a positive map (1, 14, 14) whose minimum is not 0, to (224, 224)",
             (randn(1, 14, 14, seed=s[2]).abs() + 1, (224, 224))),
        Case("a batch of 2 images × 3 classes (2, 3, 14, 14), to (224, 224)",
             (randn(2, 3, 14, 14, seed=s[3]) * torch.tensor([1.0, 10.0, 0.1])[None, :, None, None], (224, 224))),
        Case(f"AlexNet's 13 × 13 map (1, 13, 13), to a non-square size {size}", (randn(1, 13, 13, seed=s[4]), size)),
        Case("a flat map (1, 14, 14), all 0.7", (torch.full((1, 14, 14), 0.7), (224, 224))),
        Case("a map with only negative values (1, 14, 14)", (-randn(1, 14, 14, seed=s[5]).abs() - 0.1, (224, 224))),
    ]  # fmt: skip


EPSILON_TOLERANCE = 0.01  # of the [0, 1] scale: an epsilon <= 1e-3 in the denominator passes (the text says so)


def _postprocess(case: Case, got: object) -> Optional[str]:
    raw, size = case.args
    size = tuple(size)
    up = upsample(raw, size)

    def resized(mode: str, **options: bool) -> torch.Tensor:
        flat = raw.reshape(-1, 1, *raw.shape[-2:])
        return F.interpolate(flat, size=size, mode=mode, **options).reshape(*raw.shape[:-2], *size)

    def normalize_batch(maps: torch.Tensor) -> torch.Tensor:
        return (maps - maps.min()) / (maps.max() - maps.min())

    positive = F.relu(up)
    normalized_early = "you normalized before upsampling: upsample first, then ReLU, then normalize (section 5.5)"
    mistakes = [
        (lambda: normalize(up), "negative values were normalized, not removed: apply the ReLU after upsampling "
         "and before normalizing (a ReLU after normalizing does nothing: the normalized map is already >= 0)"),
        (lambda: normalize(upsample(F.relu(raw), size)), "ReLU applied before upsampling: section 5.5 upsamples "
         "first, then applies the ReLU"),
        (lambda: upsample(normalize(F.relu(raw)), size), normalized_early),
        (lambda: upsample(normalize(raw), size), normalized_early),
        (lambda: positive, "not normalized: scale each map to [0, 1], (L - min) / (max - min)"),
        (lambda: positive / positive.amax(dim=(-2, -1), keepdim=True),
         "you divided by the maximum without subtracting the minimum: (L - min) / (max - min)"),
        (lambda: (positive - positive.amin(dim=(-2, -1), keepdim=True)) / positive.amax(dim=(-2, -1), keepdim=True),
         "you divided by max instead of max - min: (L - min) / (max - min)"),
        (lambda: normalize_batch(positive), "you normalized the whole batch at once: normalize each map on its own "
         "(min and max over its last two dimensions)"),
        (lambda: normalize(F.relu(resized("bilinear", align_corners=True))),
         "bilinear with align_corners=True: use F.interpolate(..., mode='bilinear', align_corners=False)"),
        (lambda: normalize(F.relu(resized("nearest"))), "nearest-neighbour upsampling: use mode='bilinear'"),
        (lambda: normalize(F.relu(resized("bicubic", align_corners=False))), "bicubic upsampling: use mode='bilinear'"),
    ]
    flat = raw.amax() <= raw.amin() or raw.amax() <= 0  # only one right answer, zeros
    return compare(
        "the map", got, postprocess(raw, size), nonnegative=True, atol=EPSILON_TOLERANCE,
        nan_hint="a flat map (max = min) must become all zeros, not 0/0",
        mistakes=[] if flat else mistakes,
    )  # fmt: skip


POSTPROCESS = Exercise(
    "postprocess", NOTEBOOK, "my_postprocess", (), postprocess_cases, diagnosis("my_postprocess", _postprocess),
    reference="labutils.equations:postprocess",
)


# ---------------------------------------------------------------- my_gradcam: the whole pipeline


def network_cases(g: Optional[torch.Generator], first: int) -> list[tuple[str, Net, str, torch.Tensor, int]]:
    """(description, network, layer, images, class): both tiny networks, non-square images, batches."""
    vgg, alex = "labutils.nets:tiny_vgg", "labutils.nets:tiny_alexnet"
    h, w = (48, 64) if g is None else (8 * pick(g, 0, 4, 9), 8 * pick(g, 0, 4, 9))
    specs = [
        (vgg, "features.9", 1, (h, w), 7),
        (vgg, "features.9", 2, (h, w), 3),
        (vgg, "features.8", 2, (h, w), 11),
        (alex, "features.9", 2, (112, 144), 5),
        (alex, "features.4", 1, (112, 144), 9),
    ]
    cases = []
    for i, (builder, layer, n, size, c) in enumerate(specs):
        seed, c = pick(g, first + i, 100, 10_000), pick(g, c, 0, 20)
        name = f"{builder.split(':')[1]}, layer {layer}, {n} image{'s' if n > 1 else ''} of {size[0]} x {size[1]}"
        cases.append((name, Net(builder, seed), layer, randn(n, 3, *size, seed=seed), c))
    return cases


def gradcam_cases(g: Optional[torch.Generator]) -> list[Case]:
    return [Case(f"{name}, class {c}", (net, x, c, layer, STEPS)) for name, net, layer, x, c in network_cases(g, 20)]


def _gradcam(case: Case, got: object) -> Optional[str]:
    net, x, c, layer, _ = case.args
    steps = reference_steps()
    a, dA = steps.capture(net.build(), layer, x, c)
    size = tuple(x.shape[-2:])
    return compare(
        "the maps", got, gradcam(net.build(), x, c, layer).maps[:, 0], nonnegative=True,
        mistakes=[
            (lambda: combine(alpha_weights(dA), a), "you returned L^c at the layer's resolution: post-process it to "
             "the images' size, steps.postprocess(L, x.shape[-2:])"),
            (lambda: postprocess(combine(alpha_weights(dA), dA), size), "you weighted the gradients instead of the "
             "activations: equation (2) sums alpha_k^c A^k"),
            (lambda: postprocess(combine(alpha_weights(a), a), size), "you averaged the activations instead of the "
             "gradients: equation (1) averages dy^c/dA^k"),
            (lambda: postprocess(combine(-alpha_weights(dA), a), size), "these are the counterfactual maps "
             "(weights -alpha_k^c): Grad-CAM uses alpha_k^c"),
        ],
    )  # fmt: skip


GRADCAM = Exercise(
    "gradcam", NOTEBOOK, "my_gradcam", ("labutils.nets", "labutils.steps"), gradcam_cases,
    diagnosis("my_gradcam", _gradcam, forbidden="the exercise is to build Grad-CAM from the steps you are given "
              "(steps.capture, steps.alpha, steps.combine, steps.postprocess); labutils' own Grad-CAM is what the "
              "check compares with, and it is not available when your notebook is graded"),
    reference="labutils.pipeline:gradcam_maps",
    forbidden=("labutils.gradcam:gradcam", "labutils.pipeline:gradcam_maps", "labutils.guided:guided_gradcam",
               "labutils.cached:gradcam_from_features"),
)  # fmt: skip


# ---------------------------------------------------------------- my_layer_sweep: class-specific from where?


def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps (…, H, W) -> (…); 0 where either map is flat."""
    a = a.flatten(-2) - a.flatten(-2).mean(-1, keepdim=True)
    b = b.flatten(-2) - b.flatten(-2).mean(-1, keepdim=True)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(norms > 0, (a * b).sum(-1) / torch.where(norms > 0, norms, 1), torch.zeros_like(norms))


def sweep_cases(g: Optional[torch.Generator]) -> list[Case]:
    vgg, alex = "labutils.nets:tiny_vgg", "labutils.nets:tiny_alexnet"
    s = [pick(g, 40 + i, 100, 10_000) for i in range(3)]
    return [
        Case("tiny_vgg, 1 image of 48 x 64, classes (2, 9), layers features.1, .4, .7, .9",
             (Net(vgg, s[0]), randn(1, 3, 48, 64, seed=s[0]), (2, 9), ["features.1", "features.4", "features.7", "features.9"], PIPELINE)),
        Case("tiny_alexnet, 2 images of 112 x 144, classes (0, 5), layers features.4, .6, .9",
             (Net(alex, s[1]), randn(2, 3, 112, 144, seed=s[1]), (0, 5), ["features.4", "features.6", "features.9"], PIPELINE)),
        Case("tiny_vgg, 2 images of 32 x 40, classes (4, 17), layers features.9, .3 (not in network order)",
             (Net(vgg, s[2]), randn(2, 3, 32, 40, seed=s[2]), (4, 17), ["features.9", "features.3"], PIPELINE)),
    ]  # fmt: skip


def _sweep_reference(net: Net, x: torch.Tensor, classes: tuple, layers: list, center: bool = True, maps: str = "maps") -> torch.Tensor:
    model = net.build()
    rows = []
    for layer in layers:
        e = gradcam(model, x, [list(classes)] * x.shape[0], layer)
        m = getattr(e, maps)
        a, b = m[:, 0], m[:, 1]
        if not center:
            a, b = a.flatten(-2), b.flatten(-2)
            norms = a.norm(dim=-1) * b.norm(dim=-1)
            rows.append(torch.where(norms > 0, (a * b).sum(-1) / torch.where(norms > 0, norms, 1), torch.zeros_like(norms)))
        else:
            rows.append(correlations(a, b))
    return torch.stack(rows)


def _sweep(case: Case, got: object) -> Optional[str]:
    net, x, classes, layers, _ = case.args
    return compare(
        "the correlations", got, _sweep_reference(net, x, classes, layers), atol=1e-4, axes=("layers", "images"),
        nan_hint="where a map is flat (all its values equal) the correlation is 0 / 0: the exercise asks for 0 there",
        mistakes=[
            (lambda: _sweep_reference(net, x, classes, layers, center=False), "you did not subtract each map's mean "
             "before the dot product: that is the cosine similarity; Pearson's correlation centres both maps first"),
            (lambda: _sweep_reference(net, x, classes, layers, maps="raw"), "you correlated the raw maps L^c at each "
             "layer's resolution: compare the post-processed maps at the images' size, as the figures show them"),
        ],
    )  # fmt: skip


LAYER_SWEEP = Exercise(
    "layer_sweep", NOTEBOOK, "my_layer_sweep", ("labutils.nets", "labutils.steps", "labutils.pipeline"), sweep_cases,
    diagnosis("my_layer_sweep", _sweep),
)  # fmt: skip


# ---------------------------------------------------------------- my_cam: Grad-CAM = CAM on a GAP network


def cam_cases(g: Optional[torch.Generator]) -> list[Case]:
    gap = "labutils.nets:gap_net"
    s = [pick(g, 60 + i, 100, 10_000) for i in range(3)]
    h, w, c = 4 * pick(g, 10, 4, 16), 4 * pick(g, 14, 4, 16), pick(g, 3, 0, 20)
    return [
        Case(f"gap_net, 1 image of {h} x {w}, class {c}", (Net(gap, s[0]), randn(1, 3, h, w, seed=s[0]), c)),
        Case("gap_net, 2 images of 32 x 32, class 0", (Net(gap, s[1]), randn(2, 3, 32, 32, seed=s[1]), 0)),
        Case("gap_net, 3 images of 24 x 60, class 19", (Net(gap, s[2]), randn(3, 3, 24, 60, seed=s[2]), 19)),
    ]


def _cam_parts(net: Net, x: torch.Tensor, c: int) -> tuple[torch.Tensor, float, torch.Tensor]:
    model = net.build()
    with torch.no_grad():
        a = model.features(x)
    w = model.classifier.weight[c].detach()
    return (w[:, None, None] * a).sum(dim=-3), float(a.shape[-2] * a.shape[-1]), model.classifier.bias[c].detach()


def _cam(case: Case, got: object) -> Optional[str]:
    net, x, c = case.args
    cam, z, bias = _cam_parts(net, x, c)
    with torch.enable_grad():
        expected = gradcam(net.build(), x, c, "features.3").raw[:, 0]
    return compare(
        "L^c", got, expected, nonnegative=True,
        scales={z: f"a factor Z = {int(z)} (the number of positions the global average pooling averages) too "
                   "large: work out dy^c/dA^k_ij again, with the pooling's 1/Z"},
        mistakes=[
            (lambda: cam, "this is CAM's M^c itself: Grad-CAM's L^c differs from it by a constant factor and a "
             "ReLU; work out alpha_k^c from dy^c/dA^k_ij"),
            (lambda: cam / z, "ReLU missing: equation (2) applies a ReLU to the weighted sum"),
            (lambda: F.relu(cam / z + bias), "you added the bias b^c: it does not depend on A^k, so its gradient is 0 "
             "and it is not part of L^c"),
            (lambda: F.relu(cam + bias) / z, "you added the bias b^c: it does not depend on A^k, so its gradient is 0 "
             "and it is not part of L^c"),
        ],
    )  # fmt: skip


CAM = Exercise(
    "cam", NOTEBOOK, "my_cam", ("labutils.nets",), cam_cases,
    diagnosis("my_cam", _cam, forbidden="the exercise asks for L^c without any backward pass: compute it from the "
              "activations of net.features and the weights of net.classifier"),
    forbidden=("torch.autograd:backward", "torch.autograd:grad", "torch.autograd.graph:_engine_run_backward",
               "torch.autograd.functional:*", "torch._functorch.apis:*", "torch._functorch.eager_transforms:*",
               "labutils.gradcam:gradcam"),
)  # fmt: skip

VERIFIED = {
    "alpha": "alpha_k^c matches labutils.equations.alpha_weights (equation 1) on VGG-16 and AlexNet shapes, a batch "
    "of 2 images × 3 classes with non-square maps and negative gradients",
    "combine": "L^c = ReLU(sum_k alpha_k^c A^k) matches labutils.equations.combine (equation 2) on a conv layer's "
    "output, VGG-16 shapes, a non-square batch of 2 images × 3 classes and a flat map",
    "postprocess": "upsample (bilinear) + ReLU + normalize matches labutils.equations.postprocess (section 5.5) on "
    "VGG-16 and AlexNet maps, a batch of 2 images × 3 classes, a non-square size, a flat and an all-negative map",
    "gradcam": "your pipeline, built from labutils' steps, matches labutils.gradcam on tiny VGG and AlexNet networks "
    "(last ReLU, a conv and an early layer; 1 and 2 non-square images)",
    "layer_sweep": "the correlations between two classes' maps match labutils, layer by layer, on tiny VGG and "
    "AlexNet networks (1 and 2 non-square images, layers in any order)",
    "cam": "L^c computed from the classifier's weights, with no backward pass, matches labutils.gradcam's Grad-CAM "
    "on a network with global average pooling (1 to 3 images, square and non-square)",
}
