"""The shipped recipes, as absl flagfiles: ``demo``, ``dfx_densenet121`` (the paper's) and
``dfx_densenet121_fast`` (its GPU speed settings).

They are package data, so an installed wheel carries them: ``dfx-demo`` runs ``demo.flags``
from any folder, and ``flagfile(name)`` gives the path to pass to ``--flagfile``.
"""

import os

RECIPES = ("demo", "dfx_densenet121", "dfx_densenet121_fast")


def flagfile(name: str) -> str:
    """Path of the recipe ``name``; raises ValueError listing the recipes for any other name."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.flags")
