"""A process that owns an RDMA WRITE target on rxe2 until it is killed (the peer-SIGKILL test).

    python tests/vm/pair_target.py NBYTES
prints its Endpoint (one JSON line: QP, GID, the MR "buf"), reads the peer's from stdin,
connects its RC QP, prints "ready" and sleeps. Its MR and QP live until the process dies, so
a SIGKILL leaves their cleanup to the kernel (ib_uverbs' release of the file).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pair_util import DEVICE, RcQp
from pyverbs.device import Context
from pyverbs.pd import PD

import rdmapin
from rdmapin import Access
from rdmapin.rendezvous import Endpoint


def main() -> None:
    n = int(sys.argv[1])
    buf = rdmapin.empty(n, "uint8")
    ctx = Context(name=DEVICE)
    vpd = PD(ctx)
    pd = rdmapin.ProtectionDomain.from_pyverbs(vpd)
    mr = pd.register(buf, Access.LOCAL_WRITE | Access.REMOTE_WRITE)
    qp = RcQp(ctx, vpd)
    print(json.dumps(qp.endpoint(buf=mr).to_json()), flush=True)
    qp.connect(Endpoint.from_json(json.loads(sys.stdin.readline())))
    print("ready", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
