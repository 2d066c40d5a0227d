"""The right answers to the lab's exercises, as a student would write them (the same as the instructor's
notebooks), for the tests of the checks. Each uses only torch, numpy and the modules its exercise allows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def my_layer_cost(spec, in_shape):
    kind = spec["kind"]
    if kind == "conv":
        c, h, w = in_shape
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        out = (spec["out_channels"], (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        params = spec["out_channels"] * (c * k * k + 1)
    elif kind == "maxpool":
        c, h, w = in_shape
        k = spec["kernel"]
        s, p = spec.get("stride", k), spec.get("padding", 0)
        out, params = (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1), 0
    elif kind == "linear":
        n_in = math.prod(in_shape)
        out, params = (spec["out_features"],), spec["out_features"] * (n_in + 1)
    else:
        out, params = tuple(in_shape), 0
    return out, params, 2 * math.prod(out) * 4 / 1024**2


def my_capture(model, layer, x, c):
    saved = {}

    def save_gradient(grad):
        saved["gradients"] = grad

    def save_activations(module, inputs, output):
        saved["activations"] = output
        output.register_hook(save_gradient)
        return output.clone()

    handle = dict(model.named_modules())[layer].register_forward_hook(save_activations)
    try:
        scores = model(x)
        scores[:, c].sum().backward()
    finally:
        handle.remove()
    return saved["activations"].detach(), saved["gradients"]


def my_alpha(gradients):
    return gradients.mean(dim=(-2, -1))


def my_combine(alpha, activations):
    return F.relu((alpha[..., None, None] * activations).sum(dim=-3))


def my_postprocess(raw, size):
    flat = raw.reshape(-1, 1, *raw.shape[-2:])
    maps = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    maps = F.relu(maps).reshape(*raw.shape[:-2], *size)
    low = maps.amin(dim=(-2, -1), keepdim=True)
    span = maps.amax(dim=(-2, -1), keepdim=True) - low
    return torch.where(span > 0, (maps - low) / torch.where(span > 0, span, 1.0), torch.zeros_like(maps))


def my_gradcam(model, x, c, layer, steps):
    activations, gradients = steps.capture(model, layer, x, c)
    raw = steps.combine(steps.alpha(gradients), activations)
    return steps.postprocess(raw, tuple(x.shape[-2:]))


def my_layer_sweep(model, x, classes, layers, steps):
    rows = []
    for layer in layers:
        a, b = (steps.gradcam(model, x, c, layer).flatten(1) for c in classes)
        a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
        norms = a.norm(dim=1) * b.norm(dim=1)
        rows.append(torch.where(norms > 0, (a * b).sum(dim=1) / norms.clamp(min=1e-30), torch.zeros_like(norms)))
    return torch.stack(rows)


def my_cam(net, x, c):
    with torch.no_grad():
        activations = net.features(x)
    z = activations.shape[-2] * activations.shape[-1]
    w = net.classifier.weight[c]
    return F.relu((w[:, None, None] / z * activations).sum(dim=-3)).detach()


def my_guided_relu(relu_input, grad_out):
    return grad_out.clamp(min=0) * (relu_input > 0)


def my_guided_gradcam(guided, raw):
    from labutils.gradcam import postprocess

    return guided * postprocess(raw, tuple(guided.shape[-2:]))[:, :, None]


def my_counterfactual(activations, gradients):
    alpha = gradients.mean(dim=(-2, -1))
    return F.relu((-alpha[..., None, None] * activations).sum(dim=-3))


def my_overlay(image, cam_map, alpha, colors):
    size = tuple(image.shape[:2])
    resized = F.interpolate(cam_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    bins = (resized.clamp(0, 1) * len(colors)).long().clamp(max=len(colors) - 1)
    return (1 - alpha) * image + alpha * colors[bins]


def my_pointing_game(maps, boxes, tolerance):
    peak = maps.flatten(1).argmax(dim=1)
    rows, cols = peak // maps.shape[-1], peak % maps.shape[-1]
    top, left, bottom, right = (boxes[:, i] for i in range(4))
    return ((rows >= top - tolerance) & (rows <= bottom + tolerance)
            & (cols >= left - tolerance) & (cols <= right + tolerance))


ANSWERS = {name[3:]: fn for name, fn in dict(globals()).items() if name.startswith("my_")}
