"""Shared helpers of the netspace_fast test suite.

- ``gpu`` tests (``@pytest.mark.gpu``) are skipped automatically when no CUDA device is present
  (``requires_cuda`` is the same skip as a decorator).
- Tests run with one intra-op thread (``NETSPACE_TEST_THREADS`` to change it; see below).
- Every test starts from ``torch.manual_seed(0)`` (autouse fixture), so failures reproduce.
- The batched engine's convolution layout is the static rule (``NETSPACE_CONV_LAYOUT=rule``, set
  below unless the environment sets it): no timing, the same plan on every machine, fast;
  tests/engine/test_layout_tuner.py tests the measured choice with a fake timer.
- Hypothesis runs with no example database (nothing written outside tests/), no deadline, and a
  small, derandomized example budget (the CI machine has 2 CPU cores);
  ``HYPOTHESIS_PROFILE=thorough`` runs 500 random examples per property.

Tolerances used throughout (stated once here; none is tuned to one machine's rounding: float32
sums round differently by CPU, ``MKL_CBWR`` code path, thread count and alignment, and every
tolerance below holds for any summation order):
- copies (COPY segments, BN-free networks) must be bit-exact (a copy does no arithmetic);
- folded values (FOLD_W / FOLD_B segments) of two float32 implementations are compared with
  ``assert_fold_close``: |a - b| <= 1e-6 * |b| + 1e-6 * max|b|. Folding is elementwise, no sums:
  w * gamma / sqrt(var + eps) is 4 rounded operations (<= 4 u = 2.4e-7 relative, u = 2^-24, per
  implementation); (bias - mean) * scale + beta cancels, so its error is relative to the terms'
  scale, hence the absolute floor of 1e-6 of the tensor's scale;
- one layer op (``batched_conv2d`` / ``batched_linear``, tests/ops): elementwise float32 error bounds
  from a forward error analysis (tests/float_bounds.py: gamma_k times the sum of the terms'
  magnitudes, sin(30 z) multiplying z's error by 30), against the exact float64 value;
- whole networks (tests/engine, tests/zoo) use ``rel_err`` = max|a - b| / max|b| <= 1e-4 against the
  float32 reference, and folded vs BN networks in eval mode <= 1e-5. These are estimates, not
  bounds: a depth-L network of fan-in K accumulates ~ L sqrt(K) u relative rounding (random-walk
  error of a sum, Higham Sec. 2.8; ResNet56: 56 * 24 * 6e-8 = 8e-5 at fan-in 576, LeNetLike 2e-6),
  while the worst-case bound L K u is loose (1.9e-3 for ResNet56) and would hide real errors;
- PRep gradients are compared per layer slice as well (``assert_prep_grad_close``: each layer's
  weight and bias against its own largest reference value), so an error in a layer with small
  gradients does not hide behind the largest gradient of the whole PRep.

``fake_checked_backend`` is the ``torch.compile`` backend of the compile tests (aot_eager, plus a
check of every native op's real outputs against its fake kernel).
"""

from __future__ import annotations

import math
import os

# before anything runs (subprocesses inherit it): the layout rule, not the timing tuner
os.environ.setdefault("NETSPACE_CONV_LAYOUT", "rule")

import pytest
import torch
from hypothesis import HealthCheck, settings, strategies as st

from netspace_fast import archs
from netspace_fast.ops.pack_preps_ref import COPY, FOLD_B, FOLD_W

