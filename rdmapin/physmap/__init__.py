"""Physical memory by pageblock: what is free, movable, unmovable or pinned by an MR.

``zones`` reads the zone layout and free lists; the map itself is built in ``classify``
from /proc/kpageflags over every PFN, with pinned PFNs from the MR inventory (``pins``).
"""
