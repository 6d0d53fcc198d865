"""``--arch package.module:factory`` (archs.resolve) refuses a factory that cannot give a network
with one ``arch:`` line naming the given string, what is expected and what happened: a malformed
string, a module that does not import, a missing or non-callable attribute, a factory that needs an
argument, raises, or returns something other than an ``nn.Module``. Refused when the string is
resolved, before any work; from the command line it is one ``error:`` line and nothing is written."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from netspace_fast import archs
from netspace_fast.cli import cli

MOD = "user_factories_for_resolve"

SOURCE = '''
from torch import nn

calls = []
NOT_CALLABLE = 3

def good():
    calls.append("good")
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 15 * 15, 10))

def raises():
    calls.append("raises")
    raise RuntimeError("no weights here\\nsecond line")

def raises_empty():
    raise KeyError()

def returns_dict():
    return {"conv": nn.Conv2d(3, 4, 3)}

def returns_none():
    pass

def needs_width(width):
    calls.append("needs_width")
    return nn.Linear(width, 10)

def needs_dataset_and_width(dataset, width):
    calls.append("needs_dataset_and_width")
    return nn.Linear(width, 10)

def per_dataset(dataset):
    calls.append(("per_dataset", dataset))
    if dataset != "digits":
        raise ValueError(f"only digits, not {dataset}")
    return good()

def resnet8():
    return good()

class Holder:
    @staticmethod
    def make():
        calls.append("Holder.make")
        return good()
'''

EXPECTED = "expected package.module:factory, a callable taking no argument or only dataset= and returning an nn.Module"


@pytest.fixture
def mod(tmp_path, monkeypatch):
    (tmp_path / f"{MOD}.py").write_text(SOURCE)
    (tmp_path / "broken_user_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(archs._REGISTRY)
    import importlib

    m = importlib.import_module(MOD)
    yield m
    for name in set(archs._REGISTRY) - before:
        archs._REGISTRY.pop(name)
    archs._spec_cached.cache_clear()
    sys.modules.pop(MOD, None)
    sys.modules.pop("broken_user_module", None)


def refused(arch: str) -> str:
    """The one-line ValueError of resolve(arch), nothing registered."""
    before = dict(archs._REGISTRY)
    with pytest.raises(ValueError) as e:
        archs.resolve(arch)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("arch: ") and repr(arch) in msg, msg
    assert archs._REGISTRY == before
    return msg


@pytest.mark.parametrize("arch, what", [
    (f"{MOD}:raises", "; the factory raised RuntimeError: no weights here second line"),
    (f"{MOD}:raises_empty", "; the factory raised KeyError"),
    (f"{MOD}:returns_dict", "; the factory returned a dict"),
    (f"{MOD}:returns_none", "; the factory returned a NoneType"),
    (f"{MOD}:needs_width", "; it cannot be called as factory(): missing a required argument: 'width'"),
    (f"{MOD}:needs_dataset_and_width",
     "; it cannot be called as factory(dataset=...): missing a required argument: 'width'"),
    (f"{MOD}:NOT_CALLABLE", "; 'NOT_CALLABLE' is not callable: its type is int"),
    (f"{MOD}:nope", f"; '{MOD}' has no attribute 'nope'"),
    (f"{MOD}:Holder.nope", f"; '{MOD}' has no attribute 'Holder.nope'"),
    (f"{MOD}:resnet8", "; the factory's name 'resnet8' is a built-in architecture's; rename the factory"),
    (":good", "; the module name is empty"),
    (f"{MOD}:", "; the factory name after ':' is empty"),
    (f"{MOD}: ", "; the factory name after ':' is empty"),
    (f"{MOD}:good:more", "; 'good:more' is not a name of an attribute of the module"),
    (f"{MOD}:Holder..make", "; 'Holder..make' is not a name of an attribute of the module"),
    (f".{MOD}:good", f"; '.{MOD}' is not an absolute module name"),
    (f"{MOD}.:good", f"; '{MOD}.' is not an absolute module name"),
])
def test_a_factory_that_cannot_give_a_network_is_one_line(mod, arch, what):
    msg = refused(arch)
    assert msg == f"arch: {arch!r}: {EXPECTED}{what}"


def test_a_factory_needing_an_argument_is_refused_without_calling_it(mod):
    refused(f"{MOD}:needs_width")
    refused(f"{MOD}:needs_dataset_and_width")
    assert mod.calls == []


def test_a_module_that_does_not_import_is_one_line(mod):
    msg = refused("no_such_pkg_for_tests.mod:f")
    assert msg.startswith("arch: cannot import 'no_such_pkg_for_tests.mod' for 'no_such_pkg_for_tests.mod:f' (")
    assert "PYTHONPATH" in msg
    msg = refused("broken_user_module:f")
    assert msg == ("arch: cannot import 'broken_user_module' for 'broken_user_module:f' (importing it raised "
                   "ZeroDivisionError: division by zero)")


def test_a_good_factory_is_registered_and_its_trial_call_leaves_the_random_state(mod):
    state = torch.get_rng_state()
    assert archs.resolve(f"{MOD}:good") == "good"
    assert mod.calls == ["good"]  # tried once, here
    assert torch.equal(torch.get_rng_state(), state)
    assert archs.registered("good").path == f"{MOD}:good"
    assert archs.resolve(f"{MOD}:good") == "good" and mod.calls == ["good"]  # known: not tried again
    assert archs.resolve(f"{MOD}:Holder.make") == "make"
    assert archs.spec("good", "digits").name == "good"


def test_a_factory_that_needs_the_dataset_is_called_with_it_at_spec(mod):
    """Without a dataset resolve cannot call it; spec calls it, and its failure is the same kind of line."""
    assert archs.resolve(f"{MOD}:per_dataset") == "per_dataset"
    assert mod.calls == []
    assert archs.spec("per_dataset", "digits").name == "per_dataset"
    with pytest.raises(ValueError) as e:
        archs.spec("per_dataset", "cifar10")
    assert str(e.value) == (f"arch: '{MOD}:per_dataset': {EXPECTED}; the factory raised ValueError: only digits, "
                            f"not cifar10")


def test_a_registered_factory_that_fails_later_is_one_line_at_spec_and_build(mod):
    """A factory registered by name (no trial call) that returns something else or raises: spec and
    build say so in one ``arch:`` line naming the architecture."""
    archs.register("dicty", mod.returns_dict)
    with pytest.raises(ValueError) as e:
        archs.spec("dicty", "digits")
    assert str(e.value) == f"arch: '{MOD}:returns_dict': {EXPECTED}; the factory returned a dict"
    assert archs.resolve(f"{MOD}:good") == "good"
    archs.spec("good", "digits")
    object.__setattr__(archs._REGISTRY["good"], "factory", mod.raises)  # (frozen dataclass) now it fails
    with pytest.raises(ValueError) as e:
        archs.build("good", "digits")
    assert str(e.value) == (f"arch: '{MOD}:good': {EXPECTED}; the factory raised RuntimeError: no weights here "
                            f"second line")


# ---------------------------------------------------------------------------------------------
# through the command line: one error line, nothing written


def _one_error_line(r, arch: str) -> str:
    assert r.exit_code not in (0, None), r.output
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # no traceback
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: arch: ") and repr(arch) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("factory", ["raises", "returns_dict", "needs_width", "NOT_CALLABLE", ""])
def test_zoo_train_refuses_the_factory_before_any_work(mod, tmp_path, factory):
    arch = f"{MOD}:{factory}"
    out = tmp_path / "zoo"
    r = CliRunner().invoke(cli, ["zoo", "train", "--preset", "digits-single", "--out", str(out), "--arch", arch,
                                 "--root", str(tmp_path / "data"), "--no-progress"])
    line = _one_error_line(r, arch)
    assert EXPECTED in line
    assert not out.exists() and not (tmp_path / "data").exists()
    assert mod.calls in ([], ["raises"])


def test_empty_module_name_from_the_command_line(mod, tmp_path):
    out = tmp_path / "zoo"
    r = CliRunner().invoke(cli, ["zoo", "train", "--preset", "digits-single", "--out", str(out), "--arch", ":good"])
    assert _one_error_line(r, ":good").endswith("; the module name is empty")
    assert not out.exists()


def test_optimize_refuses_the_factory_before_reading_the_run(mod, tmp_path):
    arch = f"{MOD}:returns_dict"
    out = tmp_path / "opt"
    r = CliRunner().invoke(cli, ["optimize", str(tmp_path / "no-run"), "--random", "--arch", arch, "--out", str(out),
                                 "--no-progress"])
    assert _one_error_line(r, arch).endswith("; the factory returned a dict")
    assert not out.exists()
