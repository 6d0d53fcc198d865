"""Loading of the native extension (netspace_fast/_native.py): when netspace_fast._C does not load
(e.g. built against another torch), the fallback to the pure-PyTorch references is never silent.

The failure is simulated in a fresh interpreter (an import hook that refuses netspace_fast._C), so
the extension this session loaded is left alone.
"""

from __future__ import annotations

import json
import subprocess
import sys

import netspace_fast as nf
from netspace_fast import archs

_BROKEN = """
import importlib, importlib.abc, json, sys, warnings

REASON = "/site-packages/netspace_fast/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"


class RefuseExtension(importlib.abc.MetaPathFinder):  # what a torch upgrade does to an old build
    def find_spec(self, name, path, target=None):
        if name == "netspace_fast._C":
            raise ImportError(REASON)
        return None


sys.meta_path.insert(0, RefuseExtension())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import netspace_fast as nf
    from netspace_fast import _native, archs

    report = nf.backends()
    preps = nf.pack_preps([archs.build("lenetlike") for _ in range(2)], width=64)  # the reference still works
    nf.backends()
    importlib.reload(_native)  # still once per process
mine = [[w.category.__name__, str(w.message)] for w in caught if "netspace_fast._C" in str(w.message)]
print(json.dumps({"warnings": mine, "report": report, "shape": list(preps.shape)}))
"""

_HEALTHY = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import netspace_fast as nf
print(json.dumps([str(w.message) for w in caught if "netspace_fast._C" in str(w.message)]))
"""


def _run(code: str):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_failed_native_import_warns_once_with_the_reason():
    got = _run(_BROKEN)
    reason = "undefined symbol: _ZN3c1017RegisterOperatorsD1Ev"
    assert len(got["warnings"]) == 1, got["warnings"]
    ((category, msg),) = got["warnings"]
    assert category == "NativeFallbackWarning"
    assert "netspace_fast._C" in msg and reason in msg and "ImportError" in msg
    assert "pure-PyTorch reference" in msg and "\n" not in msg
    report = got["report"]
    assert reason in report["native_error"] and report["native_error"].startswith("ImportError: ")
    assert not report["cpu"]["compiled"] and not report["cpu"]["usable"]
    assert not report["cuda"]["compiled"] and not report["cuda"]["usable"]
    assert got["shape"] == [2, *nf.prep_shape(archs.spec("lenetlike").num_params, 64)]


def test_loaded_native_extension_does_not_warn():
    if not nf.backends()["cpu"]["compiled"]:  # this session's own build did not load: nothing to compare
        assert "native_error" in nf.backends()
        return
    assert _run(_HEALTHY) == []
    assert "native_error" not in nf.backends()
