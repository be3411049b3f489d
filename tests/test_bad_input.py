"""Bad input on the command line: impossible sizes and unusable paths are refused with one line
naming the option or key, exit status 2, no traceback, and nothing written.

Every case runs ``python -m meanfield`` as a child process, as a user would.
"""
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from meanfield import sweep
from meanfield.experiments import _memory
from meanfield.experiments._config import ConfigError

TINY = {
    "model": {"d": 4, "m": 8, "activation": "relu"},
    "problem": {"kind": "population", "teacher": {"kind": "orthonormal", "k": 2}},
    "dynamics": {"integrator": "gradient_descent", "step": 0.5, "t_max": 1.0},
    "record": {"times": 2},
}


def _toml(doc: dict) -> str:
    """TOML for tables one level deep with sub-tables; integers are written as they are, so that
    10**20 reaches the parser as a 21-digit literal."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = []
    for section, content in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{json.dumps(k) if '.' in k else k} = {value(v)}" for k, v in content.items()
                  if not isinstance(v, dict)]
        for sub, table in content.items():
            if isinstance(table, dict):
                lines.append(f"[{section}.{sub}]")
                lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _experiment(tmp_path, name="exp.toml", **sections):
    doc = json.loads(json.dumps(TINY))
    for section, content in sections.items():
        doc.setdefault(section, {}).update(content)
    path = tmp_path / name
    path.write_text(_toml(doc))
    return path


def _cli(*args, cwd, prefix=(), env=None, timeout=120):
    return subprocess.run([*prefix, sys.executable, "-m", "meanfield", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _listing(root):
    """Every path under root with its size and modification time: what 'nothing written' compares."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            found[path] = (info.st_size, info.st_mtime_ns)
    return found


