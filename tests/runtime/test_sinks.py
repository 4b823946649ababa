"""Sinks: every write is checked (a failure is an OutputError naming the file), files appear only when
complete, and what a sink reports as written is on disk. Failures are simulated in ways that work as
root (tests run as root, so a chmod'ed folder would still be writable): a path through a regular
file, and OpenCV / the file system made to fail by monkeypatching."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BIKES, count_frames

from segrt.runtime import sinks
from segrt.runtime.errors import ConfigError, InputError, OutputError
from segrt.runtime.overlay import colorize, overlay, palette_lut
from segrt.runtime.sinks import MaskSink, VideoSink, write_image, write_text


def bikes(n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(BIKES))
    frames: list[np.ndarray] = []
    while len(frames) < n:
        ok, frame = cap.read()
        assert ok, f"{BIKES} has fewer than {n} frames"
        frames.append(frame)
    cap.release()
    return frames


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name)


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ---------------------------------------------------------------------------------------------- images
def test_write_image_round_trips_a_real_mask_and_leaves_no_temporary(tmp_path, camvid_root):
    label = cv2.imread(str(sorted((camvid_root / "valannot").glob("*.png"))[0]), cv2.IMREAD_UNCHANGED)
    assert label is not None and label.ndim == 2
    path = write_image(tmp_path / "deep" / "er" / "mask.png", label, "mask")
    assert path == tmp_path / "deep" / "er" / "mask.png"
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), label)
    assert leftovers(path.parent) == []


def test_uint16_masks_keep_labels_past_255(tmp_path):
    mask = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 7) % 700  # labels up to 699
    path = write_image(tmp_path / "m.png", mask, "mask")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.max() > 255 and np.array_equal(back, mask)


def test_an_encoder_that_fails_is_an_output_error_and_nothing_is_written(tmp_path, camvid_frame, monkeypatch):
    monkeypatch.setattr(sinks.cv2, "imencode", lambda *a, **k: (False, None))
    with pytest.raises(OutputError, match="overlay.jpg"):
        write_image(tmp_path / "overlay.jpg", camvid_frame, "overlay")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_an_output_error_and_the_old_file_survives_whole(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text('{"miou": 0.5}')
    monkeypatch.setattr(sinks.os, "replace", no_space)
    with pytest.raises(OutputError, match=r"metrics\.json.*No space left"):
        write_text(target, '{"miou": 0.7, "images": 101}')
    assert target.read_text() == '{"miou": 0.5}'  # never a half-written mix of old and new
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["under_a_file", "is_a_folder", "folder_is_a_fifo"])
def test_impossible_targets_are_output_errors_naming_the_path(tmp_path, camvid_frame, where):
    blocker = tmp_path / "blocker"
    if where == "under_a_file":
        blocker.write_text("a regular file where a folder should be")
        target = blocker / "sub" / "overlay.jpg"
    elif where == "is_a_folder":
        blocker.mkdir()
        target = blocker
    else:
        os.mkfifo(blocker)
        target = blocker / "overlay.jpg"
    with pytest.raises(OutputError, match="blocker"):
        write_image(target, camvid_frame, "overlay")


def test_write_image_refuses_what_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="numpy array"):
        write_image(tmp_path / "x.png", "not an image")  # type: ignore[arg-type]
    with pytest.raises(OutputError, match=r"x\.png"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 7), np.uint8))  # 7 channels: no PNG encoder takes it
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- video
def test_video_appears_only_when_complete_and_holds_every_frame(tmp_path):
    frames = bikes(6)
    target = tmp_path / "out.mp4"
    with VideoSink(target, fps=25) as video:
        for frame in frames:
            video.write(frame)
        assert not target.exists() and video.completed is None  # still being written, under another name
    assert video.completed == target and video.frames == 6 and count_frames(target) == 6
    assert leftovers(tmp_path) == []


def test_a_writer_that_cannot_open_is_an_output_error_and_nothing_is_claimed(tmp_path, monkeypatch):
    class Refusing:  # what cv2.VideoWriter does for an unwritable path or a codec it lacks
        fourcc = staticmethod(cv2.VideoWriter.fourcc)

        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

    monkeypatch.setattr(sinks.cv2, "VideoWriter", Refusing)
    video = VideoSink(tmp_path / "out.mp4")
    with pytest.raises(OutputError, match=r"out\.mp4"):
        video.write(bikes(1)[0])
    assert video.close() is None and video.completed is None and video.frames == 0
    assert list(tmp_path.iterdir()) == []


def test_frames_lost_by_the_writer_are_an_output_error_not_a_shorter_video(tmp_path, monkeypatch):
    """A writer that silently drops frames (as OpenCV does on a full disk): close() reads the file
    back, finds it short, and refuses to give it the final name."""
    real = cv2.VideoWriter

    class Dropping:
        def __init__(self, *args):
            self.inner, self.calls = real(*args), 0

        def isOpened(self):
            return self.inner.isOpened()

        def write(self, image):
            self.calls += 1
            if self.calls <= 2:
                self.inner.write(image)

        def release(self):
            self.inner.release()

    Dropping.fourcc = staticmethod(real.fourcc)  # type: ignore[attr-defined]
    monkeypatch.setattr(sinks.cv2, "VideoWriter", Dropping)
    target = tmp_path / "out.mp4"
    video = VideoSink(target)
    for frame in bikes(5):
        video.write(frame)
    with pytest.raises(OutputError, match=r"out\.mp4 is incomplete.*2 of the 5"):
        video.close()
    assert not target.exists() and video.completed is None and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["out.txt", "out", "folder_name/"])
def test_a_video_name_without_a_container_suffix_is_refused_up_front(tmp_path, name):
    with pytest.raises(OutputError, match="suffix"):
        VideoSink(tmp_path / name)


def test_video_frames_follow_the_runtime_frame_rule(tmp_path):
    frame = bikes(1)[0]
    with VideoSink(tmp_path / "v.mp4") as video:
        video.write(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))  # gray is replicated, as Engine.infer does
        with pytest.raises(InputError, match="dtype"):
            video.write(frame.astype(np.float32))
    assert video.frames == 1 and count_frames(tmp_path / "v.mp4") == 1


# ---------------------------------------------------------------------------------------------- masks
def test_mask_sink_counts_only_masks_on_disk(tmp_path, monkeypatch):
    sink = MaskSink(tmp_path / "masks")
    mask = np.random.default_rng(0).integers(0, 11, (36, 48), dtype=np.uint8)
    sink.write(0, mask)
    monkeypatch.setattr(sinks.os, "replace", no_space)
    with pytest.raises(OutputError, match=r"000001\.png"):
        sink.write(1, mask)
    assert sink.frames == 1 and sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["000000.png"]


def test_mask_sink_refuses_a_file_in_place_of_its_folder_and_bad_masks(tmp_path):
    (tmp_path / "masks").write_text("not a folder")
    with pytest.raises(OutputError, match="masks.*not a folder"):
        MaskSink(tmp_path / "masks")
    sink = MaskSink(tmp_path / "ok")
    with pytest.raises(InputError, match="HxW"):
        sink.write(0, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="index"):
        sink.write(-1, np.zeros((4, 4), np.uint8))
    assert sink.frames == 0 and list((tmp_path / "ok").iterdir()) == []


# ---------------------------------------------------------------------------------------------- overlay
@pytest.mark.parametrize("entry", [(999, 0, 0), (-1, 0, 0), (1, 2), ("a", 1, 2), (1.5, 2, 3), None])
def test_out_of_range_or_malformed_palette_entries_are_config_errors(entry):
    with pytest.raises(ConfigError, match="palette entry 1"):
        palette_lut([(0, 0, 0), entry])  # type: ignore[list-item]


def test_colours_are_looked_up_for_uint16_labels():
    palette = [(i % 256, (i * 3) % 256, (i * 7) % 256) for i in range(300)]
    mask = np.array([[0, 255, 256, 299]], np.uint16)
    rgb = [palette[i] for i in (0, 255, 256, 299)]
    expected = np.array([[[b, g, r] for r, g, b in rgb]], np.uint8)
    assert np.array_equal(colorize(mask, palette), expected)


def test_overlay_refuses_an_opacity_outside_0_1(camvid_frame):
    mask = np.zeros(camvid_frame.shape[:2], np.uint8)
    with pytest.raises(ConfigError, match="alpha"):
        overlay(camvid_frame, mask, [(255, 0, 0)], float("nan"))


# ---------------------------------------------------------------------------------------------- hostile arguments
# Every call below once escaped as a raw OSError, ValueError, TypeError, AttributeError or UnicodeEncodeError.
def test_a_255_byte_name_is_writable_and_a_longer_name_is_an_output_error(tmp_path, camvid_frame):
    longest = "n" * 251 + ".png"  # 255 bytes: the limit of one name on ext4, XFS, btrfs
    assert write_image(tmp_path / longest, camvid_frame).is_file()
    assert write_text(tmp_path / ("t" * 251 + ".txt"), "ok\n").read_text() == "ok\n"
    with VideoSink(tmp_path / ("v" * 251 + ".mp4")) as video:
        video.write(camvid_frame)
    assert video.completed is not None and count_frames(video.completed) == 1
    assert leftovers(tmp_path) == []
    for too_long in (tmp_path / ("n" * 256 + ".png"), tmp_path / ("d" * 300) / "x.png"):
        with pytest.raises(OutputError, match="longer than 255 bytes"):
            write_image(too_long, camvid_frame)
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        VideoSink(tmp_path / ("v" * 300 + ".mp4"))
    with pytest.raises(OutputError, match="longer than 255 bytes"):
        MaskSink(tmp_path / ("m" * 300))


@pytest.mark.parametrize("path", [None, 5, b"bytes.png", "a\0b.png", "\ud800.png", ""],
                         ids=["None", "int", "bytes", "NUL", "surrogate", "empty"])
def test_paths_that_cannot_name_a_file_are_output_errors(tmp_path, camvid_frame, monkeypatch, path):
    monkeypatch.chdir(tmp_path)  # relative names land here
    writers = [lambda: write_image(path, camvid_frame), lambda: write_text(path, "x"),
               lambda: sinks.write_bytes(path, b"x"), lambda: VideoSink(path), lambda: MaskSink(path),
               lambda: sinks.prepare_folder(path)]
    for write in writers:
        with pytest.raises(OutputError):
            write()
    assert list(tmp_path.iterdir()) == []


def test_write_text_and_bytes_refuse_the_wrong_type_and_unencodable_text(tmp_path):
    with pytest.raises(InputError, match="must be a str, got bytes"):
        write_text(tmp_path / "t.txt", b"x")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="cannot be encoded as UTF-8"):
        write_text(tmp_path / "t.txt", "name \udcff")  # a lone surrogate, as surrogateescape decodes bad bytes
    with pytest.raises(InputError, match="must be bytes, got str"):
        sinks.write_bytes(tmp_path / "t.bin", "text")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["fifo", "symlink_to_fifo"])
def test_an_existing_target_that_is_not_a_regular_file_is_refused_and_left_in_place(tmp_path, camvid_frame, kind):
    # Renaming over a device node (/dev/full) would replace the node itself; a FIFO stands in for it safely.
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    target = fifo if kind == "fifo" else tmp_path / "link.png"
    if kind != "fifo":
        target.symlink_to(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        write_image(target, camvid_frame)
    with pytest.raises(OutputError, match="not a regular file"):
        write_text(target, "x")
    assert fifo.is_fifo() and (kind == "fifo" or target.is_symlink())
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(("dtype", "suffix", "needle"), [
    (np.float64, ".png", "got float64"), (np.float32, ".jpg", "got float32"), (np.int32, ".png", "got int32"),
    (np.bool_, ".png", "got bool"), (np.uint16, ".jpg", "uint16, which .jpg cannot store"),
])
def test_images_that_would_be_silently_converted_to_8_bits_are_refused(tmp_path, dtype, suffix, needle):
    image = np.full((8, 8), 300, dtype) if dtype is not np.bool_ else np.ones((8, 8), bool)
    with pytest.raises(InputError, match=needle):
        write_image(tmp_path / f"x{suffix}", image)
    assert list(tmp_path.iterdir()) == []


def test_uint16_masks_round_trip_through_tiff_too(tmp_path):
    mask = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    back = cv2.imread(str(write_image(tmp_path / "m.tif", mask, "mask")), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, mask)


@pytest.mark.parametrize("fps", ["abc", True, None, [25]])
def test_a_video_fps_that_is_not_a_number_is_a_config_error(tmp_path, fps):
    with pytest.raises(ConfigError, match="fps"):
        VideoSink(tmp_path / "v.mp4", fps=fps)


@pytest.mark.parametrize(("fps", "used"), [(30, 30.0), (12.5, 12.5), (0, 25.0), (float("nan"), 25.0), (90000, 25.0)])
def test_a_numeric_fps_a_source_header_got_wrong_falls_back_to_25(tmp_path, fps, used):
    assert VideoSink(tmp_path / "v.mp4", fps=fps).fps == used


def test_a_failing_cleanup_never_hides_the_output_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks.os, "replace", no_space)

    def unlink_fails(self, missing_ok=False):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Path, "unlink", unlink_fails)
    with pytest.raises(OutputError, match="No space left"):
        write_text(tmp_path / "r.json", "{}")


def test_writing_names_the_file_of_a_failed_library_save(tmp_path):
    with pytest.raises(OutputError, match=r"cannot write checkpoint .*best\.safetensors: No space left") as info:
        with sinks.writing(tmp_path / "best.safetensors", "checkpoint"):
            no_space()
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(KeyError):  # not an OSError: a bug, left as it is
        with sinks.writing(tmp_path / "x", "file"):
            raise KeyError("x")


def test_a_bare_file_name_writes_into_the_working_folder(tmp_path, monkeypatch):
    """`-o model.onnx` (no folder): the file's folder is "." and must be accepted, not called empty."""
    monkeypatch.chdir(tmp_path)
    folder = sinks.prepare_folder(Path("model.onnx").parent, "folder of model.onnx")
    sinks.write_bytes(folder / "model.onnx", b"x", "ONNX model")
    assert (tmp_path / "model.onnx").read_bytes() == b"x"
    with pytest.raises(OutputError, match="empty"):
        sinks.output_path("", "file")
