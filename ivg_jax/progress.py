"""One progress bar for every job: tqdm's notebook widget where Jupyter can draw it (Colab, a notebook with
ipywidgets), its text bar everywhere else. `tqdm.auto` alone picks the widget in any notebook kernel and, without
ipywidgets, prints "IProgress not found" instead of a bar."""

from __future__ import annotations

import importlib.util


def _bar_class():
    # Importing tqdm.auto is what warns in a kernel without ipywidgets, so look before importing it.
    if importlib.util.find_spec("ipywidgets") is None:
        from tqdm.std import tqdm as text

        return text
    from tqdm.auto import tqdm as auto

    return auto


tqdm = _bar_class()
