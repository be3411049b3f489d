"""Pictures of particle clouds in time: 2-D trajectories, displacement, distance to the tangent model."""
from __future__ import annotations

import numpy as np


def _figure(figsize=(5.6, 4.6)):
    # A bare Figure needs no backend: a notebook's own backend is left alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=110)
    return figure, figure.add_subplot()


def projection_directions(particles, teacher=None) -> tuple[np.ndarray, tuple[str, str]]:
    """Two orthonormal directions of input space to project the input weights a onto.

    The teacher's first two directions (Gram-Schmidt on a*_1, a*_2) when the teacher has at
    least two neurons with independent directions; otherwise the top two principal
    components of the input weights of the final cloud.

    Parameters
    ----------
    particles : ndarray, shape (T, m, d + 2)
        Recorded particles (columns a, b, c).
    teacher : ndarray, shape (k, d + 2), optional
        Teacher neurons in the same layout.

    Returns
    -------
    (ndarray (2, d), (str, str))
        The directions and their names for axis labels.
    """
    particles = np.asarray(particles)
    d = particles.shape[2] - 2
    if teacher is not None and len(teacher) >= 2:
        q, r = np.linalg.qr(np.asarray(teacher, dtype=np.float64)[:2, :d].T)
        if abs(r[1, 1]) > 1e-12 * abs(r[0, 0]):
            return (q * np.sign(np.diag(r))).T, ("teacher direction 1", "teacher direction 2")
    final = particles[-1, :, :d].astype(np.float64)
    _, _, vt = np.linalg.svd(final - final.mean(axis=0), full_matrices=False)
    directions = np.zeros((2, d))
    directions[: min(2, len(vt))] = vt[:2]
    return directions, ("principal component 1 (final cloud)", "principal component 2 (final cloud)")


def plot_particle_trajectories(particles, directions, *, axis_names=("direction 1", "direction 2"),
                               max_particles: int = 128, title: str | None = None):
    """Each particle's input weights a_i(t) projected on two directions, one line per particle.

    Parameters
    ----------
    particles : ndarray, shape (T, m, d + 2)
        Recorded particles (columns a, b, c), T >= 1 records.
    directions : ndarray, shape (2, d)
        Directions u_1, u_2 (e.g. from :func:`projection_directions`); the plot shows
        (a_i(t) . u_1, a_i(t) . u_2).
    axis_names : (str, str)
        Names of the directions for the axis labels.
    max_particles : int
        At most this many particles, evenly spaced in index, are drawn.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        One line per drawn particle (its path), start points as circles and end points as
        crosses (two scatter collections).
    """
    particles = np.asarray(particles, dtype=np.float64)
    if particles.ndim != 3:
        raise ValueError(f"particles must have shape (T, m, d + 2), got {particles.shape}")
    d = particles.shape[2] - 2
    directions = np.asarray(directions, dtype=np.float64)
    if directions.shape != (2, d):
        raise ValueError(f"directions must have shape (2, d) = (2, {d}), got {directions.shape}")
    m = particles.shape[1]
    shown = np.unique(np.linspace(0, m - 1, min(m, max_particles)).round().astype(int))
    paths = particles[:, shown, :d] @ directions.T  # (T, n, 2)
    figure, axes = _figure()
    for j in range(len(shown)):
        axes.plot(paths[:, j, 0], paths[:, j, 1], color="tab:blue", linewidth=0.7, alpha=0.6)
    axes.scatter(paths[0, :, 0], paths[0, :, 1], s=10, marker="o", color="tab:green", label="start (t = 0)",
                 zorder=3)
    axes.scatter(paths[-1, :, 0], paths[-1, :, 1], s=14, marker="x", color="tab:red", label="end", zorder=4)
    axes.set_xlabel(f"a · u1 ({axis_names[0]})")
    axes.set_ylabel(f"a · u2 ({axis_names[1]})")
    axes.set_aspect("equal", adjustable="datalim")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    axes.set_title(title or f"{len(shown)} of {m} particles")
    figure.tight_layout()
    return figure


def plot_displacement(curves: dict):
    """Relative displacement |W(t) - W(0)| / |W(0)| against t, log-log, one line per label.

    Parameters
    ----------
    curves : dict
        label -> (times (T,), displacement (T,)); the point t = 0 (displacement 0) is left out.

    Returns
    -------
    matplotlib.figure.Figure
    """
    figure, axes = _figure()
    for label, (times, values) in curves.items():
        times, values = np.asarray(times, float), np.asarray(values, float)
        keep = (times > 0) & (values > 0)
        axes.loglog(times[keep], values[keep], label=label)
    axes.set_xlabel("time t")
    axes.set_ylabel("|W(t) − W(0)| / |W(0)|")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def plot_tangent_distance(curves: dict, *, xlabel: str = "alpha", time: float | None = None):
    """Distance between the network's and the tangent model's predictors against alpha (or tau).

    Parameters
    ----------
    curves : dict
        label (e.g. ``"m = 256"``) -> (scales (n,), distances (n,)): the values of alpha (or of
        the init scale tau), > 0, and sqrt(E_x (alpha h(W(t), x) - alpha T(W_T(t), x))^2) at
        one time t.
    xlabel : str
    time : float, optional
        The time t, for the title.

    Returns
    -------
    matplotlib.figure.Figure
        Log-log axes, one line (with markers) per label, each labelled with its least-squares
        log-log slope over the largest half of its scales (at least two points).
    """
    figure, axes = _figure()
    for name, (scales, distances) in curves.items():
        scales, distances = np.asarray(scales, float), np.asarray(distances, float)
        tail = slice(max(0, len(scales) - max(2, (len(scales) + 1) // 2)), None)
        label = name
        keep = (scales[tail] > 0) & (distances[tail] > 0)
        if keep.sum() >= 2:
            fitted = np.polyfit(np.log(scales[tail][keep]), np.log(distances[tail][keep]), 1)[0]
            label += f" (slope {fitted:.2f} over {xlabel} ≥ {scales[tail][0]:g})"
        axes.loglog(scales, distances, "o-", label=label)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("rms |α h(W(t)) − α T(W_T(t))| on the test sample")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    if time is not None:
        axes.set_title(f"network versus tangent model at t = {time:g}")
    figure.tight_layout()
    return figure