settings.register_profile(
    "netspace",
    deadline=None,
    max_examples=40,
    database=None,
    derandomize=True,  # reproducible in CI; HYPOTHESIS_PROFILE=thorough explores randomly
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", deadline=None, max_examples=500, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "netspace"))

# One intra-op thread by default: the CI machine has 2 cores shared with other jobs, and
# oversubscribed OpenMP threads make small convolutions 10-100x slower. The multi-threaded path of
# the native CPU kernel is exercised explicitly (test_pack.py::test_pack_multithreaded), and
# ``NETSPACE_TEST_THREADS=N`` runs the suite with N torch threads: BLAS and oneDNN split their sums
# by thread count, so a tolerance that holds only for one thread count shows up (``make test``
# runs the numerics tests a second time with 2 threads and MKL_CBWR=AVX2, see the Makefile).
torch.set_num_threads(int(os.environ.get("NETSPACE_TEST_THREADS", "1")))

HAS_CUDA = torch.cuda.is_available()
# References on the GPU are IEEE float32: cuDNN's default TF32 convolutions would put ~1e-3 of
# rounding into every "float32" oracle (tests that exercise TF32 ask for it explicitly).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


# The numerics set: the tests that ``make test`` runs a second time under another MKL code path and
# thread count (``MKL_CBWR=AVX2 NETSPACE_TEST_THREADS=2``, see the Makefile), marked ``numerics``
# below. A float32 sum rounds differently when the machine picks another order (MKL's sgemm by code
# path, alignment and thread count; oneDNN's convolutions by thread count), so a tolerance that
# encodes one machine's rounding fails there.
#
# Rule for inclusion: the test compares a float32 result that passes through such sums (a GEMM or a
# convolution: batched_conv2d / batched_linear, batched_forward, whole networks, compiled graphs)
# with another float32 computation of it (another kernel, layout, order, batch split or graph) or
# with float64 truth, at a tolerance within a few orders of magnitude of float32 rounding (bit
# equality of two graphs that sum included). Not included: bit-exact copies and elementwise math
# (pack/fold, epilogue, gather: nothing is summed), float64 comparisons (their 1e-9 .. 1e-12
# tolerances are ~1e4x above float64 rounding on any path), ATen reductions only (losses: their
# order does not depend on MKL_CBWR or, at these sizes, the thread count), and training runs,
# subprocesses and CLIs (their tolerances are far above rounding, or their subprocesses set their own
# threads). A new test that meets the rule goes here: {file: (test functions, all parametrizations)}.
NUMERICS = {
    "tests/ops/test_batched_layers.py": ("test_property_conv_matches_reference",
                                         "test_property_linear_matches_reference", "test_bounds_catch_a_wrong_kernel"),
    "tests/ops/test_compile.py": ("test_layer_op_wrappers_fullgraph", "test_backward_ops_fullgraph",
                                  "test_inductor_batched_linear"),
    "tests/engine/test_batched_forward.py": ("test_outputs_and_gradients_match_reference",
                                             "test_each_network_equals_its_module", "test_layouts_match_reference",
                                             "test_prep_grad_zero_where_no_gradient_flows",
                                             "test_callers_gradient_is_not_modified_residual_output"),
    "tests/engine/test_batched_forward_compile.py": ("test_batched_forward_compiles_fullgraph",
                                                     "test_batched_forward_compiled_inside_a_larger_graph"),
    "tests/engine/test_user_archs.py": ("test_float32_within_the_modules_own_error",),
    "tests/engine/test_layout_tuner.py": ("test_engine_results_whatever_the_tuner_picks",),
    "tests/engine/test_graphs.py": ("test_two_forwards_then_two_backwards",),
    "tests/prep/test_fold.py": ("test_fold_equivalence", "test_fold_mixed_list_grouped_in_order",
                                "test_fold_uses_running_stats_even_in_train_mode", "test_fold_custom_eps"),
    "tests/prep/test_prep_layout.py": ("test_unpack_functional_call_and_gradients",
                                       "test_unpack_batched_functional_call_vmap", "test_round_trip"),
    "tests/test_archs.py": ("test_forward_matches_reference_plain", "test_forward_matches_reference_resnet",
                            "test_forward_siren_matches_reference"),
    "tests/test_archs_original.py": ("test_resnet_original_state_dict_loads_and_packs_like_original",
                                     "test_vanillacnn_original_names"),
    "tests/test_archs_handwritten.py": ("test_batched_forward_equals_handwritten_modules",
                                        "test_batched_forward_of_folded_bn_equals_handwritten_bn_modules"),
    "tests/zoo/test_zoo_model.py": ("test_training_together_equals_training_alone", "test_forward_equals_each_instance",
                                    "test_loss_of_each_instance_is_its_own",
                                    "test_make_optimizer_is_the_protocol_optimizer",
                                    "test_preps_of_the_trained_instances"),
    "tests/space/test_space_nets.py": ("test_forward_equals_functional_reference",
                                       "test_prep_scale_scales_the_encoder_input"),
    "tests/space/test_space_step.py": ("test_step_temperature",),
    "tests/space/test_space_conv_max.py": ("test_matches_reference_float32",),
    "tests/sdf/test_fit.py": ("test_fused_and_op_agree_float32", "test_batched_fit_equals_one_at_a_time"),
}


def pytest_configure(config):
    """A test named in NUMERICS that does not exist (renamed, moved, deleted) is a usage error, so that
    it cannot silently drop out of the second pass: NUMERICS must name module-level test functions."""
    import ast

    missing = []
    for rel, names in NUMERICS.items():
        path = config.rootpath / rel
        tree = ast.parse(path.read_text(), str(path)) if path.is_file() else ast.Module(body=[], type_ignores=[])
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        missing += [f"{rel}::{name}" for name in names if name not in defined]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py: NUMERICS names tests that do not exist: {', '.join(missing)}")


def pytest_collection_modifyitems(config, items):
    """Mark the ``numerics`` tests (NUMERICS, above); skip the ``accept`` tests (training-length runs)
    unless the marker expression asks for them (``make accept``: ``-m accept``), so that a plain
    ``pytest tests/...`` never starts an hour of training; skip every test marked ``gpu`` when there is
    no CUDA device."""
    for item in items:
        rel, _, name = item.nodeid.partition("::")
        if name.split("[")[0] in NUMERICS.get(rel, ()):
            item.add_marker(pytest.mark.numerics)
    if "accept" not in (config.getoption("markexpr", "") or ""):
        later = pytest.mark.skip(reason="training-length acceptance run: `make accept` (pytest -m accept)")
        for item in items:
            if "accept" in item.keywords:
                item.add_marker(later)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# ---------------------------------------------------------------------------------------------
# the zoo

DATASETS = ("cifar10", "tinyimagenet")
CLASSIFIERS = ("lenetlike", "vanillacnn", "resnet8", "resnet32", "resnet56")
RESNETS = ("resnet8", "resnet32", "resnet56")

# seed Table I (BN form, trainable parameters)
TABLE_I = {
    ("lenetlike", "cifar10"): 62006,
    ("vanillacnn", "cifar10"): 68818,
    ("resnet8", "cifar10"): 78042,
    ("resnet32", "cifar10"): 466906,
    ("resnet56", "cifar10"): 855770,
    ("lenetlike", "tinyimagenet"): 79612,
    ("vanillacnn", "tinyimagenet"): 112856,
    ("resnet8", "tinyimagenet"): 128792,
    ("resnet32", "tinyimagenet"): 517656,
    ("resnet56", "tinyimagenet"): 906520,
    ("siren", None): 67073,
}


def all_forms():
    """(name, dataset, batchnorm) for every distinct network form: both datasets, BN and BN-free
    ResNets (LeNetLike/VanillaCNN have no BN, so one form), and the SIREN MLP."""
    forms = []
    for ds in DATASETS:
        for name in CLASSIFIERS:
            forms.append((name, ds, True))
            if name in RESNETS:
                forms.append((name, ds, False))
    forms.append(("siren", "cifar10", True))
    return forms


def form_id(form) -> str:
    name, ds, bn = form
    if name == "siren":
        return "siren"
    return f"{name}-{ds}-{'bn' if bn else 'nobn'}"


def randomize_bn(model: torch.nn.Module, generator: torch.Generator | None = None) -> torch.nn.Module:
    """Random BN statistics and affine parameters: mean ~ N(0,1), var ~ U(0.5, 2), gamma ~ U(0.5, 1.5)
    with a random sign, beta ~ N(0, 1). Returns the model (mode unchanged)."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.running_mean.copy_(torch.randn(c, generator=generator))
                mod.running_var.copy_(torch.rand(c, generator=generator) * 1.5 + 0.5)
                sign = torch.where(torch.rand(c, generator=generator) < 0.5, -1.0, 1.0)
                mod.weight.copy_((torch.rand(c, generator=generator) + 0.5) * sign)
                mod.bias.copy_(torch.randn(c, generator=generator))
    return model


def make_model(name: str, dataset: str = "cifar10", batchnorm: bool = True) -> archs.SpecNet:
    """A freshly built network with random BN statistics (if it has BN)."""
    return randomize_bn(archs.build(name, dataset, batchnorm=batchnorm))


def random_input(model: archs.SpecNet, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.spec.input_shape)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b| (b the reference)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def rel_norm(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b||_2 / ||b||_2 (b the reference): the metric for TF32 results. With TF32 products a
    LeakyReLU pre-activation within ~1e-3 of 0 can take the other sign than in the float64 oracle,
    so single gradient elements legitimately differ by 0.99 * grad_y there; a max-norm metric
    measures those few flips, the 2-norm measures the accuracy of the whole result."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.norm().item()
    return (a - b).norm().item() / (scale if scale > 0 else 1.0)


def assert_fold_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-6) -> None:
    """|a - e| <= rtol*|e| + rtol*max|e| elementwise (see the module docstring); shapes must match."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(a).all() and torch.isfinite(e).all()
    scale = e.abs().max().item() if e.numel() else 0.0
    tol = rtol * e.abs() + rtol * scale
    diff = (a - e).abs()
    bad = diff > tol
    assert not bool(bad.any()), (
        f"{int(bad.sum())} of {e.numel()} values differ beyond rtol={rtol}: max diff {diff.max().item():.3e}, "
        f"max |expected| {scale:.3e}")


def flat_params(module: torch.nn.Module) -> torch.Tensor:
    """The module's parameters in named_parameters order, flattened and concatenated."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def expected_rows(num_params: int, width: int) -> int:
    """Seed Sec. II: H = ceil(P / W) rounded up to a multiple of 4 (computed independently here)."""
    return 4 * math.ceil(math.ceil(num_params / width) / 4)


def manual_fold_flat(model: archs.SpecNet) -> torch.Tensor:
    """Independent float64 oracle of the folded (BN-free) parameter vector of ``model``, in the
    spec's packing order: W' = W * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta
    (seed Sec. VI), b = 0 for convs without bias."""
    parts = []
    for layer in model.spec.pack_layers:
        mod = model.get_submodule(layer.name)
        w = mod.weight.detach().double()
        b = mod.bias.detach().double() if mod.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if model.batchnorm and layer.bn is not None:
            bn = model.get_submodule(layer.bn)
            scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
            w = w * scale.view(-1, *([1] * (w.dim() - 1)))
            b = (b - bn.running_mean.double()) * scale + bn.bias.detach().double()
        parts += [w.reshape(-1), b.reshape(-1)]
    return torch.cat(parts)


# ---------------------------------------------------------------------------------------------
# hypothesis: random valid calls of the pack op


@st.composite
def plans(draw, min_nets=1):
    """A random valid call: (tensors, plan, eps, num_nets, rows, width).

    Segments are random copy / fold-weight / fold-bias segments with numels including 0 and 1;
    every network gets its own fresh tensors, shuffled into a random order per call (so indices are
    arbitrary), and fold-weight/fold-bias pairs may share gamma and var as the real plans do."""
    num_nets = draw(st.integers(min_nets, 3))
    # >= 1 segment, so >= 1 tensor per network: calls without tensors cannot dispatch and are
    # tested on their own (test_op.py::test_op_zero_networks, test_op_no_tensors_one_network)
    nseg = draw(st.integers(1, 6))
    specs = []  # per segment: (kind, numel, channels for FOLD_W / has_bias for FOLD_B)
    for _ in range(nseg):
        kind = draw(st.sampled_from([COPY, FOLD_W, FOLD_B]))
        if kind == COPY:
            numel = draw(st.one_of(st.sampled_from([0, 1]), st.integers(0, 40)))
            specs.append((kind, numel, None))
        elif kind == FOLD_W:
            c = draw(st.integers(1, 5))
            k = draw(st.sampled_from([0, 1, 2, 9]))
            specs.append((kind, c * k, c))
        else:
            c = draw(st.sampled_from([0, 1, 2, 5]))
            specs.append((kind, c, draw(st.booleans())))
    # local tensor list of one network: (shape, role)
    roles = []
    segs_local = []
    last_fold_w = None
    for kind, numel, extra in specs:
        if kind == COPY:
            roles.append(("any", numel))
            segs_local.append((kind, numel, [len(roles) - 1]))
        elif kind == FOLD_W:
            c = extra
            roles += [("any", numel), ("gamma", c), ("var", c)]
            n = len(roles)
            segs_local.append((kind, numel, [n - 3, n - 2, n - 1, c]))
            last_fold_w = (c, n - 2, n - 1)
        else:
            c, has_bias = numel, extra
            if last_fold_w is not None and last_fold_w[0] == c and draw(st.booleans()):
                gi, vi = last_fold_w[1], last_fold_w[2]  # shared gamma / var
            else:
                roles += [("gamma", c), ("var", c)]
                gi, vi = len(roles) - 2, len(roles) - 1
            roles += [("any", c), ("any", c)]
            bi, mi = len(roles) - 2, len(roles) - 1
            if has_bias:
                roles.append(("any", c))
                bias = len(roles) - 1
            else:
                bias = -1
            segs_local.append((kind, numel, [bias, gi, bi, mi, vi]))
    T = len(roles)
    perm = draw(st.permutations(range(T))) if T else []
    inv = {old: new for new, old in enumerate(perm)}
    plan = []
    for kind, numel, idx in segs_local:
        if kind == COPY:
            plan += [COPY, numel, inv[idx[0]], 0, 0, 0, 0]
        elif kind == FOLD_W:
            plan += [FOLD_W, numel, inv[idx[0]], inv[idx[1]], inv[idx[2]], idx[3], 0]
        else:
            b, g, be, m, v = idx
            plan += [FOLD_B, numel, inv[b] if b >= 0 else -1, inv[g], inv[be], inv[m], inv[v]]
    eps = [draw(st.sampled_from([0.0, 1e-5, 1e-3, 0.1])) if k != COPY else 0.0 for k, _, _ in specs]
    seed = draw(st.integers(0, 2 ** 16))
    g = torch.Generator().manual_seed(seed)
    tensors = []
    for _ in range(num_nets):
        local = [None] * T
        for old, (role, n) in enumerate(roles):
            if role == "var":
                t = torch.rand(n, generator=g) * 1.5 + 0.5
            elif role == "gamma":
                t = torch.randn(n, generator=g)
            else:
                t = torch.randn(n, generator=g)
            local[inv[old]] = t
        tensors += local
    width = draw(st.integers(1, 24))
    total = sum(n for _, n, _ in specs)
    rows = -(-total // width) + draw(st.integers(0, 2))
    return tensors, plan, eps, num_nets, rows, width


def pack_float64(tensors, plan, eps, num_nets, rows, width):
    """The op's math in float64 (differentiable): the per-segment values of the reference, cat, pad."""
    from netspace_fast.ops.pack_preps_ref import segment_values as _segment_values, segments as _segments

    T = len(tensors) // num_nets
    out = []
    for b in range(num_nets):
        base = tensors[b * T:(b + 1) * T]
        parts = [_segment_values(k, n, idx, e, base) for (k, n, *idx), e in zip(_segments(plan), eps)]
        flat = torch.cat(parts) if parts else tensors[0].new_zeros(0)
        out.append(torch.nn.functional.pad(flat, (0, rows * width - flat.numel())).view(rows, width))
    return torch.stack(out)


def assert_as_accurate(actual: torch.Tensor, reference: torch.Tensor, truth: torch.Tensor, rtol: float = 1e-5):
    """``actual`` (float32) is within ``rtol`` of the float64 ``truth`` in the assert_fold_close sense,
    or at worst 4x as far from it as the float32 ``reference`` is (sums that cancel lose relative
    accuracy in any float32 implementation)."""
    a, r, t = actual.detach().double(), reference.detach().double(), truth.detach().double()
    assert a.shape == r.shape == t.shape
    scale = t.abs().max().item() if t.numel() else 0.0
    err_a, err_r = (a - t).abs(), (r - t).abs()
    ok = (err_a <= rtol * (t.abs() + scale)) | (err_a <= 4 * err_r + 1e-12)
    assert bool(ok.all()), (f"{int((~ok).sum())} values: max error {err_a.max().item():.3e} vs reference's "
                            f"{err_r.max().item():.3e}, max |truth| {scale:.3e}")


def assert_matches_reference(y, y_ref, inputs, tol: float = 1e-4, prep_layout=None) -> tuple:
    """y and the gradients of every input (for one random output gradient) against the reference's,
    relative error <= tol; returns ours' gradients. With ``prep_layout`` (a ``PRepLayout``, an
    ``ArchSpec`` or (name, start, stop) slices: :func:`prep_slices`), ``inputs[0]`` is the PRep batch
    and its gradient is also checked slice by slice (:func:`assert_prep_grad_close`)."""
    assert rel_err(y, y_ref) <= tol
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, g)
    ref_grads = torch.autograd.grad(y_ref, inputs, g)
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) <= tol
    if prep_layout is not None:
        assert_prep_grad_close(grads[0], ref_grads[0], prep_layout, tol)
    return grads


