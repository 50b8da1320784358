"""What a run directory promises: safe file names, one writer at a time, no stale or partial results."""
import subprocess
import sys
import textwrap

import pytest

from wdprobe.errors import RunLockedError, RunMismatchError, StageNotFinishedError, UnsafePathError
from wdprobe.runs.rundir import RunDir, safe_name, settings_digest
from wdprobe.stages.score import score_wdct


@pytest.mark.parametrize("item_id", ["../../../../X", "/abs/dir/X", "..", ".", "a/b", "", "x\x00y", ".hidden"])
def test_safe_name_keeps_data_derived_names_inside_the_run(tmp_path, item_id):
    run = RunDir(tmp_path / "run")
    name = safe_name(item_id)
    assert "/" not in name and not name.startswith(".") and name
    path = run.child("patching", name + ".json")
    assert tmp_path / "run" in path.resolve().parents


def test_ordinary_ids_keep_their_file_names():
    assert [safe_name(x) for x in ["123", "ethv_12", "a-b.c"]] == ["123", "ethv_12", "a-b.c"]


def test_child_refuses_paths_that_leave_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    for bad in (("..", "x.json"), ("/etc", "passwd"), ("patching", "../../x")):
        with pytest.raises(UnsafePathError, match="outside the run directory"):
            run.child(*bad)


def test_exact_patching_files_from_hostile_ids_stay_inside(tmp_path):
    import json

    from wdprobe.stages.patching import _saved_exact

    run = RunDir(tmp_path / "run")
    hostile = "../../../../escaped"
    from wdprobe.runs.rundir import write_checked

    write_checked(run.child("patching/positional-deed-exact", safe_name(hostile) + ".json"),
                  json.dumps({"clean": 0.0, "counterfactual": 1.0, "patched": [[0.5]]}).encode())
    assert not (tmp_path / "escaped.json").exists()
    assert list(_saved_exact(run.path, "patch_positional_deed", "deed")) == [hostile]


