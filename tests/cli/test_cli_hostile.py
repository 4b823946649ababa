"""Every command against hostile paths, options and JSON: the CLI exits non-zero with one line naming
the problem, never a traceback, and never claims a file that is not complete on disk.

Commands run in-process through ``segrt.cli.main`` (the console script's entry point, with its error
handling); one case also runs in a real subprocess. Refusals happen while the command line is read, so
no model is loaded for them; the cases that do run use the committed tiny ONNX and real CamVid images.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BIKES

from segrt.cli import main
from segrt.runtime import sinks


def segrt(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


def claimed(stdout: str) -> list[Path]:
    """Files the output says it wrote ("wrote PATH" or "wrote PATH (N frames)")."""
    text = " ".join(stdout.split())
    return [Path(m) for m in re.findall(r"wrote (\S+\.(?:mp4|onnx|json|png|jpg|safetensors))\b", text)]


def refused(capsys, args: list, needle: str) -> str:
    code, out, err = segrt(capsys, *args)
    assert code == 2, (args, code, out, err)
    assert "Traceback" not in err + out, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error ("), err
    assert re.search(needle, lines[0]), (needle, lines[0])
    assert all(p.is_file() for p in claimed(out)), out
    return lines[0]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    paths = {
        "file": root / "regular.txt",
        "fifo": root / "pipe",
        "missing": root / "missing",
        "empty": root / "empty",
        "under_file": root / "regular.txt" / "below",
        "loop": root / "loop",
    }
    paths["file"].write_text("a regular file\n")
    os.mkfifo(paths["fifo"])
    paths["empty"].mkdir()
    paths["loop"].symlink_to(paths["loop"])
    return paths


# ---------------------------------------------------------------------------------------------- refusals
# (arguments with {placeholders}, what the one-line message must name)
CASES = [
    # segrt run: inputs, outputs, options
    (["run", "{missing}"], r"INPUT .*missing: no such"),
    (["run", "{fifo}"], r"INPUT .*pipe is a FIFO"),
    (["run", "{loop}"], r"INPUT .*loop"),
    (["run", "{empty}", "--out", "{tmp}/o"], r"empty: no images"),
    (["run", "{file}", "--out", "{tmp}/o"], r"cannot open .*regular.txt"),
    (["run", "{frame}", "--out", "{file}"], r"--out .*regular.txt is a file"),
    (["run", "{frame}", "--out", "{under_file}"], r"--out .*regular.txt is a file, not a folder"),
    (["run", "{frame}", "--out", "{fifo}"], r"--out .*pipe is a FIFO"),
    (["run", "{frame}", "--alpha", "nan"], r"--alpha nan"),
    (["run", "{frame}", "--alpha", "1.5"], r"--alpha 1.5 is out of range"),
    (["run", "{frame}", "--model", "{fifo}"], r"--model .*FIFO"),
    (["run", "{frame}", "--model", ""], r"--model is empty"),
    (["run", "{frame}", "--alpha", "x"], r"usage.*--alpha"),
    (["run", "{frame}", "--bogus"], r"usage.*--bogus"),
    # segrt demo
    (["demo", "{bikes}", "--headless", "--save-masks", "{under_file}"], r"--save-masks .*not a folder"),
    (["demo", "{bikes}", "--headless", "--output", "{empty}"], r"--output .*empty is a folder"),
    (["demo", "{bikes}", "--headless", "--output", "{tmp}/video.txt"], r"--output .*video.txt.*\.mp4"),
    (["demo", "{bikes}", "--max-frames", "0"], r"--max-frames 0"),
    (["demo", "{bikes}", "--threads", "-2"], r"--threads -2"),
    (["demo", "{bikes}", "--policy", "newest"], r"--policy 'newest'"),
    (["demo", "{fifo}", "--headless", "--output", "{tmp}/d.mp4"], r"pipe"),
    # segrt export: sizes, numbers, merge JSON, paths
    (["export", "-o", "{tmp}/m.onnx", "--size", "99999x99999"], r"--size '99999x99999'.*4096"),
    (["export", "-o", "{tmp}/m.onnx", "--size=-5"], r"--size '-5'"),
    (["export", "-o", "{tmp}/m.onnx", "--size", "4096x4096"], r"--size .*pixels is more than"),
    (["export", "-o", "{tmp}/m.onnx", "--size", "12xx"], r"--size '12xx': expected HxW"),
    (["export", "-o", "{tmp}/m.onnx", "--opset", "99"], r"--opset 99"),
    (["export", "-o", "{tmp}/m.onnx", "--tolerance", "-1"], r"--tolerance -1"),
    (["export", "-o", "{tmp}/m.onnx", "--precision", "int4"], r"--precision 'int4'"),
    (["export", "-o", "{tmp}/m.onnx", "--precision", "int8", "--calib", "{missing}"], r"--calib .*missing"),
    (["export", "-o", "{tmp}/m.onnx", "--calib-count", "0"], r"--calib-count 0"),
    (["export", "-o", "{empty}"], r"--output .*empty is a folder"),
    (["export", "-o", "{under_file}/m.onnx"], r"--output .*regular.txt is a file"),
    (["export", "{fifo}", "-o", "{tmp}/m.onnx"], r"CHECKPOINT .*FIFO"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": 5}'], r"--merge: .*stages must be a list"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"downsample": 1.5}'], r"downsample must be a whole number"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": [{"kv": {"ratio": "x"}}]}'], r"stages\[0\]\.kv\.ratio"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": [null, {"q": {"ratio": null}}]}'],
     r"stages\[0\] is null"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": [{"q": {"ratio": 1.2}}]}'], r"stages\[0\]\.q\.ratio"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": [{"q": {"ratio": 0.5, "cell": -2}}]}'],
     r"stages\[0\]\.q\.cell"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", '{"stages": [{"kv": {"ratio": 0.5, "speed": 1}}]}'],
     r"stages\[0\]\.kv\.speed is not a known key"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", "[1, 2]"], r"must be an object"),
    (["export", "-o", "{tmp}/m.onnx", "--merge", "{fifo}.json"], r"merge config file"),
    # segrt info / eval
    (["info", "{fifo}"], r"MODEL .*FIFO"),
    (["info", "/dev/zero"], r"MODEL /dev/zero is a device"),
    (["eval", "{tiny}", "--data", "{missing}"], r"--data .*missing: no such folder"),
    (["eval", "{tiny}", "--data", "{file}"], r"--data .*regular.txt is a file"),
    (["eval", "{tiny}", "--data", "{camvid}", "--limit", "0"], r"--limit 0"),
    (["eval", "{tiny}", "--data", "{camvid}", "--json", "{under_file}/m.json"], r"--json .*regular.txt is a file"),
    (["eval", "{tiny}", "--data", "{camvid}", "--size", "1x1"], r"--size '1x1'"),
    (["eval", "{tiny}", "--data", "{camvid}", "--format", "coco"], r"--format 'coco'"),
    # training commands
    (["train", "--data", "{camvid}", "--iterations", "0"], r"--iterations 0"),
    (["train", "--data", "{camvid}", "--lr", "nan"], r"--lr nan"),
    (["train", "--data", "{camvid}", "--batch-size", "-1"], r"--batch-size -1"),
    (["train", "--data", "{camvid}", "--crop", "99999"], r"--crop '99999'"),
    (["train", "--data", "{camvid}", "--base-size", "0x0"], r"--base-size '0x0'"),
    (["train", "--data", "{camvid}", "--out", "{file}"], r"--out .*regular.txt is a file"),
    (["train", "--data", "{camvid}", "--loss", "focal"], r"--loss 'focal'"),
    (["train", "--data", "{camvid}", "--amp", "fp8"], r"--amp 'fp8'"),
    (["train", "--data", "{camvid}", "--device", "tpu"], r"--device 'tpu'"),
    (["train", "--data", "{camvid}", "--time-budget", "0"], r"--time-budget 0"),
    (["distill", "--teacher", "{fifo}", "--student", "random:b0:11", "--data", "{camvid}"], r"--teacher .*FIFO"),
    (["distill", "--teacher", "camvid-b0", "--student", "random:b0:11", "--data", "{camvid}", "--temperature", "0"],
     r"--temperature 0"),
    (["distill", "--teacher", "camvid-b0", "--student", "random:b0:11", "--data", "{camvid}", "--stage1", "2"],
     r"--stage1 2"),
    (["distill", "--teacher", "camvid-b0", "--student", "random:b0:11", "--data", "{camvid}", "--kd-weight", "-1"],
     r"--kd-weight -1"),
    (["prune", "--data", "{camvid}", "-o", "{tmp}/p.safetensors", "--flops", "0"], r"--flops 0"),
    (["prune", "--data", "{camvid}", "-o", "{tmp}/p.safetensors", "--flops", "1.5"], r"--flops 1.5"),
    (["prune", "--data", "{camvid}", "-o", "{tmp}/p.safetensors", "--rounds", "0"], r"--rounds 0"),
    (["prune", "--data", "{camvid}", "-o", "{tmp}/p.safetensors", "--count", "both"], r"--count 'both'"),
    (["prune", "--data", "{camvid}", "-o", "{empty}"], r"--output .*empty is a folder"),
    (["gate", "train", "--data", "{camvid}", "--keep-ratio", "0"], r"--keep-ratio 0"),
    (["gate", "train", "--data", "{camvid}", "--calibrate", "-1"], r"--calibrate -1"),
    (["gate", "export", "{missing}", "-o", "{tmp}/g.onnx"], r"CHECKPOINT .*missing: no such file"),
    (["gate", "export", "{gates}", "-o", "{tmp}/g.onnx", "--mode", "dense"], r"--mode 'dense'"),
    (["gate", "export", "{gates}", "-o", "{tmp}/g.onnx", "--size", "5x5"], r"--size '5x5'"),
    (["gate", "export", "{gates}", "-o", "{tmp}/g.onnx", "--align", "0"], r"--align 0"),
    (["gate", "export", "{gates}", "-o", "{tmp}/g.onnx", "--threshold", "inf"], r"--threshold inf"),
    (["gate", "export", "{gates}", "-o", "{tmp}/g.onnx", "--mode", "static"], r"--data"),
    (["exit", "train", "--data", "{camvid}", "--hidden", "-1"], r"--hidden -1"),
    (["exit", "export", "--heads", "{missing}", "-o", "{tmp}/e.onnx"], r"--heads .*missing"),
    (["exit", "export", "--heads", "{gates}", "-o", "{tmp}/e.onnx", "--threshold", "0"], r"--threshold 0"),
    (["exit", "export", "--heads", "{gates}", "-o", "{tmp}/e.onnx", "--context", "0"], r"--context 0"),
    (["exit", "export", "--heads", "{gates}", "-o", "{tmp}/e.onnx", "--dwconv", "ones"], r"--dwconv 'ones'"),
    # engines
    (["verify", "{missing}", "--engine", "{tiny}"], r"MODEL .*missing"),
    (["verify", "{tiny}", "--engine", "{fifo}"], r"--engine .*FIFO"),
    (["verify", "{tiny}", "--engine", "{tiny}", "--count", "0"], r"--count 0"),
    (["verify", "{tiny}", "--engine", "{tiny}", "--min-agreement", "2"], r"--min-agreement 2"),
    (["verify", "{tiny}", "--engine", "{tiny}", "--json", "{empty}"], r"--json .*empty is a folder"),
    (["build", "{tiny}", "--opt-level", "9"], r"--opt-level 9"),
    (["build", "{tiny}", "--max-batch", "0"], r"--max-batch 0"),
    (["build", "{tiny}", "--precision", "fp8"], r"--precision 'fp8'"),
    (["build", "{tiny}", "--from-plan", "{missing}"], r"--from-plan .*missing"),
    (["build", "{tiny}", "-o", "{file}"], r"--output .*regular.txt is a file"),
    (["build", "{tiny}", "--min-shape", "axb"], r"--min-shape 'axb'"),
    (["build", "{tiny}", "--form", "logits", "--max-shape", "1x3x99999x64"], r"--max-shape '99999x64'"),
    (["build", "{tiny}", "--max-shape", "1x99999x64x3"], r"--max-shape '99999x64'"),
    (["build", "{tiny}", "--max-shape", "1x3x720x1280"], r"--max-shape '1x3x720x1280'.*NxHxWx3"),
    (["build", "{tiny}", "--frame-size", "axb"], r"--frame-size 'axb'"),
    (["build", "{tiny}", "--frame-size", "0x0"], r"--frame-size '0x0'"),
    (["build", "{tiny}", "--form", "labels"], r"--form 'labels'"),
    (["bench", "{tiny}", "--camera-size", "axb"], r"--camera-size 'axb'"),
    (["bench", "{tiny}", "--cameras", "-1"], r"--cameras -1"),
    # outputs in places that cannot be written, refused before any work (bench once ran to the end first)
    (["bench", "{tiny}", "--json", "{under_file}/b.json"], r"--json .*regular.txt is a file, not a folder"),
    (["bench", "{tiny}", "--markdown", "{under_file}/b.md"], r"--markdown .*regular.txt is a file, not a folder"),
    (["bench", "{tiny}", "--markdown", "{empty}"], r"--markdown .*empty is a folder"),
    (["bench", "{tiny}", "--workdir", "{file}"], r"--workdir .*regular.txt is a file"),
    (["bench", "{tiny}", "--json", "/proc/self/b.json"], r"--json /proc/self/b.json: cannot write in /proc/self"),
    (["export", "-o", "/proc/self/m.onnx"], r"--output /proc/self/m.onnx: cannot write in /proc/self"),
    (["build", "{tiny}", "-o", "/proc/self"], r"--output /proc/self: cannot write in /proc/self"),
    (["build", "{tiny}", "-o", "/proc/self/bundle"], r"--output /proc/self/bundle: cannot write in /proc/self"),
    (["train", "--data", "{camvid}", "--out", "/proc/self/run"], r"--out /proc/self/run: cannot write in"),
    (["eval", "{tiny}", "--data", "{camvid}", "--json", "/proc/self/e.json"], r"--json .*cannot write in"),
]


@pytest.mark.parametrize(("args", "needle"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_hostile_arguments_are_refused_with_one_line_naming_them(capsys, tmp_path, hostile, camvid_root, tiny_onnx,
                                                                    args, needle):
    gates = Path(__file__).resolve().parents[2] / "models" / "camvid-b0-gate30.safetensors"
    places = {**{k: str(v) for k, v in hostile.items()}, "tmp": str(tmp_path), "camvid": str(camvid_root),
              "tiny": str(tiny_onnx), "bikes": str(BIKES), "gates": str(gates),
              "frame": str(sorted((camvid_root / "val").glob("*.png"))[0])}
    refused(capsys, [a.format(**places) if "{" in a and not a.startswith(("{\"", "[")) else a for a in args], needle)
    assert not (tmp_path / "m.onnx").exists()


def test_a_real_process_prints_one_line_and_no_traceback(tmp_path, hostile):
    r = subprocess.run([sys.executable, "-m", "segrt", "export", "-o", str(tmp_path / "m.onnx"), "--merge",
                        '{"stages": [{"kv": {"ratio": "x"}}]}'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "stages[0].kv.ratio" in r.stderr


def test_an_os_error_that_reaches_main_is_one_line_and_exit_2(capsys, monkeypatch):
    """The safety net: the environment refused (a permission, a full disk) somewhere a command did not check."""
    import segrt.cli

    def denied(**kwargs):
        raise PermissionError(13, "Permission denied", "/some/where/x.json")

    monkeypatch.setattr(segrt.cli, "app", denied)
    line = refused(capsys, ["info"], r"^error \(PermissionError\): cannot use /some/where/x.json: Permission denied$")
    assert "Traceback" not in line


def test_a_bug_that_reaches_main_keeps_its_traceback(monkeypatch):
    import segrt.cli

    def bug(**kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(segrt.cli, "app", bug)
    with pytest.raises(KeyError):  # not swallowed: the console script prints it with its traceback
        main(["info"])


# ---------------------------------------------------------------------------------------------- writes
def copy_frames(camvid_root: Path, folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((camvid_root / "val").glob("*.png"))
    for source, name in zip(sources, names):
        image = cv2.imread(str(source))
        assert image is not None and cv2.imwrite(str(folder / name), image)


def write_clip(path: Path, frames: int) -> Path:
    """The first frames of the real street video, as a short clip of its own."""
    cap, writer = cv2.VideoCapture(str(BIKES)), None
    for _ in range(frames):
        ok, frame = cap.read()
        assert ok
        writer = writer or cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, frame.shape[1::-1])
        writer.write(frame)
    assert writer is not None
    writer.release()
    cap.release()
    return path


def test_run_names_every_output_uniquely_and_claims_only_what_is_there(capsys, tmp_path, camvid_root, tiny_onnx):
    copy_frames(camvid_root, tmp_path / "in", ["a.png", "a.jpg", "frame10.png"])
    code, out, err = segrt(capsys, "run", tmp_path / "in", "--model", tiny_onnx, "--out", tmp_path / "out")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["a_jpg_mask.png", "a_jpg_overlay.jpg", "a_png_mask.png", "a_png_overlay.jpg",
                       "frame10_mask.png", "frame10_overlay.jpg"]  # a.png and a.jpg do not overwrite each other
    assert "3 frame(s)" in out and "wrote 3 overlay(s) and 3 mask(s)" in " ".join(out.split())
    mask = cv2.imread(str(tmp_path / "out" / "a_png_mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (360, 480) and mask.max() < 11


def test_run_reports_an_image_that_cannot_be_written_and_exits_non_zero(capsys, tmp_path, camvid_root, tiny_onnx,
                                                                        monkeypatch):
    copy_frames(camvid_root, tmp_path / "in", ["f1.png", "f2.png"])
    real = cv2.imencode
    monkeypatch.setattr(sinks.cv2, "imencode", lambda ext, img: (False, None) if ext == ".jpg" else real(ext, img))
    code, out, err = segrt(capsys, "run", tmp_path / "in", "--model", tiny_onnx, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err
    assert "OutputError" in err and "f1_overlay.jpg" in err
    assert "stopped after 0 of 2 image(s); wrote 0 overlay(s) and 1 mask(s)" in " ".join(out.split())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["f1_mask.png"]


def test_run_video_without_masks_never_claims_a_video_the_writer_lost(capsys, tmp_path, tiny_onnx, monkeypatch):
    """The issue's case: `segrt run VIDEO --no-masks` when the video cannot be completed."""
    clip = write_clip(tmp_path / "clip.mp4", 4)

    class Losing:  # opens, accepts frames, writes none of them (as on a full disk)
        fourcc = staticmethod(cv2.VideoWriter.fourcc)

        def __init__(self, path, *args):
            Path(path).write_bytes(b"")

        def isOpened(self):
            return True

        def write(self, image):
            pass

        def release(self):
            pass

    monkeypatch.setattr(sinks.cv2, "VideoWriter", Losing)
    code, out, err = segrt(capsys, "run", clip, "--model", tiny_onnx, "--out", tmp_path / "out", "--no-masks")
    assert code == 2 and "Traceback" not in err and "OutputError" in err and "clip_overlay.mp4 is incomplete" in err
    assert not (tmp_path / "out" / "clip_overlay.mp4").exists() and claimed(out) == []
    assert list((tmp_path / "out").iterdir()) == []  # no half-written hidden file either


def test_run_video_writes_a_complete_video_and_masks(capsys, tmp_path, tiny_onnx):
    clip = write_clip(tmp_path / "clip.mp4", 3)
    code, out, err = segrt(capsys, "run", clip, "--model", tiny_onnx, "--out", tmp_path / "out")
    assert code == 0, err
    video = tmp_path / "out" / "clip_overlay.mp4"
    assert claimed(out) == [video] and "(3 frames)" in out
    reader = cv2.VideoCapture(str(video))
    assert int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    masks = sorted((tmp_path / "out" / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["000000.png", "000001.png", "000002.png"]
    assert np.unique(cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)).max() < 11
