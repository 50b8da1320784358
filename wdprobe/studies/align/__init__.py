"""Alignment runs: train one form towards flipped answers, evaluate both forms per epoch, report."""
