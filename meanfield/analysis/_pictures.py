"""Pictures of a run directory and of a stored run for the command line and notebooks: the risk
plot of a directory (``meanfield plot DIR``) and an animation of a run's particle cloud
(``meanfield animate RUN.h5``).

Files are written under a temporary name beside their target and renamed onto it, so an
interrupted command never leaves half a figure under the final name. A risk figure carries a
tag naming the runs it shows (a digest of their ids, in the file's metadata), and a file that
shows other runs is never overwritten without ``force``.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ..io._store import replacing

__all__ = ["CloudFrames", "animate_cloud", "cloud_frames", "plot_cloud", "plot_directory_risk",
           "write_directory_risk"]

FIGURE_FORMATS = ("png", "pdf", "svg")
MOVIE_FORMATS = ("gif", "mp4")
_TAG = "meanfield-runs:"
_METADATA_KEY = {"png": "Description", "pdf": "Subject", "svg": "Description"}


class PictureError(ValueError):
    """Bad input for a picture (no particles, an unknown format, a file that would be lost):
    the command line prints its message as one line and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# The risk plot of a directory


def _directory_risk(directory):
    """(risk DataArray (group, seed, time), the summaries drawn, the keys varying across the
    directory other than the seed)."""
    import xarray as xr

    from ..experiments import _summaries as report

    summaries, keys = report.directory_summaries(directory)
    groups = {}
    for summary in summaries:
        if summary["status"] not in report.FINISHED or not os.path.exists(summary["path"]):
            continue
        try:
            _, times, risk = _read_risk(summary["path"])
        except (OSError, KeyError):
            continue
        if len(times) == 0:
            continue
        label = report.group_label(summary["swept"])
        seed = summary["swept"].get("run.seed")
        groups.setdefault(label, []).append((summary, seed, times, risk))
    curves, drawn = [], []
    for label, members in groups.items():
        seeds = [seed for _, seed, _, _ in members]
        if any(not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
            seeds = list(range(len(members)))  # one run per group, or seeds not told apart
        series = [xr.DataArray(risk, dims="time", coords={"time": times}) for _, _, times, risk in members]
        # A run that diverged, or records another grid, is NaN where it has no record.
        curve = xr.concat(series, dim="seed", join="outer").assign_coords(seed=seeds)
        order = tuple(report.sort_key(v) for k, v in members[0][0]["swept"].items() if k not in report.GROUP_EXCLUDE)
        curves.append((order, label, curve))
        drawn.extend(summary for summary, _, _, _ in members)
    if not curves:
        return None, [], keys
    curves.sort(key=lambda item: item[0])
    risk = xr.concat([curve for _, _, curve in curves], dim="group", join="outer")
    risk = risk.assign_coords(group=[label for _, label, _ in curves]).rename("risk")
    return risk, drawn, [k for k in keys if k not in report.GROUP_EXCLUDE]


def _read_risk(path):
    from ..io._store import read_series

    return read_series(path, "risk")


def plot_directory_risk(directory, ax=None):
    """The risk plot of a run directory: risk against time, one curve per combination of the
    keys that vary across the directory's runs, each the mean over ``run.seed`` with the band
    between the smallest and largest seed (:func:`plot_risk`).

    Every finished run of the directory is drawn, whatever experiment file and ``--set``
    wrote it (:func:`meanfield.experiments._summaries.directory_summaries`).

    Parameters
    ----------
    directory : str or path-like
        A directory written by ``meanfield run``.
    ax : matplotlib.axes.Axes, optional
        Draw there; by default on a new Figure.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        The directory has no finished run with a recorded risk.
    """
    from ._plots import plot_risk

    risk, drawn, keys = _directory_risk(directory)
    if risk is None:
        raise PictureError(f"{os.fspath(directory)}: no finished runs with a recorded risk to plot")
    return plot_risk(risk, line="group", band="seed", ax=ax, title=_risk_title(directory, drawn, keys))


def _risk_title(directory, drawn, keys) -> str:
    from ..experiments import _summaries as report

    by = ", ".join(report.short_names(keys).values())
    name = os.path.basename(os.path.normpath(os.fspath(directory)))
    return f"{name}: {len(drawn)} run{'s' if len(drawn) != 1 else ''}" + (f", a curve per {by}" if by else "")


def _runs_digest(drawn) -> str:
    return hashlib.sha256("\n".join(sorted(s["id"] for s in drawn)).encode()).hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "runs"


def default_risk_name(directory, drawn, keys) -> str:
    """``risk-<varying keys>-<digest of the run ids>.png`` in ``directory``: figures of other
    runs get other names."""
    from ..experiments import _summaries as report

    names = "_".join(_safe(n) for n in report.short_names(keys).values())
    stem = f"risk-{names}-" if names else "risk-"
    return os.path.join(os.fspath(directory), f"{stem}{_runs_digest(drawn)[:10]}.png")


def _extension(path, allowed, what) -> str:
    extension = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if extension not in allowed:
        raise PictureError(f"{os.fspath(path)}: {what} can be written as "
                           + ", ".join(f".{e}" for e in allowed)
                           + f", not {'.' + extension if extension else 'a file without extension'}")
    return extension


def _check_target(path, tag: str | None, force: bool) -> None:
    """Refuse a target that is a directory or sits in a missing directory, and (unless
    ``force``) an existing file that is not this same figure."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise PictureError(f"{path}: is a directory; give a file name")
    if not os.path.isdir(directory):
        raise PictureError(f"{path}: the directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PictureError(f"{path}: {directory} is not writable; choose another place with --output")
    if force or tag is None or not os.path.exists(path):
        return
    try:
        with open(path, "rb") as handle:
            content = handle.read()
    except OSError as error:
        raise PictureError(f"{path}: exists and cannot be read ({error.strerror or error})") from None
    if tag.encode() in content:
        return  # the same runs: the figure is refreshed
    other = _TAG.encode() in content
    shows = "other runs" if other else "something else (not written by meanfield plot)"
    raise PictureError(f"{path}: exists and shows {shows};"
                       " choose another --output or pass --force to replace it")


def write_directory_risk(directory, output=None, force: bool = False, dpi: int = 120) -> dict:
    """Draw :func:`plot_directory_risk` and write it to a file named for the runs it shows.

    Parameters
    ----------
    directory : str or path-like
    output : str or path-like, optional
        ``.png``, ``.pdf`` or ``.svg``. Default ``<directory>/risk-<keys>-<digest>.png``:
        the keys that vary across the runs and a digest of their ids, so figures of other
        runs get other names.
    force : bool
        Replace an existing file that shows other runs (or was not written by this function).
        A file that shows the same runs is always replaced.
    dpi : int

    Returns
    -------
    dict
        ``path``, ``runs`` (how many runs are drawn), ``keys`` (those varying across them,
        seed excluded), ``curves`` (how many curves).

    Raises
    ------
    ValueError
        No finished runs; an unknown format; ``output`` exists and shows something else.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise PictureError(f"{directory}: no such directory")
    if output is not None:
        extension = _extension(output, FIGURE_FORMATS, "a risk plot")
    from ._plots import plot_risk

    risk, drawn, keys = _directory_risk(directory)
    if risk is None:
        raise PictureError(f"{directory}: no finished runs with a recorded risk to plot")
    path = os.fspath(output) if output is not None else default_risk_name(directory, drawn, keys)
    extension = _extension(path, FIGURE_FORMATS, "a risk plot")
    tag = f"{_TAG}{_runs_digest(drawn)}"
    _check_target(path, tag, force)
    figure = plot_risk(risk, line="group", band="seed", title=_risk_title(directory, drawn, keys))
    with replacing(path, f".{extension}") as tmp:
        figure.savefig(tmp, format=extension, dpi=dpi, metadata={_METADATA_KEY[extension]: tag})
    return {"path": path, "runs": len(drawn), "keys": keys, "curves": int(risk.sizes["group"])}


# ---------------------------------------------------------------------------------------------
# The particle cloud of a run


@dataclass
class CloudFrames:
    """A run's recorded particles projected on two directions of input space.

    Attributes
    ----------
    times : ndarray (T,)
        The recorded times drawn.
    xy : ndarray (T, n, 2)
        (a_i(t) · u_1, a_i(t) · u_2) of the ``n`` drawn particles.
    c : ndarray (T, n)
        Their readouts c_i(t).
    particles : ndarray (n,)
        Indices of the drawn particles among the run's m.
    directions : ndarray (2, d)
        The orthonormal directions u_1, u_2.
    axis_names : (str, str)
    projection : str
        ``"teacher"`` (the teacher's first two directions) or ``"pca"`` (the first two
        principal components of the final cloud of all m particles).
    teacher_xy : ndarray (k, 2) or None
        The teacher's neurons projected the same way; ``teacher_c`` their readouts.
    teacher_c : ndarray (k,) or None
    m : int
    label : str
        What the run is (m, seed, activation), for titles.
    """

    times: np.ndarray
    xy: np.ndarray
    c: np.ndarray
    particles: np.ndarray
    directions: np.ndarray
    axis_names: tuple
    projection: str
    teacher_xy: np.ndarray | None
    teacher_c: np.ndarray | None
    m: int
    label: str


def _teacher_usable(teacher, d: int) -> bool:
    if teacher is None or len(teacher) < 2:
        return False
    _, r = np.linalg.qr(np.asarray(teacher, dtype=np.float64)[:2, :d].T)
    return abs(r[1, 1]) > 1e-12 * abs(r[0, 0])


def cloud_frames(path, projection: str | None = None, max_particles: int = 2000,
                 max_frames: int | None = None) -> CloudFrames:
    """Read the particle cloud of a stored run, projected on two directions.

    Parameters
    ----------
    path : str or path-like
        A run file (``<id>.h5``, or a ``.h5.part`` being written: its records up to the last
        checkpoint).
    projection : {"teacher", "pca"}, optional
        ``"teacher"``: the teacher's first two directions (Gram-Schmidt on a*_1, a*_2, from
        ``/parameters/teacher/position``); ``"pca"``: the first two principal components of
        the input weights of the final cloud. Default: the teacher's when the run has a
        teacher with two independent directions, otherwise the principal components.
    max_particles : int
        At most this many particles, evenly spaced in index, are kept (the principal
        components are those of all m).
    max_frames : int, optional
        At most this many records, evenly spaced, the first and the last included.

    Returns
    -------
    CloudFrames

    Raises
    ------
    ValueError
        The run recorded no particles (``[record] particles = false``) or has no record yet;
        ``projection="teacher"`` for a run without a teacher of two independent neurons.
    """
    from ._load import open_run
    from ._particles import projection_directions

    if projection not in (None, "teacher", "pca"):
        raise PictureError(f"projection must be 'teacher' or 'pca', got {projection!r}")
    if max_particles < 1:
        raise PictureError(f"max_particles must be >= 1, got {max_particles}")
    path = os.fspath(path)
    with open_run(path) as ds:
        if "position" not in ds:
            raise PictureError(f"{path}: the run recorded no particles ([record] particles = false); "
                               "run it again with particles = true to animate it")
        T, m = ds.sizes["time"], ds.sizes["particle"]
        if T == 0:
            raise PictureError(f"{path}: no records yet")
        d = int(ds.attrs["d"])
        teacher = ds["teacher_position"].values.astype(np.float64) if "teacher_position" in ds else None
        if projection == "teacher" and not _teacher_usable(teacher, d):
            why = ("has no teacher" if teacher is None else
                   f"has a teacher of {len(teacher)} neuron{'s' if len(teacher) != 1 else ''}"
                   if len(teacher) < 2 else "has a teacher whose first two directions are parallel")
            raise PictureError(f"{path}: the run {why}: the teacher projection needs two independent "
                               "teacher directions; use the principal components (projection pca)")
        use_teacher = projection == "teacher" or (projection is None and _teacher_usable(teacher, d))
        final = np.asarray(ds["position"].isel(time=T - 1).values, dtype=np.float64)
        directions, names = projection_directions(final[None], teacher if use_teacher else None)
        frames = np.arange(T)
        if max_frames is not None and T > max_frames:
            frames = np.unique(np.linspace(0, T - 1, max(2, max_frames)).round().astype(int))
        shown = np.unique(np.linspace(0, m - 1, min(m, max_particles)).round().astype(int))
        xy = np.empty((len(frames), len(shown), 2))
        c = np.empty((len(frames), len(shown)))
        for j, t in enumerate(frames):
            frame = final if t == T - 1 else np.asarray(ds["position"].isel(time=int(t)).values, dtype=np.float64)
            xy[j] = frame[shown, :d] @ directions.T
            c[j] = frame[shown, d + 1]
        times = ds["time"].values[frames]
        config = ds.attrs["config"]
        label = (f"m = {m}, seed {ds.attrs['seed']}, {config['model']['activation']}, "
                 f"{config['dynamics']['integrator'].replace('_', ' ')}")
    teacher_xy = teacher[:, :d] @ directions.T if teacher is not None else None
    teacher_c = teacher[:, d + 1] if teacher is not None else None
    return CloudFrames(times, xy, c, shown, directions, tuple(names), "teacher" if use_teacher else "pca",
                       teacher_xy, teacher_c, m, label)


def _cloud_artists(frames: CloudFrames, figsize=(5.6, 4.8), dpi: int = 100):
    """The figure of the cloud and ``update(i)`` that shows record ``i``."""
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    ax = figure.add_subplot()
    c_max = float(np.max(np.abs(frames.c))) if frames.c.size else 0.0
    c_max = c_max if c_max > 0 and math.isfinite(c_max) else 1.0
    norm = Normalize(-c_max, c_max)

    def sizes(c):
        return 4.0 + 56.0 * np.abs(c) / c_max

    cloud = ax.scatter(frames.xy[0, :, 0], frames.xy[0, :, 1], s=sizes(frames.c[0]), c=frames.c[0],
                       cmap="coolwarm", norm=norm, alpha=0.8, linewidths=0,
                       label=f"particles ({len(frames.particles)} of {frames.m})")
    figure.colorbar(cloud, ax=ax, label="readout c (also the point size, |c|)")
    if frames.teacher_xy is not None:
        ax.scatter(frames.teacher_xy[:, 0], frames.teacher_xy[:, 1], s=140, marker="*", color="black",
                   label=f"teacher neurons ({len(frames.teacher_xy)})", zorder=4)
    points = frames.xy.reshape(-1, 2)
    if frames.teacher_xy is not None:
        points = np.concatenate([points, frames.teacher_xy])
    points = points[np.all(np.isfinite(points), axis=1)]
    if len(points):
        low, high = points.min(axis=0), points.max(axis=0)
        pad = 0.06 * np.maximum(high - low, 1e-12) + 1e-12
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    ax.set_aspect("equal", adjustable="box")  # the limits above hold every frame
    ax.set_xlabel(f"a · u1 ({frames.axis_names[0]})")
    ax.set_ylabel(f"a · u2 ({frames.axis_names[1]})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")
    title = ax.set_title("")

    def update(i: int):
        cloud.set_offsets(frames.xy[i])
        cloud.set_array(frames.c[i])
        cloud.set_sizes(sizes(frames.c[i]))
        title.set_text(f"{frames.label}\nt = {frames.times[i]:.4g}")

    return figure, update


def plot_cloud(frames: CloudFrames, index: int = -1, figsize=(5.6, 4.8)):
    """One frame of a particle cloud (:func:`cloud_frames`): the drawn particles' projected
    input weights, sized and coloured by their readout c, the teacher's neurons as black stars,
    the time in the title.

    Parameters
    ----------
    frames : CloudFrames
    index : int
        Which record (default the last).
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure
        The particles are the Axes' first collection (offsets the projections, array c).
    """
    figure, update = _cloud_artists(frames, figsize)
    update(int(np.arange(len(frames.times))[index]))
    return figure


def default_movie_name(path, projection: str) -> str:
    """``<run id>-cloud-<projection>.gif`` beside the run file."""
    path = os.fspath(path)
    base = path[: -len(".part")] if path.endswith(".part") else path
    return f"{os.path.splitext(base)[0]}-cloud-{projection}.gif"


def movie_writer(extension: str, fps: float, dpi: int = 100):
    """matplotlib's animation writer for ``extension``: PillowWriter for GIF (Pillow comes
    with matplotlib), FFMpegWriter for MP4 (``ffmpeg`` on PATH, or else the binary that the
    ``imageio-ffmpeg`` package ships, part of the ``analysis`` extra; PictureError without
    either)."""
    import matplotlib
    from matplotlib import animation

    if extension == "gif":
        return animation.PillowWriter(fps=fps)
    if not animation.FFMpegWriter.isAvailable():
        try:
            import imageio_ffmpeg

            matplotlib.rcParams["animation.ffmpeg_path"] = imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError):
            pass
    if not animation.FFMpegWriter.isAvailable():
        raise PictureError("MP4 needs ffmpeg, which is neither on PATH nor installed with imageio-ffmpeg "
                           "(pip install imageio-ffmpeg, part of meanfield[analysis]), or write a GIF: "
                           "--output NAME.gif")
    return animation.FFMpegWriter(fps=fps, codec="h264", extra_args=["-pix_fmt", "yuv420p"])


