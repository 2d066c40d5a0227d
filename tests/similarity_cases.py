"""Test data of the copy check: honest answers to each exercise (as different students write them), and copies.

``HONEST[grade_id]``: twelve correct solution cells per exercise, written independently of the
references (loops or vectorised, helpers or one expression, other library calls, other orders).
``COPIED[grade_id]``: copies of a reference disguised by hand (renamed, reordered, reformatted, other
spellings of the same calls, dead code, and combinations); ``tests/test_similarity.py`` adds more
disguises made by machine (renaming every name, reformatting, dead code) of every reference source.
Every cell runs after ``PRELUDE`` (what the lab notebooks import before the solutions).
"""

PRELUDE = """
import math
import numpy as np
import torch
import torch.nn.functional as F
from labutils import get_layer
from labutils.summary import BYTES_PER_VALUE, MB
"""

HONEST: dict[str, list[str]] = {}
COPIED: dict[str, list[str]] = {}

# ---------------------------------------------------------------- layer_cost

HONEST["layer_cost"] = [
    '''
def my_layer_cost(spec, in_shape):
    kind = spec["kind"]
    if kind == "conv":
        c, h, w = in_shape
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        oh = (h + 2 * p - k) // s + 1
        ow = (w + 2 * p - k) // s + 1
        out = (spec["out_channels"], oh, ow)
        params = spec["out_channels"] * c * k * k + spec["out_channels"]
    elif kind == "maxpool":
        c, h, w = in_shape
        k = spec["kernel"]
        s, p = spec.get("stride", k), spec.get("padding", 0)
        out = (c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        params = 0
    elif kind == "linear":
        n = 1
        for d in in_shape:
            n *= d
        out = (spec["out_features"],)
        params = n * spec["out_features"] + spec["out_features"]
    else:
        out = tuple(in_shape)
        params = 0
    values = 1
    for d in out:
        values *= d
    return out, params, values * 4 * 2 / (1024 * 1024)
''',
    '''
def conv_out(n, kernel, stride, padding):
    return (n + 2 * padding - kernel) // stride + 1

def my_layer_cost(spec, in_shape):
    if spec["kind"] in ("conv", "maxpool"):
        channels, height, width = in_shape
        kernel = spec["kernel"]
        stride = spec.get("stride", 1 if spec["kind"] == "conv" else kernel)
        padding = spec.get("padding", 0)
        size = (conv_out(height, kernel, stride, padding), conv_out(width, kernel, stride, padding))
        if spec["kind"] == "conv":
            weights = spec["out_channels"] * channels * kernel ** 2
            return (spec["out_channels"], *size), weights + spec["out_channels"], \\
                2 * spec["out_channels"] * size[0] * size[1] * BYTES_PER_VALUE / MB
        return (channels, *size), 0, 2 * channels * size[0] * size[1] * BYTES_PER_VALUE / MB
    if spec["kind"] == "linear":
        features = spec["out_features"]
        return (features,), (math.prod(in_shape) + 1) * features, 2 * features * BYTES_PER_VALUE / MB
    return tuple(in_shape), 0, 2 * math.prod(in_shape) * BYTES_PER_VALUE / MB
''',
    '''
import math

def my_layer_cost(spec, in_shape):
    def pooled(n, k, s, p):
        return math.floor((n + 2 * p - k) / s) + 1

    def conv(spec, shape):
        k, s, p = spec["kernel"], spec.get("stride", 1), spec.get("padding", 0)
        out = (spec["out_channels"], pooled(shape[1], k, s, p), pooled(shape[2], k, s, p))
        return out, (shape[0] * k * k + 1) * spec["out_channels"]

    def pool(spec, shape):
        k = spec["kernel"]
        s, p = spec.get("stride", k), spec.get("padding", 0)
        return (shape[0], pooled(shape[1], k, s, p), pooled(shape[2], k, s, p)), 0

    def linear(spec, shape):
        return (spec["out_features"],), spec["out_features"] * math.prod(shape) + spec["out_features"]

    rules = {"conv": conv, "maxpool": pool, "linear": linear}
    out, params = rules.get(spec["kind"], lambda spec, shape: (tuple(shape), 0))(spec, in_shape)
    return out, params, math.prod(out) * 8 / 2 ** 20
''',
    '''
def my_layer_cost(spec, in_shape):
    match spec:
        case {"kind": "conv"}:
            c, h, w = in_shape
            k = spec["kernel"]; s = spec.get("stride", 1); p = spec.get("padding", 0)
            out = (spec["out_channels"], (h - k + 2 * p) // s + 1, (w - k + 2 * p) // s + 1)
            n_params = (k * k * c + 1) * spec["out_channels"]
        case {"kind": "maxpool"}:
            c, h, w = in_shape
            k = spec["kernel"]; s = spec.get("stride", k); p = spec.get("padding", 0)
            out = (c, (h - k + 2 * p) // s + 1, (w - k + 2 * p) // s + 1)
            n_params = 0
        case {"kind": "linear"}:
            out = (spec["out_features"],)
            n_params = (int(np.prod(in_shape)) + 1) * spec["out_features"]
        case _:
            out, n_params = tuple(in_shape), 0
    return out, n_params, float(np.prod(out)) * 2 * BYTES_PER_VALUE / MB
''',
    '''
from functools import reduce
from operator import mul

def my_layer_cost(spec, in_shape):
    count = lambda shape: reduce(mul, shape, 1)
    kind = spec.get("kind")
    out, params = tuple(in_shape), 0
    if kind == "linear":
        out = (spec["out_features"],)
        params = spec["out_features"] * (count(in_shape) + 1)
    elif kind in {"conv", "maxpool"}:
        k = spec["kernel"]
        stride = spec.get("stride") or (k if kind == "maxpool" else 1)
        pad = spec.get("padding", 0)
        spatial = tuple((n + 2 * pad - k) // stride + 1 for n in in_shape[1:])
        channels = spec["out_channels"] if kind == "conv" else in_shape[0]
        out = (channels, *spatial)
        if kind == "conv":
            params = channels * (in_shape[0] * k * k + 1)
    return out, params, count(out) * BYTES_PER_VALUE * 2 / MB
''',
    '''
def my_layer_cost(spec, in_shape):
    """Output shape, number of parameters and forward/backward size in MB."""
    if spec["kind"] == "relu":
        return tuple(in_shape), 0, 2.0 * math.prod(in_shape) * 4 / 1048576
    if spec["kind"] == "linear":
        inputs = math.prod(in_shape)
        outputs = spec["out_features"]
        return (outputs,), inputs * outputs + outputs, 2.0 * outputs * 4 / 1048576
    c_in, h_in, w_in = in_shape
    kernel = spec["kernel"]
    default_stride = kernel if spec["kind"] == "maxpool" else 1
    stride = spec.get("stride", default_stride)
    pad = spec.get("padding", 0)
    h_out = (h_in + 2 * pad - kernel) // stride + 1
    w_out = (w_in + 2 * pad - kernel) // stride + 1
    if spec["kind"] == "maxpool":
        return (c_in, h_out, w_out), 0, 2.0 * c_in * h_out * w_out * 4 / 1048576
    c_out = spec["out_channels"]
    return (c_out, h_out, w_out), c_out * (c_in * kernel * kernel + 1), 2.0 * c_out * h_out * w_out * 4 / 1048576
''',
    '''
def my_layer_cost(spec, in_shape):
    shape = list(in_shape)
    parameters = 0
    if spec["kind"] == "conv" or spec["kind"] == "maxpool":
        kernel = spec["kernel"]
        stride = spec["stride"] if "stride" in spec else (1 if spec["kind"] == "conv" else kernel)
        padding = spec["padding"] if "padding" in spec else 0
        for i in (1, 2):
            shape[i] = (shape[i] + 2 * padding - kernel) // stride + 1
        if spec["kind"] == "conv":
            weight = spec["out_channels"] * in_shape[0] * kernel * kernel
            bias = spec["out_channels"]
            parameters = weight + bias
            shape[0] = spec["out_channels"]
    elif spec["kind"] == "linear":
        flat = 1
        for size in in_shape:
            flat = flat * size
        parameters = spec["out_features"] * flat + spec["out_features"]
        shape = [spec["out_features"]]
    total = 1
    for size in shape:
        total = total * size
    megabytes = total * BYTES_PER_VALUE * 2 / MB
    return tuple(shape), parameters, megabytes
''',
    '''
def my_layer_cost(spec, in_shape):
    x = torch.zeros(1, *in_shape)
    kind = spec["kind"]
    if kind == "conv":
        layer = torch.nn.Conv2d(in_shape[0], spec["out_channels"], spec["kernel"], spec.get("stride", 1),
                                spec.get("padding", 0))
    elif kind == "maxpool":
        layer = torch.nn.MaxPool2d(spec["kernel"], spec.get("stride"), spec.get("padding", 0))
    elif kind == "linear":
        layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(in_shape), spec["out_features"]))
    else:
        layer = torch.nn.Identity()
    with torch.no_grad():
        y = layer(x)
    n_params = sum(p.numel() for p in layer.parameters())
    return tuple(y.shape[1:]), n_params, 2 * y.numel() * BYTES_PER_VALUE / MB
''',
    '''
def my_layer_cost(spec, in_shape):
    def side(n, k, s, p):
        return int((n + 2 * p - k) / s) + 1 if n + 2 * p >= k else 0

    kind, c = spec["kind"], in_shape[0]
    if kind == "linear":
        n_in = 1
        for d in in_shape: n_in *= d
        shape, params = (spec["out_features"],), (n_in + 1) * spec["out_features"]
    elif kind == "relu":
        shape, params = tuple(in_shape), 0
    else:
        k = spec["kernel"]
        s = spec.get("stride", k if kind == "maxpool" else 1)
        p = spec.get("padding", 0)
        hw = [side(n, k, s, p) for n in in_shape[1:]]
        shape = (spec.get("out_channels", c), *hw) if kind == "conv" else (c, *hw)
        params = shape[0] * (c * k * k + 1) if kind == "conv" else 0
    mb = BYTES_PER_VALUE * 2 * int(np.prod(shape)) / MB
    return shape, params, mb
''',
    '''
BYTES = 4

def my_layer_cost(spec, in_shape):
    size = lambda shape: math.prod(shape)
    if spec["kind"] == "conv":
        ci, hi, wi = in_shape
        co, kk = spec["out_channels"], spec["kernel"]
        st, pd = spec.get("stride", 1), spec.get("padding", 0)
        shape = (co, 1 + (hi + pd + pd - kk) // st, 1 + (wi + pd + pd - kk) // st)
        return shape, co * ci * kk * kk + co, size(shape) * BYTES * 2 / MB
    if spec["kind"] == "maxpool":
        ci, hi, wi = in_shape
        kk = spec["kernel"]
        st, pd = spec.get("stride", kk), spec.get("padding", 0)
        shape = (ci, 1 + (hi + pd + pd - kk) // st, 1 + (wi + pd + pd - kk) // st)
        return shape, 0, size(shape) * BYTES * 2 / MB
    if spec["kind"] == "linear":
        shape = (spec["out_features"],)
        return shape, size(in_shape) * shape[0] + shape[0], size(shape) * BYTES * 2 / MB
    return tuple(in_shape), 0, size(in_shape) * BYTES * 2 / MB
''',
    '''
def my_layer_cost(spec, in_shape):
    out_shape = tuple(in_shape)
    n = 0
    kind = spec["kind"]
    if kind in ("conv", "maxpool"):
        k = spec["kernel"]
        stride = spec.get("stride", {"conv": 1, "maxpool": k}[kind])
        padding = spec.get("padding", 0)
        h, w = ((d + 2 * padding - k) // stride + 1 for d in in_shape[-2:])
        channels = spec["out_channels"] if kind == "conv" else in_shape[0]
        out_shape = (channels, h, w)
        n = (in_shape[0] * k * k + 1) * channels if kind == "conv" else 0
    if kind == "linear":
        out_shape = (spec["out_features"],)
        n = math.prod(in_shape) * spec["out_features"] + spec["out_features"]
    forward_backward = 2 * math.prod(out_shape) * BYTES_PER_VALUE
    return out_shape, n, forward_backward / MB
''',
    '''
def output_side(size, kernel, stride, padding):
    """Standard formula floor((size + 2 padding - kernel) / stride) + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def count_parameters(spec, in_shape):
    if spec["kind"] == "conv":
        return spec["out_channels"] * (in_shape[0] * spec["kernel"] ** 2 + 1)
    if spec["kind"] == "linear":
        return spec["out_features"] * (math.prod(in_shape) + 1)
    return 0


def output_shape(spec, in_shape):
    if spec["kind"] == "linear":
        return (spec["out_features"],)
    if spec["kind"] not in ("conv", "maxpool"):
        return tuple(in_shape)
    k = spec["kernel"]
    s = spec.get("stride", 1) if spec["kind"] == "conv" else spec.get("stride", k)
    p = spec.get("padding", 0)
    c = spec["out_channels"] if spec["kind"] == "conv" else in_shape[0]
    return (c, output_side(in_shape[1], k, s, p), output_side(in_shape[2], k, s, p))


def my_layer_cost(spec, in_shape):
    shape = output_shape(spec, in_shape)
    return shape, count_parameters(spec, in_shape), math.prod(shape) * BYTES_PER_VALUE * 2 / MB
''',
]

