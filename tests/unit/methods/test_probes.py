"""Probe kinds are a registry: a new kind is one ProbeKind and one register_probe_kind call."""
import numpy as np
import pytest
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from wdprobe.errors import InputError
from wdprobe.figures.probes import PROBE_TITLES
from wdprobe.methods import probes


@pytest.fixture
def lda_kind():
    kind = probes.register_probe_kind(probes.ProbeKind("lda", "linear discriminant", "#2ca02c",
                                                       LinearDiscriminantAnalysis, lambda seed: LinearDiscriminantAnalysis(),
                                                       lambda est: est.coef_[0]))
    yield kind
    probes.PROBE_KINDS.pop("lda")


def test_a_new_probe_kind_is_one_registry_line(lda_kind):
    """A registered kind is made, fitted and read as a direction through the same functions the stages call."""
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 50)
    X = rng.normal(size=(100, 4))
    X[:, 2] += 4.0 * y  # the classes part along e2 only
    est = probes.fit_probe("lda", 0, X, y, groups=np.arange(100))
    d = probes.probe_direction(est)
    assert d[2] > 5 * np.abs(np.delete(d, 2)).max()
    assert (est.predict(X) == y).mean() > 0.95
    assert PROBE_TITLES["lda"] == "linear discriminant" and "lda" in list(PROBE_TITLES)  # the figures see it too
    with pytest.raises(InputError, match="registered already"):
        probes.register_probe_kind(lda_kind)


def test_unknown_probe_kinds_are_refused_by_name():
    with pytest.raises(InputError, match="unknown probe kind 'svm': choose from 'logreg', 'diffmean'"):
        probes.make_probe("svm", 0)
    with pytest.raises(InputError, match="no registered probe kind makes a"):
        probes.probe_direction(object())


def test_the_built_in_kinds_read_their_directions():
    rng = np.random.default_rng(1)
    y = np.array([0, 1] * 40)
    X = rng.normal(size=(80, 3))
    X[:, 0] += 3.0 * y
    for kind in ("logreg", "diffmean"):
        d = probes.probe_direction(probes.fit_probe(kind, 0, X, y, groups=np.repeat(np.arange(40), 2)))
        assert d[0] > 3 * np.abs(d[1:]).max()
