"""Pictures from the command line: ``meanfield plot DIR`` (the risk plot of a directory) and
``meanfield animate RUN.h5`` (the particle cloud of a run), checked by content against the run
files."""
import hashlib
import os
import shutil
import sys

import h5py
import numpy as np
import pytest

pytest.importorskip("xarray")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from meanfield import analysis  # noqa: E402
from meanfield.cli import main  # noqa: E402

SWEEP = """
[model]
d = 4
m = 8
activation = "relu"
[init]
tau = 1.5
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 2
rotate = true
[dynamics]
integrator = "gradient_descent"
step = 0.5
t_max = 5.0
[record]
times = 6
spacing = "log"
t_min = 0.5
[sweep]
"model.m" = [8, 64]
"run.seed" = [0, 1]
"""

ONE_NEURON = """
[model]
d = 4
m = 16
activation = "relu"
[problem]
kind = "population"
[problem.teacher]
kind = "orthonormal"
k = 1
[dynamics]
integrator = "gradient_descent"
step = 0.5
t_max = 2.0
[record]
times = 3
particles = {particles}
"""


def _runs(directory):
    """(m, seed) -> path of each run file of the sweep."""
    runs = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".h5") and name != "index.h5":
            path = os.path.join(directory, name)
            with h5py.File(path, "r") as f:
                m = int(f["parameters/model"].attrs["m"])
                seed = int(__import__("json").loads(f.attrs["config"])["run"]["seed"])
            runs[(m, seed)] = path
    return runs


