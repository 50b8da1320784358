"""The pipeline: the stage registry, study configuration, sequencing (``run_study``, ``run_pct``),
merging shards and sweeps. Only the CLI sits above it."""
