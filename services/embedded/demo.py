"""``make demo`` / ``goha demo`` / ``python -m services.embedded.demo``: the main job, end to end, on one machine.

1. writes the sample inputs to ``<var>/demo/``: the astronaut portrait that ships in scikit-image and a
   generated driving clip (that face swaying and "talking", 25 fps, with a tone as its audio track);
2. starts the embedded stack (Triton via PyTriton, the gateway, one Celery worker; SQLite, the
   filesystem broker and local storage under ``<var>``; see ``services/embedded/stack.py``);
3. submits the job through the Python client, shows its progress, downloads the watermarked MP4, saves
   the signed provenance record and verifies the MP4 (watermark, C2PA manifest, provenance);
4. prints where the files are and the timings, and shuts the stack down.

The LAST stdout line is JSON: ``{"job_s", "frames", "startup_s", "total_s", "result", "verified", ...}``.
``job_s`` is submit -> succeeded as the client saw it (polling once a second); ``job_timings`` are the
API's own (``queued_s``, ``running_s`` and the worker's stages).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goha.client import Consent
from goha.display import JobProgressBar, verify_recognised, verify_summary
from shared.platform.errors import PlatformError

DEMO_CONSENT = Consent(
    subject="Eileen Collins (NASA astronaut portrait shipped with scikit-image as data.astronaut)",
    method="written_release",
    reference="public-domain NASA photograph; used for this local demo only",
    attested_by="goha demo",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--var-dir", type=Path, default=Path("var"), help="stack state; inputs/outputs in <var>/demo"
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: models/goha-<profile>.pt")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the generated driving clip")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--size", type=int, default=256, help="side of the driving clip in pixels")
    parser.add_argument(
        "--output-size", type=int, default=None, help="output side in pixels (default: the API's, 512)"
    )
    parser.add_argument("--triton-threads", type=int, default=None, help="torch threads of the model server")
    parser.add_argument("--no-progress", action="store_true")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from services.embedded.stack import EmbeddedStack
    from shared.media.samples import write_clip, write_portrait

    began = time.perf_counter()
    demo_dir = Path(args.var_dir).resolve() / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    frames = max(1, round(args.seconds * args.fps))
    _say(f"[1/5] writing the sample inputs to {demo_dir}")
    portrait = write_portrait(demo_dir / "portrait.png")
    driving = write_clip(
        demo_dir / "driving.mp4", frames, fps=args.fps, size=args.size, audio=True, talk=True
    )
    inputs_s = time.perf_counter() - began

    _say("[2/5] starting the embedded stack (Triton, gateway, worker)")
    stack = EmbeddedStack(
        args.var_dir,
        checkpoint=args.checkpoint,
        profile=args.profile,
        tenant="demo",
        triton_threads=args.triton_threads,
        announce=lambda message: _say(f"      {message}"),
    )
    summary: dict[str, Any] = {"frames": frames, "inputs_s": round(inputs_s, 2)}
    with stack:
        summary["startup_s"] = stack.timings["startup_s"]
        _say(f"      up in {stack.timings['startup_s']:.1f} s at {stack.url}")
        with stack.client() as client:
            _say(f"[3/5] submitting {portrait.name} + {driving.name} ({frames} frames at {args.fps} fps)")
            submitted = time.perf_counter()
            job = client.submit(
                portrait,
                driving,
                options={"output_size": args.output_size},
                consent=DEMO_CONSENT,
                idempotency_key=None,
            )
            bar = JobProgressBar(enabled=not args.no_progress)
            try:
                job = client.wait(job["id"], on_progress=bar, poll_interval_s=1.0)
            finally:
                bar.close()
            summary["job_s"] = round(time.perf_counter() - submitted, 2)
            summary["job_id"] = job["id"]
            summary["job_timings"] = job.get("timings")
            if job["state"] != "succeeded":
                error = job.get("error") or {}
                _say(
                    f"error: [{error.get('code', job['state'])}] {error.get('message', 'the job did not succeed')}"
                )
                _say(f"       worker log: {stack.log_path('worker')}")
                print(json.dumps({**summary, "state": job["state"], "error": error}))
                return 1
            _say(f"      succeeded in {summary['job_s']:.1f} s")

            _say("[4/5] downloading the result, its provenance, and verifying it")
            download = client.download_result(job["id"], demo_dir / "result.mp4")
            provenance_path = demo_dir / "provenance.json"
            provenance_path.write_text(json.dumps(client.provenance(job["id"]), indent=2))
            report = client.verify(download.path)
            verify_path = demo_dir / "verify.json"
            verify_path.write_text(json.dumps(report, indent=2))
        _say("[5/5] stopping the embedded stack")
    summary["total_s"] = round(time.perf_counter() - began, 2)

    recognised = verify_recognised(report)
    names_job = (report.get("manifest") or {}).get("job_id") == job["id"] or report.get("job_id") == job["id"]
    print(verify_summary(report))
    print(
        f"\nportrait    {portrait}\n"
        f"driving     {driving}\n"
        f"result      {download.path}  ({download.size_bytes} bytes)\n"
        f"provenance  {provenance_path}\n"
        f"verify      {verify_path}\n"
        f"logs        {stack.log_dir}\n"
        f"timings     stack start {summary['startup_s']:.1f} s, job {summary['job_s']:.1f} s "
        f"(submit -> succeeded), whole demo {summary['total_s']:.1f} s"
    )
    if not (report.get("watermark") or {}).get("found"):
        print(
            "note: the invisible watermark was not read back; a random-weight checkpoint renders flat colour "
            "fields that carry it poorly (the trained models/goha-tiny.pt does)."
        )
    summary.update(
        {
            "result": str(download.path),
            "result_sha256": download.sha256,
            "verified": bool(recognised and names_job),
            "watermark_found": bool((report.get("watermark") or {}).get("found")),
            "manifest_valid": bool((report.get("manifest") or {}).get("valid")),
            "checkpoint": str(stack.checkpoint),
        }
    )
    print(json.dumps(summary))
    return 0 if recognised and names_job else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.embedded.demo", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except PlatformError as exc:
        print(f"error: [{exc.code}] {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
