"""The command line of a researcher's first hour (issue 16): --set on swept keys and sweeps
from the command line, the directory's risk plot, status columns and runs not started, the
report's risk summary, separate seeds for the problem and the particles, --version, LICENSE,
CITATION.cff and the notebook extra."""
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tomllib
from test_sweep import merged, write

import meanfield
from meanfield import lazy, sweep
from meanfield.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "meanfield", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _refused(result, command, *parts):
    """Exit 2, one line on stderr that starts with the command and contains ``parts``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"meanfield {command}: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


def _listing(path):
    return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)


# --------------------------------------------------------------------------- --set and sweeps
def test_set_on_a_swept_key_replaces_its_sweep_list_with_a_note(tmp_path):
    """--set model.m=16 on a file that sweeps model.m: the runs of m = 16 for every seed, and
    one line on stderr naming the list it replaced (even with --quiet)."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 12], "run.seed": [0, 1]}))
    notes = []
    specs = sweep.plan(path, ["model.m=16"], notes)
    assert [(s.config["model"]["m"], s.config["run"]["seed"]) for s in specs] == [(16, 0), (16, 1)]
    assert len(notes) == 1 and '[sweep] "model.m" = [8, 12]' in notes[0] and "--set model.m=16" in notes[0]
    assert sweep.plan(path, ["model.d=5"], notes) and len(notes) == 1  # an unswept key: no note
    out = tmp_path / "out"
    result = _cli("run", path, "--out", out, "--quiet", "--set", "model.m=16", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"meanfield run: {path}: {notes[0]}"]
    assert sorted(p.name for p in out.glob("*.h5") if p.name != "index.h5") == sorted(f"{s.id}.h5" for s in specs)


def _zipped_file(tmp_path):
    path = write(tmp_path, merged())
    path.write_text(path.read_text() + '[sweep.zip]\n"model.m" = [8, 12]\n"dynamics.step" = [0.5, 0.25]\n')
    return path


def test_set_on_a_zipped_key_replaces_its_column_with_a_note(tmp_path):
    path = _zipped_file(tmp_path)
    notes = []
    specs = sweep.plan(path, ["model.m=16"], notes)
    assert [(s.config["model"]["m"], s.config["dynamics"]["step"]) for s in specs] == [(16, 0.5), (16, 0.25)]
    assert len(notes) == 1 and '[sweep.zip] "model.m" = [8, 12]' in notes[0]


@pytest.mark.parametrize("form", ['sweep."model.m"=[16, 32]', "sweep.model.m=[16,32]",
                                  "sweep.model.m={start=16, stop=33, step=16}"])
