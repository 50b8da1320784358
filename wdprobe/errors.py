"""One error hierarchy: everything wdprobe raises on purpose is a :class:`WdprobeError`.

The command line maps every ``WdprobeError`` to exit code 2 and prints its message (which names the
culprit: file, line, item id, hook, stage or model); any other exception is a bug and keeps its
traceback. Each class also derives from the built-in exception it refines (``ValueError`` for bad input,
``FileNotFoundError`` for a missing file, ``RuntimeError`` for a run that cannot go on), so code that
catches the built-in keeps working.
"""
from __future__ import annotations

__all__ = [
    "WdprobeError", "InputError", "MissingInputError", "DataFormatError", "WDCTFormatError", "PCTFormatError",
    "AlignmentDataError", "ConfigError", "SweepConfigError", "ShardSpecError", "CaptureSpecError", "InterventionError",
    "TokenAlignmentError", "DataUnavailableError", "ModelLoadError", "RunError", "RunMismatchError", "MergeError",
    "StageNotFinishedError", "RunLockedError", "IntegrityError", "UnsafePathError", "TrainingError",
]


class WdprobeError(Exception):
    """Base of every error wdprobe raises on purpose; the message says what to do."""


# ---- input: files, flags, settings, arrays ----------------------------------------------------------------

class InputError(WdprobeError, ValueError):
    """An argument, setting or array that cannot be used as given."""


class MissingInputError(InputError, FileNotFoundError):
    """A file or directory the user named (or a stage needs) does not exist."""


class DataFormatError(InputError):
    """A data file that does not parse; the message names the file, line and item."""


class WDCTFormatError(DataFormatError):
    """A WDCT file (or a user's own items) that does not parse."""


class PCTFormatError(DataFormatError):
    """Political Compass material that does not parse."""


class AlignmentDataError(DataFormatError):
    """Items that cannot be split or targeted for an alignment run."""


class ConfigError(InputError):
    """A study configuration (TOML file or flags) with an unknown key or a bad value."""


class SweepConfigError(ConfigError):
    """A sweep configuration that cannot be expanded into tasks."""


class ShardSpecError(InputError):
    """A ``--shard`` value that is not ``i/n`` with 0 <= i < n."""


class PromptTooLongError(InputError):
    """A prompt longer than the model's context (``prompt`` holds it, so a caller can name the item it belongs to)."""

    def __init__(self, message: str, prompt: str = "") -> None:
        super().__init__(message)
        self.prompt = prompt


class CaptureSpecError(InputError):
    """Hooks, layers or positions to capture that the model or prompt does not have."""


class InterventionError(InputError):
    """A patch or steering vector that does not fit the model or the prompts."""


class TokenAlignmentError(InterventionError):
    """Clean and counterfactual prompts whose tokens do not line up position by position."""


# ---- resources -------------------------------------------------------------------------------------------

class DataUnavailableError(WdprobeError, RuntimeError):
    """Public data that is neither given nor downloadable here."""


class ModelLoadError(WdprobeError, RuntimeError):
    """A model id or directory that does not load."""


class TrainingError(WdprobeError, RuntimeError):
    """A fine-tuning setting that leaves nothing to train, or a checkpoint that is missing."""


class NonFiniteError(WdprobeError, ArithmeticError):
    """A model output that is not a number (NaN or infinite log-probabilities, e.g. a float16 overflow): nothing
    computed from it is reported; the message names the item and the prompt."""


# ---- run directories ---------------------------------------------------------------------------------------

class RunError(WdprobeError, RuntimeError):
    """A run directory that cannot be used as asked."""


class RunMismatchError(RunError):
    """The run directory holds results made with other settings (or another model) than asked for now."""


class MergeError(RunError):
    """Shards that cannot be merged; the message names the shard and what is wrong."""


class StageNotFinishedError(RunError, FileNotFoundError):
    """A stage's results are missing or unfinished, so a later stage or reader cannot use them."""


class RunLockedError(RunError):
    """Another process is writing into the same run directory."""


class IntegrityError(RunError):
    """A saved file whose content no longer matches the checksum written with it."""


class UnsafePathError(RunError):
    """A file name derived from data that would land outside its run directory."""
