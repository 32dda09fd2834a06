"""One reenactment (or orbit) job, end to end, chunk by chunk.

    fetch inputs -> portrait analysis -> reconstruct (cached by model version + portrait hash)
    -> paste-back set-up: the head's opacity at the portrait's pose (one animate call), clean plate
    -> for each chunk of driving frames: face fit (smoothed) -> retarget -> I_exp renders
       -> animate (many frames per request) -> paste back into the portrait (or the square crop)
       -> visible label + invisible watermark -> H.264
    -> C2PA manifest signed last -> upload -> provenance completed and signed -> succeeded

Every step is idempotent: a redelivered job (worker killed mid-way) starts again from its inputs and
overwrites the same output key and the same provenance row, so there is exactly one of each.
Progress is written after every chunk; a cancellation is noticed there too.
"""

from __future__ import annotations

import contextvars
import io
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from PIL import Image
from sqlalchemy.orm import Session

from services.inference.backend import AnimateOutput, InferenceBackend
from services.inference.errors import InferenceInputError, InferenceServerError
from services.worker.errors import TRANSIENT_ERRORS, JobCancelled, JobFailure
from services.worker.options import DEFAULT_ORBIT_FPS, DEFAULT_ORBIT_FRAMES, DEFAULT_OUTPUT_SIZE, JobOptions
from services.worker.progress import StageClock
from services.worker.settings import DEFAULT_PASTE_BACK_MAX_SIDE
from shared.face.errors import FaceError
from shared.face.morphable import MorphableModel
from shared.face.pasteback import PasteBack, PasteBackConfig
from shared.face.pipeline import AnalyzerConfig, FaceAnalyzer, PortraitAnalysis
from shared.face.render import render_expression
from shared.face.smoothing import OneEuroConfig, SmoothingConfig
from shared.media.c2pa_sign import ProvenanceClaim, SigningChain, sign_video
from shared.media.errors import MediaError
from shared.media.guardrails import Guardrails
from shared.media.hashing import sha256_file
from shared.media.video import DEFAULT_PRESET, VideoWriter, iter_frame_chunks, probe_video
from shared.media.watermark import payload_for_job
from shared.model import cameras
from shared.platform.erasure import discard_avatar_if_erased
from shared.platform.errors import PlatformError
from shared.platform.jobs import JobState, set_result, transition, update_progress
from shared.platform.leases import DATABASE_UNAVAILABLE_ERRORS, current_result_name
from shared.platform.logging import log_context
from shared.platform.metrics import observe_job_run, record_frames, record_job_failure
from shared.platform.models import Job
from shared.platform.provenance import complete_provenance
from shared.platform.settings import DEFAULT_AUDIO_CODECS
from shared.platform.storage import ObjectStorage, avatar_cache_key, output_key

log = logging.getLogger("goha.worker")

# Paste-back: the head region (inpainted away) ends at the chin landmark (iBUG 8) plus this fraction of
# the crop's side; the neck and shoulders under it stay the portrait's own.
CHIN_LANDMARK = 8
BODY_MARGIN = 0.04


@dataclass
class PipelineConfig:
    chunk_frames: int = 16  # frames decoded, fitted and animated together (bounds memory)
    max_missing_face_ratio: float = 0.5  # more driving frames without a face than this fails the job
    output_crf: int = 20
    output_preset: str = DEFAULT_PRESET
    watermark_engine: str = "torch"  # "torch": the encoder as 2-D convolutions (verified equal); "onnx"
    mark_workers: int = 2  # frames of a chunk labelled + watermarked at once (one torch thread each)
    # Chunks queued between the four overlapped stages (prepare | animate | label + watermark | encode);
    # 0 runs them one after the other in this thread. Up to 3 * depth + 4 chunks are in flight, whatever
    # the clip length.
    pipeline_depth: int = 1
    paste_back_max_side: int = DEFAULT_PASTE_BACK_MAX_SIDE  # long side of pasted-back frames
    # I_exp supersampling; None: the training data's factor (training_supersample()).
    expression_supersample: int | None = None
    # Audio carried into the result only in these codecs (admission refuses others; a clip admitted
    # before that rule, or under a wider list, gets a silent result instead of another decoder run).
    allowed_audio_codecs: frozenset[str] = frozenset(DEFAULT_AUDIO_CODECS)