def animate_cloud(path, output=None, projection: str | None = None, fps: float = 10.0, max_particles: int = 2000,
                  max_frames: int | None = 300, dpi: int = 100) -> dict:
    """An animation of a stored run's particle cloud, one frame per record (:func:`plot_cloud`
    drawn at each recorded time), written with matplotlib's animation writers.

    Parameters
    ----------
    path : str or path-like
        A run file with recorded particles.
    output : str or path-like, optional
        ``.gif`` (PillowWriter) or ``.mp4`` (FFMpegWriter: ``ffmpeg`` on PATH or from imageio-ffmpeg).
        Default ``<run id>-cloud-<projection>.gif`` beside the run file. Replaced if it exists.
    projection : {"teacher", "pca"}, optional
        See :func:`cloud_frames`.
    fps : float
        Frames per second.
    max_particles : int
        See :func:`cloud_frames`.
    max_frames : int or None
        At most this many records (evenly spaced; None: every record). GIF frames are held in
        memory until the file is written (about 2 MB each at the default size).
    dpi : int

    Returns
    -------
    dict
        ``path``, ``frames`` (how many), ``projection``, ``particles`` (drawn), ``m``,
        ``times`` (first and last).

    Raises
    ------
    ValueError
        An unknown extension, MP4 without ffmpeg, a run without particles, a bad projection.
    """
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise PictureError(f"fps must be a number > 0, got {fps!r}")
    if max_frames is not None and max_frames < 2:
        raise PictureError(f"max_frames must be >= 2, got {max_frames}")
    if output is not None:  # a bad name, or MP4 without ffmpeg, is refused before anything is read
        movie_writer(_extension(output, MOVIE_FORMATS, "an animation"), fps)
    frames = cloud_frames(path, projection, max_particles, max_frames)
    output = os.fspath(output) if output is not None else default_movie_name(path, frames.projection)
    extension = _extension(output, MOVIE_FORMATS, "an animation")
    writer = movie_writer(extension, fps)
    _check_target(output, None, True)
    figure, update = _cloud_artists(frames, dpi=dpi)
    with replacing(output, f".{extension}") as tmp:
        with writer.saving(figure, tmp, dpi):
            for i in range(len(frames.times)):
                update(i)
                writer.grab_frame()
    return {"path": output, "frames": len(frames.times), "projection": frames.projection,
            "particles": len(frames.particles), "m": frames.m,
            "times": (float(frames.times[0]), float(frames.times[-1]))}
