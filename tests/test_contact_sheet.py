"""Contact sheets of sweeps: layout over up to three axes, labels, the size guard, and the run's HTML page."""

from __future__ import annotations

import numpy as np
from PIL import Image

from flowrun import api
from flowrun.execute import contact_sheet
from flowrun.settings import Settings

SWEEP = """\
version: 1
name: sheet
params: {color: 0xFF0000, size: 16, mode: normal}
sweep:
  grid: {color: [0xFF0000, 0x00FF00, 0x0000FF], size: [16, 24], b.color: [0x000000, 0xFFFFFF]}
nodes:
  a: {type: EmptyImage, with: {width: 16, height: 16, color: "{{ color }}"}}
  b: {type: EmptyImage, with: {width: 16, height: 16, color: 0}}
  mix: {type: ImageBlend, in: {image1: a, image2: b}, with: {blend_factor: "{{ size / 32 }}", blend_mode: normal}}
  save: {type: SaveImage, in: {images: mix}, with: {filename_prefix: "c{{ cell.index }}"}}
"""


def test_three_axes_make_columns_rows_and_subgrids(workflow, tmp_path):
    result = api.run(api.load(workflow(SWEEP)), Settings(out_dir=tmp_path / "out", use_cache=False))
    assert result.manifest["sheets"] == ["contact-save.png", "index.html"]
    sheet = np.asarray(Image.open(tmp_path / "out" / "contact-save.png").convert("RGB"))
    # rows: title, then per sub-grid (b.color) a title, column labels and 2 rows (size) of 16 px thumbnails
    assert sheet.shape[0] == 16 + 2 * (16 + 16 + 2 * 20) + 4

    def where(rgb):
        ys, xs = np.nonzero((sheet == rgb).all(-1))
        assert len(ys) == 16 * 16, rgb  # exactly one thumbnail of this colour
        return ys.min(), xs.min()

    # blend_factor size/32 of (color, b.color): columns by color, rows by size, sub-grids by b.color
    red16, green16, blue16 = where((127, 0, 0)), where((0, 127, 0)), where((0, 0, 127))
    assert red16[0] == green16[0] == blue16[0] and red16[1] < green16[1] < blue16[1]
    green24 = where((0, 63, 0))  # 255 * (1 - 24/32), truncated
    assert green24[1] == green16[1] and green24[0] == green16[0] + 20
    green16_white = where((127, 255, 127))
    assert green16_white[1] == green16[1] and green16_white[0] == green16[0] + 2 * 20 + 16 + 16
    # labels are drawn: the column-label strip and the row-label column are not blank
    assert (sheet[green16[0] - 16:green16[0], green16[1]:] < 128).any()
    assert (sheet[green16[0]:green16[0] + 16, :red16[1]] < 128).any()
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.count("<img src=") == 12 and "href='c0.png'" in page and "b.color=16777215" in page
    assert "&quot;size&quot;: 24" in page  # every cell's params


def test_size_guard_shrinks_thumbnails(tmp_path, monkeypatch):
    cells = [{"index": i, "label": f"c{i}", "values": {"x": i}, "params": {}} for i in range(3)]
    files = {}
    for c in cells:
        Image.new("RGB", (512, 512), (200, 10, 10)).save(tmp_path / f"{c['label']}.png")
        files[c["label"]] = tmp_path / f"{c['label']}.png"
    monkeypatch.setattr(contact_sheet, "MAX_SIDE", 600)
    out = contact_sheet.draw_sheet(files, cells, "big", tmp_path / "sheet.png")
    assert max(Image.open(out).size) <= 600
    monkeypatch.setattr(contact_sheet, "MAX_CELLS", 2)
    assert contact_sheet.draw_sheet(files, cells, "too many", tmp_path / "none.png") is None


def test_single_cell_runs_write_no_sheet(workflow, tmp_path):
    one = SWEEP.split("sweep:")[0] + "nodes:" + SWEEP.split("nodes:")[1]
    result = api.run(api.load(workflow(one)), Settings(out_dir=tmp_path / "o", use_cache=False))
    assert "sheets" not in result.manifest or result.manifest["sheets"] == []
    assert not (tmp_path / "o" / "index.html").exists()