# ---------------------------------------------------------------------------------------------
# PRep gradients, checked slice by slice


def prep_slices(layout_or_spec) -> list[tuple[str, int, int]]:
    """(name, start, stop) of every parameter of a PRep as flat offsets: from a ``PRepLayout``, an
    ``ArchSpec`` (its layout; flat offsets do not depend on the width), or a list of
    (name, start, stop) taken as is (one layer of the layer ops: its weight and bias slices)."""
    from netspace_fast.prep import PRepLayout

    if isinstance(layout_or_spec, archs.ArchSpec):
        layout_or_spec = PRepLayout.for_spec(layout_or_spec, 8)
    if isinstance(layout_or_spec, PRepLayout):
        return [(e.name, e.offset, e.offset + e.numel) for e in layout_or_spec.entries]
    return [(str(n), int(a), int(b)) for n, a, b in layout_or_spec]


def assert_prep_grad_close(grad: torch.Tensor, ref: torch.Tensor, layout_or_spec, tol: float = 1e-4) -> None:
    """The PRep gradient ``grad`` against the reference ``ref``, slice by slice: for every network
    and every parameter slice (each layer's weight and its bias separately) ``rel_err`` over that
    slice alone, max|a - b| / max|b|, is <= ``tol`` (a slice whose reference is all zero must be
    within ``tol`` absolutely). Values outside every slice (padding, unrelated values) must be
    within ``tol`` of the whole PRep gradient's scale.

    Why per slice: ``rel_err`` over the whole PRep divides by the largest gradient anywhere, so a
    layer whose gradients are 100x smaller than another layer's could be 10% wrong and pass.
    ``grad``/``ref``: a batch (B, H, W) or (B, P) (one PRep: pass ``prep[None]``);
    ``layout_or_spec``: see :func:`prep_slices`."""
    assert grad.shape == ref.shape, (tuple(grad.shape), tuple(ref.shape))
    assert grad.dim() in (2, 3), f"expected (B, H, W) or (B, P), got {tuple(grad.shape)}"
    B = grad.shape[0]
    a = grad.detach().double().cpu().reshape(B, -1)
    b = ref.detach().double().cpu().reshape(B, -1)
    assert torch.isfinite(a).all(), "non-finite values in the PRep gradient"
    covered = torch.zeros(a.shape[1], dtype=torch.bool)
    bad = []
    for name, start, stop in prep_slices(layout_or_spec):
        assert 0 <= start <= stop <= a.shape[1], f"slice {name} [{start}, {stop}) outside P = {a.shape[1]}"
        covered[start:stop] = True
        if start == stop:
            continue
        for n in range(B):
            err = rel_err(a[n, start:stop], b[n, start:stop])
            if err > tol:
                bad.append((err, n, name, b[n, start:stop].abs().max().item()))
    if bool((~covered).any()):
        scale = b.abs().max().item() or 1.0
        err = (a[:, ~covered] - b[:, ~covered]).abs().max().item() / scale
        if err > tol:
            bad.append((err, -1, "<outside every slice>", scale))
    bad.sort(reverse=True)
    assert not bad, (f"{len(bad)} PRep gradient slice(s) differ by more than {tol} relative to the slice's own "
                     f"max|ref|; worst: " + "; ".join(f"network {n} {name}: {err:.3e} (max|ref| {s:.3e})"
                                                      for err, n, name, s in bad[:5]))