def test_a_sweep_list_is_set_from_the_command_line(tmp_path, form):
    """sweep."section.key"=[...] (or the dotted form, or a range) replaces the file's list, or
    adds one; the runs are those of a file that says the same, ids included."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 12], "run.seed": [0, 1]}))
    same = write(tmp_path, merged(sweep={"model.m": [16, 32], "run.seed": [0, 1]}), "same.toml")
    specs = sweep.plan(path, [form])
    assert [s.id for s in specs] == [s.id for s in sweep.plan(same)]
    assert [s.swept for s in specs] == [s.swept for s in sweep.plan(same)]
    unswept = write(tmp_path, merged(), "unswept.toml")  # a file without [sweep]: the list is added
    assert [s.config["model"]["m"] for s in sweep.plan(unswept, [form])] == [16, 32]
    zipped = sweep.plan(unswept, ["sweep.zip.model.m=[8, 16]", 'sweep.zip."dynamics.step"=[0.5, 0.25]'])
    assert [(s.config["model"]["m"], s.config["dynamics"]["step"]) for s in zipped] == [(8, 0.5), (16, 0.25)]
    # the last --set of a key wins: a value after a list collapses it, a list after a value sweeps
    notes = []
    assert [s.config["model"]["m"] for s in sweep.plan(path, [form, "model.m=4"], notes)] == [4, 4]
    assert len(notes) == 1 and form in notes[0]
    assert [s.config["model"]["m"] for s in sweep.plan(path, ["model.m=4", form])] == [16, 16, 32, 32]


@pytest.mark.parametrize("text, parts", [
    ("sweep.model.m=[16, 0]", ["--set sweep.model.m=[16, 0]", "[1] = 0", "must be an integer >= 1"]),
    ("sweep.model.m=[]", ["--set sweep.model.m=[]", "non-empty list"]),
    ("sweep.model.m=16", ["--set sweep.model.m=16", "non-empty list"]),
    ("sweep.model.m=[16, 16]", ["--set sweep.model.m=[16, 16]", "distinct"]),
    ("sweep.model.width=[16]", ["--set sweep.model.width=[16]", "unknown key 'model.width'", '"model.m"']),
    ("sweep=[16]", ["--set sweep=[16]", 'sweep."section.key"=[values]']),
    ("sweep.zip.model.m=[8, 16]", ['"model.m" is swept in [sweep]', 'sweep."model.m"=[values]']),
    ("sweep.model.m=[3, 4]", ["--set sweep.model.m=[3, 4]: model.m = 3", "m must be even"]),
])
def test_bad_sweep_overrides_are_refused_with_one_line(tmp_path, text, parts):
    path = write(tmp_path, merged(init={"symmetric": True}, sweep={"model.m": [8, 12]}))
    before = _listing(tmp_path)
    result = _cli("run", path, "--out", tmp_path / "out", "--set", text, cwd=tmp_path)
    _refused(result, "run", str(path), *parts)
    assert _listing(tmp_path) == before


def test_zipped_key_swept_again_is_refused(tmp_path):
    path = _zipped_file(tmp_path)
    _refused(_cli("run", path, "--set", "sweep.model.m=[8]", cwd=tmp_path), "run",
             '"model.m" is a column of [sweep.zip]', 'sweep.zip."model.m"=[values]')


def test_risk_plot_is_the_directory_s_and_never_one_sweep_s_in_place_of_another(tmp_path, capsys):
    """Two sweeps into one directory (the file, then --set model.m=16): risk.png shows every
    run of the directory, a curve per m, and says so; the second sweep does not replace the
    first one's curves by its own."""
    pytest.importorskip("matplotlib")
    from meanfield import report
    from meanfield.experiments import _summaries

    path = write(tmp_path, merged(sweep={"model.m": [8, 12], "run.seed": [0, 1]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    assert f"plot: {out}/risk.png (every finished run in {out}: 4 runs, a curve per m)" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(out), "--set", "model.m=16"]) == 0
    captured = capsys.readouterr()
    assert f"plot: {out}/risk.png (every finished run in {out}: 6 runs, a curve per m)" in captured.out
    summaries, keys = _summaries.directory_summaries(out)
    assert keys == ["model.m", "run.seed"]
    assert list(report.risk_curves(summaries)) == ["m=8", "m=12", "m=16"]
    assert sorted(p.name for p in out.glob("*.png")) == ["risk.png"]


# --------------------------------------------------------------------------- status and report
def _table(text):
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0].split()
    return header, [line.split() for line in lines[1:]]


