"""proxyscale: plan large training runs from small GPT proxies.

The public Python API (proxyscale/api.py); the command line is `proxyscale --help`. Importing this package
loads nothing heavy: torch, Ray and the fits load on first use.
"""

from proxyscale.api import Sweep, compare, fit, fit_curves, open_sweep, recommend

__all__ = ["SpecError", "Sweep", "__version__", "compare", "fit", "fit_curves", "open_sweep", "recommend"]


def __getattr__(name: str):
    # Lazy: the version reads the installed metadata; SpecError is the specs' (models/spec.py).
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("proxyscale")
        except PackageNotFoundError:
            return "unknown"
    if name == "SpecError":
        from proxyscale.models.spec import SpecError

        return SpecError
    raise AttributeError(f"module 'proxyscale' has no attribute {name!r}")