# ---------------------------------------------------------------- capture

HONEST["capture"] = [
    '''
def my_capture(model, layer, x, c):
    store = {}

    def hook(module, inp, out):
        store["act"] = out
        out.retain_grad()
        return out.clone()

    h = get_layer(model, layer).register_forward_hook(hook)
    try:
        y = model(x)
        y[:, c].sum().backward()
    finally:
        h.remove()
    return store["act"].detach(), store["act"].grad
''',
    '''
def my_capture(model, layer, x, c):
    acts = []

    def keep(module, inputs, output):
        acts.append(output)
        return output.clone()

    handle = get_layer(model, layer).register_forward_hook(keep)
    try:
        scores = model(x)
    finally:
        handle.remove()
    grads = torch.autograd.grad(scores[:, c].sum(), acts[0])[0]
    return acts[0].detach(), grads
''',
    '''
def my_capture(model, layer, x, c):
    module = dict(model.named_modules())[layer]
    activations, gradients = [], []

    def forward_hook(mod, args, result):
        activations.append(result.detach())
        result = result.clone()
        result.register_hook(lambda g: gradients.append(g))
        return result

    hook = module.register_forward_hook(forward_hook)
    try:
        out = model(x)
        target = out[:, c]
        target.backward(torch.ones_like(target))
    finally:
        hook.remove()
    return activations[0], gradients[0]
''',
    '''
class Recorder:
    def __init__(self):
        self.a = None
        self.g = None

    def __call__(self, module, inputs, output):
        self.a = output.detach().clone()
        output = output.clone()
        output.register_hook(self.save_grad)
        return output

    def save_grad(self, grad):
        self.g = grad


def my_capture(model, layer, x, c):
    rec = Recorder()
    handle = get_layer(model, layer).register_forward_hook(rec)
    try:
        logits = model(x)
        loss = logits[:, c].sum()
        loss.backward()
    finally:
        handle.remove()
    return rec.a, rec.g
''',
    '''
def my_capture(model, layer, x, c):
    saved = {}
    target_layer = get_layer(model, layer)

    def on_forward(m, i, o):
        saved["A"] = o
        return o.clone()

    registration = target_layer.register_forward_hook(on_forward)
    try:
        output = model(x)
        one_hot = torch.zeros_like(output)
        one_hot[:, c] = 1.0
        (grad,) = torch.autograd.grad(output, saved["A"], grad_outputs=one_hot)
    finally:
        registration.remove()
    return saved["A"].detach(), grad
''',
    '''
def my_capture(model, layer, x, c):
    result = {"activations": None, "gradients": None}

    def backward_hook(grad):
        result["gradients"] = grad.clone()

    def forward_hook(module, inputs, output):
        copy = output.clone()
        result["activations"] = output.detach().clone()
        copy.register_hook(backward_hook)
        return copy

    layer_module = get_layer(model, layer)
    handles = [layer_module.register_forward_hook(forward_hook)]
    try:
        model.zero_grad()
        model(x)[:, c].sum().backward()
    finally:
        for h in handles:
            h.remove()
    return result["activations"], result["gradients"]
''',
    '''
def my_capture(model, layer, x, c):
    from contextlib import contextmanager

    @contextmanager
    def hooked(module, fn):
        handle = module.register_forward_hook(fn)
        try:
            yield
        finally:
            handle.remove()

    box = []
    with hooked(get_layer(model, layer), lambda m, i, o: box.append(o) or o.clone()):
        scores = model(x)
        selected = scores.gather(1, torch.full((scores.shape[0], 1), c, dtype=torch.long))
        grads, = torch.autograd.grad(selected.sum(), box[0])
    return box[0].detach(), grads
''',
    '''
def my_capture(model, layer, x, c):
    features = {}
    grads = {}
    def fwd(module, inp, out):
        features["value"] = out.detach().clone()
        out.register_hook(lambda g: grads.__setitem__("value", g))
        return out.clone()
    h = get_layer(model, layer).register_forward_hook(fwd)
    try:
        scores = model(x)
        scores.select(1, c).sum().backward()
    finally:
        h.remove()
    return features["value"], grads["value"]
''',
    '''
def my_capture(model, layer, x, c):
    captured = []
    def remember(module, args, output):
        captured.append(output)
        return output * 1.0
    handle = get_layer(model, layer).register_forward_hook(remember)
    try:
        y_c = model(x)[:, c]
        gradient = torch.autograd.grad(y_c, captured[-1], torch.ones_like(y_c))[0]
    finally:
        handle.remove()
    return captured[-1].detach(), gradient
''',
    '''
def my_capture(model, layer, x, c):
    module = get_layer(model, layer)
    state = {}

    def grad_hook(g):
        state["grad"] = g

    def hook(mod, inputs, output):
        out = output.clone()
        out.register_hook(grad_hook)
        state["act"] = out.detach().clone()
        return out

    handle = module.register_forward_hook(hook)
    try:
        predictions = model(x)
        total = 0
        for n in range(predictions.shape[0]):
            total = total + predictions[n, c]
        total.backward()
    finally:
        handle.remove()
    return state["act"], state["grad"]
''',
    '''
def my_capture(model, layer, x, c):
    outputs = []
    h = get_layer(model, layer).register_forward_hook(lambda mod, inp, out: (outputs.append(out), out.clone())[1])
    try:
        y = model(x)
    finally:
        h.remove()
    activation = outputs[0]
    score = torch.sum(y[:, c])
    gradient = torch.autograd.grad(score, activation, retain_graph=False)[0]
    return activation.detach(), gradient.detach()
''',
    '''
def my_capture(model, layer, x, c):
    inner = get_layer(model, layer)
    memory = {}
    def forward_hook(_, __, out):
        memory["out"] = out
        return out.clone()
    handle = inner.register_forward_hook(forward_hook)
    try:
        logits = model(x)
        mask = torch.nn.functional.one_hot(torch.tensor(c), logits.shape[1]).to(logits.dtype)
        (logits * mask).sum().backward(inputs=[memory["out"]])
    finally:
        handle.remove()
    return memory["out"].detach(), memory["out"].grad
''',
]

