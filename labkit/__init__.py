"""labkit: the computation behind LLM Pipeline Labs.

labkit computes, widgets show, labs tell: everything a lab measures is computed here and
returned as plain data or plotly figures; no ipywidgets import anywhere in this package.
"""

import os as _os

# Offline by default: nothing in a lab reaches a hub unless the learner opts in (LABKIT_ONLINE=1).
if _os.environ.get("LABKIT_ONLINE") != "1":
    for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        _os.environ.setdefault(_var, "1")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# plotly's FigureWidget imports nbformat, which imports jsonschema, which imports the optional
# `rfc3987_syntax` at start-up to validate the "iri" string format (no notebook schema uses it);
# that import builds dozens of parsers: 1.5-10 CPU seconds in every lab's first figure. Marking
# it absent makes jsonschema skip that one format checker, as it does where it is not installed.
import sys as _sys  # noqa: E402

if "jsonschema" not in _sys.modules:
    _sys.modules.setdefault("rfc3987_syntax", None)

from .errors import LabkitError  # noqa: E402
from .profiles import PROFILES, Profile, profile, seed_everything  # noqa: E402
from .samples import data_dir, sample_path  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "PROFILES",
    "LabkitError",
    "Profile",
    "data_dir",
    "profile",
    "sample_path",
    "seed_everything",
]
