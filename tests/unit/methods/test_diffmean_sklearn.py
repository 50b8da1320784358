"""DiffMeanProbe is a scikit-learn estimator: it passes the library's own estimator checks."""
from sklearn.utils.estimator_checks import parametrize_with_checks

from wdprobe.methods.probes import DiffMeanProbe


@parametrize_with_checks([DiffMeanProbe()])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