def _h5(path, name):
    with h5py.File(path, "r") as f:
        return f[name][()]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Four real runs (m = 8, 64; seeds 0, 1; six records) of a rotated two-neuron teacher."""
    root = tmp_path_factory.mktemp("pictures")
    (root / "sweep.toml").write_text(SWEEP)
    assert main(["run", str(root / "sweep.toml"), "--out", str(root / "out"), "--quiet"]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def one_neuron(tmp_path_factory):
    """Two single runs of a one-neuron teacher: with particles and without (particles = false)."""
    root = tmp_path_factory.mktemp("one_neuron")
    paths = {}
    for particles in ("true", "false"):
        (root / f"{particles}.toml").write_text(ONE_NEURON.format(particles=particles))
        out = root / particles
        assert main(["run", str(root / f"{particles}.toml"), "--out", str(out), "--quiet"]) == 0
        (name,) = [n for n in os.listdir(out) if n.endswith(".h5") and n != "index.h5"]
        paths[particles == "true"] = str(out / name)
    return paths


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ meanfield plot
def test_plot_draws_the_seed_mean_and_band_per_swept_value(sweep_dir):
    from matplotlib.collections import PolyCollection

    fig = analysis.plot_directory_risk(sweep_dir)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log" and ax.get_xlabel() == "time t"
    assert ax.get_ylabel() == "risk (mean over seeds, min-max band)"
    assert ax.get_title() == "out: 4 runs, a curve per m"
    assert [line.get_label() for line in ax.get_lines()] == ["m=8 (2 seeds)", "m=64 (2 seeds)"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    runs = _runs(sweep_dir)
    times = _h5(runs[(8, 0)], "observables/risk/time")
    for line, band, m in zip(ax.get_lines(), bands, (8, 64)):
        risks = np.array([_h5(runs[(m, s)], "observables/risk/value") for s in (0, 1)])
        np.testing.assert_array_equal(line.get_xdata(), times[times > 0])
        np.testing.assert_allclose(line.get_ydata(), risks.mean(axis=0)[times > 0], rtol=1e-14)
        y = band.get_paths()[0].vertices[:, 1]  # the band spans the smallest and largest seed
        np.testing.assert_allclose([y.min(), y.max()], [risks[:, times > 0].min(), risks[:, times > 0].max()],
                                   rtol=1e-12)


def test_plot_command_writes_a_file_named_for_the_runs_it_shows(sweep_dir, capsys):
    assert main(["plot", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256("\n".join(sorted(os.path.basename(p)[:-3] for p in _runs(sweep_dir).values()))
                            .encode()).hexdigest()
    path = os.path.join(sweep_dir, f"risk-m-{digest[:10]}.png")
    assert out.strip() == (f"plot: {path} (4 finished runs in {sweep_dir}, a curve per m; "
                           "mean over run.seed with its min-max band)")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
        assert image.info["Description"] == f"meanfield-runs:{digest}"
    before = os.path.getmtime(path)
    assert main(["plot", str(sweep_dir)]) == 0  # the same runs: the same file, refreshed
    assert os.path.getmtime(path) >= before
    assert not [n for n in os.listdir(sweep_dir) if ".tmp." in n]


def test_plot_never_overwrites_a_figure_of_other_runs(sweep_dir, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for (m, seed), path in _runs(sweep_dir).items():
        if m == 8:
            shutil.copy(path, other)
    figure = tmp_path / "figure.png"
    assert main(["plot", str(other), "--output", str(figure)]) == 0
    content = figure.read_bytes()
    capsys.readouterr()
    names = []
    for directory in (other, sweep_dir):  # the default names of the two sets of runs differ
        assert main(["plot", str(directory)]) == 0
        names.append(os.path.basename(capsys.readouterr().out.split()[1]))
    assert names[0] != names[1] and names[0].startswith("risk-") and names[1].startswith("risk-m-")
    assert main(["plot", str(sweep_dir), "--output", str(figure)]) == 2
    assert _one_line(capsys) == (f"meanfield plot: {figure}: exists and shows other runs; choose another --output "
                                 "or pass --force to replace it")
    assert figure.read_bytes() == content
    assert main(["plot", str(other), "--output", str(figure)]) == 0  # the same runs again
    foreign = tmp_path / "drawing.png"
    foreign.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's figure")
    assert main(["plot", str(sweep_dir), "--output", str(foreign)]) == 2
    assert "not written by meanfield plot" in _one_line(capsys)
    assert foreign.read_bytes().endswith(b"someone's figure")
    assert main(["plot", str(sweep_dir), "--output", str(figure), "--force"]) == 0
    assert figure.read_bytes() != content
    capsys.readouterr()
    pdf = tmp_path / "risk.pdf"
    assert main(["plot", str(sweep_dir), "--output", str(pdf)]) == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    assert main(["plot", str(sweep_dir), "--output", str(pdf)]) == 0  # its tag is found in a PDF too


def test_plot_bad_input_is_one_line_and_exit_2(sweep_dir, tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert _one_line(capsys) == f"meanfield plot: {tmp_path / 'missing'}: no such directory"
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert _one_line(capsys) == f"meanfield plot: {tmp_path / 'empty'}: no finished runs with a recorded risk to plot"
    assert main(["plot", str(sweep_dir), "--output", str(tmp_path / "risk.jpg")]) == 2
    assert _one_line(capsys) == (f"meanfield plot: {tmp_path / 'risk.jpg'}: a risk plot can be written as .png, "
                                 ".pdf, .svg, not .jpg")
    assert main(["plot", str(sweep_dir), "--output", str(tmp_path / "no" / "risk.png")]) == 2
    assert "does not exist" in _one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["empty"]


# ------------------------------------------------------------------------------ particle clouds
def test_teacher_projection_against_numpy(sweep_dir):
    path = _runs(sweep_dir)[(64, 1)]
    particles = _h5(path, "particles/neurons/position/value")
    teacher = _h5(path, "parameters/teacher/position")
    a1, a2 = teacher[0, :4], teacher[1, :4]
    assert abs(a1[0]) < 0.99  # rotated: not the coordinate axes
    u1 = a1 / np.linalg.norm(a1)
    u2 = a2 - (a2 @ u1) * u1
    u2 /= np.linalg.norm(u2)
    frames = analysis.cloud_frames(path)
    assert frames.projection == "teacher" and frames.axis_names[0] == "teacher direction 1"
    np.testing.assert_allclose(frames.times, _h5(path, "particles/neurons/position/time"))
    np.testing.assert_allclose(frames.xy, particles[:, :, :4] @ np.stack([u1, u2]).T, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(frames.c, particles[:, :, 5])
    np.testing.assert_allclose(frames.teacher_xy, [[np.linalg.norm(a1), 0.0], [a2 @ u1, a2 @ u2]], atol=1e-14)
    fig = analysis.plot_cloud(frames, index=2)
    ax = fig.axes[0]
    cloud, stars = ax.collections[:2]
    np.testing.assert_allclose(cloud.get_offsets(), frames.xy[2])
    np.testing.assert_array_equal(cloud.get_array(), frames.c[2])
    np.testing.assert_allclose(stars.get_offsets(), frames.teacher_xy)
    assert ax.get_title().splitlines() == ["m = 64, seed 1, relu, gradient descent", f"t = {frames.times[2]:.4g}"]
    assert ax.get_xlabel() == "a · u1 (teacher direction 1)"
    low, high = ax.get_xlim()  # every frame fits in the fixed limits
    assert low <= frames.xy[..., 0].min() and frames.xy[..., 0].max() <= high


def test_principal_components_against_numpy(sweep_dir):
    path = _runs(sweep_dir)[(64, 0)]
    particles = _h5(path, "particles/neurons/position/value")
    final = particles[-1, :, :4]
    _, _, vt = np.linalg.svd(final - final.mean(axis=0))
    expected = particles[:, :, :4] @ vt[:2].T
    frames = analysis.cloud_frames(path, projection="pca")
    assert frames.projection == "pca" and frames.axis_names[0].startswith("principal component 1")
    for j in range(2):  # a principal direction is defined up to its sign
        sign = np.sign(frames.xy[-1, 0, j] * expected[-1, 0, j])
        np.testing.assert_allclose(frames.xy[..., j], sign * expected[..., j], rtol=1e-10, atol=1e-12)
    few = analysis.cloud_frames(path, projection="pca", max_particles=10, max_frames=3)
    np.testing.assert_array_equal(few.particles, np.linspace(0, 63, 10).round().astype(int))
    picked = np.linspace(0, 5, 3).round().astype(int)  # the first and last records, evenly spaced
    np.testing.assert_array_equal(few.times, frames.times[picked])
    np.testing.assert_allclose(few.xy, frames.xy[picked][:, few.particles])


def test_animate_writes_one_gif_frame_per_record(sweep_dir, tmp_path, capsys):
    path = _runs(sweep_dir)[(8, 0)]
    gif = tmp_path / "cloud.gif"
    assert main(["animate", path, "--output", str(gif), "--fps", "5"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == (f"animation: {gif} (6 frames, t = 0 to 5, 8 particles projected on the teacher's first two "
                   "directions)")
    assert gif.stat().st_size > 0
    with Image.open(gif) as image:
        assert image.n_frames == len(_h5(path, "particles/neurons/position/time")) == 6
        assert image.info["duration"] == 200  # 5 frames per second
        pictures = []
        for i in range(image.n_frames):
            image.seek(i)
            pictures.append(np.asarray(image.convert("RGB")))
    for first, second in zip(pictures, pictures[1:]):
        assert not np.array_equal(first, second)
    assert sorted(os.listdir(tmp_path)) == ["cloud.gif"]  # no temporary file left
    # The default name: beside the run, named for it and its projection.
    assert main(["animate", path, "--projection", "pca", "--max-frames", "2"]) == 0
    default = path[:-3] + "-cloud-pca.gif"
    assert capsys.readouterr().out.startswith(f"animation: {default} (2 frames")
    with Image.open(default) as image:
        assert image.n_frames == 2
    os.remove(default)


def test_animate_one_neuron_teacher_defaults_to_principal_components(one_neuron, tmp_path, capsys):
    gif = tmp_path / "one.gif"
    assert main(["animate", one_neuron[True], "--output", str(gif)]) == 0
    assert "principal components of the final cloud" in capsys.readouterr().out
    assert main(["animate", one_neuron[True], "--output", str(tmp_path / "t.gif"), "--projection", "teacher"]) == 2
    assert _one_line(capsys) == (f"meanfield animate: {one_neuron[True]}: the run has a teacher of 1 neuron: the "
                                 "teacher projection needs two independent teacher directions; use the principal "
                                 "components (projection pca)")
    assert not (tmp_path / "t.gif").exists()


def test_animate_bad_input_is_one_line_and_exit_2(one_neuron, sweep_dir, tmp_path, capsys, monkeypatch):
    from matplotlib import animation

    run = _runs(sweep_dir)[(8, 0)]
    assert main(["animate", one_neuron[False], "--output", str(tmp_path / "x.gif")]) == 2
    assert _one_line(capsys) == (f"meanfield animate: {one_neuron[False]}: the run recorded no particles "
                                 "([record] particles = false); run it again with particles = true to animate it")
    assert main(["animate", run, "--output", str(tmp_path / "x.avi")]) == 2
    assert _one_line(capsys) == (f"meanfield animate: {tmp_path / 'x.avi'}: "
                                 "an animation can be written as .gif, .mp4, not .avi")
    monkeypatch.setattr(animation.FFMpegWriter, "isAvailable", classmethod(lambda cls: False))
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    assert main(["animate", run, "--output", str(tmp_path / "x.mp4")]) == 2
    assert _one_line(capsys) == ("meanfield animate: MP4 needs ffmpeg, which is neither on PATH nor installed with "
                                 "imageio-ffmpeg (pip install imageio-ffmpeg, part of meanfield[analysis]), or write "
                                 "a GIF: --output NAME.gif")
    assert main(["animate", str(tmp_path / "missing.h5")]) == 2
    assert _one_line(capsys) == f"meanfield animate: {tmp_path / 'missing.h5'}: no such run file"
    assert main(["animate", run, "--output", str(tmp_path / "x.gif"), "--fps", "0"]) == 2
    assert _one_line(capsys) == "meanfield animate: fps must be a number > 0, got 0.0"
    assert os.listdir(tmp_path) == []


def test_animate_mp4_with_ffmpeg(sweep_dir, tmp_path):
    """MP4 through ffmpeg: the system's, or the binary of imageio-ffmpeg (in the test extra)."""
    movie = tmp_path / "cloud.mp4"
    assert main(["animate", _runs(sweep_dir)[(8, 0)], "--output", str(movie)]) == 0
    assert movie.read_bytes()[4:8] == b"ftyp"


def test_without_matplotlib_one_line_names_the_extra(sweep_dir, monkeypatch, capsys):
    for name in [n for n in sys.modules if n.startswith("meanfield.analysis")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for command in (["plot", str(sweep_dir)], ["animate", _runs(sweep_dir)[(8, 0)]]):
        assert main(command) == 2
        line = _one_line(capsys)
        assert line.startswith(f"meanfield {command[0]}: pictures need matplotlib")
        assert line.endswith('pip install "meanfield[analysis]"')
