"""Figures of signal propagation (object-oriented matplotlib on Agg; each returns the Figure)."""
from __future__ import annotations

import numpy as np


def _figure(width=6.4, height=4.4, ncols=1):
    # A bare Figure needs no backend: a notebook's own backend is left alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    axes = figure.subplots(1, ncols) if ncols > 1 else figure.add_subplot()
    return figure, axes


def plot_phase_diagram(grid_sigma_w2, grid_sigma_b2, xi_c, curve_sigma_b2, curve_sigma_w2, activation: str = "",
                       point=None):
    """The order-to-chaos phase diagram: log10 xi_c over (sigma_w^2, sigma_b^2) and the critical
    line chi_1 = 1.

    Parameters
    ----------
    grid_sigma_w2 : ndarray, shape (nw,)
    grid_sigma_b2 : ndarray, shape (nb,)
    xi_c : ndarray, shape (nb, nw)
        Correlation depth scale (inf on the critical line is clipped to the largest finite value).
    curve_sigma_b2, curve_sigma_w2 : ndarray, shape (n,)
        The critical line (NaN where there is none).
    activation : str
        For the title.
    point : (float, float), optional
        A (sigma_w^2, sigma_b^2) to mark (the simulated network).

    Returns
    -------
    matplotlib.figure.Figure
        One axes (x: sigma_w^2, y: sigma_b^2) with an image of log10 xi_c, its colorbar, and one
        line, the critical curve.
    """
    figure, axes = _figure()
    values = np.array(xi_c, dtype=np.float64)
    finite = np.isfinite(values) & (values > 0)
    top = values[finite].max() if finite.any() else 1.0
    values = np.where(np.isfinite(values), values, top)
    image = axes.pcolormesh(grid_sigma_w2, grid_sigma_b2, np.log10(np.maximum(values, 1e-3)), shading="nearest",
                            cmap="viridis")
    figure.colorbar(image, ax=axes, label=r"$\log_{10} \xi_c$ (layers)")
    axes.plot(curve_sigma_w2, curve_sigma_b2, color="white", linewidth=2, label=r"critical line $\chi_1 = 1$")
    if point is not None:
        axes.scatter([point[0]], [point[1]], color="red", marker="x", zorder=3, label="simulated")
    axes.set_xlabel(r"$\sigma_w^2$")
    axes.set_ylabel(r"$\sigma_b^2$")
    axes.set_xlim(float(np.min(grid_sigma_w2)), float(np.max(grid_sigma_w2)))
    axes.set_ylim(float(np.min(grid_sigma_b2)), float(np.max(grid_sigma_b2)))
    axes.set_title(f"order (left) and chaos (right){': ' + activation if activation else ''}")
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


def plot_theory_vs_simulation(theory_q, theory_c, widths, sim_q, sim_c, c0, sim_q_err=None, sim_c_err=None,
                              title: str = ""):
    """q_l and c_l against the layer l: theory (lines) and simulated networks (markers).

    Parameters
    ----------
    theory_q, theory_c : ndarray, shape (L + 1, P)
    widths : sequence of int, length W
    sim_q, sim_c : ndarray, shape (W, L + 1, P)
        Means over networks.
    c0 : ndarray, shape (P,)
        The input correlations (labels).
    sim_q_err, sim_c_err : ndarray, shape (W, L + 1, P), optional
        Standard errors (error bars).

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: left q_l (one theory line, the pairs share q_0), right c_l (one theory line
        per pair); each width adds one marker series per line.
    """
    figure, (axes_q, axes_c) = _figure(11.0, 4.4, ncols=2)
    theory_q, theory_c = np.asarray(theory_q), np.asarray(theory_c)
    layers = np.arange(theory_q.shape[0])
    markers = "os^Dv<>p"
    axes_q.plot(layers, theory_q[:, 0], color="black", label="theory")
    for w, width in enumerate(widths):
        err = None if sim_q_err is None else sim_q_err[w][:, 0]
        axes_q.errorbar(layers, sim_q[w][:, 0], yerr=err, linestyle="none", marker=markers[w % len(markers)],
                        markersize=4, label=f"N = {width}")
    axes_q.set_xlabel("layer l")
    axes_q.set_ylabel(r"$q_l$")
    axes_q.legend(fontsize="small")
    colors = [f"C{i}" for i in range(len(c0))]
    for p, c_in in enumerate(c0):
        axes_c.plot(layers, theory_c[:, p], color=colors[p], label=f"theory, $c_0$ = {c_in:g}")
        for w, width in enumerate(widths):
            err = None if sim_c_err is None else sim_c_err[w][:, p]
            axes_c.errorbar(layers, sim_c[w][:, p], yerr=err, linestyle="none", marker=markers[w % len(markers)],
                            markersize=3, color=colors[p], alpha=0.5 + 0.5 * (w + 1) / len(widths),
                            label=f"N = {width}" if p == 0 else None)
    axes_c.set_xlabel("layer l")
    axes_c.set_ylabel(r"$c_l$")
    axes_c.legend(fontsize="x-small", ncol=2)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