def test_status_shows_every_swept_key_and_the_runs_not_started(tmp_path, capsys):
    """A batch-size sweep: status has a batch_size column (three distinct rows, not three
    identical ones); with --file and --set it lists the runs of the experiment not started."""
    doc = merged(dynamics={"integrator": "sgd", "step": 0.5, "t_max": 2.0, "batch_size": 4},
                 sweep={"dynamics.batch_size": [2, 4, 8], "run.seed": [0, 1]})
    path = write(tmp_path, doc)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--set", 'sweep."run.seed"=[0]']) == 0
    capsys.readouterr()
    assert main(["status", str(out)]) == 0
    header, rows = _table(capsys.readouterr().out)
    assert header == ["id", "status", "batch_size", "t", "risk"]
    assert [row[1:3] for row in rows] == [["complete", "2"], ["complete", "4"], ["complete", "8"]]
    assert main(["status", str(out), "--file", str(path)]) == 0
    text = capsys.readouterr().out
    header, rows = _table(text)
    assert header == ["id", "status", "batch_size", "seed", "t", "risk"]
    waiting = [row for row in rows if row[1:3] == ["not", "started"]]
    assert [row[3:] for row in waiting] == [["2", "1"], ["4", "1"], ["8", "1"]]
    ids = {s.id for s in sweep.plan(path) if s.config["run"]["seed"] == 1}
    assert {row[0] for row in waiting} == ids
    assert text.splitlines()[-1] == f"6 runs of {path}: 3 complete, 3 not started"
    # the overrides the runs were started with: nothing waits
    assert main(["status", str(out), "--file", str(path), "--set", 'sweep."run.seed"=[0]']) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"3 runs of {path}: 3 complete"
    # a directory not created yet: every run of the file, nothing written
    before = _listing(tmp_path)
    assert main(["status", str(tmp_path / "later"), "--file", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"6 runs of {path}: 6 not started"
    assert _listing(tmp_path) == before


def test_status_with_bad_file_or_set_is_refused(tmp_path):
    path = write(tmp_path, merged())
    (tmp_path / "out").mkdir()
    before = _listing(tmp_path)
    _refused(_cli("status", tmp_path / "out", "--file", path, "--set", "model.m=0", cwd=tmp_path), "status",
             str(path), "--set model.m=0", "must be an integer >= 1")
    _refused(_cli("status", tmp_path / "out", "--file", tmp_path / "none.toml", cwd=tmp_path), "status",
             "none.toml: no such experiment file")
    _refused(_cli("status", tmp_path / "out", "--set", "model.m=8", cwd=tmp_path), "status",
             "--set model.m=8", "needs --file")
    assert _listing(tmp_path) == before


def test_report_prints_the_risk_summary_of_an_ordinary_sweep(tmp_path, capsys):
    """`meanfield report` on a sweep without stages: the final risk per swept value, mean ±
    standard error over seeds, as computed from the run files; no "no limit metrics"."""
    path = write(tmp_path, merged(sweep={"model.m": [8, 12], "run.seed": [0, 1, 2]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no limit metrics" not in text and "limit:" not in text
    lines = text.splitlines()
    assert lines[0] == f"risk at the end of the 6 finished runs in {out}:"
    assert lines[1].split()[:3] == ["m", "seeds", "t"]
    finals = {}
    for spec in sweep.plan(path):
        _, _, risk = mf_series(out / f"{spec.id}.h5")
        finals.setdefault(spec.config["model"]["m"], []).append(risk[-1])
    for line, m in zip(lines[2:4], (8, 12)):
        values = np.array(finals[m])
        mean, error = values.mean(), values.std(ddof=1) / np.sqrt(3)
        assert line.split() == [str(m), "3", "5", f"{mean:.4e}", "±", f"{error:.1e}"]
    assert len(lines) == 4


def mf_series(path):
    from meanfield.io._store import read_series

    return read_series(path, "risk")


def test_report_of_an_empty_directory_says_so(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{tmp_path}: no finished runs to report"


def test_status_and_report_of_an_experiment_file_directory(tmp_path):
    """The file of an [experiment] kind (deep linear) is a run of its directory for status,
    complete, never "corrupt", and report names no damaged file."""
    out = tmp_path / "out"
    sets = [a for s in ("dynamics.t_max=2.0", "record.times=5", "network.K=2") for a in ("--set", s)]
    assert _cli("run", os.path.join(ROOT, "runs", "deep_linear.toml"), "--out", out, "--quiet", *sets).returncode == 0
    status = _cli("status", out)
    assert status.returncode == 0 and status.stderr == "", status.stderr
    (row,) = status.stdout.splitlines()[1:]
    assert row.split()[1] == "complete", status.stdout
    report = _cli("report", out)
    assert report.returncode == 0 and report.stderr == "", report.stderr
    assert report.stdout.startswith("plot: ") and "risk at the end" not in report.stdout


# --------------------------------------------------------------------------- seeds
# The ids of every run of runs/quickstart.toml, computed before [problem] seed existed (commit
# a811383, `[s.id for s in meanfield.sweep.plan("runs/quickstart.toml")]`), and the SHA-256 of
# the space-joined ids of each shipped sweep file, computed the same way at that commit: a key
# that is absent must not change any id.
QUICKSTART_IDS = ["ea86c3bb57ce2652", "b9c9d280f5b93545", "784c92fd3697f8a0", "2946e063b82a9c8f",
                  "d974804851545d3a", "ae3d61ba639a5212", "1173d7e067fbbad0", "757b9c59483168cc",
                  "faab3d3509007906", "a3c02f24fa550e1c", "5804483483500f20", "128dc3ea33369842"]
SHIPPED_IDS = {"census": (900, "38edc39b562a4950"), "flow_step_error": (4, "d1c0ebf5708ab457"),
               "langevin": (3, "a45c8177851a1725"), "lazy_relu_width": (24, "6e5fbb79bd5d5245"),
               "lazy_vs_active": (24, "1fa46b289f306cab"), "limit_relu": (24, "b2e9f73ecaa2ed25"),
               "mode_connectivity": (64, "43d22d72f2695f10"), "online_sgd": (3, "ffc01a33af591f19"),
               "quickstart": (12, "ffc360b80f32cea1"), "width_sweep": (20, "926f73348be47164")}


def test_run_ids_of_the_shipped_files_are_unchanged():
    assert [s.id for s in sweep.plan(os.path.join(ROOT, "runs", "quickstart.toml"))] == QUICKSTART_IDS
    for name, (count, digest) in SHIPPED_IDS.items():
        specs = sweep.plan(os.path.join(ROOT, "runs", f"{name}.toml"))
        assert "seed" not in specs[0].config["problem"]
        ids = " ".join(s.id for s in specs)
        assert (len(specs), hashlib.sha256(ids.encode()).hexdigest()[:16]) == (count, digest), name


def _built(path, **changes):
    specs = sweep.plan(path, [f"{k}={v}" for k, v in changes.items()])
    return [(spec, sweep.build(spec.config)) for spec in specs]


@pytest.mark.parametrize("problem", [
    {"kind": "finite_data", "n_samples": 50, "teacher": {"kind": "random", "k": 2}},
    {"kind": "population", "method": "monte_carlo", "mc_samples": 300, "teacher": {"kind": "orthonormal", "k": 2,
                                                                                    "rotate": True}},
])
def test_problem_seed_fixes_teacher_and_data_and_run_seed_moves_the_particles(tmp_path, problem):
    """Two runs with run.seed 0 and 1 and the same problem.seed share the teacher, the data
    (and the held-out sample) exactly and start from different particles; without
    problem.seed their problems differ; problem.seed = s is the problem of run.seed = s."""
    doc = merged(problem=problem, lazy={"test_samples": 20}, sweep={"run.seed": [0, 1]})
    doc["problem"]["seed"] = 7
    path = write(tmp_path, doc)
    (a, A), (b, B) = _built(path)
    assert a.config["problem"]["seed"] == b.config["problem"]["seed"] == 7
    np.testing.assert_array_equal(A.teacher.W, B.teacher.W)
    data = (0, 1)  # X and y
    for name in data:
        np.testing.assert_array_equal(_data(A.problem, name), _data(B.problem, name))
    for x, y in zip(lazy.held_out_sample(a.config, A.teacher.W), lazy.held_out_sample(b.config, B.teacher.W)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(A.W0, B.W0)
    del doc["problem"]["seed"]
    plain = write(tmp_path, doc, "plain.toml")
    (c, C), (d, D) = _built(plain)
    assert "seed" not in c.config["problem"]
    assert not np.array_equal(C.teacher.W, D.teacher.W)
    np.testing.assert_array_equal(C.W0, A.W0)  # the particles follow run.seed either way
    (e, E), _ = _built(path, **{"problem.seed": 1})
    np.testing.assert_array_equal(E.teacher.W, D.teacher.W)
    for name in data:
        np.testing.assert_array_equal(_data(E.problem, name), _data(D.problem, name))
    np.testing.assert_array_equal(E.W0, C.W0)


def _data(problem, index):
    """X (index 0) or y (1) of the training set of a finite-data problem, or of the fixed
    sample of a Monte Carlo one."""
    return (problem.X, problem.y)[index] if hasattr(problem, "X") else problem.sample[index]


def test_problem_seed_is_checked(tmp_path):
    doc = merged()
    doc["problem"]["seed"] = -1
    path = write(tmp_path, doc)
    _refused(_cli("run", path, cwd=tmp_path), "run", str(path), "[problem] seed = -1", "must be an integer >= 0")


# --------------------------------------------------------------------------- the package
def test_version_option():
    result = _cli("--version")
    assert result.returncode == 0 and result.stdout == f"meanfield {meanfield.__version__}\n", result
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        assert tomllib.load(handle)["project"]["version"] == meanfield.__version__


def test_license_citation_and_notebook_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)["project"]
    assert project["license"] == {"text": "BSD-3-Clause"}
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert text.startswith("BSD 3-Clause License") and "the meanfield developers" in text
    assert "Neither the name of the copyright holder" in text
    cff = open(os.path.join(ROOT, "CITATION.cff")).read()
    fields = dict(re.findall(r"^([a-z-]+): *(.*)$", cff, re.M))
    assert fields["cff-version"] == "1.2.0" and fields["license"] == "BSD-3-Clause"
    assert fields["version"].strip('"') == meanfield.__version__ and fields["title"] and fields["message"]
    assert re.search(r'^authors:\n  - name: "The meanfield developers"$', cff, re.M)
    try:
        import yaml
    except ImportError:
        pass
    else:
        document = yaml.safe_load(cff)
        assert document["authors"] == [{"name": "The meanfield developers"}]
        assert str(document["version"]) == meanfield.__version__
    notebook = " ".join(project["optional-dependencies"]["notebook"])
    assert "jupyterlab" in notebook and "ipykernel" in notebook
