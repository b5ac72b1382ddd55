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
