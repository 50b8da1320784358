import os
import sys
from pathlib import Path

# Static PNG export starts a headless browser (~4 s a figure); unit tests check the HTML and tables instead,
# and test_study checks PNG export once with it switched back on.
os.environ.setdefault("WDPROBE_PNG", "0")

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import build_tiny_model_dir, write_wdct_csv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WDPROBE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED / "wdct" / "WDCT.csv").is_file():
        pytest.skip(f"reference data not found under {SHARED} (set WDPROBE_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def example_items() -> Path:
    """The 20 word/deed items the project ships (data/examples): real-model tests run on them and never skip."""
    path = ROOT / "data" / "examples" / "say-do-20.jsonl"
    assert path.is_file(), f"{path}: the shipped example items are missing"
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-gemma"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    from wdprobe.core.model import load_model

    return load_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_lm_wide(tmp_path_factory):
    """The tiny model with a sliding window wide enough for whole WDCT prompts (so they can be packed)."""
    from wdprobe.core.model import load_model

    return load_model(str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-wide"), sliding_window=512)))


@pytest.fixture()
def wdct_csv(tmp_path) -> Path:
    return write_wdct_csv(tmp_path / "wdct.csv", trailing="  \n")


@pytest.fixture(scope="session")
def pct_dir(tmp_path_factory) -> Path:
    """A small PCT directory in the upstream layout (tests/tiny.py)."""
    from tiny import write_pct_dir

    return write_pct_dir(tmp_path_factory.mktemp("pct"))


@pytest.fixture(scope="session")
def pct_lm(tmp_path_factory):
    """A tiny random Gemma-3 whose vocabulary covers the PCT material."""
    from tiny import build_tiny_model_dir, pct_vocabulary_text

    from wdprobe.core.model import load_model

    return load_model(str(build_tiny_model_dir(tmp_path_factory.mktemp("tiny-pct"), extra_text=pct_vocabulary_text())))