def _refused(result, command, *expected):
    """Exit 2, stdout empty, exactly one line on stderr, no traceback, naming what is expected."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"meanfield {command}: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# --------------------------------------------------------------------------- impossible sizes
@pytest.mark.parametrize("m", [2_000_000_000, 10**20], ids=["2e9", "1e20"])
def test_impossible_width_in_the_file_is_refused_before_anything_is_written(tmp_path, m):
    """m = 2e9 needs hundreds of GiB and m = 10**20 (a TOML integer beyond 64 bits) more than
    any machine: one line with the key, the estimate and the machine's memory in GiB, and the
    option that overrides it; no output directory, no index.h5 or catalog.csv."""
    path = _experiment(tmp_path, model={"m": m})
    (spec,) = sweep.plan(path)
    # Only a machine with more than ~940 GiB can run m = 2e9; there the refusal is rightly absent.
    if _memory.estimate_bytes(spec.config)["total"] <= _memory.available_bytes():
        pytest.skip(f"this machine has the memory for m = {m}")
    before = _listing(tmp_path)
    result = _cli("run", path, "--out", tmp_path / "out", cwd=tmp_path)
    line = _refused(result, "run", str(path), f"model.m = {m}", "GiB", "this machine has", "--max-memory")
    need = float(re.search(r"needs about ([0-9.e+]+) GiB", line).group(1))
    have = float(re.search(r"this machine has ([0-9.e+]+) GiB", line).group(1))
    assert need > have
    assert _listing(tmp_path) == before


def test_impossible_width_from_set_and_sweep_is_refused(tmp_path):
    """The same through --set, and for the largest run of a sweep (the others would fit)."""
    path = _experiment(tmp_path)
    before = _listing(tmp_path)
    _refused(_cli("run", path, "--set", "model.m=2000000000", "--out", tmp_path / "out", cwd=tmp_path), "run",
             "model.m = 2000000000", "GiB")
    swept = _experiment(tmp_path, "swept.toml", sweep={"model.m": [8, 16, 3_000_000_000]})
    before = _listing(tmp_path)
    _refused(_cli("run", swept, "--out", tmp_path / "out", cwd=tmp_path), "run", "model.m = 3000000000",
             "the largest run")
    assert _listing(tmp_path) == before


def test_impossible_size_is_refused_before_submitting_to_slurm(tmp_path):
    """--slurm: the check comes before submitit is even imported (no slurm-logs, no job)."""
    path = _experiment(tmp_path, model={"m": 2_000_000_000})
    before = _listing(tmp_path)
    _refused(_cli("run", path, "--slurm", "--out", tmp_path / "out", cwd=tmp_path), "run", "model.m = 2000000000",
             "GiB")
    assert _listing(tmp_path) == before


def test_max_memory_option(tmp_path):
    """--max-memory below a tiny run's estimate refuses it naming the option; a bad size is one
    line too; a limit above the estimate runs it."""
    path = _experiment(tmp_path)
    out = tmp_path / "out"
    _refused(_cli("run", path, "--max-memory", "100M", "--out", out, cwd=tmp_path), "run",
             "--max-memory allows 0.1 GiB")
    assert not out.exists()
    _refused(_cli("run", path, "--max-memory", "12X", "--out", out, cwd=tmp_path), "run", "--max-memory 12X")
    _refused(_cli("run", path, "--max-memory=-1G", "--out", out, cwd=tmp_path), "run", "--max-memory -1G")
    assert not out.exists()
    result = _cli("run", path, "--max-memory", "64G", "--out", out, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "catalog.csv").exists()


def test_runs_in_parallel_must_fit_together(tmp_path):
    """With --jobs 2 the two largest runs count together."""
    specs = sweep.plan(_experiment(tmp_path, sweep={"run.seed": [0, 1]}))
    one = _memory.estimate_bytes(specs[0].config)["total"]
    limit = 1.5 * one
    assert _memory.check(specs, limit, jobs=1)["total"] == one
    with pytest.raises(ConfigError, match=r"2 runs at once \(--jobs 2\)"):
        _memory.check(specs, limit, jobs=2)
    assert _memory.check(specs, math.inf, jobs=2)["total"] == one


# --------------------------------------------------------------------------- the estimate
def _config(tmp_path, *overrides):
    (spec,) = sweep.plan(_experiment(tmp_path), list(overrides))
    return spec.config


def test_estimate_adds_up_and_grows_with_the_arrays(tmp_path):
    """The breakdown sums to the total; at large m the estimate is linear in m, float32 halves
    the arrays, the heavy ball adds its momentum (twice), finite data adds X (n, d)."""
    base = _memory.estimate_bytes(_config(tmp_path, "model.m=100000", "model.d=50"))
    assert sum(base["breakdown"].values()) == base["total"]
    arrays = base["total"] - _memory.BASELINE_BYTES
    P = 100_000 * 52 * 8  # one (m, d + 2) float64 array
    assert 6 * P <= arrays <= 20 * P
    double = _memory.estimate_bytes(_config(tmp_path, "model.m=200000", "model.d=50"))["total"]
    assert double - _memory.BASELINE_BYTES == pytest.approx(2 * arrays, rel=0.01)
    single = _memory.estimate_bytes(_config(tmp_path, "model.m=100000", "model.d=50", 'model.dtype="float32"',
                                            'record.particles_dtype="float32"'))["total"]
    assert single - _memory.BASELINE_BYTES == pytest.approx(arrays / 2, rel=0.01)
    ball = _memory.estimate_bytes(_config(tmp_path, "model.m=100000", "model.d=50", 'dynamics.integrator="heavy_ball"',
                                          "dynamics.step=0.05"))["total"]
    assert ball - base["total"] == pytest.approx(2 * P, rel=0.01)
    data = _memory.estimate_bytes(_config(tmp_path, 'problem.kind="finite_data"', "problem.n_samples=1000000",
                                          "model.d=50"))
    assert any(k.startswith("sample X") and v == 1_000_000 * 51 * 8 for k, v in data["breakdown"].items())


def test_estimate_reads_the_size_of_a_data_file_from_its_header(tmp_path):
    """problem.data: the rows of X come from the .npz header (compressed too), not a guess."""
    import numpy as np

    np.savez_compressed(tmp_path / "data.npz", X=np.zeros((5000, 4)), y=np.zeros(5000))
    (spec,) = sweep.plan(_experiment(tmp_path, problem={"kind": "finite_data", "data": "data.npz"}))
    breakdown = _memory.estimate_bytes(spec.config)["breakdown"]
    assert breakdown["sample X (5000, d) and y float64"] == 5000 * 5 * 8


def test_estimate_of_sizes_beyond_64_bits(tmp_path):
    """Python integers throughout: m = 10**20 gives about 10**20 (d + 2) * 8 * several bytes."""
    config = _config(tmp_path, "model.m=100000000000000000000")
    total = _memory.estimate_bytes(config)["total"]
    assert isinstance(total, int) and total > 10**20 * 6 * 8 * 4


def test_stiff_flow_counts_its_dense_jacobian(tmp_path):
    """Radau on n_var = m (d + 1) unknowns holds dense n_var x n_var matrices: m = 2000, d = 20
    (n_var = 42000) is refused on a 64 GiB limit, naming the solver."""
    config = _config(tmp_path, "model.m=2000", "model.d=20", 'dynamics.integrator="flow"',
                     'dynamics.ode_method="Radau"')
    estimate = _memory.estimate_bytes(config)
    assert estimate["total"] > 6 * 42_000**2 * 8
    (spec,) = sweep.plan(_experiment(tmp_path), ["model.m=2000", "model.d=20", 'dynamics.integrator="flow"',
                                                 'dynamics.ode_method="Radau"'])
    with pytest.raises(ConfigError, match='dynamics.ode_method = "Radau"'):
        _memory.check([spec], 64 * 2**30)


_PEAK_OF_RUN = """
import sys
from meanfield.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM")), flush=True)
sys.exit(code)
"""


# Linux only (VmHWM); CI and the clusters this tool targets are Linux.
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc (Linux)")
def test_estimate_against_the_measured_peak(tmp_path):
    """SGD on a finite sample of n = 400000, d = 100 (X: 305 MiB), m = 64, batch 1000: the
    estimate is within [0.5, 3] of the child's peak RSS (VmHWM), and so is the part of
    it above the same run's on a sample of 2000 (the interpreter, libraries and kernels),
    which the sample dominates."""
    path = _experiment(tmp_path)

    def peak(*sets):
        out = tmp_path / f"out{len(sets)}"
        args = ["run", str(path), "--out", str(out), "--quiet"]
        for s in sets:
            args += ["--set", s]
        # The child reports its own VmHWM (the high-water mark of its memory after exec). Its
        # ru_maxrss would not do: Linux carries the pre-exec high-water mark of the forked
        # image into it, which here is the whole pytest process (600 MB late in a full run).
        child = subprocess.run([sys.executable, "-c", _PEAK_OF_RUN, *args], cwd=tmp_path, capture_output=True,
                               text=True, timeout=600)
        assert child.returncode == 0, child.stderr
        shutil.rmtree(out)
        return int(child.stdout.split("VmHWM:")[-1].split()[0]) * 1024  # kB

    sets = ('problem.kind="finite_data"', "problem.n_samples=400000", "model.d=100", "model.m=64",
            'dynamics.integrator="sgd"', "dynamics.batch_size=1000", "problem.teacher.k=5")
    (spec,) = sweep.plan(path, list(sets))
    estimate = _memory.estimate_bytes(spec.config)["total"]
    # The same run on a small sample, first to compile the kernels (in a fresh checkout the
    # compiler's memory would count in the first run's peak), then as the baseline.
    small = tuple("problem.n_samples=2000" if s.startswith("problem.n_samples") else s for s in sets)
    peak(*small)
    measured, tiny = peak(*sets), peak(*small)
    assert 0.5 <= estimate / measured <= 3, (estimate, measured)
    assert 0.5 <= (estimate - _memory.BASELINE_BYTES) / (measured - tiny) <= 3, (estimate, measured, tiny)


# --------------------------------------------------------------------------- the machine
def test_available_bytes_reads_the_cgroup_limit(tmp_path):
    """The lower of physical memory and a set cgroup limit (v2 memory.max or v1
    memory.limit_in_bytes, the process's own cgroup or the root); "max" and v1's huge value
    mean no limit."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    proc = tmp_path / "cgroup"
    proc.write_text("0::/job/step\n")
    root = tmp_path / "fs"
    (root / "job" / "step").mkdir(parents=True)
    (root / "memory.max").write_text("max\n")
    assert _memory.available_bytes(str(root), str(proc)) == physical
    (root / "job" / "memory.max").write_text(f"{2**30}\n")
    assert _memory.available_bytes(str(root), str(proc)) == min(physical, 2**30)
    (root / "job" / "step" / "memory.max").write_text(f"{2**29}\n")
    assert _memory.available_bytes(str(root), str(proc)) == min(physical, 2**29)
    proc.write_text("4:memory:/slurm/job\n")
    v1 = root / "memory" / "slurm" / "job"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert _memory.available_bytes(str(root), str(proc)) == physical
    (v1 / "memory.limit_in_bytes").write_text(f"{3 * 2**28}\n")
    assert _memory.available_bytes(str(root), str(proc)) == min(physical, 3 * 2**28)
    assert 0 < _memory.available_bytes() <= physical


@pytest.mark.parametrize("text, expected", [("64G", 64 * 2**30), ("512M", 512 * 2**20), ("1.5T", 1.5 * 2**40),
                                            ("2gib", 2 * 2**30), ("1000", 1000), ("inf", math.inf)])
def test_parse_size(text, expected):
    assert _memory.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "0", "-3G", "12X", "nan", "1e3G"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError, match="--max-memory"):
        _memory.parse_size(text)


