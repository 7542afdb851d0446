"""`rdmapin exporter`: the facts rdmapin reads, as gauges and counters for a fleet's
Prometheus (or node_exporter's textfile collector), refreshed by shared scans on intervals
of their own rather than per scrape.

``scan`` reads the kernel (processes, zones, doctor's checks), ``families`` is the table of
every metric family and builds the exposition from the latest scans and the tracer,
``service`` runs the scans, the tracer and the publishing, ``http`` serves the exposition,
``textfile`` writes it atomically.
"""
