"""rdmapin.trace: bcc probes that catch compaction and migration failures on pinned pages
and name the MR and process that pinned them.

``Tracer`` is the entry point; ``features.probe()`` says what this kernel allows.
"""

from rdmapin.trace.attribution import Owner
from rdmapin.trace.events import Event, Kind
from rdmapin.trace.tracer import Tracer

__all__ = ["Event", "Kind", "Owner", "Tracer"]