# --------------------------------------------------------------------------- bad paths
def test_out_naming_an_existing_file(tmp_path):
    """--out FILE: one line naming the option and the path; the file is left as it was."""
    path = _experiment(tmp_path)
    target = tmp_path / "results"
    target.write_text("keep me\n")
    before = _listing(tmp_path)
    _refused(_cli("run", path, "--out", target, cwd=tmp_path), "run", f"--out {target}: exists and is not a directory")
    assert target.read_text() == "keep me\n"
    assert _listing(tmp_path) == before


def test_out_whose_parent_cannot_be_created(tmp_path):
    """--out under a file: its parent cannot be created."""
    path = _experiment(tmp_path)
    (tmp_path / "a_file").write_text("x")
    before = _listing(tmp_path)
    _refused(_cli("run", path, "--out", tmp_path / "a_file" / "sub" / "out", cwd=tmp_path), "run",
             f"--out {tmp_path / 'a_file' / 'sub' / 'out'}: cannot be created: "
             f"{tmp_path / 'a_file'} is not a directory")
    _refused(_cli("run", path, "--out", tmp_path / ("x" * 300), cwd=tmp_path), "run", "--out", "longer than")
    _refused(_cli("run", path, "--out", "", cwd=tmp_path), "run", "--out : an empty path")
    assert _listing(tmp_path) == before


