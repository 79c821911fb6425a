"""ingest stage: the run over many model files: the plan (what to read), the
per-file map, the worker pools, memory settings and the driver that commits batches."""
