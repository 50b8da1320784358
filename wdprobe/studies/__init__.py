"""Studies beyond the WDCT pipeline: the Political Compass under personas (``pct``) and alignment
fine-tuning (``align``), each with its stages and report."""