def audio_source_for(driving_path: Path, audio_codec: str | None, allowed: frozenset[str]) -> Path | None:
    """The driving clip as the result's audio source, or None (silent) when its audio codec is not allowed."""
    if audio_codec is None:
        return driving_path  # no audio: nothing to carry, nothing decoded
    if audio_codec.lower() not in allowed:
        log.warning("audio dropped: codec not allowed", extra={"audio_codec": audio_codec})
        return None
    return driving_path


@dataclass
class PipelineContext:
    """Everything a job needs, built once per worker process (after fork)."""

    session_factory: Callable[[], Session]
    storage: ObjectStorage
    inference: InferenceBackend
    face_model: MorphableModel
    image_size: int  # the network's input size: portrait crop and I_exp renders
    signing_chain: SigningChain
    watermark_secret: bytes
    provenance_key: bytes
    config: PipelineConfig = field(default_factory=PipelineConfig)
    # Decodes an untrusted video in a bounded child process first (shared.platform.mediasandbox);
    # raises InputRejected with the code the job fails with.
    check_video: Callable[[Path], object] | None = None


@dataclass
class JobInputs:
    job_id: str
    tenant_id: str
    job_type: str
    options: JobOptions
    portrait_key: str
    portrait_sha256: str
    driving_key: str | None
    driving_sha256: str | None


@dataclass
class RunStats:
    """Frame counts and per-stage wall seconds. Stages run overlapped in three threads, so the stage
    times add up to more than the job's wall time (``total_s``)."""

    frames: int = 0
    frames_without_face: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.timings[stage] = self.timings.get(stage, 0.0) + seconds


class _Timer:
    def __init__(self, stats: RunStats, stage: str) -> None:
        self.stats, self.stage = stats, stage

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        self.stats.add(self.stage, time.perf_counter() - self.start)


