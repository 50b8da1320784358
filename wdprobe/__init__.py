"""wdprobe: measure and explain word-deed inconsistency in language models."""
__version__ = "0.1.0"
