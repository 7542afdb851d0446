"""The tracer's feature probe is frozen, its plan is a pure function of it, and what only a
load can learn (a kprobe the kernel refuses) is the loaded program's: doctor, `rdmapin trace
--explain` and the tracer see one plan."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from needs import need_host_tracing

from rdmapin import doctor
from rdmapin.trace import features, loader


def test_probe_result_is_frozen():
    feat = features.probe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        feat.headers = "running"  # type: ignore[misc]
    with pytest.raises(TypeError):
        feat.missing["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        feat.defines["X"] = None  # type: ignore[index]


def test_plan_is_pure_and_leaves_the_features_alone():
    feat = features.probe()
    before = (dict(feat.available), dict(feat.missing), dict(feat.defines))
    a, b = loader.plan(feat), loader.plan(feat)
    assert a == b and a.to_dict() == b.to_dict()
    assert (dict(feat.available), dict(feat.missing), dict(feat.defines)) == before
    no_fexit = loader.plan(feat, fexit=False)
    assert not no_fexit.fexit
    assert not set(features.FOLIO_PROBES.values()) & set(no_fexit.defines)


def test_doctor_and_explain_show_the_same_plan():
    want = loader.plan(features.probe()).to_dict()
    [check] = [c for c in doctor.run_checks(["tracing"]) if c.name == "trace plan"]
    assert check.data["plan"] == want and check.data["tried"] is False
    assert check.status is doctor.Status.WARN if want["blocked"] else "not tried" in check.value
    proc = subprocess.run([sys.executable, "-m", "rdmapin", "trace", "--explain", "-j"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0 and proc.stderr == ""
    assert json.loads(proc.stdout) == json.loads(json.dumps(want))
    text = subprocess.run([sys.executable, "-m", "rdmapin", "trace", "--explain"],
                          capture_output=True, text=True, timeout=120, check=False).stdout
    assert text.splitlines() == loader.plan(features.probe()).lines()


@pytest.mark.host_kernel  # a refusal needs a kernel without kprobes
def test_a_refused_kprobe_is_the_programs_not_written_back_into_the_features():
    """This host has no kprobes: a plan that asks for ib_umem_get's kprobe (pins.c compiled
    with a stand-in FOLL_LONGTERM) loads its tracepoints and records the refusal."""
    need_host_tracing()
    base = features.probe()
    feat = base.but(defines={"HAVE_UMEM": None, "RP_FOLL_LONGTERM": "0x10000"},
                    available={"umem": "ib_umem_get"})
    pl = loader.plan(feat)
    assert pl.has("umem") and "pins.c" in pl.files
    prog = loader.load(pl)
    try:
        assert "umem" in prog.refused and "refused the kprobe" in prog.refused["umem"]
        assert not prog.has("umem") and prog.has("umem") is False
        assert "umem" in (prog.unavailable_line() or "")
        assert pl.has("umem") and feat.has("umem") and feat.missing == base.missing
    finally:
        prog.close()
