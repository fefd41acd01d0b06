"""The command line: exit codes, messages without tracebacks, plan, nodes, schema, and a light `validate`."""

from __future__ import annotations

import json
import subprocess
import sys

from flowrun.nodes.registry import default_registry
from flowrun.spec.schema import schema_text

from conftest import ROOT, TESTS, flowrun_process, missing_extra

OK = """\
version: 1
params: {seed: 3}
sweep:
  grid: {seed: [3, 4]}
nodes:
  t: {type: Text, with: {text: hi, seed: "{{ seed }}"}}
  out: {type: WriteText, in: {text: t}, with: {filename_prefix: "t{{ seed }}"}}
"""


def test_run_success_exit_0(cli, workflow, tmp_path):
    r = cli("run", workflow(OK))
    assert r.code == 0, r.err
    assert "2 file(s) in out/wf" in r.out
    assert "[1/4] t (Text) seed-3 executed" in r.err
    assert (tmp_path / "out" / "wf" / "t4.txt").read_text() == "hi#4"


def test_run_json_prints_manifest(cli, workflow):
    r = cli("run", workflow(OK), "--json", "--set", "seed=9")
    assert r.code == 0
    manifest = json.loads(r.out)
    assert [c["label"] for c in manifest["cells"]] == ["default"]
    assert manifest["cells"][0]["params"] == {"seed": 9}


def test_invalid_workflow_exit_2_without_traceback(cli, workflow):
    r = cli("run", workflow(OK.replace("type: Text", "type: Txt")))
    assert r.code == 2
    assert "wf.yaml:6:13: error[unknown-node-type]: node 't', field 'type'" in r.err
    assert "did you mean 'Text'" in r.err and "Traceback" not in r.err


def test_invalid_workflow_writes_nothing(cli, workflow, tmp_path):
    cli("run", workflow(OK.replace("type: Text", "type: Txt")))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_usage_errors_exit_2(cli, workflow):
    path = workflow(OK)
    assert cli("run", path, "--set", "nope").code == 2
    r = cli("run", path, "--set", "zzz=1")
    assert r.code == 2 and "no param or sweep axis is named 'zzz'" in r.err
    assert cli("run", path, "--bogus-flag").code == 2
    assert cli("frobnicate").code == 2
    r = cli("run", "missing.yaml")
    assert r.code == 2 and "no such file: missing.yaml" in r.err


def test_node_failure_exit_1(cli, workflow, tmp_path):
    path = workflow(OK.replace("out: {type: WriteText, in: {text: t}",
                               "f: {type: Fail, in: {text: t}}\n  out: {type: WriteText, in: {text: f}"))
    r = cli("run", path)
    assert r.code == 1
    assert "error: node 'f' (Fail) in cell seed-3 failed: it broke" in r.err and "Traceback" not in r.err
    manifest = json.loads((tmp_path / "out" / "wf" / "run.json").read_text())
    assert manifest["status"] == "failed"


def test_unexpected_exception_is_one_line_unless_debug(cli, workflow):
    path = workflow(OK.replace("out: {type: WriteText, in: {text: t}",
                               "f: {type: Fail, in: {text: t}, with: {kind: bug}}\n  out: {type: WriteText, in: {text: f}"))
    r = cli("run", path)
    assert r.code == 1 and "failed: RuntimeError: it broke" in r.err and "Traceback" not in r.err
    r = cli("--debug", "run", path, "--no-cache")
    assert r.code == 1 and "Traceback" in r.err


def test_validate_many_files(cli, workflow):
    good, bad = workflow(OK, "good.yaml"), workflow(OK.replace("version: 1", "version: 2"), "bad.yaml")
    r = cli("validate", good, bad)
    assert r.code == 2
    assert "ok " in r.out and "good.yaml: 2 nodes, 2 cells" in r.out
    assert "bad.yaml:1:10: error[version]" in r.err
    assert cli("validate", good).code == 0


def test_plan_shows_cached_and_why(cli, workflow):
    path = workflow(OK)
    r = cli("plan", path)
    assert r.code == 0
    assert "run     t    Text" in r.out and "not in the cache" in r.out
    assert "4 nodes: 4 to run, 0 cached, 0 not needed" in r.out
    cli("run", path)
    r = cli("plan", path, "--sweep", "seed=3,5")
    assert "cached  out" in r.out and "skip    t" in r.out
    assert "4 nodes: 2 to run, 1 cached, 1 not needed" in r.out
    plan = json.loads(cli("plan", path, "--json").out)
    assert {n["action"] for n in plan["nodes"]} == {"cached", "skip"}