_END = object()  # end of a stage's stream
T = TypeVar("T")
U = TypeVar("U")


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """This thread's torch intra-op thread count for the block (torch keeps it per OS thread).

    The worker's own torch work (I_exp renders, frame conversion, the face fit) is hundreds of small ops:
    extra threads only add barrier waits, and next to Triton and the watermark on the same cores those
    waits dominate (I_exp for 16 frames: ~6 ms/frame on one thread vs 60-260 ms/frame on two, measured
    on the 2-core machine while it was loaded).
    """
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_overlapped(
    items: Iterator[T],
    middle: Callable[[T], U],
    *after: Callable[[Any], Any],
    depth: int = 1,
    helper_threads: int = 1,
) -> None:
    """``for item in items: x = middle(item); for stage in after: x = stage(x)`` as overlapped stages.

    A thread pulls ``items`` (decode, face fit, I_exp), this thread runs ``middle`` (the animate
    request: Triton computes in another process while this thread waits on the socket), and each
    function of ``after`` runs in its own thread, in order, on the previous one's result (the worker:
    label + watermark, then encode + progress). Bounded queues of ``depth`` items between stages keep
    memory independent of the clip length: at most ``(len(after) + 1) * depth + len(after) + 2`` items
    are in flight. The first exception of any stage stops the others and is re-raised here (a
    ``JobCancelled`` from the progress update included); ``items`` is closed.
    """
    if not after:
        raise ValueError("run_overlapped needs at least one stage after middle")
    stop = threading.Event()
    errors: list[BaseException] = []
    # queues[0]: items -> middle; queues[i + 1]: into after[i].
    queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in range(len(after) + 1)]

    def put(target: queue.Queue[Any], item: Any) -> bool:
        while not stop.is_set():
            try:
                target.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def get(source: queue.Queue[Any]) -> Any:
        while not stop.is_set():
            try:
                return source.get(timeout=0.05)
            except queue.Empty:
                continue
        return _END

    def fail(exc: BaseException) -> None:
        errors.append(exc)
        stop.set()

    def produce() -> None:
        try:
            with torch_threads(helper_threads):
                for item in items:
                    if not put(queues[0], item):
                        return
            put(queues[0], _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            fail(exc)

    def stage_loop(index: int) -> None:
        source = queues[index + 1]
        target = queues[index + 2] if index + 2 < len(queues) else None
        try:
            with torch_threads(helper_threads):
                while (item := get(source)) is not _END:
                    result = after[index](item)
                    if target is not None and not put(target, result):
                        return
            if target is not None:
                put(target, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            fail(exc)

    # Each thread runs in a copy of this context, so its log lines carry the job's ids (job_context).
    producer = threading.Thread(target=contextvars.copy_context().run, args=(produce,), name="goha-prepare")
    stages = [
        threading.Thread(
            target=contextvars.copy_context().run, args=(stage_loop, index), name=f"goha-finish-{index}"
        )
        for index in range(len(after))
    ]
    for thread in (producer, *stages):
        thread.daemon = True
        thread.start()
    try:
        while (item := get(queues[0])) is not _END:
            if not put(queues[1], middle(item)):
                break
        put(queues[1], _END)
        for thread in stages:
            thread.join()
    except BaseException as exc:
        fail(exc)
    finally:
        stop.set()
        for thread in (producer, *stages):
            thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the driving video's decoder, at once rather than at garbage collection
    if errors:
        raise errors[0]


@lru_cache(maxsize=1)
def training_supersample() -> int:
    """The supersampling factor the synthetic training data renders I_exp with: serving the same
    anti-aliased edges the network was trained on (read from there, so the two cannot drift)."""
    from shared.training.synthetic import SyntheticConfig

    return int(SyntheticConfig().supersample)


def matted_crop(portrait: PortraitAnalysis) -> np.ndarray:
    """The portrait crop with its background blacked out by the face stack's matte: the network was
    trained on heads on black (the paper removes backgrounds with a matting net before
    reconstruction), and a background left in lifts its colours into T_p around the head."""
    return np.rint(portrait.crop.astype(np.float32) * portrait.matte[..., None]).astype(np.uint8)


def to_model_image(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def to_uint8_frames(frames: np.ndarray, size: int) -> list[np.ndarray]:
    """(N, 3, S, S) float in [-1, 1] -> N (size, size, 3) uint8, bilinearly resized when the sizes differ.

    OpenCV's float bilinear resize uses the same half-pixel sample positions as torch's
    ``interpolate(align_corners=False)`` (equal up to float rounding) at ~1.4 ms instead of ~13-19 ms per
    128 -> 512 frame on one core (torch's NCHW upsample + uint8 conversion, measured).
    """
    result = []
    for frame in np.asarray(frames, dtype=np.float32):
        hwc = np.ascontiguousarray(frame.transpose(1, 2, 0))
        if hwc.shape[0] != size or hwc.shape[1] != size:
            hwc = cv2.resize(hwc, (size, size), interpolation=cv2.INTER_LINEAR)
        result.append(np.rint((np.clip(hwc, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8))
    return result


def smoothing_config(strength: float, fps: float) -> SmoothingConfig:
    """Map the API's 0..1 smoothing strength onto One-Euro filters: 0 disables them, 0.5 is the face
    stack's default, and stronger smoothing lowers every cutoff frequency proportionally."""
    base = SmoothingConfig(fps=fps)
    if strength <= 0.0:
        return replace(base, enabled=False)
    factor = 0.5 / strength

    def scaled(group: OneEuroConfig) -> OneEuroConfig:
        return replace(group, min_cutoff=group.min_cutoff * factor)

    return replace(
        base,
        rotation=scaled(base.rotation),
        translation=scaled(base.translation),
        expression=scaled(base.expression),
    )


class ReenactmentPipeline:
    def __init__(self, context: PipelineContext) -> None:
        self.ctx = context
        self.analyzer = FaceAnalyzer(context.face_model, context.image_size)

    # --- job lifecycle ------------------------------------------------------------------------------
    def run(self, job_id: str) -> str:
        """Run the job; returns its final state. Raises only for transient failures (to retry)."""
        inputs = self._start(job_id)
        if inputs is None:
            with self.ctx.session_factory() as session:
                job = session.get(Job, job_id)
                return job.state if job is not None else "missing"
        stats = RunStats()
        with (
            observe_job_run(inputs.job_type, stats) as observed,
            log_context(job_id=job_id, tenant_id=inputs.tenant_id),
        ):
            observed.outcome = self._run_claimed(inputs, stats)
        return observed.outcome

    def _run_claimed(self, inputs: JobInputs, stats: RunStats) -> str:
        """Run a claimed job; returns its final state. Raises only for transient failures (to retry)."""
        job_id = inputs.job_id
        try:
            with tempfile.TemporaryDirectory(prefix=f"goha-{job_id}-") as tmp:
                self._execute(inputs, Path(tmp), stats)
        except JobCancelled:
            log.info("job cancelled", extra={"job_id": job_id})
            return JobState.CANCELLED.value
        except (*TRANSIENT_ERRORS, *DATABASE_UNAVAILABLE_ERRORS):
            raise  # retried by the task with backoff; the job stays running, its inputs kept
        except (FaceError, MediaError, JobFailure, PlatformError) as exc:
            # PlatformError: e.g. object_not_found when an input was deleted while the job was queued.
            return self.fail_job(job_id, exc.code, exc.message)
        except (InferenceInputError, InferenceServerError) as exc:
            return self.fail_job(job_id, exc.code, str(exc))
        except Exception as exc:  # a bug must not leave the job running forever
            log.exception("job crashed", extra={"job_id": job_id})
            return self.fail_job(job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        return JobState.SUCCEEDED.value

    def _start(self, job_id: str) -> JobInputs | None:
        with self.ctx.session_factory() as session:
            job = session.get(Job, job_id)
            if job is None:
                log.warning("job not found", extra={"job_id": job_id})
                return None
            state = JobState(job.state)
            if state.terminal:
                return None  # a duplicate delivery of a finished job
            if state is JobState.QUEUED:
                transition(session, job, JobState.RUNNING, reason="worker started")
            # RUNNING: a redelivery after a crashed worker; start again from the inputs.
            inputs = JobInputs(
                job_id=job.id,
                tenant_id=job.tenant_id,
                job_type=job.job_type,
                options=JobOptions(),
                portrait_key=job.portrait_asset.storage_key,
                portrait_sha256=job.portrait_asset.sha256,
                driving_key=job.driving_asset.storage_key if job.driving_asset else None,
                driving_sha256=job.driving_asset.sha256 if job.driving_asset else None,
            )
            raw_options = dict(job.options or {})
            session.commit()
        inputs.options = JobOptions.from_job(inputs.job_type, raw_options)
        return inputs

    def fail_job(self, job_id: str, code: str, message: str) -> str:
        with self.ctx.session_factory() as session:
            job = session.get(Job, job_id)
            if job is None or JobState(job.state).terminal:
                return job.state if job is not None else "missing"
            transition(
                session, job, JobState.FAILED, reason="pipeline error", error_code=code, error_message=message
            )
            session.commit()
        record_job_failure(code)
        log.info("job failed", extra={"job_id": job_id, "error_code": code})
        return JobState.FAILED.value

    def _progress(self, job_id: str, done: int, total: int | None, **stage: Any) -> None:
        """Frames (and ``stage=``, ``eta_s=``: ``update_progress``); a cancelled job stops here."""
        with self.ctx.session_factory() as session:
            job = session.get(Job, job_id)
            if job is None or not update_progress(session, job, done, total, **stage):
                session.rollback()
                raise JobCancelled(job_id)
            session.commit()

    # --- the work -----------------------------------------------------------------------------------
    def _execute(self, inputs: JobInputs, tmp: Path, stats: RunStats) -> None:
        ctx, opts = self.ctx, inputs.options
        started = time.perf_counter()
        clock = StageClock()  # the stage and the time left, from measured rates (services/worker/progress.py)
        with _Timer(stats, "fetch_s"):
            portrait_rgb = self._load_portrait(inputs.portrait_key)
            driving_path: Path | None = None
            if opts.job_type == "reenact":
                if inputs.driving_key is None:
                    raise JobFailure("driving_video_missing", "a reenact job needs a driving video")
                driving_path = tmp / "driving"
                ctx.storage.download_to(inputs.driving_key, driving_path)
                if ctx.check_video is not None:  # a hostile file crashes a child, not this worker
                    ctx.check_video(driving_path)
        self._progress(inputs.job_id, 0, None, stage="analysing_portrait", eta_s=None)
        with _Timer(stats, "portrait_analysis_s"):
            portrait = self.analyzer.analyze_portrait(portrait_rgb)
        self._progress(inputs.job_id, 0, None, stage="reconstructing")
        with _Timer(stats, "reconstruct_s"):
            planes = self._source_planes(inputs, portrait)
        model_version = ctx.inference.model_version()
        payload = payload_for_job(inputs.job_id, ctx.watermark_secret)
        # 512 by default whatever the profile: the watermark survives re-encoding + resizing at that size.
        out_size = opts.output_size or DEFAULT_OUTPUT_SIZE
        paste: PasteBack | None = None
        width = height = out_size
        if opts.paste_back:
            self._progress(inputs.job_id, 0, None, stage="preparing_paste_back")
            with _Timer(stats, "paste_back_setup_s"):
                paste = self._paste_back(portrait_rgb, portrait, planes)
            height, width = paste.shape

        video_path = tmp / "result.mp4"
        if opts.job_type == "orbit":
            fps: float = opts.output_fps or DEFAULT_ORBIT_FPS
            total = opts.frame_limit or DEFAULT_ORBIT_FRAMES
            chunks = self._orbit_chunks(portrait, total)
            audio_source = None
        else:
            assert driving_path is not None
            info = probe_video(driving_path)
            fps = opts.output_fps or info.fps_float
            estimate = info.frame_count or int(round(info.duration_s * fps))
            if opts.output_fps:
                estimate = int(round(info.duration_s * fps))
            total = min(estimate, opts.frame_limit) if opts.frame_limit else estimate
            chunks = self._driving_chunks(driving_path, portrait, opts, fps, stats)
            audio_source = audio_source_for(driving_path, info.audio_codec, ctx.config.allowed_audio_codecs)

        clock.start_loop()
        self._progress(inputs.job_id, 0, total, stage="animating", eta_s=clock.eta(0, total))
        animated = [0]  # frames the network has rendered (ahead of the delivered ones)
        with VideoWriter(
            video_path,
            fps=fps,
            width=width,
            height=height,
            crf=ctx.config.output_crf,
            preset=ctx.config.output_preset,
            audio_source=audio_source,
        ) as writer:

            def animate(item: tuple[np.ndarray, np.ndarray]) -> AnimateOutput:
                expr_renders, cams = item
                with _Timer(stats, "animate_s"):
                    output = ctx.inference.animate(planes, expr_renders, cams)
                animated[0] += len(cams)
                return output

            def compose(output: AnimateOutput) -> list[np.ndarray]:
                """The frames the user gets, before the guardrails: pasted back, or the square crop."""
                if paste is None:
                    return to_uint8_frames(output.frames, out_size)
                with _Timer(stats, "paste_back_s"):
                    return paste(output.frames, output.alpha)

            # One marker for the whole video: the watermark's correction carries over from chunk to chunk.
            guardrails = Guardrails(
                payload,
                corner=opts.label_corner,  # type: ignore[arg-type]
                engine=ctx.config.watermark_engine,
                workers=ctx.config.mark_workers,
            )

            def mark(frames_out: list[np.ndarray]) -> list[np.ndarray]:
                with _Timer(stats, "guardrails_s"), torch_threads(1):
                    return guardrails(frames_out)

            def write(marked: list[np.ndarray]) -> None:
                with _Timer(stats, "encode_s"):
                    writer.write(marked)
                stats.frames += len(marked)
                record_frames(opts.job_type, len(marked))
                # Progress (and the cancellation check) after every written chunk; once every frame is
                # animated, the chunks still in flight are being marked and encoded.
                frames_total = max(total, stats.frames)
                self._progress(
                    inputs.job_id,
                    stats.frames,
                    frames_total,
                    stage="animating" if animated[0] < frames_total else "marking",
                    eta_s=clock.eta(stats.frames, frames_total),
                )

            if ctx.config.pipeline_depth > 0:
                # Encoding chunk k overlaps marking chunk k + 1: the encoder would otherwise leave the
                # marking threads idle for ~15% of the job.
                # Composing (paste-back) runs in its own stage too, beside the mark stage.
                run_overlapped(chunks, animate, compose, mark, write, depth=ctx.config.pipeline_depth)
            else:
                for item in chunks:
                    write(mark(compose(animate(item))))
            stats.add("watermark_refine_s", guardrails.refine_s)  # part of guardrails_s
            stats.add("guardrails_cpu_s", guardrails.cpu_s)  # its threads' CPU time (no waiting for a core)
            clock.start_tail()  # the writer's exit flushes the encoder and muxes the audio
            if stats.frames:
                self._progress(
                    inputs.job_id, stats.frames, stats.frames, stage="encoding", eta_s=clock.eta(0, 0)
                )
        if stats.frames == 0:
            raise JobFailure("video_no_frames", "the driving video has no decodable frames")

        self._progress(inputs.job_id, stats.frames, None, stage="signing", eta_s=clock.eta(0, 0))
        with _Timer(stats, "sign_s"):
            claim = ProvenanceClaim(
                job_id=inputs.job_id,
                model_version=model_version,
                portrait_sha256=inputs.portrait_sha256,
                driving_sha256=inputs.driving_sha256 or "",
                watermark_payload=payload,
            )
            signed = sign_video(video_path, video_path, claim, ctx.signing_chain)
        self._progress(inputs.job_id, stats.frames, None, stage="uploading", eta_s=clock.eta(0, 0))
        with _Timer(stats, "upload_s"):
            digest = sha256_file(video_path)
            # One object per claim: a worker that lost its lease never overwrites a recorded result.
            key = output_key(inputs.tenant_id, inputs.job_id, current_result_name())
            ctx.storage.put_file(key, video_path, content_type="video/mp4")
        stats.timings["total_s"] = time.perf_counter() - started
        self._succeed(
            inputs,
            key,
            digest,
            video_path.stat().st_size,
            model_version,
            payload,
            signed.manifest_sha256,
            stats,
        )
        clock.finish(stats.frames)  # the next job's estimates start from this one's rates

    def _succeed(
        self,
        inputs: JobInputs,
        key: str,
        digest: str,
        size: int,
        model_version: str,
        payload: int,
        manifest_sha256: str,
        stats: RunStats,
    ) -> None:
        with self.ctx.session_factory() as session:
            job = session.get(Job, inputs.job_id)
            if job is None or JobState(job.state) is not JobState.RUNNING:
                raise JobCancelled(inputs.job_id)
            complete_provenance(
                session,
                job,
                key=self.ctx.provenance_key,
                output_sha256=digest,
                model_version=model_version,
                watermark_payload=payload,
                c2pa_manifest_sha256=manifest_sha256,
                extra={"frames": stats.frames, "frames_without_face": stats.frames_without_face},
            )
            set_result(session, job, storage_key=key, sha256=digest, size_bytes=size, timings=stats.timings)
            update_progress(session, job, stats.frames, stats.frames)
            transition(session, job, JobState.SUCCEEDED, reason="output uploaded")
            session.commit()

    # --- steps ----------------------------------------------------------------------------------------
    def _load_portrait(self, key: str) -> np.ndarray:
        data = self.ctx.storage.get_bytes(key)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise JobFailure("image_unreadable", f"the portrait cannot be decoded: {exc}") from exc

    def _source_planes(self, inputs: JobInputs, portrait: PortraitAnalysis) -> np.ndarray:
        """T_c + T_p of the portrait, cached in object storage per (model version, tenant, portrait hash)."""
        version = self.ctx.inference.model_version()
        cache_key = avatar_cache_key(version, inputs.portrait_sha256, tenant_id=inputs.tenant_id)
        if self.ctx.storage.exists(cache_key):
            try:
                return np.load(io.BytesIO(self.ctx.storage.get_bytes(cache_key)), allow_pickle=False)
            except ValueError:
                log.warning("unreadable avatar cache entry, recomputing", extra={"key": cache_key})
        image = to_model_image(matted_crop(portrait)).numpy()
        mask = portrait.keep_mask[None, None].astype(np.float32)
        camera = portrait.camera.reshape(1, 25).numpy().astype(np.float32)
        planes = self.ctx.inference.reconstruct(image, mask, camera)[0]
        buffer = io.BytesIO()
        np.save(buffer, planes, allow_pickle=False)
        self.ctx.storage.put_bytes(cache_key, buffer.getvalue(), content_type="application/octet-stream")
        # Erased while this reconstructed (cancelled, then deleted): the entry must not outlive it.
        discard_avatar_if_erased(self.ctx.session_factory, self.ctx.storage, inputs.job_id, cache_key)
        return planes

    def _paste_back(
        self, portrait_rgb: np.ndarray, portrait: PortraitAnalysis, planes: np.ndarray
    ) -> PasteBack:
        """The job's compositor. The head region to remove from the portrait is where the model itself
        renders the head at the portrait's own camera and expression (one extra animate call), united
        with the face stack's portrait matte inside the crop, both above the chin (the neck and
        shoulders below it stay the portrait's own)."""
        renders = self._expression_renders(portrait, portrait.beta.reshape(1, -1))
        camera = portrait.camera.reshape(1, 25).numpy().astype(np.float32)
        head_alpha = self.ctx.inference.animate(planes, renders, camera).alpha[0, 0]
        return PasteBack(
            portrait_rgb,
            portrait.crop_transform,
            head_alpha,
            crop_matte=portrait.matte,
            source_matte=portrait.source_matte,
            body_row=float(portrait.landmarks[CHIN_LANDMARK, 1]) + BODY_MARGIN * portrait.crop.shape[0],
            config=PasteBackConfig(
                max_side=self.ctx.config.paste_back_max_side,
                # Small portraits are enlarged to the size the watermark is calibrated at.
                min_short_side=min(DEFAULT_OUTPUT_SIZE, self.ctx.config.paste_back_max_side),
            ),
        )

    def _expression_renders(self, portrait: PortraitAnalysis, betas: torch.Tensor) -> np.ndarray:
        alpha = portrait.alpha.reshape(1, -1).expand(betas.shape[0], -1)
        supersample = self.ctx.config.expression_supersample or training_supersample()
        with torch_threads(1):
            return render_expression(
                self.ctx.face_model, alpha, betas, self.ctx.image_size, supersample=supersample
            ).numpy()

    def _driving_chunks(
        self, path: Path, portrait: PortraitAnalysis, opts: JobOptions, fps: float, stats: RunStats
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        config = AnalyzerConfig(smoothing=smoothing_config(opts.smoothing, fps))
        analyzer = FaceAnalyzer(
            self.ctx.face_model, self.ctx.image_size, config, detector=self.analyzer.detector
        )
        state = analyzer.start_video()
        retargeter = analyzer.retargeter(
            portrait, mode=opts.motion_mode, expression_scale=opts.expression_scale
        )
        chunk_frames = self.ctx.config.chunk_frames
        for frames in iter_frame_chunks(
            path, chunk_frames, max_frames=opts.frame_limit, target_fps=opts.output_fps
        ):
            t0 = time.perf_counter()
            analyses = analyzer.analyze_frames(frames, state=state)
            retargeted = retargeter.retarget(analyses)
            stats.add("face_fit_s", time.perf_counter() - t0)
            stats.frames_without_face = state.frames_without_face
            self._check_missing_faces(state.frames_seen, state.frames_without_face, final=False)
            t0 = time.perf_counter()
            betas = torch.stack([frame.beta for frame in retargeted])
            cams = torch.stack([frame.camera for frame in retargeted]).numpy().astype(np.float32)
            renders = self._expression_renders(portrait, betas)
            stats.add("expression_render_s", time.perf_counter() - t0)
            yield renders, cams
        self._check_missing_faces(state.frames_seen, state.frames_without_face, final=True)

    def _check_missing_faces(self, seen: int, missing: int, *, final: bool) -> None:
        limit = self.ctx.config.max_missing_face_ratio
        # Early exit only once enough frames were seen that the ratio means something.
        if seen and (final or seen >= 2 * self.ctx.config.chunk_frames) and missing / seen > limit:
            raise JobFailure(
                "driving_no_face",
                f"no face was found in {missing} of {seen} driving frames (limit {limit:.0%})",
            )

    def _orbit_chunks(
        self, portrait: PortraitAnalysis, total: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        path = cameras.orbit_path(total)
        renders = self._expression_renders(portrait, portrait.beta.reshape(1, -1))
        step = self.ctx.config.chunk_frames
        for start in range(0, total, step):
            cams = path[start : start + step].numpy().astype(np.float32)
            yield np.repeat(renders, len(cams), axis=0), cams
