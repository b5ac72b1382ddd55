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

# On a CPU with AVX512-BF16, importing bitsandbytes 0.50 asks the `kernels` package to fetch an
# optional 4-bit GEMM kernel from the Hugging Face Hub and, when it cannot (not installed, or
# offline), logs a warning to stderr from inside the import; its own CPU code then runs, as on
# every other CPU. Offline is this project's default, so that one message says nothing a learner
# can act on (and it broke a checked cell's output on such CPUs). Other bitsandbytes messages pass.
import logging as _logging  # noqa: E402


class _NoHubKernelNotice(_logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_NoHubKernelNotice())

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
