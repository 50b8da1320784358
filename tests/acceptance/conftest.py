"""Acceptance tests: the real embedded Gemma-3-270M on a few items (slow; the first run converts the GGUF).

One shared model for every read-only test (``gemma``); tests that train load their own (``fresh_gemma``)
so that no test can see another's weights, whatever the order."""
import pytest

from wdprobe.core.model import LoadedModel, load_model


@pytest.fixture(scope="session")
def gemma() -> LoadedModel:
    return load_model("gemma-3-270m")


@pytest.fixture()
def fresh_gemma() -> LoadedModel:
    return load_model("gemma-3-270m")