def _read_only_mount_prefix(mount_point):
    """A command prefix that runs the child in its own mount namespace with a read-only tmpfs on
    ``mount_point`` (the mount ends with the child), or None where this machine does not allow it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount -t tmpfs -o ro,size=1m tmpfs "$0" && exec "$@"'
    for flags in (["--mount"], ["--user", "--map-root-user", "--mount"]):
        prefix = [unshare, *flags, "sh", "-c", script, str(mount_point)]
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def test_out_on_a_read_only_file_system(tmp_path):
    """A read-only mount stops root too (permission bits do not): --out at the mount point or
    below it is refused naming the read-only file system."""
    path = _experiment(tmp_path)
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    prefix = _read_only_mount_prefix(mount_point)
    # CI (root) always mounts it; a user's machine without namespaces cannot make a read-only
    # file system, which only this test needs.
    if prefix is None:
        pytest.skip("cannot mount a read-only tmpfs here (no unshare, no mount namespace, no user namespace)")
    before = _listing(tmp_path)
    _refused(_cli("run", path, "--out", mount_point, cwd=tmp_path, prefix=prefix), "run",
             f"--out {mount_point}: the directory is on a read-only file system")
    _refused(_cli("run", path, "--out", mount_point / "new" / "out", cwd=tmp_path, prefix=prefix), "run",
             f"--out {mount_point / 'new' / 'out'}: cannot be created: {mount_point} is on a read-only file system")
    assert _listing(tmp_path) == before


def _as_unprivileged():
    """A command prefix that runs the child as an unprivileged user (nobody) when this process
    is root and may switch, [] when not root, None when root cannot switch."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_out_in_a_directory_without_write_permission(tmp_path):
    """chmod 555: a user without write permission gets one line saying so (root would not be
    stopped by the bits, so as root the child runs as nobody)."""
    prefix = _as_unprivileged()
    # As root the bits stop nobody, so the child must drop to nobody (setpriv, in util-linux:
    # present in CI); a non-root user runs the check directly.
    if prefix is None:
        pytest.skip("running as root without setpriv: cannot test permission bits")
    if prefix:  # nobody must reach the files: pytest's own tmp_path sits under a 0700 directory
        tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="meanfield-bad-input-"))
        os.chmod(tmp_path, 0o755)
    path = _experiment(tmp_path)
    os.chmod(path, 0o644)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    cache = tmp_path / "numba-cache"  # the checkout's __pycache__ is not nobody's to write
    cache.mkdir()
    os.chmod(cache, 0o777)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), HOME=str(tmp_path))
    # the probe imports what the refused run imports (numba makes the cache directory of a module
    # with cached kernels when it is imported, so that it is there before the listing)
    probe = subprocess.run([*prefix, sys.executable, "-c", "import meanfield.cli, meanfield.online"],
                           capture_output=True, env=env, cwd=tmp_path, timeout=60)
    # nobody may lack read access to a checkout under a private home; then the check cannot
    # run as nobody here (in CI the checkout is readable and it runs).
    if probe.returncode != 0:
        pytest.skip(f"the unprivileged user cannot import meanfield here: {probe.stderr.decode()[-200:]}")
    try:
        before = _listing(tmp_path)
        _refused(_cli("run", path, "--out", locked / "out", cwd=tmp_path, prefix=prefix, env=env), "run",
                 f"--out {locked / 'out'}: cannot be created: {locked} is not writable (permission denied)")
        _refused(_cli("run", path, "--out", locked, cwd=tmp_path, prefix=prefix, env=env), "run",
                 f"--out {locked}: the directory is not writable (permission denied)")
        assert _listing(tmp_path) == before
    finally:
        os.chmod(locked, 0o755)
        if prefix:
            shutil.rmtree(tmp_path)


@pytest.mark.parametrize("command", ["status", "report"])
def test_status_and_report_of_a_bad_directory(tmp_path, command):
    """``meanfield status DIR`` / ``report DIR`` with no such directory, or a file: one line."""
    (tmp_path / "a_file").write_text("x")
    before = _listing(tmp_path)
    _refused(_cli(command, tmp_path / "missing", cwd=tmp_path), command, f"{tmp_path / 'missing'}: no such directory")
    _refused(_cli(command, tmp_path / "a_file", cwd=tmp_path), command, str(tmp_path / "a_file"))
    assert _listing(tmp_path) == before
