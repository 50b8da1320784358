import json

from tiny import write_two_option_copies

from wdprobe.cli import main
from wdprobe.stages.score import score_wdct


def test_score_capture_probe_pipeline_writes_results_and_plots(tiny_lm, tmp_path):
    data = write_two_option_copies(tmp_path / "w.csv")
    run = tmp_path / "run"
    score_wdct(run, data=data, lm=tiny_lm, progress=False)
    # through the CLI: the model is found again from the run's manifest
    assert main(["capture", "--run", str(run), "--layers", "0-1", "--quiet"]) == 0
    assert main(["probe", "--run", str(run), "--folds", "2", "--kinds", "diffmean", "--quiet"]) == 0
    out = run / "probes"
    html = (out / "resid_post-last.html").read_text()
    assert html.count("plotly") > 3 and "Stance probes by layer" in html
    head = json.loads((out / "resid_post-last-headline.json").read_text())
    assert 0.0 <= head["cs"] <= 1.0 and set(head["diffmean"]) >= {"word->word", "ic_max", "letter_best"}
    import pandas as pd

    frame = pd.read_csv(out / "resid_post-last.csv")
    assert set(frame["layer"]) == {0, 1}
    assert {"word->word", "deed->deed", "word->deed", "deed->word", "ic", "random", "letter", "cosine"} <= set(frame["metric"])
    # EthV + Theory items (2 of 4 templates x 6 copies = 12) get correctness probes
    assert (out / "resid_post-last-correctness.csv").is_file() and "correctness_diffmean" in head
    assert "Correctness probes" in html