# ---------------------------------------------------------------- alpha

HONEST["alpha"] = [
    "def my_alpha(gradients):\n    return gradients.mean(dim=(-2, -1))\n",
    "def my_alpha(gradients):\n    return gradients.mean((-1, -2))\n",
    "def my_alpha(gradients):\n    h, w = gradients.shape[-2:]\n    return gradients.sum(dim=(-2, -1)) / (h * w)\n",
    "def my_alpha(g):\n    return g.flatten(-2).mean(-1)\n",
    "def my_alpha(gradients):\n    return gradients.mean(-1).mean(-1)\n",
    "def my_alpha(gradients):\n    return torch.mean(gradients, dim=[-1, -2])\n",
    "def my_alpha(gradients):\n    flat = gradients.reshape(*gradients.shape[:-2], -1)\n    return flat.mean(dim=-1)\n",
    "def my_alpha(gradients):\n    Z = gradients.shape[-1] * gradients.shape[-2]\n    return torch.einsum('...hw->...', gradients) / Z\n",
    "def my_alpha(grads):\n    # average over the spatial positions i, j\n    total = grads.sum(-1).sum(-1)\n    return total / grads[..., 0, 0].new_tensor(grads.shape[-1] * grads.shape[-2])\n",
    "def my_alpha(gradients):\n    rows = gradients.mean(dim=-2)\n    return rows.mean(dim=-1)\n",
    "def my_alpha(gradients):\n    return gradients.view(*gradients.shape[:-2], -1).sum(-1) / gradients[0].new_tensor(1).numel() / math.prod(gradients.shape[-2:])\n",
    "def my_alpha(gradients):\n    z = gradients.size(-1) * gradients.size(-2)\n    return torch.sum(gradients, dim=(gradients.dim() - 2, gradients.dim() - 1)) / z\n",
]

# ---------------------------------------------------------------- combine

HONEST["combine"] = [
    "def my_combine(alpha, activations):\n    return F.relu((alpha[..., None, None] * activations).sum(dim=-3))\n",
    "def my_combine(alpha, activations):\n    return torch.relu(torch.einsum('...k,...khw->...hw', alpha, activations))\n",
    "def my_combine(alpha, activations):\n    weighted = alpha.unsqueeze(-1).unsqueeze(-1) * activations\n    return weighted.sum(-3).clamp(min=0)\n",
    "def my_combine(alpha, activations):\n    h, w = activations.shape[-2:]\n    flat = activations.flatten(-2)\n    lin = (alpha.unsqueeze(-2) @ flat).squeeze(-2)\n    return F.relu(lin.reshape(*lin.shape[:-1], h, w))\n",
    "def my_combine(alpha, activations):\n    total = torch.zeros_like(activations[..., 0, :, :])\n    for k in range(alpha.shape[-1]):\n        total = total + alpha[..., k, None, None] * activations[..., k, :, :]\n    return torch.clamp(total, min=0)\n",
    "def my_combine(alpha, activations):\n    s = torch.sum(activations * alpha[..., :, None, None], dim=-3)\n    return torch.maximum(s, torch.zeros_like(s))\n",
    "def my_combine(alpha, activations):\n    L = (activations * alpha.view(*alpha.shape, 1, 1)).sum(dim=activations.dim() - 3)\n    return L * (L > 0)\n",
    "def my_combine(a, A):\n    m = (a[..., None, None] * A).sum(-3)\n    return torch.where(m > 0, m, torch.zeros_like(m))\n",
    "def my_combine(alpha, activations):\n    out = torch.stack([alpha[..., k, None, None] * activations[..., k, :, :] for k in range(alpha.shape[-1])]).sum(0)\n    return out.relu()\n",
    "def my_combine(alpha, activations):\n    weights = alpha.reshape(alpha.shape + (1, 1))\n    return F.relu(torch.mul(weights, activations).sum(-3))\n",
    "def my_combine(alpha, activations):\n    return (activations.movedim(-3, -1) @ alpha[..., None, :, None]).squeeze(-1).clamp_min(0)\n",
    "def my_combine(alpha, activations):\n    lc = torch.tensordot(alpha, activations, dims=([-1], [-3])) if alpha.dim() == 1 else \\\n        (alpha[..., None, None] * activations).sum(-3)\n    return torch.nn.functional.relu(lc)\n",
]

# ---------------------------------------------------------------- postprocess

