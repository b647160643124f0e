"""Keep the dependencies' notices out of users' terminals unless they ask with ``searchrl -v``.

Deprecation and future-change warnings, other warnings raised from library code, and the
transformers / datasets / huggingface_hub loggers' advisory messages say nothing a searchrl user
can act on. searchrl's own warnings (empty documents kept, expansions missing, ...) still show.
``-v`` shows everything, deprecations included.
"""

from __future__ import annotations

import os
import sys
import warnings

LIBRARY_VERBOSITY = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DATASETS_VERBOSITY": "error",
    "HF_HUB_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "VLLM_LOGGING_LEVEL": "ERROR",  # vLLM logs every load step, and a warning per weight cast to bfloat16
}
"""Environment variables the libraries read when first imported (a user's own settings win)."""

_QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def configure_library_warnings(verbose: bool) -> None:
    """Install the warning filters (and library log levels) for one ``searchrl`` command."""
    if verbose:
        warnings.simplefilter("default")  # every warning once per place, deprecations included
        return
    for category in _QUIET_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
    # Warnings attributed to a dependency's own code; searchrl's warnings keep the default action.
    warnings.filterwarnings("ignore", module=r"(?!searchrl(\.|$))")
    for variable, value in LIBRARY_VERBOSITY.items():
        library = variable.split("_")[0].lower()
        if library == "hf":
            library = "huggingface_hub"
        if library not in sys.modules:  # read at import: only useful before the library is loaded
            os.environ.setdefault(variable, value)
