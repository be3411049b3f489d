"""Registries: name -> entry, one place for each kind of choice (integrators, activations,
observables, post-run stages), read by everything that offers the choice."""
from __future__ import annotations


class Registry(dict):
    """A dict of entries by name, in the order they were registered; each name once.

    Parameters
    ----------
    kind : str
        What an entry is, for messages ("integrator", "observable", ...).
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, entry):
        """Add ``entry`` under ``entry.name`` (a new name).

        Parameters
        ----------
        entry : object with a ``name`` attribute

        Returns
        -------
        object
            ``entry``.
        """
        if entry.name in self:
            raise ValueError(f"an {self.kind} named {entry.name!r} is registered already"
                             if self.kind[0] in "aeiou" else
                             f"a {self.kind} named {entry.name!r} is registered already")
        self[entry.name] = entry
        return entry
