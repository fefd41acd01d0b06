"""flowrun diff: the meaning of a change between two workflow files or two git revisions of one (params,
sweep axes and cell counts, nodes, links, fields) and the output cells whose results it alters; --render
shows both sides of the changed cells."""

from __future__ import annotations

import json
import subprocess

from test_regress import CASE

TEXT = """\
version: 1
params: {seed: 3, word: hi}
sweep:
  grid: {seed: [3, 4]}
nodes:
  t: {type: Text, with: {text: "{{ word }}", seed: "{{ seed }}"}}
  u: {type: Text, with: {text: fixed, seed: 1}}
  out: {type: WriteText, in: {text: t}, with: {filename_prefix: "t{{ seed }}"}}
"""


def test_two_files(cli, workflow):
    a = workflow(TEXT, "a.yaml")
    b = workflow(TEXT.replace("seed: [3, 4]", "seed: [3, 4, 5]").replace("word: hi", "word: ho")
                 .replace("in: {text: t}", "in: {text: u}") + "  extra: {type: Number, with: {value: 2}}\n", "b.yaml")
    r = cli("diff", a, b)
    assert r.code == 1, r.err
    for line in ('param word: "hi" -> "ho"', "sweep axis seed: [3, 4] -> [3, 4, 5]", "cells: 2 -> 3",
                 "node extra added (Number)", "node out: input text re-linked: t -> u"):
        assert line in r.out, (line, r.out)
    assert "output out [seed-3]: changed" in r.out and "output out [seed-5]: added" in r.out
    assert "3 of 3 output cells change" in r.out
    same = cli("diff", a, a)
    assert same.code == 0 and "0 of 2 output cells change" in same.out
    data = json.loads(cli("diff", a, b, "--json").out)
    assert {"node": "out", "cell": "seed-4", "status": "changed"} in data["outputs"]


def _git(folder, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


def test_git_revisions_and_render(cli, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    wf = repo / "blend.yaml"
    wf.write_text(CASE)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    assert cli("diff", "HEAD", "--", wf).code == 0  # the working tree is HEAD
    wf.write_text(CASE.replace("[0x3366CC, 0xCC3333]", "[0x3366CC, 0x33CC33]"))
    r = cli("diff", "HEAD", "--render", "--out", tmp_path / "d", "--", wf)
    assert r.code == 1, r.err
    assert "sweep axis color" in r.out and "2 of 3 output cells change" in r.out
    assert "output save [color-3368652]" not in r.out  # the blue cell keeps its key
    assert "output save [color-13382451]: removed" in r.out and "output save [color-3394611]: added" in r.out
    page = (tmp_path / "d" / "index.html").read_text()
    assert f"HEAD:{wf}" in page and 'src="b/c33cc33.png"' in page and 'src="a/ccc3333.png"' in page
    _git(repo, "commit", "-qam", "two")
    r = cli("diff", "HEAD~1", "HEAD", "--", wf)
    assert r.code == 1 and f"HEAD~1:{wf} -> HEAD:{wf}" in r.out
    bad = cli("diff", "nosuchrev", "--", wf)
    assert bad.code == 2 and "git knows no revision 'nosuchrev'" in bad.err


def test_changed_since_tests_exactly_the_touched_case(cli, tmp_path):
    repo = tmp_path / "repo"
    (repo / "cases").mkdir(parents=True)
    one, two = repo / "cases" / "one.yaml", repo / "cases" / "two.yaml"
    one.write_text(CASE)
    two.write_text(CASE.replace("blend_factor: 0.7", "blend_factor: 0.4"))
    assert cli("test", repo / "cases", "--update").code == 0
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "cases and goldens")
    r = cli("test", repo / "cases", "--changed-since", "HEAD")
    assert r.code == 0 and "no case can render differently since HEAD" in r.out

    two.write_text(CASE.replace("blend_factor: 0.7", "blend_factor: 0.45"))  # touch one case
    (repo / "cases" / "comment.yaml").write_text("# not a workflow\n")
    one.write_text(CASE + "# a comment changes no graph\n")
    r = cli("test", repo / "cases", "--changed-since", "HEAD")
    assert f"testing {two}: its graph changed since HEAD" in r.out and f"testing {one}" not in r.out
    assert r.code == 1 and "0 pass, 1 warn, 1 fail" in r.out  # only two's two cells, which moved

    three = repo / "cases" / "three.yaml"
    three.write_text(CASE)
    r = cli("test", repo / "cases", "--changed-since", "HEAD")
    assert f"testing {three}: new since HEAD" in r.out

    golden_json = repo / "cases" / "goldens" / "one" / "cpu" / "golden.json"
    record = json.loads(golden_json.read_text())
    for env in record["environments"].values():
        env["versions"]["numpy"] = "0.0.1"
    golden_json.write_text(json.dumps(record))
    r = cli("test", repo / "cases", "--changed-since", "HEAD")
    assert f"testing {one}: its goldens were rendered in another environment" in r.out
