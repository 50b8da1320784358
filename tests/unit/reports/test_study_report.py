from wdprobe.cli import main
from wdprobe.stages.score import score_wdct


def test_report_writes_readme_with_run_numbers(tiny_lm, wdct_csv, tmp_path):
    res = score_wdct(tmp_path / "run", data=wdct_csv, lm=tiny_lm, progress=False)
    notes = tmp_path / "notes.md"
    notes.write_text("The tiny model is random.")
    assert main(["report", str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--notes", str(notes)]) == 0
    text = (tmp_path / "rep" / "README.md").read_text()
    m = res.metrics
    assert f"| **micro** (mean over items; upstream's \"Avg\") | 6 | {m['cs_micro']:.3f} | {m['pcs_micro']:.3f} |" in text
    assert "| Llama-3-8B | 0.61 | 0.97 |" in text
    assert "The tiny model is random." in text
    for name in ("metrics.json", "items.csv", "manifest.json"):
        assert (tmp_path / "rep" / name).is_file()