HONEST["postprocess"] = [
    '''
def my_postprocess(raw, size):
    lead = raw.shape[:-2]
    x = raw.reshape(-1, 1, raw.shape[-2], raw.shape[-1])
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = F.relu(x).reshape(*lead, *size)
    lo = x.flatten(-2).min(-1).values[..., None, None]
    hi = x.flatten(-2).max(-1).values[..., None, None]
    rng = hi - lo
    return torch.where(rng > 0, (x - lo) / rng.clamp(min=1e-12), torch.zeros_like(x))
''',
    '''
def my_postprocess(raw, size):
    maps = []
    for m in raw.reshape(-1, *raw.shape[-2:]):
        up = torch.nn.functional.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        up = up.clamp(min=0)
        if up.max() > up.min():
            up = (up - up.min()) / (up.max() - up.min())
        else:
            up = torch.zeros_like(up)
        maps.append(up)
    return torch.stack(maps).reshape(*raw.shape[:-2], *size)
''',
    '''
def normalise(m):
    m = m - m.amin(dim=(-2, -1), keepdim=True)
    top = m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(top > 0, m / torch.where(top > 0, top, torch.ones_like(top)), m * 0)

def my_postprocess(raw, size):
    upsampled = F.interpolate(raw.flatten(0, -3).unsqueeze(1), size=tuple(size), mode="bilinear",
                              align_corners=False).squeeze(1)
    return normalise(torch.relu(upsampled)).view(*raw.shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    H, W = size
    batch_shape = raw.shape[:-2]
    up = F.interpolate(raw.reshape(-1, 1, *raw.shape[-2:]), (H, W), mode="bilinear")
    up = up.clamp_min(0).reshape(-1, H * W)
    mins = up.min(dim=1, keepdim=True).values
    maxs = up.max(dim=1, keepdim=True).values
    out = torch.zeros_like(up)
    ok = (maxs > mins).squeeze(1)
    out[ok] = (up[ok] - mins[ok]) / (maxs[ok] - mins[ok])
    return out.reshape(*batch_shape, H, W)
''',
    '''
def my_postprocess(raw, size):
    n = math.prod(raw.shape[:-2])
    resized = F.interpolate(raw.reshape(n, 1, *raw.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    positive = F.relu(resized).reshape(n, -1)
    low, high = positive.aminmax(dim=1, keepdim=True)
    span = high - low
    scaled = (positive - low) / span.where(span > 0, torch.ones_like(span))
    scaled = scaled * (span > 0)
    return scaled.reshape(*raw.shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    """Upsample, ReLU and min-max normalise each map."""
    shape = raw.shape
    four_d = raw.view(-1, 1, shape[-2], shape[-1])
    big = F.interpolate(four_d, size=size, mode="bilinear", align_corners=False)
    big = torch.relu(big)
    result = torch.empty_like(big)
    for i in range(big.shape[0]):
        lo, hi = big[i].min(), big[i].max()
        result[i] = 0 if hi == lo else (big[i] - lo) / (hi - lo)
    return result.view(*shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    flat_maps = raw.flatten(end_dim=-3)[:, None]
    cam = F.interpolate(flat_maps, size=size, mode="bilinear", align_corners=False)[:, 0]
    cam = torch.maximum(cam, torch.tensor(0.0))
    cam_min = cam.amin(dim=(1, 2), keepdim=True)
    cam_max = cam.amax(dim=(1, 2), keepdim=True)
    denominator = cam_max - cam_min
    denominator[denominator == 0] = 1
    cam = (cam - cam_min) / denominator
    return cam.reshape(raw.shape[:-2] + tuple(size))
''',
    '''
def my_postprocess(raw, size):
    h, w = raw.shape[-2:]
    x = F.interpolate(raw.reshape(-1, h, w).unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]
    x = x * (x > 0)
    mn = x.min(-1).values.min(-1).values.view(-1, 1, 1)
    mx = x.max(-1).values.max(-1).values.view(-1, 1, 1)
    x = torch.nan_to_num((x - mn) / (mx - mn), nan=0.0, posinf=0.0, neginf=0.0)
    return x.reshape(*raw.shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    def norm01(t):
        t = t - t.min()
        return t / t.max() if t.max() > 0 else torch.zeros_like(t)

    up = F.interpolate(raw.reshape(-1, 1, *raw.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    up = F.relu(up[:, 0])
    return torch.stack([norm01(m) for m in up]).reshape(*raw.shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    leading = raw.shape[:-2]
    grid = raw.reshape((-1, 1) + tuple(raw.shape[-2:]))
    grid = torch.nn.Upsample(size=tuple(size), mode="bilinear", align_corners=False)(grid)
    grid = torch.nn.ReLU()(grid).squeeze(1)
    vals = grid.reshape(grid.shape[0], -1)
    a, b = vals.min(1).values, vals.max(1).values
    keep = b > a
    vals = torch.where(keep[:, None], (vals - a[:, None]) / (b - a + (~keep).float())[:, None], 0.0)
    return vals.reshape(*leading, *size)
''',
    '''
def my_postprocess(raw, size):
    interp = F.interpolate(raw.reshape(-1, 1, *raw.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    interp = interp.clamp(min=0).squeeze(1)
    outs = torch.zeros_like(interp)
    for idx, plane in enumerate(interp):
        spread = plane.max() - plane.min()
        if spread > 0:
            outs[idx] = (plane - plane.min()) / spread
    return outs.view(*raw.shape[:-2], *size)
''',
    '''
def my_postprocess(raw, size):
    rows, cols = size
    stacked = raw.reshape(-1, *raw.shape[-2:])
    up = F.interpolate(stacked.unsqueeze(1), size=(rows, cols), mode="bilinear", align_corners=False).squeeze(1)
    up = up.relu()
    up = up - up.flatten(1).min(1)[0][:, None, None]
    peak = up.flatten(1).max(1)[0][:, None, None]
    up = up / torch.where(peak == 0, torch.ones_like(peak), peak)
    return up.reshape(*raw.shape[:-2], rows, cols)
''',
]

# ---------------------------------------------------------------- gradcam (a pipeline of the student's steps)

HONEST["gradcam"] = [
    "def my_gradcam(model, x, c, layer, steps):\n    A, dA = steps.capture(model, layer, x, c)\n    return steps.postprocess(steps.combine(steps.alpha(dA), A), tuple(x.shape[-2:]))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    acts, grads = steps.capture(model, layer, x, c)\n    weights = steps.alpha(grads)\n    cam = steps.combine(weights, acts)\n    return steps.postprocess(cam, (x.shape[2], x.shape[3]))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    out = steps.capture(model, layer, x, c)\n    L = steps.combine(steps.alpha(out[1]), out[0])\n    H, W = x.shape[-2], x.shape[-1]\n    return steps.postprocess(L, (H, W))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    size = tuple(x.shape[2:])\n    activations, gradients = steps.capture(model, layer, x, c)\n    return steps.postprocess(steps.combine(steps.alpha(gradients), activations), size)\n",
    "def my_gradcam(model, x, c, layer, steps):\n    capture, alpha, combine, post = steps.capture, steps.alpha, steps.combine, steps.postprocess\n    a, g = capture(model, layer, x, c)\n    return post(combine(alpha(g), a), tuple(x.shape[-2:]))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    feature_maps, feature_grads = steps.capture(model, layer, x, c)\n    alpha_kc = steps.alpha(feature_grads)\n    raw_map = steps.combine(alpha_kc, feature_maps)\n    final = steps.postprocess(raw_map, x.shape[-2:])\n    return final\n",
    "def my_gradcam(model, x, c, layer, steps):\n    h, w = x.shape[-2:]\n    a, g = steps.capture(model, layer, x, c)\n    return steps.postprocess(steps.combine(alpha=steps.alpha(g), activations=a), (int(h), int(w)))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    result = steps.capture(model, layer, x, c)\n    activations, gradients = result\n    maps = steps.combine(steps.alpha(gradients), activations)\n    return steps.postprocess(maps, size=tuple(x.size()[-2:]))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    # 1. capture  2. weights  3. combine  4. upsample\n    A, G = steps.capture(model=model, layer=layer, x=x, c=c)\n    a = steps.alpha(G)\n    return steps.postprocess(steps.combine(a, A), list(x.shape)[2:4])\n",
    "def my_gradcam(model, x, c, layer, steps):\n    pipeline = [steps.alpha, steps.combine]\n    acts, grads = steps.capture(model, layer, x, c)\n    raw = pipeline[1](pipeline[0](grads), acts)\n    return steps.postprocess(raw, tuple(x.shape[-2:]))\n",
    "def my_gradcam(model, x, c, layer, steps):\n    A, grad = steps.capture(model, layer, x, c)\n    target_size = (x.shape[-2], x.shape[-1])\n    heat = steps.combine(steps.alpha(grad), A)\n    heat = steps.postprocess(heat, target_size)\n    return heat\n",
    "def my_gradcam(model, x, c, layer, steps):\n    act_grad = steps.capture(model, layer, x, c)\n    return steps.postprocess(steps.combine(steps.alpha(act_grad[1]), act_grad[0]), tuple(x.shape)[-2:])\n",
]

# ---------------------------------------------------------------- layer_sweep

