"""Behaviour: answer letters and their distributions, CS/PCS metrics, scoring of upstream result files."""
