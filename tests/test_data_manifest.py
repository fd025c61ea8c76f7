"""Manifest parsing, line-numbered errors, prepare (probe/filter/report), config checks."""
import json
import os
import shutil

import numpy as np
import pytest

from moviegen.data import synthetic
from moviegen.config.video import VideoDataConfig, moviegen_256px
from moviegen.data.manifest import ManifestError, _columns_from_rows, load_manifest, read_rows
from moviegen.data.prepare import prepare
from data_helpers import synthetic_dataset

GOOD = {"path": "a.webm", "caption": "a red circle", "type": "video", "width": 64,
        "height": 48, "fps": 8, "frames": 16, "duration": 2.0}


def _write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def test_fast_and_row_by_row_parsers_agree():
    m = load_manifest(synthetic_dataset())
    rows = [r for _, r in read_rows(m.source)]
    slow = _columns_from_rows(rows)
    assert m.paths == slow["paths"] and m.captions == slow["captions"]
    for name in ("is_image", "width", "height", "fps", "frames", "duration", "is_val"):
        np.testing.assert_array_equal(getattr(m, name), slow[name], err_msg=name)
    assert m.is_image.sum() == 6 and m.is_val.sum() == 2
    assert os.path.isfile(m.resolve(0))


@pytest.mark.parametrize("bad_line, field", [
    ({k: v for k, v in GOOD.items() if k != "caption"}, "'caption'"),
    ({**GOOD, "width": "64"}, "'width'"),
    ({**GOOD, "fps": None}, "'fps'"),
    ({**GOOD, "frames": 16.5}, "'frames'"),
    ({**GOOD, "type": "audio"}, "'type'"),
    ({**GOOD, "split": "test"}, "'split'"),
    ({k: v for k, v in GOOD.items() if k != "duration"}, "'duration'"),
    ("{not json", "JSON"),
])
def test_bad_row_names_line_and_field(tmp_path, bad_line, field):
    bad = bad_line if isinstance(bad_line, str) else json.dumps(bad_line)
    # a blank line before the bad row: the line number is the file's, not the row's
    path = _write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), "", bad, json.dumps(GOOD)])
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    assert f"{path}:4:" in str(e.value) and field in str(e.value)


def test_image_rows_need_no_video_fields(tmp_path):
    row = {"path": "x.png", "caption": "a blue square", "width": 40, "height": 30}
    m = load_manifest(_write(tmp_path, [json.dumps(GOOD), json.dumps(row)]))
    assert m.is_image.tolist() == [False, True] and m.frames.tolist() == [16, 1]


def test_prepare_probes_filters_and_reports(tmp_path):
    src = os.path.dirname(synthetic_dataset())
    d = tmp_path / "media"
    shutil.copytree(src, d)
    (d / "videos" / "empty.webm").write_bytes(b"")
    (d / "videos" / "empty.txt").write_text("nothing\n")
    (d / "videos" / "nocaption.webm").write_bytes((d / "videos" / "00003.webm").read_bytes())
    out = str(tmp_path / "out.jsonl")
    summary = prepare(str(d), out, VideoDataConfig())
    rows = [r for _, r in read_rows(out)]
    assert summary["unreadable"] == 2 and summary["kept"] == len(rows) == 16 + 6
    truth = {r["path"]: r for _, r in read_rows(synthetic_dataset())}
    for r in rows:   # probed values equal what the generator wrote
        t = truth[os.path.relpath(os.path.join(str(tmp_path), r["path"]), str(d))]
        for k in ("width", "height", "fps", "frames", "type"):
            assert r.get(k) == t.get(k), (r, t, k)
        assert r["bucket"]
    # Movie Gen's filter (4-16 s, min side 256) removes every 1-3 s, 32-40 px clip
    summary = prepare(str(d), str(tmp_path / "mg.jsonl"), moviegen_256px())
    assert summary["kept"] == 0 and sum(summary["filtered"].values()) == 22


def test_prepare_jsonl_input_missing_file_and_bad_row(tmp_path):
    src = synthetic_dataset()
    rows = [r for _, r in read_rows(src)][:3]
    lines = [json.dumps({"path": os.path.join(os.path.dirname(src), r["path"]),
                         "caption": r["caption"]}) for r in rows]
    lines.append(json.dumps({"path": str(tmp_path / "gone.webm"), "caption": "gone"}))
    summary = prepare(_write(tmp_path, lines), str(tmp_path / "o.jsonl"), VideoDataConfig())
    assert summary["unreadable"] == 1 and summary["kept"] == 3
    lines.insert(1, json.dumps({"path": 7, "caption": "x"}))
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: field 'path'"):
        prepare(_write(tmp_path, lines), str(tmp_path / "o.jsonl"), VideoDataConfig())


@pytest.mark.parametrize("field, value", [
    ("backend", "ffmpeg"), ("fps", 0), ("durations", []), ("aspect_ratios", [1.0, -2.0]),
    ("size_multiple", 12), ("max_skip_fraction", 1.5), ("min_duration_s", 20.0),
    ("patch", [1, 2]),
])
def test_config_validate_names_field(field, value):
    cfg = VideoDataConfig()
    cfg.validate()
    setattr(cfg, field, value)
    with pytest.raises(ValueError, match=f"data.video.{field}"):
        cfg.validate()


def test_synthetic_vocabulary_and_exclude(tmp_path):
    m = synthetic.write_synthetic_dataset(str(tmp_path), num_videos=6, num_images=2, seed=3,
                                          min_duration=1.0, max_duration=1.2, short_sides=(32,),
                                          frame_rates=(8,), exclude=["red circle", "blue square"])
    rows = [r for _, r in read_rows(m)]
    for r in rows:
        words = r["caption"].split()
        assert words[1] in synthetic.COLORS and words[2] in synthetic.SHAPES
        assert f"{words[1]} {words[2]}" not in ("red circle", "blue square")
        if r["type"] == "video":
            assert " ".join(words[4:]) in synthetic.DIRECTIONS
    ratios = {round(r["width"] / r["height"], 1) for r in rows if r["type"] == "video"}
    assert len(ratios) == 5


def test_synthetic_holds_out_a_colour_direction_pairing(tmp_path):
    import json as _json

    from moviegen.data import synthetic
    manifest = synthetic.write_synthetic_dataset(
        str(tmp_path), num_videos=12, num_images=0, seed=3, min_duration=1.0, max_duration=1.2,
        short_sides=(32,), frame_rates=(8,), colors=["red", "blue"], shapes=["circle"],
        aspect_ratios=["1:1"], exclude=["red+from right to left"])
    rows = [_json.loads(l) for l in open(manifest)]
    caps = [r["caption"] for r in rows]
    assert len(caps) == 12
    assert not any("red" in c and "from right to left" in c for c in caps)
    assert all(("red" in c or "blue" in c) and "circle" in c for c in caps)
    assert all(r["width"] == r["height"] for r in rows)
    assert synthetic.excluded("a red square moves from right to left", {"red+from right to left"})
    assert not synthetic.excluded("a red square moves from left to right", {"red+from right to left"})
    with pytest.raises(ValueError, match="unknown colour"):
        synthetic.write_synthetic_dataset(str(tmp_path / "x"), 1, colors=["mauve"])
