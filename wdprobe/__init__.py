"""wdprobe: measure and explain word-deed inconsistency in language models."""
from wdprobe.version import __version__ as __version__
