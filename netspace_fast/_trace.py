"""From a user's ``nn.Module`` to an :class:`~netspace_fast.archs.ArchSpec` (``archs.spec_from_module``).

The module is traced with ``torch.fx`` (symbolic tracing: the graph of the forward, module calls
kept as calls, so every layer keeps its module path) and the example input's shapes are propagated
through the graph. Every node is then one of the supported operations or refused, in one line
naming the module path and the op, before anything runs:

* conv2d (``nn.Conv2d`` or ``F.conv2d`` of a module's parameters): any kernel (rectangular too),
  stride, padding, dilation, groups, with or without bias; linear likewise;
* BatchNorm1d/2d right after a conv/linear (attached to it: folded in PReps);
* ReLU, LeakyReLU (any slope), GELU (exact or tanh), SiLU, Tanh, Sigmoid, sin(w0 x) (``torch.sin``
  of a product with a constant);
* max and average pooling, adaptive average pooling, flatten (``nn.Flatten``, ``torch.flatten``,
  ``x.flatten(1)``, ``x.view(x.size(0), -1)``); additions of two values (residual blocks);
* dropout and ``nn.Identity`` (identities in eval: dropped).

Fusion, into the engine's layer form ``act(op(x) [+ residual])``: a BatchNorm joins the conv/linear
it follows; an addition joins the later-computed of its two operands when that is a conv/linear
output read by nothing else (the other operand becomes its ``residual``); an activation joins the
layer that made its input when nothing else reads it. What is left becomes layers of kind ``act``.

Names and packing order: a layer's name is its module path (so the module's state dict loads
strictly into ``SpecNet``), and the packing order of the conv/linear layers is the module's
registration order (``nn.Module.parameters()`` order, the original code's rule).

Finally the spec is checked against the module: ``spec_forward`` with the module's own parameters
(and BatchNorms, in eval mode) must reproduce the module's output on the example input, so an
operation the tracer could not see (an in-place trick, a Python-side computation) is refused rather
than silently changed.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["spec_from_module"]

_ACT_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu", nn.Tanh: "tanh",
                nn.Sigmoid: "sigmoid"}
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", F.leaky_relu: "leaky_relu", F.gelu: "gelu", F.silu: "silu",
              torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}
_ACT_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity)
_IDENTITY_FUNCS = (F.dropout, F.dropout2d, F.dropout1d, F.alpha_dropout)
_ADD = (operator.add, operator.iadd, torch.add)
_MUL = (operator.mul, torch.mul)


def _module_name(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        if path:
            return str(path)
    return node.name


def _what(node: fx.Node, modules: dict) -> tuple[str, str]:
    """(module path, op description) of a node, for error messages."""
    if node.op == "call_module":
        m = modules[node.target]
        return node.target, f"nn.{type(m).__name__}" if type(m).__module__.startswith("torch.nn") \
            else type(m).__qualname__
    if node.op == "call_function":
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        prefix = {"torch.nn.functional": "F.", "_operator": "operator.", "torch": "torch."}.get(mod, "")
        return _module_name(node), prefix + name
    if node.op == "call_method":
        return _module_name(node), f"Tensor.{node.target}"
    return _module_name(node), node.op


def _refuse(node: fx.Node, modules: dict, why: str = "is not supported") -> None:
    path, op = _what(node, modules)
    raise ValueError(f"{path}: {op} {why}")


def _shape(node) -> tuple[int, ...] | None:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


class _Layer(dict):
    """A LayerSpec under construction (fields as keyword arguments)."""


def spec_from_module(module: nn.Module, example_input: torch.Tensor, *, archs, name: str | None = None,
                     dataset: str | None = None, class_id: int | None = None):
    """The :class:`~netspace_fast.archs.ArchSpec` of ``module`` (see the module docstring); called by
    :func:`netspace_fast.archs.spec_from_module`, which hands itself in as ``archs`` (the spec
    classes and ``spec_forward``: this module does not import it, so there is no import cycle).

    ``example_input``: one batch ``(N, ...)`` the module accepts (its shape fixes the spec's input
    shape). ``name``: the architecture's name (default: the module's class name, lower case).
    Unsupported operations raise ``ValueError`` naming the module path and the op.
    """

    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input: expected a Tensor (N, ...), got {type(example_input).__name__}")
    if example_input.dim() < 2 or example_input.shape[0] < 1:
        raise ValueError(f"example_input: expected a batch (N, features) or (N, C, H, W) with N >= 1, got shape "
                         f"{tuple(example_input.shape)}")
    if not example_input.is_floating_point():
        raise TypeError(f"example_input: expected a floating-point tensor, got {example_input.dtype}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"name: expected a non-empty str or None, got {name!r}")
    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:  # TraceError, data-dependent control flow, unsupported Python
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"module: {type(module).__name__} cannot be traced by torch.fx ({type(e).__name__}: "
                         f"{first}); data-dependent control flow and in-place item assignment are not supported"
                         ) from None
    modules = dict(gm.named_modules())
    graph = gm.graph

    # identities (dropout in eval, nn.Identity, .contiguous()) are dropped before anything else
    for node in list(graph.nodes):
        ident = ((node.op == "call_module" and isinstance(modules[node.target], _IDENTITY_MODULES))
                 or (node.op == "call_function" and node.target in _IDENTITY_FUNCS)
                 or (node.op == "call_method" and node.target == "contiguous"))
        if ident:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    gm.recompile()

    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            from torch.fx.passes.shape_prop import ShapeProp
            try:
                ShapeProp(gm).propagate(example_input.detach())
            except Exception as e:
                raise ValueError(f"example_input: the module fails on an input of shape "
                                 f"{tuple(example_input.shape)} ({type(e).__name__}: {e})") from None
            spec = _build(gm, modules, module, example_input, name or type(module).__name__.lower(), dataset, class_id, archs)
            _check_reproduces(module, spec, example_input, archs)
    finally:
        module.train(was_training)
    return spec


def _param_owner(node, gm, suffix: str) -> str | None:
    """The module path of a ``get_attr`` parameter node named ``<path>.<suffix>``."""
    if not isinstance(node, fx.Node) or node.op != "get_attr" or not node.target.endswith("." + suffix):
        return None
    return node.target[: -len(suffix) - 1]


def _build(gm, modules, root, example_input, name, dataset, class_id, archs):
    layers: list[_Layer] = []
    value: dict[fx.Node, int] = {}  # node -> value id
    producer: dict[int, _Layer] = {}  # value id -> the layer that writes it
    scaled: dict[fx.Node, tuple[fx.Node, float]] = {}  # mul-by-constant nodes awaiting their sin
    next_value = 1
    output_node = None

    def single_use(node: fx.Node) -> bool:
        return len(node.users) == 1

    def emit(kind: str, src: fx.Node, node: fx.Node, **kw) -> _Layer:
        nonlocal next_value
        if src in scaled:
            _refuse(src, modules, "is supported only as sin(w0 * x)")
        if src not in value:
            _refuse(node, modules, "reads a value that is not a tensor of the network")
        layer = _Layer(kind=kind, src=value[src], dst=next_value, **kw)
        value[node] = next_value
        producer[next_value] = layer
        next_value += 1
        layers.append(layer)
        return layer

    def fusable(src: fx.Node) -> _Layer | None:
        """The layer that made ``src`` if an epilogue (act/add) can join it."""
        if src not in value or not single_use(src):
            return None
        layer = producer.get(value[src])
        if layer is None or layer.get("act", "none") != "none" or layer["kind"] not in ("conv", "linear", "act"):
            return None
        return layer

    def activation(node: fx.Node, src: fx.Node, act: str, arg: float | None = None) -> None:
        layer = fusable(src)
        if layer is not None:
            layer["act"], layer["act_arg"] = act, arg
            value[node] = value[src]
        else:
            emit("act", src, node, act=act, act_arg=arg)

    for node in gm.graph.nodes:
        op, target = node.op, node.target
        if op == "placeholder":
            if value:
                _refuse(node, modules, "is a second input; expected a module with one input tensor")
            value[node] = 0
            continue
        if op == "get_attr":
            continue
        if op == "output":
            output_node = node
            continue
        args = node.args
        if op == "call_module":
            m = modules[target]
            if isinstance(m, nn.Conv2d):
                if m.padding_mode != "zeros" or isinstance(m.padding, str):
                    if isinstance(m.padding, str):
                        pad = _same_padding(m, node)
                    else:
                        _refuse(node, modules, f"with padding_mode={m.padding_mode!r} is not supported "
                                               f"(only zeros)")
                else:
                    pad = m.padding
                emit("conv", args[0], node, name=target, in_features=m.in_channels, out_features=m.out_channels,
                     kernel=tuple(m.kernel_size), stride=tuple(m.stride), padding=tuple(pad),
                     dilation=tuple(m.dilation), groups=m.groups, bias=m.bias is not None)
            elif isinstance(m, nn.Linear):
                _need_2d(args[0], node, modules)
                emit("linear", args[0], node, name=target, in_features=m.in_features, out_features=m.out_features,
                     bias=m.bias is not None)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                _attach_bn(node, args[0], target, m, value, producer, modules)
            elif type(m) in _ACT_MODULES:
                act = _ACT_MODULES[type(m)]
                arg = None
                if act == "leaky_relu":
                    arg = m.negative_slope
                elif act == "gelu" and m.approximate == "tanh":
                    act = "gelu_tanh"
                activation(node, args[0], act, arg)
            elif isinstance(m, nn.MaxPool2d):
                if m.ceil_mode or m.return_indices:
                    _refuse(node, modules, "with ceil_mode or return_indices is not supported")
                emit("maxpool", args[0], node, kernel=_p(m.kernel_size), stride=_p(m.stride or m.kernel_size),
                     padding=_p(m.padding), dilation=_p(m.dilation))
            elif isinstance(m, nn.AvgPool2d):
                if m.ceil_mode or m.divisor_override is not None:
                    _refuse(node, modules, "with ceil_mode or divisor_override is not supported")
                emit("avgpool", args[0], node, kernel=_p(m.kernel_size), stride=_p(m.stride or m.kernel_size),
                     padding=_p(m.padding), count_include_pad=bool(m.count_include_pad))
            elif isinstance(m, nn.AdaptiveAvgPool2d):
                emit("adaptive_avgpool", args[0], node, output_size=_out_size(m.output_size, args[0], node, modules))
            elif isinstance(m, nn.Flatten):
                _flatten(node, args[0], m.start_dim, m.end_dim, emit, modules)
            else:
                _refuse(node, modules)
        elif op == "call_function" and target in (F.conv2d, torch.conv2d):
            _functional_layer(node, "conv", gm, modules, emit)
        elif op == "call_function" and target is F.linear:
            _functional_layer(node, "linear", gm, modules, emit)
        elif (op == "call_function" and target in _ACT_FUNCS) or (op == "call_method" and target in _ACT_METHODS):
            act = _ACT_FUNCS[target] if op == "call_function" else _ACT_METHODS[target]
            arg = None
            if act == "leaky_relu":
                arg = node.kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
            if act == "gelu" and node.kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
                act = "gelu_tanh"
            activation(node, args[0], act, arg)
        elif op in ("call_function", "call_method") and target in (_MUL if op == "call_function" else ("mul",)):
            a, b = args[0], args[1]
            t, c = (a, b) if isinstance(a, fx.Node) else (b, a)
            if not isinstance(t, fx.Node) or isinstance(c, fx.Node) or not isinstance(c, (int, float)):
                _refuse(node, modules, "of two tensors is not supported (a constant times a value only before sin)")
            scaled[node] = (t, float(c))
        elif (op == "call_function" and target is torch.sin) or (op == "call_method" and target == "sin"):
            src = args[0]
            if src in scaled:
                src, w0 = scaled.pop(src)
            else:
                w0 = 1.0
            activation(node, src, "sin", w0)
        elif (op == "call_function" and target in _ADD) or (op == "call_method" and target in ("add", "add_")):
            if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args) or node.kwargs.get("alpha", 1) != 1:
                _refuse(node, modules, "is supported only as the sum of two values of the network")
            _addition(node, args[0], args[1], value, producer, fusable, emit, modules)
        elif (op == "call_function" and target is torch.flatten) or (op == "call_method" and target == "flatten"):
            start = node.kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = node.kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            _flatten(node, args[0], start, end, emit, modules)
        elif op == "call_method" and target in ("view", "reshape") or (op == "call_function"
                                                                        and target is torch.reshape):
            _view_flatten(node, emit, modules)
        elif op == "call_method" and target == "size" or (op == "call_function" and target is operator.getitem
                                                            and not _shape(node)) or (
                op == "call_function" and target is getattr):
            continue  # shape arithmetic feeding a view; checked where it is used
        elif op == "call_function" and target in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d):
            _functional_pool(node, emit, modules)
        else:
            _refuse(node, modules)
    if scaled:
        _refuse(next(iter(scaled)), modules, "is supported only as sin(w0 * x)")
    out = output_node.args[0] if output_node is not None else None
    if not layers or not isinstance(out, fx.Node) or out not in value or value[out] != layers[-1]["dst"]:
        raise ValueError("module: expected the output to be the last layer's value (one tensor)")
    out_shape = _shape(out)
    if out_shape is None or len(out_shape) != 2:
        raise ValueError(f"module: expected an output (N, outputs), got shape {out_shape}")
    pack = [n for n, _ in root.named_modules()]  # registration order (the GraphModule's is use order)
    conv_names = [lay["name"] for lay in layers if lay["kind"] in ("conv", "linear")]
    if len(set(conv_names)) != len(conv_names):
        dup = next(n for n in conv_names if conv_names.count(n) > 1)
        raise ValueError(f"{dup}: a layer used twice (weight sharing) is not supported")
    order = sorted(conv_names, key=lambda n: pack.index(n) if n in pack else len(pack))
    specs = tuple(archs.LayerSpec(**{k: v for k, v in lay.items()}) for lay in layers)
    return archs.ArchSpec(name, dataset, tuple(example_input.shape[1:]), int(out_shape[1]), specs, class_id,
                          tuple(order))


def _p(v):
    return tuple(v) if isinstance(v, (tuple, list)) else v


def _same_padding(m: nn.Conv2d, node):
    if m.padding == "valid":
        return (0, 0)
    # "same" with stride 1: symmetric when (dilation * (k - 1)) is even
    pads = []
    for d, k in zip(m.dilation, m.kernel_size):
        total = d * (k - 1)
        if total % 2:
            raise ValueError(f"{node.target}: nn.Conv2d with padding='same' and an even kernel is not supported")
        pads.append(total // 2)
    return tuple(pads)


def _need_2d(src, node, modules) -> None:
    shape = _shape(src)
    if shape is not None and len(shape) != 2:
        _refuse(node, modules, f"on an input of shape {shape} is not supported (expected (N, features): "
                               f"flatten first)")


def _out_size(size, src, node, modules) -> tuple[int, int]:
    size = (size, size) if not isinstance(size, (tuple, list)) else tuple(size)
    shape = _shape(src)
    if any(s is None for s in size):
        if shape is None:
            _refuse(node, modules, "with a None output size is not supported")
        size = tuple(shape[2 + i] if s is None else s for i, s in enumerate(size))
    return (int(size[0]), int(size[1]))


def _attach_bn(node, src, target, m, value, producer, modules) -> None:
    if not (m.affine and m.track_running_stats):
        _refuse(node, modules, "without affine parameters or running statistics is not supported")
    layer = producer.get(value.get(src, -1))
    ok = (layer is not None and layer["kind"] in ("conv", "linear") and layer.get("bn") is None
          and layer.get("act", "none") == "none" and layer.get("residual") is None and len(src.users) == 1)
    if not ok:
        _refuse(node, modules, "is supported only right after a conv or linear layer whose output nothing "
                               "else reads")
    want = nn.BatchNorm2d if layer["kind"] == "conv" else nn.BatchNorm1d
    if not isinstance(m, want):
        _refuse(node, modules, f"after a {layer['kind']} layer is not supported (expected nn.{want.__name__})")
    if m.num_features != layer["out_features"]:
        _refuse(node, modules, f"has {m.num_features} features, its layer {layer['out_features']}")
    layer["bn"] = target
    value[node] = value[src]


def _addition(node, a, b, value, producer, fusable, emit, modules) -> None:
    if a not in value or b not in value:
        _refuse(node, modules, "is supported only as the sum of two values of the network")
    if _shape(a) != _shape(b):
        _refuse(node, modules, f"of shapes {_shape(a)} and {_shape(b)} (broadcasting) is not supported")
    cands = []
    for x, other in ((a, b), (b, a)):
        layer = fusable(x)
        if layer is not None and layer["kind"] in ("conv", "linear") and layer.get("residual") is None:
            cands.append((layer["dst"], layer, other))
    if cands:  # the later-computed operand takes the addition in its epilogue
        _, layer, other = max(cands, key=lambda c: c[0])
        layer["residual"] = value[other]
        value[node] = layer["dst"]
    else:
        emit("act", a, node, residual=value[b])


def _flatten(node, src, start, end, emit, modules) -> None:
    shape = _shape(src)
    nd = len(shape) if shape is not None else 4
    if start != 1 or end not in (-1, nd - 1):
        _refuse(node, modules, f"with start_dim={start}, end_dim={end} is not supported (only flatten(1))")
    emit("flatten", src, node)  # (on (N, F): a no-op layer)


def _view_flatten(node, emit, modules) -> None:
    src = node.args[0]
    shape, out = _shape(src), _shape(node)
    if shape is None or out is None or len(out) != 2 or out[0] != shape[0] or out[1] != math.prod(shape[1:]):
        _refuse(node, modules, "is supported only as a flatten to (N, -1)")
    emit("flatten", src, node)


def _functional_layer(node, kind, gm, modules, emit) -> None:
    args, kw = list(node.args), dict(node.kwargs)
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"] if kind == "conv" \
        else ["input", "weight", "bias"]
    vals = dict(zip(names, args))
    vals.update(kw)
    path = _param_owner(vals.get("weight"), gm, "weight")
    bias = vals.get("bias")
    if path is None or (bias is not None and _param_owner(bias, gm, "bias") != path):
        _refuse(node, modules, "is supported only on a module's own weight and bias parameters")
    w = gm.get_parameter(f"{path}.weight")
    if kind == "conv":
        pad = vals.get("padding", 0)
        if isinstance(pad, str):
            _refuse(node, modules, "with string padding is not supported")
        groups = int(vals.get("groups", 1))
        emit("conv", vals["input"], node, name=path, in_features=w.shape[1] * groups, out_features=w.shape[0],
             kernel=(w.shape[2], w.shape[3]), stride=_p(vals.get("stride", 1)), padding=_p(pad),
             dilation=_p(vals.get("dilation", 1)), groups=groups, bias=bias is not None)
    else:
        _need_2d(vals["input"], node, modules)
        emit("linear", vals["input"], node, name=path, in_features=w.shape[1], out_features=w.shape[0],
             bias=bias is not None)


def _functional_pool(node, emit, modules) -> None:
    t, args, kw = node.target, list(node.args), dict(node.kwargs)
    if t is F.adaptive_avg_pool2d:
        size = kw.get("output_size", args[1] if len(args) > 1 else None)
        emit("adaptive_avgpool", args[0], node, output_size=_out_size(size, args[0], node, modules))
        return
    if t is F.max_pool2d:
        names = ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
    else:
        names = ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"]
    v = dict(zip(names, args))
    v.update(kw)
    if v.get("ceil_mode") or v.get("return_indices") or v.get("divisor_override") is not None:
        _refuse(node, modules, "with ceil_mode, return_indices or divisor_override is not supported")
    k = _p(v["kernel_size"])
    stride = _p(v.get("stride") or k)
    if t is F.max_pool2d:
        emit("maxpool", v["input"], node, kernel=k, stride=stride, padding=_p(v.get("padding", 0)),
             dilation=_p(v.get("dilation", 1)))
    else:
        emit("avgpool", v["input"], node, kernel=k, stride=stride, padding=_p(v.get("padding", 0)),
             count_include_pad=bool(v.get("count_include_pad", True)))


def _check_reproduces(module, spec, example_input, archs) -> None:
    params = dict(module.named_parameters())
    bn = {layer.bn: module.get_submodule(layer.bn) for layer in spec.layers if layer.bn is not None}
    x = example_input.detach()
    want = module(x)
    got = archs.spec_forward(spec, params, x, bn or None)
    if got.shape != want.shape:
        raise ValueError(f"module: the traced spec gives outputs of shape {tuple(got.shape)}, the module "
                         f"{tuple(want.shape)}")
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    # a refusal guard, not an accuracy test: the same calls give equal results (the fused epilogue
    # adds in the other order, a + b == b + a); an operation the trace missed changes outputs by
    # O(scale), far above 1e-4 of it
    if not err <= 1e-4 * max(scale, 1.0):
        raise ValueError(f"module: the traced spec does not reproduce the module's output (max difference "
                         f"{err:.3g} at output scale {scale:.3g}); it may use an operation torch.fx cannot see "
                         f"(in-place tricks, Python-side computation)")