def test_a_second_process_is_told_who_holds_the_run(tmp_path):
    run = RunDir(tmp_path / "run")
    run.lock()
    try:
        code = textwrap.dedent(f"""
            from wdprobe.runs.rundir import RunDir
            from wdprobe.errors import RunLockedError
            try:
                RunDir({str(run.path)!r}).check_or_start("score", {{"seed": 0}})
            except RunLockedError as e:
                print("LOCKED", e)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
        assert "LOCKED" in out and "pid" in out
        assert run.holder() is None  # this process holds it: not "someone else"
    finally:
        run.unlock()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "LOCKED" not in out  # released: the next process may write


def test_manifest_updates_wait_for_no_one_and_refuse_while_another_process_writes(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("probe", content={"x": 1})  # no stage running: the update takes and lets go of the lock
    assert run.stage_entry("probe")["content"] == {"x": 1} and run.holder() is None
    code = textwrap.dedent(f"""
        import time
        from wdprobe.runs.rundir import RunDir
        RunDir({str(run.path)!r}).lock(); print("held", flush=True); time.sleep(60)
    """)
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError):  # a stage of another process is writing: no interleaved manifest write
            run.update_stage("probe", content={"x": 2})
        with pytest.raises(RunLockedError):
            run.reset_stage("probe")
    finally:
        other.kill()
        other.wait()
    run.reset_stage("probe")
    assert run.stage_entry("probe") == {}


def test_lock_is_reentrant_in_one_process_and_released_when_the_stage_is_done(tmp_path):
    run = RunDir(tmp_path / "run")
    run.check_or_start("a", {"x": 1})
    run.check_or_start("a", {"x": 1})
    run.mark_done("a")
    assert run.is_done("a") and run.stage_entry("a")["finished"]


def test_resume_refuses_parts_of_another_seed_when_the_manifest_is_gone(tiny_lm, wdct_csv, tmp_path):
    out = tmp_path / "run"
    score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    (out / "manifest.json").unlink()
    with pytest.raises(RunMismatchError, match="parts made with other settings.*seed"):
        score_wdct(out, data=wdct_csv, lm=tiny_lm, seed=1, chunk_items=2, progress=False)


def test_parts_label_carries_the_settings_digest(tiny_lm, wdct_csv, tmp_path):
    out = tmp_path / "run"
    score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    import json

    label = json.loads((out / "score.parts" / "settings.json").read_text())
    assert label["digest"] == settings_digest(RunDir(out).stage_entry("score")["config"])


def test_readers_refuse_an_unfinished_capture(tiny_lm, wdct_csv, tmp_path):
    from wdprobe.stages.capture import capture_wdct, load_activations

    out = tmp_path / "run"
    score_wdct(out, data=wdct_csv, lm=tiny_lm, progress=False)
    capture_wdct(out, lm=tiny_lm, layers="all", positions=["last"], progress=False)
    whole = load_activations(out)
    run = RunDir(out)
    run.update_stage("capture", complete=False)  # as a capture killed half-way leaves it
    with pytest.raises(StageNotFinishedError, match="did not finish"):
        load_activations(out)
    with pytest.warns(UserWarning, match="unfinished capture"):
        partial = load_activations(out, allow_partial=True)
    assert partial.array.shape == whole.array.shape


def test_require_done_names_the_command(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(StageNotFinishedError, match="has not run.*wdprobe score"):
        run.require_done("score", "wdprobe score --out X")
    run.check_or_start("score", {})
    with pytest.raises(StageNotFinishedError, match="did not finish"):
        run.require_done("score", "wdprobe score --out X")
    run.mark_done("score")
    assert run.require_done("score", "x")["complete"] is True


def test_a_changed_part_is_refused_by_name(tiny_lm, wdct_csv, tmp_path):
    from wdprobe.errors import IntegrityError

    out = tmp_path / "run"
    score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    part = sorted((out / "score.parts").glob("part-*.csv"))[0]
    part.write_text(part.read_text().replace("op1", "op9", 1))  # same shape, other content
    with pytest.raises(IntegrityError, match=f"{part.name}: content changed.*delete it"):
        RunDir(out).read_parts("score")
    part.unlink()  # what the message says to do: the same command recomputes the part
    again = score_wdct(out, data=wdct_csv, lm=tiny_lm, chunk_items=2, progress=False)
    assert len(again.rows) == 6


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_capture_shard_is_refused_naming_the_file(tiny_lm, wdct_csv, tmp_path, damage):
    from wdprobe.errors import IntegrityError
    from wdprobe.stages.capture import capture_wdct, load_activations

    out = tmp_path / "run"
    score_wdct(out, data=wdct_csv, lm=tiny_lm, progress=False)
    capture_wdct(out, lm=tiny_lm, layers="all", positions=["last"], progress=False)
    shard = sorted((out / "capture").glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[-3] ^= 0x40  # inside the tensor data: loads, but with a wrong value
        shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=shard.name):
        load_activations(out)


def test_a_deleted_parts_number_is_never_taken_by_its_replacement(tmp_path):
    from wdprobe.errors import IntegrityError

    run = RunDir(tmp_path / "run")
    run.check_or_start("stage", {"seed": 0})
    for k in range(3):
        run.write_part("stage", [{"id": f"i{k}", "v": k}], ["id", "v"])
    parts = run.parts_dir("stage")
    (parts / "part-00001.csv").unlink()  # as a user does after a checksum failure
    replacement = run.write_part("stage", [{"id": "i1", "v": 10}], ["id", "v"])
    assert replacement.name == "part-00003.csv"
    assert sorted((r["id"], r["v"]) for r in run.read_parts("stage")) == [("i0", "0"), ("i1", "10"), ("i2", "2")]
    (parts / "part-00003.csv").unlink()  # the newest deleted too: its number is still not reused
    assert run.next_part("stage") == 4 and run.write_part("stage", [{"id": "i1", "v": 11}], ["id", "v"]).name == "part-00004.csv"
    (parts / "part-00009.csv").write_text("id,v\nx,1\n")  # a part the stage never wrote (no recorded checksum)
    with pytest.raises(IntegrityError, match="part-00009.csv: no checksum was recorded"):
        run.read_parts("stage")


def test_a_checked_file_whose_checksum_file_is_gone_is_refused(tmp_path):
    from wdprobe.errors import IntegrityError
    from wdprobe.runs.rundir import read_checked, write_checked

    path = tmp_path / "part-00000.safetensors"
    write_checked(path, b"tensor bytes")
    assert read_checked(path) == b"tensor bytes"
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(IntegrityError, match="checksum file part-00000.safetensors.sha256 is missing"):
        read_checked(path)


def test_a_run_written_by_another_minor_version_is_not_continued(tmp_path):
    import json

    from wdprobe.runs.rundir import same_format_version
    from wdprobe.version import __version__

    run = RunDir(tmp_path / "run")
    run.check_or_start("stage", {"seed": 0})
    manifest = json.loads(run.manifest_path.read_text())
    major, minor = __version__.split(".")[:2]
    manifest["environment"]["wdprobe"] = f"{major}.{int(minor) + 1}.0"
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(RunMismatchError, match=rf"written by wdprobe {major}.{int(minor) + 1}.0; this is wdprobe"):
        RunDir(tmp_path / "run").check_or_start("stage", {"seed": 0})
    manifest["environment"]["wdprobe"] = f"{major}.{minor}.99"  # a patch release continues it
    run.manifest_path.write_text(json.dumps(manifest))
    RunDir(tmp_path / "run").check_or_start("stage", {"seed": 0})
    assert same_format_version("0.1.0", "0.1.7") and not same_format_version("0.1.0", "0.2.0")
    assert not same_format_version("1.1.0", "2.1.0")


def test_a_read_only_run_directory_is_refused_with_its_path(tmp_path):
    import os

    from wdprobe.errors import RunError

    if os.geteuid() == 0:  # root writes anywhere: a file where the directory should be stands in for read-only
        (tmp_path / "ro").write_text("not a directory")
        target = tmp_path / "ro" / "run"
    else:
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o500)
        target = tmp_path / "ro" / "run"
    with pytest.raises(RunError, match="cannot write into this run directory"):
        RunDir(target).check_or_start("stage", {"seed": 0})
