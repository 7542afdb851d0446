"""The wheel `make dist` built, installed into a new venv outside the checkout with
`pip install --no-deps` (the guest has no network: numpy and cffi come from Debian's
packages through --system-site-packages, as pyverbs and bcc do), works from a directory that
is not the checkout: doctor, the tracer attributing a moved region's failures, the page
report, and a registration from Python."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.rdma, pytest.mark.kprobes, pytest.mark.vm]

TOP = Path(__file__).resolve().parents[2]
NPAGES = 16

# Registers NPAGES pages on node 0, says what it holds, moves them to node 1 when told.
WORKLOAD = textwrap.dedent("""
    import json, mmap, sys
    import numpy as np
    import rdmapin
    from rdmapin import mm
    from rdmapin.kernel import pagemap
    n = int(sys.argv[1])
    buf = mmap.mmap(-1, n * mm.PAGE_SIZE)
    arr = np.frombuffer(buf, dtype=np.uint8)
    mm.mbind(arr.ctypes.data, len(arr), 0)
    arr[::mm.PAGE_SIZE] = 1
    with rdmapin.open_device("rxe0") as dev, dev.alloc_pd() as pd, pd.register(arr) as mr:
        pfns = pagemap.pfns(pagemap.read("self", arr.ctypes.data, len(arr))).tolist()
        print(json.dumps({"lkey": mr.lkey, "addr": mr.addr, "length": mr.length,
                          "pfns": pfns, "module": rdmapin.__file__}), flush=True)
        sys.stdin.readline()
        mm.move_pages(mm.page_addrs(arr.ctypes.data, len(arr)), 1)
        print("moved", flush=True)
        sys.stdin.readline()
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> dict:
    wheels = sorted((TOP / "dist").glob("rdmapin-*.whl"))
    assert wheels, f"no wheel in {TOP / 'dist'} (make dist builds it; make test does first)"
    root = tmp_path_factory.mktemp("wheel-venv")
    venv = root / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index",
                    "--disable-pip-version-check", str(wheels[-1])], check=True)
    work = root / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    return {"venv": venv, "cwd": work, "env": env}


def _run(v: dict, *argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=v["cwd"], env=v["env"], capture_output=True,
                          text=True, check=False, **kw)


def test_installed_package_is_the_wheels_not_the_checkouts(venv):
    proc = _run(venv, "python", "-c", "import rdmapin, rdmapin.sources as s; "
                "print(rdmapin.__file__); print(s.bpf_dir()); print(s.floor_source())")
    assert proc.returncode == 0, proc.stderr
    module, bpf, floor = proc.stdout.splitlines()
    site = str(venv["venv"] / "lib")
    assert module.startswith(site) and bpf.startswith(site) and floor.startswith(site)
    assert not module.startswith(str(TOP))
    assert (Path(bpf) / "rdmapin_events.h").is_file() and not Path(bpf).is_symlink()
    assert Path(floor).is_file()


def test_doctor_json_from_the_wheel(venv):
    proc = _run(venv, "rdmapin", "doctor", "-j")
    assert proc.stderr == ""
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    names = {r["check"] for r in rows}
    assert {"rdma", "tracefs", "kprobes", "bcc", "headers"} <= names
    assert proc.returncode == (1 if any(r["status"] == "FAIL" for r in rows) else 0)
    assert {r["check"]: r["status"] for r in rows}["rdma"] == "PASS"


def test_trace_pages_and_registration_from_the_wheel(venv):
    work = subprocess.Popen(["python", "-c", WORKLOAD, str(NPAGES)], cwd=venv["cwd"],
                            env=venv["env"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tracer = None
    try:
        held = json.loads(work.stdout.readline() or "null") or pytest.fail(work.stderr.read())
        assert held["module"].startswith(str(venv["venv"]))
        # 6.1's `rdma resource` gives no MR address, so the range is named, not the lkey.
        pages = _run(venv, "rdmapin", "pages", "--pid", str(work.pid), "--addr",
                     hex(held["addr"]), "--len", str(held["length"]), "-j")
        assert pages.returncode == 0, pages.stderr
        report = json.loads(pages.stdout.splitlines()[0])
        # mmap(-1, n) is a shared anonymous mapping: shmem pages.
        assert report["present"] == NPAGES and report["backing_pages"]["shmem"] == NPAGES

        tracer = subprocess.Popen(["rdmapin", "trace", "-j", "-d", "5", "-p", str(work.pid)],
                                  cwd=venv["cwd"], env=venv["env"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        seen = []
        for line in tracer.stderr:  # compiling under TCG takes minutes
            seen.append(line)
            if "Hit Ctrl-C to end." in line:
                break
        assert seen and "Hit Ctrl-C to end." in seen[-1], "".join(seen)
        work.stdin.write("go\n")
        work.stdin.flush()
        assert work.stdout.readline().strip() == "moved"
        out, err = tracer.communicate(timeout=600)
        assert tracer.returncode == 0, err
        assert "Traceback" not in err
    finally:
        for p in (tracer, work):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    lines = [json.loads(x) for x in out.splitlines()]
    fails = [x for x in lines if x.get("event") == "folio_fail"]
    assert {x["pfn"] for x in fails} == set(held["pfns"])
    assert {(o["pid"], o["lkey"]) for x in fails for o in x["owners"]} == {
        (work.pid, held["lkey"])}
    assert lines[-1]["summary"] == "summary"


def test_stale_extension_is_refused_at_import_with_the_rebuild_hint(venv, tmp_path):
    """A package whose Python side expects another shim API than its built extension (a
    checkout pulled without rebuilding) says so at import, and how to rebuild."""
    import shutil

    site = next((venv["venv"] / "lib").glob("python3*/site-packages"))
    stale = tmp_path / "rdmapin"
    shutil.copytree(site / "rdmapin", stale)
    lib = stale / "_lib.py"
    built = re.search(r"^API_VERSION = (\d+)$", lib.read_text(), re.M)
    assert built, "no API_VERSION in rdmapin/_lib.py"
    lib.write_text(lib.read_text().replace(built.group(0), "API_VERSION = 999", 1))
    # The wheel venv's interpreter: the checkout's has an editable finder ahead of PYTHONPATH.
    python = str(venv["venv"] / "bin" / "python")
    proc = subprocess.run([python, "-c", "import rdmapin"], cwd=tmp_path,
                          env=dict(venv["env"], PYTHONPATH=str(tmp_path)),
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert f"built for shim API {built.group(1)}, this rdmapin needs 999" in proc.stderr
    assert "rebuild it: pip install" in proc.stderr
