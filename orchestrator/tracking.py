"""W&B tracking, the only module that imports wandb. W&B is the window, not the record: every failure
here becomes a warning and a no-op tracker, never a failed run.

Mode `auto` (the default) is online when WANDB_API_KEY is set and offline otherwise. Only the run's
spec and metrics are sent: never the environment, so no key or token reaches a W&B config.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

MODES = ("auto", "offline", "online", "disabled")


def validate_settings(raw: dict[str, Any]) -> dict[str, Any]:
    """Check the tracking group before anything starts; errors name the key and the allowed values."""
    from proxyscale.models.spec import SpecError

    allowed = {"enabled", "mode", "project", "entity"}
    for key in raw:
        if key not in allowed:
            raise SpecError(f"tracking.{key}: unknown key; allowed: {sorted(allowed)}")
    if raw.get("mode", "auto") not in MODES:
        raise SpecError(f"tracking.mode: {raw.get('mode')!r} is not allowed; choose one of {list(MODES)}")
    if not isinstance(raw.get("enabled", True), bool):
        raise SpecError(f"tracking.enabled: must be true or false, got {raw.get('enabled')!r}")
    return raw


class NullTracker:
    """Tracking is off (tracking=none) or W&B could not start: records go only to the ledger."""

    def log(self, record: dict[str, Any]) -> None:
        return None

    def finish(self, summary: dict[str, Any]) -> None:
        return None


class WandbTracker:
    def __init__(self, run: Any) -> None:
        self._run = run

    def log(self, record: dict[str, Any]) -> None:
        try:
            metrics = {"tokens": record["tokens"], "lr": record["lr"]}
            for key in ("train_loss", "eval_loss", "eval_bpb"):
                if record.get(key) is not None:
                    metrics[key] = record[key]
            metrics.update({f"probes/{k}": v for k, v in (record.get("probes") or {}).items()})
            metrics.update({f"evals/{k}": v for k, v in (record.get("evals") or {}).items()})  # train.evals
            self._run.log(metrics, step=record["step"])
        except Exception as error:  # noqa: BLE001 - tracking must never fail a run
            warnings.warn(f"W&B log failed: {error}", stacklevel=2)

    def finish(self, summary: dict[str, Any]) -> None:
        try:
            flat = {k: v for k, v in summary.items() if k != "evals"}
            flat.update({f"evals/{k}": v for k, v in (summary.get("evals") or {}).items()})  # the last task metrics
            for key, value in flat.items():
                if isinstance(value, (int, float, str)) and not (isinstance(value, float) and math.isnan(value)):
                    self._run.summary[key] = value
            self._run.finish()
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"W&B finish failed: {error}", stacklevel=2)


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def make_tracker(settings: dict[str, Any], *, sweep: str, run_id: str, config: dict[str, Any],
                 directory: Path) -> NullTracker | WandbTracker:
    """A W&B run for one proxy (group = sweep, name = run id), or a no-op tracker."""
    if not settings.get("enabled", True):
        return NullTracker()
    mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled":
        return NullTracker()
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=settings.get("project") or "proxyscale",
            entity=settings.get("entity") or None,
            group=sweep,
            name=run_id,
            id=run_id,
            resume="allow",
            config=config,
            dir=str(directory),
            mode=mode,
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
        return WandbTracker(run)
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"W&B is unavailable ({error}); the run continues without it", stacklevel=2)
        return NullTracker()


def log_analysis(settings: dict[str, Any], *, sweep: str, directory: Path, report: Path, figures: list[Path],
                 summary: dict[str, Any]) -> str | None:
    """Log a report to the sweep's W&B analysis run (group = sweep, job type 'analysis'): its figures as
    images, the Markdown as a file, the headline numbers as summary. Returns the run's directory, or
    None when tracking is off or W&B fails (a warning, never an error)."""
    if not settings.get("enabled", True):
        return None
    mode = resolve_mode(settings.get("mode", "auto"))
    if mode == "disabled":
        return None
    try:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(project=settings.get("project") or "proxyscale", entity=settings.get("entity") or None,
                         group=sweep, job_type="analysis", name=f"{sweep}-analysis", id=f"{sweep}-analysis",
                         resume="allow", dir=str(directory), mode=mode, reinit="finish_previous",
                         config={"sweep": sweep}, settings=wandb.Settings(console="off", x_disable_stats=True))
        run.log({f"figures/{figure.stem}": wandb.Image(str(figure)) for figure in figures})
        for key, value in summary.items():
            run.summary[key] = value
        run.save(str(report), base_path=str(report.parent), policy="now")
        run_dir = run.dir
        run.finish()
        return str(Path(run_dir).parent)
    except Exception as error:  # noqa: BLE001 - the report is on disk whatever W&B does
        warnings.warn(f"W&B analysis logging failed: {error}", stacklevel=2)
        return None


class LiveAnalysisRun:
    """The sweep's W&B analysis run while `launch` runs (the run `log_analysis` later adds the report to):
    group = sweep, job type 'analysis', id `{sweep}-analysis`. Each `log` is one point of its time series,
    plotted against `flops_spent` (defined as their x-axis), plus optional tables and figures.

    W&B starts at the first `log`, so its start-up overlaps training instead of delaying the first runs.
    Any W&B error is one warning, after which the run does nothing: the sweep never fails for it.
    """

    SERIES = ("target/*", "fit/*", "runs/*")

    def __init__(self, settings: dict[str, Any], *, sweep: str, directory: Path) -> None:
        self.settings, self.sweep, self.directory = settings, sweep, directory
        self.mode = resolve_mode(settings.get("mode", "auto"))
        self.off = not settings.get("enabled", True) or self.mode == "disabled"
        self._run: Any = None
        self.run_dir: str | None = None
        """The run's folder once started (offline: DIR/wandb/offline-run-*-{sweep}-analysis)."""

    @property
    def active(self) -> bool:
        return not self.off

    def _start(self) -> Any:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.settings.get("project") or "proxyscale", entity=self.settings.get("entity") or None,
                         group=self.sweep, job_type="analysis", name=f"{self.sweep}-analysis",
                         id=f"{self.sweep}-analysis", resume="allow", dir=str(self.directory), mode=self.mode,
                         reinit="finish_previous", config={"sweep": self.sweep},
                         settings=wandb.Settings(console="off", x_disable_stats=True))
        run.define_metric("flops_spent")
        for series in self.SERIES:
            run.define_metric(series, step_metric="flops_spent")
        self.run_dir = str(Path(run.dir).parent)
        return run

    def log(self, metrics: dict[str, float], *, tables: dict[str, list[dict[str, Any]]] | None = None,
            figures: dict[str, Path] | None = None) -> None:
        """metrics: numbers (non-finite ones are left out); tables: {key: rows as dicts}; figures: {name: PNG}."""
        if self.off:
            return
        try:
            import wandb

            if self._run is None:
                self._run = self._start()
            data: dict[str, Any] = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            for key, rows in (tables or {}).items():
                if rows:
                    columns = list(rows[0])
                    data[key] = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
            for name, path in (figures or {}).items():
                data[f"figures/{name}"] = wandb.Image(str(path))
            self._run.log(data)
        except Exception as error:  # noqa: BLE001 - W&B is the window, never a reason to stop the sweep
            self._fail(error)

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        if self.off or self._run is None:
            return
        try:
            for key, value in (summary or {}).items():
                if isinstance(value, (int, float, str)) and not (isinstance(value, float) and not math.isfinite(value)):
                    self._run.summary[key] = value
            self._run.finish()
        except Exception as error:  # noqa: BLE001
            self._fail(error)
        self._run = None
        self.off = True

    def _fail(self, error: Exception) -> None:
        warnings.warn(f"W&B live analysis failed ({error}); the sweep goes on without it", stacklevel=3)
        self.off = True
        run, self._run = self._run, None
        if run is not None:
            with contextlib.suppress(Exception):  # already failing: closing the run is best effort
                run.finish(exit_code=1)
