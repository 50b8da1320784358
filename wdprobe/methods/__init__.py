"""Method kernels: arrays and models in, arrays out, no files. Capture, probes, logit lens,
interventions (patching, steering) at the level of one batch of prompts."""
