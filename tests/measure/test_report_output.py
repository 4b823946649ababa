"""Benchmark reports report a failed write as an OutputError naming the file, never a raw OSError."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from segrt.measure import report
from segrt.runtime.errors import OutputError


def test_reports_are_written_whole_and_a_place_under_a_file_is_an_output_error(tmp_path):
    written = report.write_report(tmp_path / "r", "bench", {"fps": 12.5}, "| a |")
    assert [p.name for p in written[:2]] == ["bench.json", "bench.md"]
    assert json.loads(written[0].read_text()) == {"fps": 12.5} and written[1].read_text() == "| a |\n"
    blocker = tmp_path / "regular.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError, match=r"report .*regular\.txt/b\.json"):
        report.write_json(blocker / "b.json", {})
    with pytest.raises(OutputError, match=r"report .*regular\.txt/b\.md"):
        report.write_text(blocker / "b.md", "text")


def test_a_plot_that_cannot_be_saved_is_an_output_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "pyplot", lambda: object())  # as if matplotlib were installed

    def plot(data: dict, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"plot .*bench\.png: No space left"):
        report.write_report(tmp_path, "bench", {}, "x", plot=plot)


def test_reports_name_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A committed report must not carry the folders of the machine that wrote it."""
    import json

    from segrt.measure.report import write_json

    monkeypatch.chdir(tmp_path)
    out = write_json(tmp_path / "results" / "r.json", {"model": str(tmp_path / "out" / "m.onnx"),
                                                       "rows": [{"path": tmp_path / "x.onnx"}], "other": "/etc/x"})
    data = json.loads(out.read_text())
    assert data == {"model": "out/m.onnx", "rows": [{"path": "x.onnx"}], "other": "/etc/x"}
