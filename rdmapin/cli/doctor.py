"""`rdmapin doctor`: which RDMA/memory problems bite on this host, each with its fix."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from rdmapin import doctor

EXAMPLES = """examples:
  rdmapin doctor              # one line per check, fixes for WARN and FAIL
  rdmapin doctor -j           # JSON lines: check, status, value, fix, data
  rdmapin doctor -c memlock -c frag   # only these groups
  ci/vm/run -- rdmapin doctor # the same inside the soft-RoCE test VM

exit status: 0 when nothing FAILs, 1 otherwise
"""

WIDTH = 79
NAME_W = 15
INDENT = " " * (4 + 2)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this host for RDMA pinning problems",
                       description=__doc__, epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-j", "--json", action="store_true", help="JSON lines with stable keys")
    p.add_argument("--try-load", action="store_true",
                   help="compile and attach the tracer's plan to see what the kernel refuses "
                        "(tens of seconds under TCG); otherwise the plan says 'not tried'")
    p.add_argument("-c", "--check", action="append", choices=doctor.groups(),
                   metavar="GROUP", help=f"run only GROUP ({', '.join(doctor.groups())}); "
                                         "repeatable")
    p.set_defaults(func=run)


def render(check: doctor.Check) -> list[str]:
    """Aligned lines under 80 columns: status, name, value; then the fix, wrapped."""
    head = f"{check.status.name:<4}  {check.name:<{NAME_W}} "
    wrap = {"break_on_hyphens": False, "break_long_words": False}  # keep paths whole
    lines = textwrap.wrap(check.value, WIDTH, initial_indent=head,
                          subsequent_indent=" " * len(head), **wrap) or [head]
    if check.fix:
        lines += textwrap.wrap(check.fix, WIDTH, initial_indent=INDENT + "fix: ",
                               subsequent_indent=INDENT + "     ", **wrap)
    return lines


def run(args: argparse.Namespace) -> int:
    checks = doctor.run_checks(args.check, try_load=args.try_load)
    out = sys.stdout
    if args.json:
        for c in checks:
            out.write(json.dumps(c.to_dict(), sort_keys=True) + "\n")
    else:
        for c in checks:
            out.write("\n".join(render(c)) + "\n")
        counts = {s: sum(c.status == s for c in checks) for s in doctor.Status}
        out.write(f"{counts[doctor.Status.FAIL]} FAIL, {counts[doctor.Status.WARN]} WARN, "
                  f"{counts[doctor.Status.PASS]} PASS\n")
    return 1 if doctor.worst(checks) is doctor.Status.FAIL else 0
