"""Stages over a WDCT run directory: score, capture, probes, lens, patching, steering. Each is a public
function a script calls; ``wdprobe.pipeline.registry`` declares them for the pipeline."""