# ---------------------------------------------------------------------------------------------
# torch.compile with the fake kernels checked


def _same_meta(real, fake, where: str) -> None:
    if isinstance(real, (tuple, list)):
        assert isinstance(fake, (tuple, list)) and len(real) == len(fake), (
            f"{where}: {len(real)} outputs, traced as {fake}")
        for i, (r, f) in enumerate(zip(real, fake)):
            _same_meta(r, f, f"{where}[{i}]")
        return
    if not isinstance(real, torch.Tensor):
        return
    assert isinstance(fake, torch.Tensor), f"{where}: a tensor, traced as {type(fake).__name__}"
    got = (tuple(real.shape), real.dtype, real.device)
    traced = (tuple(int(s) for s in fake.shape), fake.dtype, fake.device)
    assert got == traced, f"{where}: (shape, dtype, device) {got}, but the fake kernel traced {traced}"
    if real.numel() > 1:
        assert real.stride() == tuple(int(s) for s in fake.stride()), (
            f"{where}: strides {real.stride()}, but the fake kernel traced {tuple(fake.stride())}")


def _op_name(target) -> str:
    return getattr(target, "_qualified_op_name", None) or getattr(getattr(target, "_schema", None), "name", "") or ""


def fake_checked_backend(gm: torch.fx.GraphModule, example_inputs):
    """A ``torch.compile`` backend: ``aot_eager`` (AOTAutograd traces the forward and the backward
    graph with FakeTensors, through the ops' fake kernels and registered autograd, functionalizes
    them, then runs them eagerly with the real kernels) plus a check of the fake kernels. At every
    call, each graph is first run node by node on copies of the real inputs, and every call of a
    ``netspace_fast`` op (the backward ops too, in the backward graph, also where functionalization
    wrapped them in ``auto_functionalized``) must produce the shapes, dtypes and strides that its
    fake kernel gave at trace time. (``aot_eager`` alone uses the fake kernels only to trace: a graph
    traced with a wrong fake output would run, and the real kernel's values would come out anyway.)
    The names of the ops checked are appended to ``fake_checked_backend.checked``."""
    from torch._dynamo.backends.common import aot_autograd

    class _Check(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op != "call_function":
                return out
            name = _op_name(n.target)
            if name.startswith("auto_functionalized") or "auto_functionalized" in str(n.target):
                name = _op_name(n.args[0]) if n.args else _op_name(n.kwargs.get("_mutable_op"))
            if name.startswith("netspace_fast::"):
                assert "val" in n.meta, f"{name}: no traced value"
                _same_meta(out, n.meta["val"], name)
                fake_checked_backend.checked.append(name)
            return out

    def compiler(graph: torch.fx.GraphModule, inputs):
        def run(args):
            with torch.no_grad():
                _Check(graph).run(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
            return graph(*args)

        run._boxed_call = True
        return run

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)(gm, example_inputs)


fake_checked_backend.checked = []


@pytest.fixture
def fresh_dynamo():
    """A reset dynamo (no cached compilations) and an empty ``fake_checked_backend.checked``, before and after."""
    torch._dynamo.reset()
    fake_checked_backend.checked.clear()
    yield
    torch._dynamo.reset()