def test_nodes_lists_types_with_fields(cli):
    r = cli("nodes", "--json")
    described = {d["type"]: d for d in json.loads(r.out)}
    assert {"EmptyImage", "SaveImage", "PrimitiveInt", "Text"} <= set(described)
    empty = described["EmptyImage"]
    assert empty["fields"]["width"] == {"type": "INT", "minimum": 1, "maximum": 16384, "default": 512}
    assert empty["outputs"] == {"image": "IMAGE"}
    blend = described["ImageBlend"]["fields"]["blend_mode"]
    assert blend["enum"][:2] == ["normal", "multiply"]
    text = cli("nodes", "ImageBlend").out
    assert "in    image1: IMAGE" in text and "with  blend_factor: FLOAT = 0.5, minimum 0.0, maximum 1.0" in text
    assert cli("nodes", "Nope").code == 2


def test_committed_schema_is_current():
    committed = (ROOT / "schemas" / "workflow.schema.json").read_text()
    assert committed == schema_text(default_registry(builtin_only=True)), "run `flowrun schema` and commit the result"


def test_schema_uses_only_supported_composition():
    schema = json.loads(schema_text(default_registry(builtin_only=True)))
    used = set()

    def walk(node):
        if isinstance(node, dict):
            used.update(node)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert not used & {"anyOf", "allOf", "not", "if", "then", "discriminator"}
    node_types = [ref["$ref"].split(".")[-1] for ref in schema["$defs"]["Node"]["oneOf"]]
    assert "SaveImage" in node_types


def test_schema_validates_the_examples():
    jsonschema = __import__("pytest").importorskip("jsonschema")
    import yaml

    schema = json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)  # one validator for all (jsonschema.validate re-checks the schema each call)
    for path in sorted((ROOT / "workflows").glob("*.yaml")):
        validator.validate(yaml.safe_load(path.read_text()))


def test_python_dash_m_and_version(tmp_path):
    r = flowrun_process("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("flowrun, version ")


BLOCK_HEAVY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'diffusers', 'transformers', 'networkx'):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
from flowrun.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers', 'transformers', 'networkx'))
    print('HEAVY', heavy, 'EXIT', exc.code)
"""


def test_validate_imports_no_heavy_library(tmp_path):
    files = [str(p) for p in sorted((ROOT / "workflows").glob("*.yaml")) if not missing_extra(p)]
    env = {"PYTHONPATH": f"{TESTS}:{ROOT}", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, "validate", *files], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert "HEAVY [] EXIT 0" in r.stdout, r.stdout + r.stderr


def test_plan_estimates_time_from_earlier_runs(cli, workflow, tmp_path):
    path = workflow(OK)
    r = cli("plan", path)
    assert "estimated time: 0.0 s from earlier runs (no earlier timings for Text, WriteText)" in r.out
    cli("run", path)
    timings = json.loads((tmp_path / "cache" / "timings.json").read_text())
    assert len(timings["types"]["Text"]) == 2 and len(timings["keys"]) == 4
    r = cli("plan", path, "--sweep", "seed=5,6,7")
    assert "6 nodes: 6 to run" in r.out and "estimated time:" in r.out and "no earlier timings" not in r.out
    plan = json.loads(cli("plan", path, "--sweep", "seed=5", "--json").out)
    assert plan["estimated_seconds"] >= 0 and plan["no_timings_for"] == []


def test_resume_after_a_run_killed_halfway(workflow, tmp_path):
    """A sweep interrupted after some cells re-runs only the missing ones, through the cache."""
    import signal
    import time as _time

    path = workflow(OK.replace("grid: {seed: [3, 4]}", "grid: {seed: [1, 2, 3, 4, 5, 6]}").replace(
        "out: {type: WriteText, in: {text: t}", "s: {type: Steps, in: {text: t}, with: {steps: 1}}\n"
        "  out: {type: WriteText, in: {text: s}"))
    env = {"FLOWRUN_CACHE_DIR": str(tmp_path / "c"), "FLOWRUN_TEST_SLOW": "0.4"}
    proc = subprocess.Popen([sys.executable, "-m", "flowrun", "run", str(path), "--out", str(tmp_path / "o"), "-q"],
                            cwd=tmp_path, env={**__import__("os").environ, "PYTHONPATH": f"{TESTS}:{ROOT}", **env})
    deadline = _time.time() + 60
    while _time.time() < deadline and len(list((tmp_path / "o").glob("*.txt"))) < 2:
        _time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in (tmp_path / "o").glob("*.txt"))
    assert 2 <= len(done) < 6
    r = flowrun_process("run", path, "--out", tmp_path / "o", "--json", cwd=tmp_path, env=env)
    manifest = json.loads(r.stdout)
    saves = [n for n in manifest["nodes"] if n["id"] == "out"]
    assert sum(n["status"] == "cached" for n in saves) >= len(done) - 1
    assert sum(n["status"] == "executed" for n in saves) <= 6 - len(done) + 1
    assert len(list((tmp_path / "o").glob("*.txt"))) == 6
