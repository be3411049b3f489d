"""``meanfield plot DIR`` and ``meanfield animate RUN.h5``: the parsers and commands
(registered by :func:`meanfield.cli.build_parser`; the drawing is in
``meanfield.analysis._pictures``, which needs the ``analysis`` extra)."""
from __future__ import annotations

import os

EXTRA = 'pip install "meanfield[analysis]"'


def _analysis():
    """``meanfield.analysis``, or a ConfigError (exit 2) that says how to install it."""
    import importlib

    from .experiments._config import ConfigError

    try:
        analysis = importlib.import_module("meanfield.analysis")
    except ImportError as error:
        missing = getattr(error.__cause__, "name", None) or getattr(error, "name", None) or "a package"
        raise ConfigError(f"pictures need matplotlib, xarray and pandas ({missing} is missing): {EXTRA}") from None
    return analysis


def plot_command(args) -> int:
    """The risk plot of a run directory, written to a file named for its runs."""
    from .experiments._config import ConfigError

    if not os.path.isdir(args.dir):
        raise ConfigError(f"{args.dir}: no such directory")
    analysis = _analysis()
    PictureError = analysis._pictures.PictureError

    try:
        written = analysis.write_directory_risk(args.dir, args.output, force=args.force)
    except PictureError as error:
        raise ConfigError(str(error)) from None
    from .experiments._summaries import short_names

    by = f", a curve per {', '.join(short_names(written['keys']).values())}" if written["keys"] else ""
    print(f"plot: {written['path']} ({written['runs']} finished run{'s' if written['runs'] != 1 else ''} "
          f"in {args.dir}{by}; mean over run.seed with its min-max band)")
    return 0


def animate_command(args) -> int:
    """An animation of a stored run's particle cloud (GIF, or MP4 with ffmpeg)."""
    from .experiments._config import ConfigError

    if not os.path.isfile(args.run):
        raise ConfigError(f"{args.run}: no such run file")
    analysis = _analysis()
    from .io._store import CorruptRunFile

    PictureError = analysis._pictures.PictureError

    try:
        written = analysis.animate_cloud(args.run, args.output, projection=args.projection, fps=args.fps,
                                         max_particles=args.max_particles,
                                         max_frames=None if args.max_frames == 0 else args.max_frames)
    except PictureError as error:
        raise ConfigError(str(error)) from None
    except CorruptRunFile as error:
        raise ConfigError(str(error)) from None
    except KeyError as error:  # an HDF5 file that is not a run file
        raise ConfigError(f"{args.run}: not a run file (no {error})") from None
    projection = ("the teacher's first two directions" if written["projection"] == "teacher"
                  else "the first two principal components of the final cloud")
    drawn = f"{written['particles']} of {written['m']} particles" if written["particles"] < written["m"] else \
        f"{written['m']} particles"
    print(f"animation: {written['path']} ({written['frames']} frames, t = {written['times'][0]:g} to "
          f"{written['times'][1]:g}, {drawn} projected on {projection})")
    return 0


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_parsers(sub) -> None:
    """Add ``plot`` and ``animate`` to the command line's subparsers."""
    p = sub.add_parser("plot", help="the risk plot of a run directory (a PNG named for its runs)")
    p.add_argument("dir", help="a directory written by 'meanfield run'")
    p.add_argument("--output", metavar="FILE",
                   help="where to write it (.png, .pdf, .svg; default DIR/risk-<keys>-<digest of the run ids>.png)")
    p.add_argument("--force", action="store_true",
                   help="replace FILE even if it shows other runs (a figure of the same runs is always replaced)")
    p.set_defaults(func=plot_command)
    a = sub.add_parser("animate", help="an animation of a stored run's particle cloud (GIF, or MP4 with ffmpeg)")
    a.add_argument("run", metavar="RUN.h5", help="a run file with recorded particles")
    a.add_argument("--output", metavar="FILE",
                   help="X.gif or X.mp4 (MP4 needs ffmpeg; default <run id>-cloud-<projection>.gif beside the run)")
    a.add_argument("--projection", choices=("teacher", "pca"),
                   help="project the input weights on the teacher's first two directions or on the first two "
                        "principal components of the final cloud (default: teacher when the run has one)")
    a.add_argument("--fps", type=float, default=10.0, help="frames per second (default 10)")
    a.add_argument("--max-particles", type=_positive_int, default=2000,
                   help="draw at most this many particles, evenly spaced in index (default 2000)")
    a.add_argument("--max-frames", type=_positive_int, default=300,
                   help="at most this many records, evenly spaced (default 300; 0: every record)")
    a.set_defaults(func=animate_command)