HONEST["layer_sweep"] = [
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    out = torch.zeros(len(layers), x.shape[0])
    for i, layer in enumerate(layers):
        m1 = steps.gradcam(model, x, classes[0], layer)
        m2 = steps.gradcam(model, x, classes[1], layer)
        for n in range(x.shape[0]):
            a = m1[n].flatten() - m1[n].mean()
            b = m2[n].flatten() - m2[n].mean()
            denom = a.norm() * b.norm()
            out[i, n] = (a @ b) / denom if denom > 0 else 0.0
    return out
''',
    '''
def pearson(a, b):
    a = a.flatten(1)
    b = b.flatten(1)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return F.cosine_similarity(a, b, dim=1, eps=1e-30)

def my_layer_sweep(model, x, classes, layers, steps):
    first, second = classes
    return torch.stack([pearson(steps.gradcam(model, x, first, l), steps.gradcam(model, x, second, l)) for l in layers])
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    result = []
    for layer in layers:
        maps = [steps.gradcam(model, x, c, layer).reshape(x.shape[0], -1) for c in classes]
        row = []
        for u, v in zip(*maps):
            r = torch.corrcoef(torch.stack([u, v]))[0, 1]
            row.append(torch.nan_to_num(r, nan=0.0))
        result.append(torch.stack(row))
    return torch.stack(result)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    n = x.shape[0]
    table = torch.empty(len(layers), n)
    for row, layer in enumerate(layers):
        p = steps.gradcam(model, x, classes[0], layer).view(n, -1)
        q = steps.gradcam(model, x, classes[1], layer).view(n, -1)
        p = p - p.mean(dim=-1, keepdim=True)
        q = q - q.mean(dim=-1, keepdim=True)
        num = (p * q).sum(-1)
        den = torch.sqrt((p * p).sum(-1)) * torch.sqrt((q * q).sum(-1))
        table[row] = torch.where(den == 0, torch.zeros_like(num), num / den.clamp_min(1e-30))
    return table
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    def center(t):
        t = t.flatten(start_dim=1)
        return t - t.mean(dim=1, keepdim=True)

    values = []
    for name in layers:
        a = center(steps.gradcam(model, x, classes[0], name))
        b = center(steps.gradcam(model, x, classes[1], name))
        cov = (a * b).mean(1)
        std = a.pow(2).mean(1).sqrt() * b.pow(2).mean(1).sqrt()
        values.append(torch.where(std > 0, cov / torch.where(std > 0, std, torch.ones_like(std)), torch.zeros_like(std)))
    return torch.stack(values, dim=0)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    c0, c1 = classes
    corr = []
    for layer in layers:
        A = steps.gradcam(model, x, c0, layer)
        B = steps.gradcam(model, x, c1, layer)
        A = A.reshape(len(A), -1)
        B = B.reshape(len(B), -1)
        A = (A - A.mean(1)[:, None])
        B = (B - B.mean(1)[:, None])
        norm = torch.linalg.vector_norm(A, dim=1) * torch.linalg.vector_norm(B, dim=1)
        r = torch.einsum("ij,ij->i", A, B) / norm
        corr.append(torch.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0))
    return torch.stack(corr)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    rows = []
    for layer in layers:
        cams = torch.stack([steps.gradcam(model, x, k, layer) for k in classes])  # (2, N, H, W)
        flat = cams.flatten(2)
        flat = flat - flat.mean(-1, keepdim=True)
        dots = (flat[0] * flat[1]).sum(-1)
        norms = flat.norm(dim=-1).prod(0)
        safe = norms.masked_fill(norms == 0, 1.0)
        rows.append((dots / safe).masked_fill(norms == 0, 0.0))
    return torch.stack(rows)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    import numpy as np
    n = x.shape[0]
    out = np.zeros((len(layers), n), dtype=np.float32)
    for i, layer in enumerate(layers):
        a = steps.gradcam(model, x, classes[0], layer).detach().reshape(n, -1).double().numpy()
        b = steps.gradcam(model, x, classes[1], layer).detach().reshape(n, -1).double().numpy()
        for j in range(n):
            if a[j].std() > 0 and b[j].std() > 0:
                out[i, j] = np.corrcoef(a[j], b[j])[0, 1]
    return torch.from_numpy(out)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    def corr(u, v):
        du, dv = u - u.mean(), v - v.mean()
        s = (du.square().sum() * dv.square().sum()).sqrt()
        return (du * dv).sum() / s if s > 0 else torch.tensor(0.0)

    return torch.stack([
        torch.stack([corr(m.flatten(), k.flatten()) for m, k in zip(steps.gradcam(model, x, classes[0], layer),
                                                                   steps.gradcam(model, x, classes[1], layer))])
        for layer in layers
    ])
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    answer = []
    for layer in layers:
        first = steps.gradcam(model, x, classes[0], layer).flatten(1)
        second = steps.gradcam(model, x, classes[1], layer).flatten(1)
        mean_first, mean_second = first.mean(1, True), second.mean(1, True)
        covariance = ((first - mean_first) * (second - mean_second)).sum(1)
        variance = ((first - mean_first) ** 2).sum(1) * ((second - mean_second) ** 2).sum(1)
        answer.append(torch.where(variance > 0, covariance * torch.rsqrt(variance.clamp(min=1e-60)), torch.zeros_like(variance)))
    return torch.stack(answer)
''',
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    result = torch.zeros((len(layers), len(x)))
    for li in range(len(layers)):
        maps = [steps.gradcam(model, x, cls, layers[li]) for cls in classes]
        for ni in range(len(x)):
            v1 = maps[0][ni].reshape(-1)
            v2 = maps[1][ni].reshape(-1)
            v1 = (v1 - v1.mean())
            v2 = (v2 - v2.mean())
            if v1.abs().sum() == 0 or v2.abs().sum() == 0:
                continue
            result[li, ni] = torch.dot(v1, v2) / (v1.norm() * v2.norm())
    return result
''',
    '''
def standardize(m):
    m = m.flatten(1)
    m = m - m.mean(dim=1, keepdim=True)
    sd = m.std(dim=1, unbiased=False, keepdim=True)
    return torch.where(sd > 0, m / sd.clamp(min=1e-30), torch.zeros_like(m))

def my_layer_sweep(model, x, classes, layers, steps):
    return torch.stack([(standardize(steps.gradcam(model, x, classes[0], layer)) *
                         standardize(steps.gradcam(model, x, classes[1], layer))).mean(dim=1) for layer in layers])
''',
]

# ---------------------------------------------------------------- cam

