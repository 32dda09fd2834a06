"""How the ``goha`` command and the demo show a job and a verify report: one-screen summaries, and a
progress bar that follows a job's frames and stages. Plain functions over the API's JSON.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    done, total = progress.get("frames_done") or 0, progress.get("frames_total")
    return f"{done}/{total} frames" if total else "-"


def _stage_text(job: dict[str, Any]) -> str:
    """What the job is doing (the API's ``progress.stage_text``, e.g. "animating 40/75"), and the
    worker's estimate of the time left when it has one (measured stage rates; never a guess)."""
    progress = job.get("progress") or {}
    text = str(progress.get("stage_text") or progress.get("stage") or job.get("state") or "")
    eta = progress.get("eta_s")
    if isinstance(eta, int | float) and job.get("state") == "running":
        text += f", about {_duration(eta)} left"
    return text


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def job_summary(job: dict[str, Any]) -> str:
    lines = [
        f"job       {job['id']}",
        f"state     {job['state']}  ({job.get('job_type', 'reenact')}, attempt {job.get('attempts', 0)})",
        f"progress  {progress_text(job)}",
        f"created   {job.get('created_at', '-')}",
    ]
    if job.get("state") in ("queued", "running"):
        lines.insert(3, f"stage     {_stage_text(job)}")
    if job.get("finished_at"):
        lines.append(f"finished  {job['finished_at']}")
    timings = job.get("timings") or {}
    if timings:
        shown = ", ".join(f"{name.removesuffix('_s')} {value:.1f}s" for name, value in timings.items())
        lines.append(f"timings   {shown}")
    if job.get("error"):
        lines.append(f"error     [{job['error'].get('code')}] {job['error'].get('message')}")
    if job.get("media_deleted_at"):
        lines.append(f"deleted   {job['media_deleted_at']} (result and inputs erased; provenance kept)")
    return "\n".join(lines)


class JobProgressBar:
    """Progress of a job on stderr: a tqdm bar over its frames with the worker's stage and its estimate of
    the time left as postfix on a terminal (tqdm's own rate and ETA are left out: frames only move while
    animating, so a rate over the whole job would be wrong); one line per change of state, stage or frame
    count otherwise, so logs stay readable."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} frames, {postfix}"

    def __init__(self, enabled: bool, *, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.bar: Any = None
        self._last: tuple[str, str, int, int | None] | None = None

    def __call__(self, job: dict[str, Any]) -> None:
        if not self.enabled:
            return
        progress = job.get("progress") or {}
        total = progress.get("frames_total")
        done = int(progress.get("frames_done") or 0)
        state = str(job.get("state"))
        stage = _stage_text(job)
        if not self.interactive:
            key = (state, str(progress.get("stage_text") or progress.get("stage") or ""), done, total)
            if key != self._last:
                self._last = key
                print(
                    f"{job['id'][:8]} {state} {done}/{total if total else '?'} frames ({stage})",
                    file=sys.stderr,
                )
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=total,
                unit="frame",
                desc=job["id"][:8],
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format=self.BAR_FORMAT,
            )
        if total and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(stage, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def verify_summary(report: dict[str, Any]) -> str:
    """Human lines for a /v1/verify answer (also used by the demo)."""
    watermark = report.get("watermark") or {}
    manifest = report.get("manifest") or {}
    lines = [f"verdict    {report.get('message', '')}"]
    if report.get("status") != "checked":
        return "\n".join(
            [*lines, "checked    nothing: no detector in this deployment (not a negative answer)"]
        )
    lines.append(
        f"watermark  {'found' if watermark.get('found') else 'not found'}"
        f" ({watermark.get('confident_bits', 0)}/32 confident bits)"
    )
    if manifest.get("present"):
        state = "valid" if manifest.get("valid") else "INVALID"
        trust = "trusted" if manifest.get("trusted") else "untrusted signer"
        lines.append(f"c2pa       {state}, {trust}, names job {manifest.get('job_id')}")
    else:
        lines.append("c2pa       no manifest")
    if report.get("job_id"):
        lines.append(
            f"job        {report['job_id']} ({'your tenant' if report.get('same_tenant') else 'another tenant'})"
        )
    for name, value in (report.get("checks") or {}).items():
        lines.append(f"check      {name}: {value}")
    return "\n".join(lines)


def verify_recognised(report: dict[str, Any]) -> bool:
    manifest = report.get("manifest") or {}
    return bool(
        (report.get("watermark") or {}).get("found") or (manifest.get("present") and manifest.get("valid"))
    )