HONEST["cam"] = [
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        A = net.features(x)
        w = net.classifier.weight[c]
        h, wd = A.shape[-2:]
        return F.relu(torch.einsum("k,nkhw->nhw", w, A) / (h * wd))
''',
    '''
def my_cam(net, x, c):
    A = net.features(x).detach()
    weights = net.classifier.weight[c].detach() / (A.shape[2] * A.shape[3])
    maps = (weights.view(1, -1, 1, 1) * A).sum(dim=1)
    return maps.clamp(min=0)
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        feats = net.features(x)
        n, k, h, w = feats.shape
        wc = net.classifier.weight[c]
        out = torch.zeros(n, h, w)
        for i in range(k):
            out += wc[i] * feats[:, i]
        return torch.relu(out / (h * w))
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        activations = net.features(x)
        kernel = net.classifier.weight[c].reshape(1, -1, 1, 1)
        maps = F.conv2d(activations, kernel)[:, 0]
    return F.relu(maps) / (activations.shape[-1] * activations.shape[-2])
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        f = net.features(x)
    z = f[0, 0].numel()
    alpha = net.classifier.weight[c].detach() / z
    lin = torch.tensordot(alpha, f, dims=([0], [1]))
    return torch.where(lin > 0, lin, torch.zeros_like(lin))
''',
    '''
def my_cam(net, x, c):
    torch.set_grad_enabled(False)
    try:
        A = net.features(x)
        n, k, h, w = A.shape
        weights = net.classifier.weight[c]
        flat = A.reshape(n, k, h * w)
        lc = (weights @ flat) / (h * w)
        return F.relu(lc).reshape(n, h, w)
    finally:
        torch.set_grad_enabled(True)
''',
    '''
def my_cam(net, x, c):
    feature_maps = net.features(x)
    area = feature_maps.shape[-2] * feature_maps.shape[-1]
    class_weights = net.classifier.weight.detach()[c]
    heat = torch.sum(feature_maps.detach() * class_weights[None, :, None, None], dim=1) / area
    return heat.relu()
''',
    '''
def my_cam(net, x, c):
    with torch.inference_mode():
        A = net.features(x)
        all_maps = torch.einsum("ck,nkhw->nchw", net.classifier.weight, A)
        Z = A.shape[-2] * A.shape[-1]
        return torch.clamp(all_maps[:, c] / Z, min=0).clone()
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        acts = net.features(x)
    w_c = net.classifier.weight[c].detach()
    h, w = acts.shape[2], acts.shape[3]
    total = sum(w_c[k] * acts[:, k] for k in range(acts.shape[1]))
    return F.relu(total) / (h * w)
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        A = net.features(x)
        alpha = net.classifier.weight[c] / A[0, 0].numel()
        L = torch.matmul(A.permute(0, 2, 3, 1), alpha)
    return torch.maximum(L, torch.tensor(0.0))
''',
    '''
def my_cam(net, x, c):
    weights = net.classifier.weight
    with torch.no_grad():
        features = net.features(x)
        N, K, H, W = features.shape
        scores = torch.bmm(weights[c].expand(N, 1, K), features.view(N, K, H * W)).view(N, H, W)
    return torch.relu(scores / (H * W))
''',
    '''
def my_cam(net, x, c):
    with torch.no_grad():
        A = net.features(x)
    alpha = net.classifier.weight[c].detach() / math.prod(A.shape[-2:])
    return (alpha[None, :, None, None] * A).sum(1).clamp_min(0)
''',
]

# ---------------------------------------------------------------- guided_relu

HONEST["guided_relu"] = [
    "def my_guided_relu(relu_input, grad_out):\n    return grad_out.clamp(min=0) * (relu_input > 0)\n",
    "def my_guided_relu(relu_input, grad_out):\n    return torch.where((relu_input > 0) & (grad_out > 0), grad_out, torch.zeros_like(grad_out))\n",
    "def my_guided_relu(relu_input, grad_out):\n    mask = (relu_input > 0).float() * (grad_out > 0).float()\n    return grad_out * mask\n",
    "def my_guided_relu(relu_input, grad_out):\n    return F.relu(grad_out) * (relu_input > 0).to(grad_out.dtype)\n",
    "def my_guided_relu(x, g):\n    out = g.clone()\n    out[(x <= 0) | (g <= 0)] = 0\n    return out\n",
    "def my_guided_relu(relu_input, grad_out):\n    return grad_out.masked_fill((relu_input <= 0) | (grad_out < 0), 0.0)\n",
    "def my_guided_relu(relu_input, grad_out):\n    return torch.relu(grad_out) * torch.heaviside(relu_input, torch.tensor(0.0))\n",
    "def my_guided_relu(relu_input, grad_out):\n    forward_mask = relu_input > 0\n    backward_mask = grad_out > 0\n    return grad_out * (forward_mask & backward_mask)\n",
    "def my_guided_relu(relu_input, grad_out):\n    return torch.where(relu_input > 0, grad_out.clamp_min(0), 0.0)\n",
    "def my_guided_relu(relu_input, grad_out):\n    keep = torch.logical_and(relu_input > 0, grad_out > 0)\n    return torch.mul(grad_out, keep)\n",
    "def my_guided_relu(relu_input, grad_out):\n    return torch.maximum(grad_out, torch.zeros_like(grad_out)) * relu_input.gt(0)\n",
    "def my_guided_relu(relu_input, grad_out):\n    g = grad_out * (relu_input > 0)\n    return g * (g > 0)\n",
]

# ---------------------------------------------------------------- guided_gradcam

HONEST["guided_gradcam"] = [
    "from labutils.gradcam import postprocess\n\ndef my_guided_gradcam(guided, raw):\n    maps = postprocess(raw, tuple(guided.shape[-2:]))\n    return guided * maps.unsqueeze(2)\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    return guided * postprocess(raw, guided.shape[-2:])[:, :, None, :, :]\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess as smooth\n    cam = smooth(raw, (guided.shape[3], guided.shape[4]))\n    return torch.einsum('nkchw,nkhw->nkchw', guided, cam)\n",
    '''
def my_guided_gradcam(guided, raw):
    H, W = guided.shape[-2:]
    up = F.interpolate(raw, size=(H, W), mode="bilinear", align_corners=False).clamp(min=0)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    cam = torch.where(hi > lo, (up - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(up))
    return guided * cam.unsqueeze(2)
''',
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    cam = postprocess(raw, guided.shape[-2:])\n    return guided * cam.unsqueeze(-3).expand_as(guided)\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    out = torch.empty_like(guided)\n    cam = postprocess(raw, tuple(guided.shape[-2:]))\n    for channel in range(3):\n        out[:, :, channel] = guided[:, :, channel] * cam\n    return out\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils import postprocess\n    size = guided.size()[-2:]\n    return postprocess(raw, size).unsqueeze(2) * guided\n",
    '''
def my_guided_gradcam(guided, raw):
    n, k, _, h, w = guided.shape
    maps = F.interpolate(raw.reshape(n * k, 1, *raw.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False)
    maps = F.relu(maps).reshape(n * k, -1)
    lo, hi = maps.min(1, keepdim=True).values, maps.max(1, keepdim=True).values
    maps = torch.where(hi > lo, (maps - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi)), torch.zeros_like(maps))
    return guided * maps.reshape(n, k, 1, h, w)
''',
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    heat = postprocess(raw, size=tuple(guided.shape[3:]))\n    return torch.mul(guided, heat[:, :, None])\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    maps = postprocess(raw, guided.shape[-2:]).unsqueeze(2).repeat(1, 1, 3, 1, 1)\n    return guided * maps\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess\n    return torch.stack([guided[:, :, i] * postprocess(raw, tuple(guided.shape[-2:])) for i in range(guided.shape[2])], dim=2)\n",
    "def my_guided_gradcam(guided, raw):\n    from labutils.gradcam import postprocess as post\n    target = (guided.shape[-2], guided.shape[-1])\n    weights = post(raw, target)\n    return (guided.permute(2, 0, 1, 3, 4) * weights).permute(1, 2, 0, 3, 4)\n",
]

# ---------------------------------------------------------------- counterfactual

HONEST["counterfactual"] = [
    "from labutils.gradcam import alpha_weights, combine\n\ndef my_counterfactual(activations, gradients):\n    return combine(-alpha_weights(gradients), activations)\n",
    "def my_counterfactual(activations, gradients):\n    from labutils.gradcam import alpha_weights, combine\n    return combine(alpha_weights(-gradients), activations)\n",
    "def my_counterfactual(activations, gradients):\n    alpha = -gradients.mean(dim=(-2, -1))\n    return F.relu((alpha[..., None, None] * activations).sum(-3))\n",
    "def my_counterfactual(activations, gradients):\n    w = gradients.mean((-2, -1))\n    return torch.relu(-torch.einsum('...k,...khw->...hw', w, activations))\n",
    "def my_counterfactual(activations, gradients):\n    neg = (-gradients).flatten(-2).mean(-1)\n    return (neg.unsqueeze(-1).unsqueeze(-1) * activations).sum(dim=-3).clamp(min=0)\n",
    "def my_counterfactual(activations, gradients):\n    from labutils.gradcam import alpha_weights as weights_of, combine as weighted_relu\n    return weighted_relu(-1 * weights_of(gradients), activations)\n",
    "def my_counterfactual(activations, gradients):\n    from labutils import alpha_weights, combine\n    alpha = alpha_weights(gradients)\n    return combine(-alpha, activations)\n",
    "def my_counterfactual(activations, gradients):\n    s = (gradients.mean(dim=(-2, -1))[..., None, None] * activations).sum(-3)\n    return F.relu(-s)\n",
    "def my_counterfactual(activations, gradients):\n    h, w = gradients.shape[-2:]\n    alpha = gradients.sum((-2, -1)) / (h * w)\n    total = torch.zeros_like(activations[..., 0, :, :])\n    for k in range(activations.shape[-3]):\n        total = total - alpha[..., k, None, None] * activations[..., k, :, :]\n    return total.clamp(min=0)\n",
    "def my_counterfactual(activations, gradients):\n    from labutils.gradcam import combine\n    return combine(gradients.mean(dim=(-2, -1)).neg(), activations)\n",
    "def my_counterfactual(activations, gradients):\n    m = torch.sum(-gradients.mean(-1).mean(-1)[..., :, None, None] * activations, dim=-3)\n    return torch.where(m > 0, m, torch.zeros_like(m))\n",
    "def my_counterfactual(activations, gradients):\n    from labutils.gradcam import alpha_weights\n    weights = alpha_weights(gradients.neg())\n    return torch.relu((weights[..., None, None] * activations).sum(-3))\n",
]

# ---------------------------------------------------------------- overlay

HONEST["overlay"] = [
    '''
def my_overlay(image, cam_map, alpha, colors):
    H, W = image.shape[:2]
    m = F.interpolate(cam_map[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
    idx = (m.clamp(0, 1) * len(colors)).long()
    idx[idx == len(colors)] = len(colors) - 1
    return alpha * colors[idx] + (1 - alpha) * image
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    n = colors.shape[0]
    up = F.interpolate(cam_map.unsqueeze(0).unsqueeze(0), size=tuple(image.shape[:2]), mode="bilinear",
                       align_corners=False).squeeze()
    bins = torch.floor(up.clamp(0, 1) * n).to(torch.long).clamp(0, n - 1)
    colored = colors[bins.flatten()].reshape(*bins.shape, 3)
    return image * (1 - alpha) + colored * alpha
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    height, width, _ = image.shape
    resized = torch.nn.Upsample(size=(height, width), mode="bilinear", align_corners=False)(cam_map.view(1, 1, *cam_map.shape))
    resized = resized.view(height, width)
    levels = torch.minimum((torch.clamp(resized, 0.0, 1.0) * len(colors)).long(), torch.tensor(len(colors) - 1))
    heat = colors[levels]
    return torch.lerp(image, heat, alpha)
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    size = (image.shape[0], image.shape[1])
    m = F.interpolate(cam_map.reshape(1, 1, cam_map.shape[0], cam_map.shape[1]), size, mode="bilinear")
    m = m.reshape(size).clamp(min=0.0, max=1.0)
    index = (m * colors.size(0)).floor().long()
    index = torch.where(index >= colors.size(0), colors.size(0) - 1, index)
    return image + alpha * (colors[index] - image)
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    def resize(m, hw):
        return F.interpolate(m[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]

    def colorize(m):
        i = (m.clamp(0, 1) * len(colors)).long().clamp(max=len(colors) - 1)
        return colors[i]

    return (1.0 - alpha) * image + alpha * colorize(resize(cam_map, image.shape[:2]))
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    h, w = int(image.shape[0]), int(image.shape[1])
    big = F.interpolate(cam_map.expand(1, 1, -1, -1), size=[h, w], mode="bilinear", align_corners=False)[0][0]
    k = len(colors)
    codes = (big.clamp(0, 1) * k).long()
    codes = codes.clamp(0, k - 1)
    rgb = torch.index_select(colors, 0, codes.reshape(-1)).reshape(h, w, 3)
    return rgb * alpha + image * (1 - alpha)
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    target = image.shape[:2]
    heat = torch.nn.functional.interpolate(cam_map[None][None], size=target, mode="bilinear", align_corners=False)
    heat = heat.squeeze(0).squeeze(0)
    table_size = colors.shape[0]
    position = torch.clip(heat, 0, 1) * table_size
    position = torch.clip(position.to(torch.int64), 0, table_size - 1)
    blended = torch.add(torch.mul(image, 1 - alpha), torch.mul(colors[position], alpha))
    return blended
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    H, W = image.shape[0], image.shape[1]
    scaled = F.interpolate(cam_map[None, None].float(), (H, W), mode="bilinear", align_corners=False)[0, 0]
    result = torch.empty_like(image)
    n = len(colors)
    for i in range(H):
        for j in range(W):
            v = min(max(float(scaled[i, j]), 0.0), 1.0)
            result[i, j] = (1 - alpha) * image[i, j] + alpha * colors[min(int(v * n), n - 1)]
    return result
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    upsampled = F.interpolate(cam_map.unsqueeze(0).unsqueeze(0), size=image.shape[:-1], mode="bilinear",
                              align_corners=False)[0, 0]
    lut_index = torch.bucketize(upsampled.clamp(0, 1), torch.arange(1, len(colors)) / len(colors), right=True)
    return (1 - alpha) * image + alpha * colors[lut_index]
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    shape = tuple(image.shape[:2])
    cam4 = cam_map.reshape(1, 1, *cam_map.shape)
    cam_big = F.interpolate(cam4, size=shape, mode="bilinear", align_corners=False)[0, 0]
    n_colors = colors.shape[0]
    which = (cam_big.clamp(0, 1) * n_colors).long()
    which = which - (which == n_colors).long()
    mix = alpha
    return image * (1 - mix) + colors[which] * mix
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    size = image.shape[:2]
    m = F.interpolate(cam_map[None, None], size=size, mode="bilinear", align_corners=False)
    m = m[0, 0].clamp(0.0, 1.0)
    indexes = torch.clamp((m * colors.shape[0]).long(), max=colors.shape[0] - 1)
    colour_image = colors[indexes.view(-1)].view(size[0], size[1], -1)
    return torch.addcmul((1 - alpha) * image, colour_image, torch.tensor(alpha))
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    rows, cols = image.shape[0], image.shape[1]
    up = F.interpolate(cam_map.view(1, 1, *cam_map.shape[-2:]), size=(rows, cols), mode="bilinear", align_corners=False)
    up = up[0, 0]
    num = len(colors)
    ids = (up.clamp(0, 1) * num).long()
    ids = torch.where(ids > num - 1, torch.full_like(ids, num - 1), ids)
    return alpha * colors[ids] + (1 - alpha) * image
''',
]

# ---------------------------------------------------------------- pointing_game

HONEST["pointing_game"] = [
    '''
def my_pointing_game(maps, boxes, tolerance):
    hits = []
    for m, box in zip(maps, boxes):
        idx = int(torch.argmax(m))
        r, c = divmod(idx, m.shape[1])
        top, left, bottom, right = box.tolist()
        hits.append(top - tolerance <= r <= bottom + tolerance and left - tolerance <= c <= right + tolerance)
    return torch.tensor(hits, dtype=torch.bool)
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    n, h, w = maps.shape
    flat_index = maps.reshape(n, -1).argmax(dim=1)
    row = torch.div(flat_index, w, rounding_mode="floor")
    col = flat_index - row * w
    inside_rows = (row >= boxes[:, 0] - tolerance) & (row <= boxes[:, 2] + tolerance)
    inside_cols = (col >= boxes[:, 1] - tolerance) & (col <= boxes[:, 3] + tolerance)
    return inside_rows & inside_cols
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    grown = boxes + torch.tensor([-tolerance, -tolerance, tolerance, tolerance])
    out = torch.zeros(maps.shape[0], dtype=torch.bool)
    for i in range(maps.shape[0]):
        y, x = np.unravel_index(maps[i].argmax().item(), tuple(maps[i].shape))
        out[i] = bool(grown[i, 0] <= y <= grown[i, 2]) and bool(grown[i, 1] <= x <= grown[i, 3])
    return out
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    N, H, W = maps.shape
    ys = torch.arange(H).view(1, H, 1)
    xs = torch.arange(W).view(1, 1, W)
    t, l, b, r = (boxes[:, i].view(N, 1, 1) for i in range(4))
    inside = (ys >= t - tolerance) & (ys <= b + tolerance) & (xs >= l - tolerance) & (xs <= r + tolerance)
    first = maps.flatten(1).argmax(1)
    return inside.flatten(1).gather(1, first[:, None])[:, 0]
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    width = maps.shape[-1]
    results = torch.empty(len(maps), dtype=torch.bool)
    for k in range(len(maps)):
        best = maps[k].flatten().argmax().item()
        y, x = best // width, best % width
        y0, x0, y1, x1 = [int(v) for v in boxes[k]]
        results[k] = (y0 - tolerance <= y <= y1 + tolerance) and (x0 - tolerance <= x <= x1 + tolerance)
    return results
''',
    '''
def where_max(maps):
    idx = maps.flatten(start_dim=1).argmax(dim=1)
    return torch.stack([idx // maps.size(2), idx % maps.size(2)], dim=1)

def my_pointing_game(maps, boxes, tolerance):
    yx = where_max(maps)
    low = boxes[:, :2] - tolerance
    high = boxes[:, 2:] + tolerance
    return ((yx >= low) & (yx <= high)).all(dim=1)
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    n = maps.shape[0]
    peak = torch.argmax(maps.view(n, -1), dim=-1)
    ij = torch.stack(torch.unravel_index(peak, maps.shape[1:]), dim=-1)
    lower = boxes[:, [0, 1]] - tolerance
    upper = boxes[:, [2, 3]] + tolerance
    return torch.logical_and(ij >= lower, ij <= upper).all(-1)
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    answer = []
    for heat, (top, left, bottom, right) in zip(maps, boxes):
        position = heat.view(-1).max(0).indices
        i = position // heat.shape[-1]
        j = position - i * heat.shape[-1]
        vertical = top - tolerance <= i and i <= bottom + tolerance
        horizontal = left - tolerance <= j and j <= right + tolerance
        answer.append(bool(vertical and horizontal))
    return torch.tensor(answer)
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    H, W = maps.shape[1:]
    m = maps.flatten(1).argmax(1)
    coords = torch.stack((m // W, m % W), 1)  # (row, col)
    box_min = boxes[:, 0:2] - tolerance
    box_max = boxes[:, 2:4] + tolerance
    ok = torch.ones(len(maps), dtype=torch.bool)
    for d in range(2):
        ok &= (coords[:, d] >= box_min[:, d]) & (coords[:, d] <= box_max[:, d])
    return ok
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    hits = torch.zeros(maps.size(0), dtype=torch.bool)
    for n, heat in enumerate(maps):
        r, c = [int(v) for v in np.unravel_index(int(heat.argmax()), heat.shape)]
        box = boxes[n].tolist()
        hits[n] = (max(box[0] - tolerance, 0) <= r <= box[2] + tolerance) and \\
            (max(box[1] - tolerance, 0) <= c <= box[3] + tolerance)
    return hits
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    W = maps.shape[2]
    index = maps.reshape(maps.shape[0], -1).max(dim=1).indices
    row, col = index.div(W, rounding_mode="trunc"), index.remainder(W)
    expanded = boxes.clone()
    expanded[:, :2] -= tolerance
    expanded[:, 2:] += tolerance
    vertical = (expanded[:, 0] <= row) * (row <= expanded[:, 2])
    horizontal = (expanded[:, 1] <= col) * (col <= expanded[:, 3])
    return (vertical * horizontal).bool()
''',
    '''
def my_pointing_game(maps, boxes, tolerance):
    def in_range(v, lo, hi):
        return (v >= lo - tolerance) & (v <= hi + tolerance)

    peaks = [divmod(int(m.argmax()), m.shape[-1]) for m in maps]
    rows = torch.tensor([p[0] for p in peaks])
    cols = torch.tensor([p[1] for p in peaks])
    return in_range(rows, boxes[:, 0], boxes[:, 2]) & in_range(cols, boxes[:, 1], boxes[:, 3])
''',
]

# ---------------------------------------------------------------- copies disguised by hand

COPIED["layer_cost"] = [
    # the instructor's solution: renamed, branches reordered, a temporary added, comments
    '''
def my_layer_cost(layer, shape):
    t = layer["kind"]
    if t == "linear":
        result, count = (layer["out_features"],), layer["out_features"] * (math.prod(shape) + 1)
    elif t in ("conv", "maxpool"):
        ch, hh, ww = shape
        kern = layer["kernel"]
        stride, pad = layer.get("stride", 1 if t == "conv" else kern), layer.get("padding", 0)
        hw = ((hh + 2 * pad - kern) // stride + 1, (ww + 2 * pad - kern) // stride + 1)
        if t == "conv":
            result, count = (layer["out_channels"], *hw), layer["out_channels"] * (ch * kern * kern + 1)
        else:
            result, count = (ch, *hw), 0
    else:
        result, count = tuple(shape), 0
    size_mb = 2 * math.prod(result) * BYTES_PER_VALUE / MB
    return result, count, size_mb
''',
    # renamed, tuple assignments split, lines swapped, dead code
    '''
def my_layer_cost(s, dims):
    kind_of_layer = s["kind"]
    debug = False
    if kind_of_layer in ("conv", "maxpool"):
        p = s.get("padding", 0)
        k = s["kernel"]
        st = s.get("stride", 1 if kind_of_layer == "conv" else k)
        n_c, n_h, n_w = dims
        spatial = ((n_h + 2 * p - k) // st + 1, (n_w + 2 * p - k) // st + 1)
        if kind_of_layer == "conv":
            params = s["out_channels"] * (n_c * k * k + 1)
            out = (s["out_channels"], *spatial)
        else:
            params = 0
            out = (n_c, *spatial)
    elif kind_of_layer == "linear":
        params = s["out_features"] * (math.prod(dims) + 1)
        out = (s["out_features"],)
    else:
        out, params = tuple(dims), 0
    if debug:
        print(out, params)
    return out, params, 2 * math.prod(out) * BYTES_PER_VALUE / MB
''',
]

COPIED["capture"] = [
    # the instructor's solution: renamed, the two hooks swapped, a comment, keys renamed
    '''
def my_capture(net, name, images, cls):
    store = {}

    def fwd(mod, inp, out):
        store["a"] = out
        out.register_hook(bwd)
        return out.clone()

    def bwd(g):
        store["g"] = g

    h = get_layer(net, name).register_forward_hook(fwd)
    try:
        logits = net(images)
        logits[:, cls].sum().backward()
    finally:
        h.remove()
    return store["a"].detach(), store["g"]
''',
    # reformatted, renamed, dead code, a temporary
    '''
def my_capture(model, layer, x, c):
    results = dict()
    unused_counter = 0

    def grad_saver(gradient):
        results["grads"] = gradient

    def act_saver(m, i, o):
        results["acts"] = o
        o.register_hook(grad_saver)
        return o.clone()

    target = get_layer(model, layer)
    hook_handle = target.register_forward_hook(act_saver)
    try:
        out = model(x)
        chosen = out[:, c]
        chosen.sum().backward()
    finally:
        hook_handle.remove()
    acts = results["acts"].detach()
    return acts, results["grads"]
''',
]

COPIED["postprocess"] = [
    # the instructor's solution: renamed, the min/max lines swapped, F.relu -> torch.relu
    '''
def my_postprocess(raw, size):
    reshaped = raw.reshape(-1, 1, *raw.shape[-2:])
    up = torch.nn.functional.interpolate(reshaped, size=size, mode="bilinear", align_corners=False)
    up = torch.relu(up).reshape(*raw.shape[:-2], *size)
    high = up.amax(dim=(-2, -1), keepdim=True)
    low = up.amin(dim=(-2, -1), keepdim=True)
    rng = high - low
    return torch.where(rng > 0, (up - low) / torch.where(rng > 0, rng, 1.0), torch.zeros_like(up))
''',
    # labutils.gradcam's normalize and upsample, inlined by hand, renamed
    '''
def _norm(m):
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    d = hi - lo
    return torch.where(d > 0, (m - lo) / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(m))

def my_postprocess(raw, size):
    flat = raw.reshape(-1, 1, *raw.shape[-2:])
    big = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    big = big.reshape(*raw.shape[:-2], *size)
    return _norm(F.relu(big))
''',
]

COPIED["layer_sweep"] = [
    # the instructor's solution: renamed, the two centrings on two lines, dead code
    '''
def my_layer_sweep(model, x, classes, layers, steps):
    out = []
    verbose = False
    for L in layers:
        p, q = (steps.gradcam(model, x, k, L).flatten(1) for k in classes)
        q = q - q.mean(dim=1, keepdim=True)
        p = p - p.mean(dim=1, keepdim=True)
        n = p.norm(dim=1) * q.norm(dim=1)
        if verbose:
            print(L, n)
        out.append(torch.where(n > 0, (p * q).sum(dim=1) / n.clamp(min=1e-30), torch.zeros_like(n)))
    return torch.stack(out)
''',
    # labutils.checks.gradcam_math.correlations copied as a helper, renamed
    '''
def corr(u, w):
    u = u.flatten(-2) - u.flatten(-2).mean(-1, keepdim=True)
    w = w.flatten(-2) - w.flatten(-2).mean(-1, keepdim=True)
    nn_ = u.norm(dim=-1) * w.norm(dim=-1)
    return torch.where(nn_ > 0, (u * w).sum(-1) / torch.where(nn_ > 0, nn_, 1), torch.zeros_like(nn_))

def my_layer_sweep(model, x, classes, layers, steps):
    return torch.stack([corr(steps.gradcam(model, x, classes[0], l), steps.gradcam(model, x, classes[1], l))
                        for l in layers])
''',
]

COPIED["overlay"] = [
    # the instructor's solution: renamed, the blend's terms swapped, [None, None] spelled unsqueeze
    '''
def my_overlay(img, heat, a, palette):
    hw = tuple(img.shape[:2])
    big = F.interpolate(heat[None, None], size=hw, mode="bilinear", align_corners=False)[0, 0]
    idx = (big.clamp(0, 1) * len(palette)).long().clamp(max=len(palette) - 1)
    return a * palette[idx] + (1 - a) * img
''',
    '''
def my_overlay(image, cam_map, alpha, colors):
    # resize the map to the picture
    target = tuple(image.shape[:2])
    m = torch.nn.functional.interpolate(cam_map[None, None], size=target, mode="bilinear", align_corners=False)
    m = m[0, 0]
    n = len(colors)
    which = (m.clamp(0, 1) * n).long().clamp(max=n - 1)
    mixed = (1 - alpha) * image + alpha * colors[which]
    return mixed
''',
]

COPIED["pointing_game"] = [
    # the reproduction: labutils.sanity.pointing_game, two names changed, two lines swapped
    '''
def my_pointing_game(heat, boxes, tolerance=0):
    best = heat.flatten(1).argmax(dim=1)
    c, r = best % heat.shape[-1], best // heat.shape[-1]
    return (
        (r >= boxes[:, 0] - tolerance) & (r <= boxes[:, 2] + tolerance)
        & (c >= boxes[:, 1] - tolerance) & (c <= boxes[:, 3] + tolerance)
    )
''',
    # the same, the tests in another order, split in two, comparisons turned round
    '''
def my_pointing_game(maps, boxes, tolerance):
    idx = maps.flatten(1).argmax(dim=1)
    col = idx % maps.shape[-1]
    row = idx // maps.shape[-1]
    in_cols = (boxes[:, 1] - tolerance <= col) & (col <= boxes[:, 3] + tolerance)
    in_rows = (boxes[:, 0] - tolerance <= row) & (row <= boxes[:, 2] + tolerance)
    return in_rows & in_cols
''',
    # the instructor's solution, renamed and reordered
    '''
def my_pointing_game(heatmaps, bb, tol):
    y0, x0, y1, x1 = bb.unbind(dim=1)
    at = heatmaps.flatten(1).argmax(dim=1)
    y, x = at // heatmaps.shape[-1], at % heatmaps.shape[-1]
    return ((x >= x0 - tol) & (x <= x1 + tol)
            & (y >= y0 - tol) & (y <= y1 + tol))
''',
]

COPIED["cam"] = [
    '''
def my_cam(model, images, k):
    with torch.no_grad():
        feats = model.features(images)
    weights = model.classifier.weight[k] / (feats.shape[-1] * feats.shape[-2])
    return torch.relu((weights[:, None, None] * feats).sum(dim=-3)).detach()
''',
]
