"""The resumable, shardable extraction pipeline: videos -> snippet features in a feature store.

Decoding runs in background threads (decord and torchvision release the GIL) that feed bounded queues,
so the encoder in the main thread is never starved. Each video is decoded in fixed chunks of
``batch_size`` unique source frames and encoded in fixed groups (per-frame encoders: those chunks; clip
encoders: ``batch_size // clip_frames`` snippets at a time), so a video's features never depend on which
other videos were in the run: a resumed, sharded or uninterrupted run writes bit-identical rows.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features import __version__
from features.compat import ENCODER_KEYS, FEATURE_KEYS, ROW_KEYS, differing_keys
from features.decode import VIDEO_EXTENSIONS, DecodeError, SnippetPlan, VideoSource, plan_snippets, window_offsets
from features.errors import StovtalError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3


class ExtractError(StovtalError):
    """A run-level problem (bad video list, incompatible store); one line."""


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    path: Path


def _is_video_entry(path: Path) -> bool:
    # Broken symlinks count: they are videos the user meant to have, recorded as failures.
    return path.suffix.lower() in VIDEO_EXTENSIONS and (path.is_file() or path.is_symlink())


def collect_videos(inputs, list_file=None) -> list[VideoJob]:
    """Jobs sorted by video id. A directory contributes its videos (recursively, id = relative path
    without extension); a file argument or list line contributes itself (id = file stem), even when
    missing, so that it is recorded as a failure rather than silently dropped."""
    jobs: dict[str, VideoJob] = {}

    def add(video_id: str, path: Path) -> None:
        if video_id in jobs and jobs[video_id].path != path:
            raise ExtractError(f"video id {video_id!r} is given twice: {jobs[video_id].path} and {path}")
        jobs[video_id] = VideoJob(video_id, path)

    entries = [Path(p) for p in inputs]
    if list_file is not None:
        list_path = Path(list_file)
        try:
            lines = list_path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ExtractError(f"{list_path}: cannot read the video list ({exc.strerror})") from None
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                entries.append(p if p.is_absolute() else list_path.parent / p)
    for entry in entries:
        if entry.is_dir() and entry.suffix.lower() not in VIDEO_EXTENSIONS:
            for path in sorted(entry.rglob("*")):
                if _is_video_entry(path):
                    add(path.relative_to(entry).with_suffix("").as_posix(), path)
        else:
            add(entry.stem, entry)
    return [jobs[k] for k in sorted(jobs)]


def shard_store_path(store, index: int, count: int) -> Path:
    """STORE.zarr -> STORE.shard-i-of-n.zarr (a per-shard store that `tal-store merge` joins)."""
    store = Path(store)
    return store.with_name(f"{store.stem}.shard-{index}-of-{count}{store.suffix}")


@dataclass
class ExtractOptions:
    grid: object                 # features.store.Grid
    batch_size: int = 32         # frames per encoder call (and the fixed per-video chunk size)
    dtype: str = "float16"       # store dtype
    decode_workers: int = 1      # decode threads
    prefetch: int = 4            # chunks buffered per decode thread
    decode_threads: int = 0      # ffmpeg threads per reader (0 = decord's default)


@dataclass
class ExtractSummary:
    total: int = 0                                   # videos in this shard
    skipped: int = 0                                 # already in the store
    extracted: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    snippets: int = 0
    frames: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def lines(self) -> list[str]:
        rate = lambda n: n / self.seconds if self.seconds > 0 else 0.0  # noqa: E731
        out = [f"extracted {len(self.extracted)} videos ({self.snippets} snippets, {self.frames} frames encoded) "
               f"in {self.seconds:.1f} s: {rate(len(self.extracted)):.2f} videos/s, {rate(self.snippets):.1f} "
               f"snippets/s; skipped {self.skipped} already done; failed {len(self.failed)} of {self.total}"]
        out += [f"  FAILED {vid}: {reason}" for vid, reason in self.failed.items()]
        return out


def build_provenance(encoder, options: ExtractOptions) -> dict:
    grid = options.grid
    return {**encoder.provenance(), "normalise": encoder.normalise, "fps": float(grid.fps), "window": int(grid.window),
            "stride": int(grid.stride), "frame_step": int(grid.frame_step), "dtype": options.dtype,
            "dim": int(encoder.dim), "frame_sampling": "nearest decord timestamp",
            "stovtal_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def check_compatible(store_path, existing: dict, wanted: dict) -> None:
    """Refuse to mix features made differently in one store."""
    differing = differing_keys(existing, wanted, FEATURE_KEYS + ROW_KEYS)
    if differing:
        key = differing[0]
        raise ExtractError(f"{store_path}: made with {key}={existing.get(key)!r} but this run has "
                           f"{key}={wanted.get(key)!r}; use the same settings or another --store")


def frames_per_snippet(grid) -> int:
    return len(window_offsets(grid.window, grid.frame_step))


def check_grid(encoder, grid) -> None:
    """A clip encoder needs exactly its clip length of frames in every snippet window."""
    if encoder.clip_frames and frames_per_snippet(grid) != encoder.clip_frames:
        hint = (f"; use --frame-step {grid.window // encoder.clip_frames}"
                if grid.window % encoder.clip_frames == 0 else "")
        raise ExtractError(f"{encoder.model_name} embeds clips of {encoder.clip_frames} frames, but a "
                           f"{grid.window}-frame window with frame step {grid.frame_step} samples "
                           f"{frames_per_snippet(grid)}{hint}")


def open_or_create_store(store_path, encoder, options: ExtractOptions):
    from features.store import create_store, open_store

    check_grid(encoder, options.grid)
    wanted = build_provenance(encoder, options)
    if Path(store_path).exists():
        store = open_store(store_path, mode="a")
        try:
            check_compatible(store_path, store.provenance, wanted)
        except ExtractError:
            store.close()
            raise
        return store
    return create_store(store_path, dim=encoder.dim, provenance=wanted, dtype=options.dtype)


# ---- decoding side (background threads) -------------------------------------------------------------

@dataclass
class _Start:
    job: VideoJob
    plan: SnippetPlan
    fps: float
    duration: float
    num_frames: int


@dataclass
class _Chunk:
    frames: object   # uint8 tensor [K, 3, h, w]


@dataclass
class _End:
    pass


@dataclass
class _Fail:
    job: VideoJob
    reason: str


class _DecodeWorker(threading.Thread):
    """Decodes its share of the videos (every W-th, in order) into preprocessed frame chunks."""

    def __init__(self, jobs, options: ExtractOptions, preprocess, pin: bool):
        super().__init__(daemon=True)
        self.jobs, self.options, self.preprocess, self.pin = jobs, options, preprocess, pin
        self.out: queue.Queue = queue.Queue(maxsize=max(2, options.prefetch))
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        for job in self.jobs:
            if self.stop.is_set():
                return
            try:
                self._decode(job)
            except DecodeError as exc:
                self._put(_Fail(job, str(exc)))
            except Exception as exc:  # one odd video must not end a 100k-video run; it is recorded
                log.debug("unexpected error decoding %s", job.path, exc_info=True)
                self._put(_Fail(job, f"unexpected {type(exc).__name__}: {str(exc).strip()[:200]}"))

    def _decode(self, job: VideoJob) -> None:
        source = VideoSource(job.path, num_threads=self.options.decode_threads)
        try:
            plan = plan_snippets(source.timestamps, source.duration, self.options.grid)
            if not self._put(_Start(job, plan, source.fps, source.duration, source.num_frames)):
                return
            size = self.options.batch_size
            for start in range(0, len(plan.source_frames), size):
                frames = self.preprocess(source.decode(plan.source_frames[start:start + size]))
                if not self._put(_Chunk(frames.pin_memory() if self.pin else frames)):
                    return
            self._put(_End())
        finally:
            source.close()


# ---- encoding side (main thread) --------------------------------------------------------------------

def pool_snippets(embeddings: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """[U, D] unique-frame embeddings + [S, F] slots -> [S, D] mean over each snippet's frames."""
    rows = np.zeros((slots.shape[0], embeddings.shape[1]), dtype=np.float32)
    for f in range(slots.shape[1]):  # a fixed summation order keeps results bit-reproducible
        rows += embeddings[slots[:, f]]
    return rows / np.float32(slots.shape[1])


def _next(worker: _DecodeWorker):
    """The worker's next item; a worker that died without saying why is a bug worth stopping for."""
    while True:
        try:
            return worker.out.get(timeout=1.0)
        except queue.Empty:
            if not worker.is_alive() and worker.out.empty():
                raise RuntimeError("a decode thread ended unexpectedly") from None


class _FramePooling:
    """Per-frame encoders: each unique source frame is embedded once, in the decoder's fixed chunks; a
    snippet's row is the mean of its frames' embeddings."""

    def __init__(self, encoder, plan: SnippetPlan):
        self.encoder, self.plan = encoder, plan
        self.embeddings = np.empty((len(plan.source_frames), encoder.dim), dtype=np.float32)
        self.filled = 0
        self.frames_encoded = len(plan.source_frames)

    def add(self, frames) -> None:
        emb = self.encoder.encode_images(frames)
        self.embeddings[self.filled:self.filled + len(emb)] = emb
        self.filled += len(emb)

    def finish(self):
        if self.filled != len(self.embeddings):
            return None, f"decoded {self.filled} frames but needed {len(self.embeddings)}"
        return pool_snippets(self.embeddings, self.plan.slots), None


class _ClipPooling:
    """Clip encoders: each snippet's frames are embedded together as one clip. Snippets go to the encoder in
    fixed groups (0..G-1, G..2G-1, ...) as soon as their frames are decoded, so rows never depend on how the
    decoder chunked the video, and only the frames still needed by later snippets stay in memory."""

    def __init__(self, encoder, plan: SnippetPlan, batch_size: int):
        self.encoder, self.plan = encoder, plan
        self.group = max(1, batch_size // encoder.clip_frames)   # --batch-size counts frames per encoder call
        self.rows = np.empty((plan.num_snippets, encoder.dim), dtype=np.float32)
        self.done = 0                  # snippets embedded so far
        self.filled = 0                # source frames received so far
        self.base = 0                  # source-frame index of self.buffer[0]
        self.buffer = None             # uint8 [K, 3, h, w]: frames base .. filled-1
        self.frames_encoded = plan.slots.size

    def add(self, frames) -> None:
        import torch

        self.buffer = frames if self.buffer is None else torch.cat([self.buffer, frames])
        self.filled += len(frames)
        slots = self.plan.slots
        while self.done < len(self.rows):
            end = min(self.done + self.group, len(self.rows))
            if slots[self.done:end].max() >= self.filled:
                break                  # the group's last frames are not decoded yet
            index = torch.from_numpy(slots[self.done:end] - self.base)
            self.rows[self.done:end] = self.encoder.encode_clips(self.buffer[index])
            self.done = end
            if self.done < len(self.rows):  # frames before the next snippet's first are never needed again
                drop = int(slots[self.done, 0]) - self.base
                self.buffer, self.base = self.buffer[drop:], self.base + drop

    def finish(self):
        if self.filled != len(self.plan.source_frames) or self.done != len(self.rows):
            return None, f"decoded {self.filled} frames but needed {len(self.plan.source_frames)}"
        return self.rows, None


def _encode_video(first: _Start, worker: _DecodeWorker, encoder, options: ExtractOptions):
    """Encode one video's chunks as they arrive; (rows, frames encoded, None) or (None, 0, reason)."""
    pooling = (_ClipPooling(encoder, first.plan, options.batch_size) if encoder.clip_frames
               else _FramePooling(encoder, first.plan))
    while True:
        item = _next(worker)
        if isinstance(item, _Chunk):
            pooling.add(item.frames)
        elif isinstance(item, _End):
            rows, reason = pooling.finish()
            return rows, pooling.frames_encoded, reason
        else:
            return None, 0, item.reason


def _record(store, job: VideoJob, first, rows, frames_encoded, reason, options: ExtractOptions,
            summary: ExtractSummary) -> None:
    from features.store import VideoInfo

    if rows is None:
        store.add_failure(job.video_id, reason)
        summary.failed[job.video_id] = reason
        log.warning("FAILED %s (%s): %s", job.video_id, job.path, reason)
        return
    info = VideoInfo(num_rows=len(rows), fps=first.fps, duration=first.duration, num_frames=first.num_frames,
                     grid=options.grid)
    store.write_video(job.video_id, rows, info)
    summary.extracted.append(job.video_id)
    summary.snippets += len(rows)
    summary.frames += frames_encoded
    log.info("extracted %s: %d snippets from %d decoded frames", job.video_id, len(rows),
             len(first.plan.source_frames))


def extract_videos(jobs: list[VideoJob], store_path, encoder, options: ExtractOptions,
                   progress: bool = True) -> ExtractSummary:
    """Extract every job not yet in the store; failures are recorded in the store and the summary."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    summary = ExtractSummary(total=len(jobs))
    with open_or_create_store(store_path, encoder, options) as store:
        finished = set(store.video_ids())
        pending = [job for job in jobs if job.video_id not in finished]
        summary.skipped = len(jobs) - len(pending)
        if summary.skipped:
            log.info("%s: %d of %d videos already extracted, skipping them", store_path, summary.skipped, len(jobs))
        n_workers = max(1, min(options.decode_workers, len(pending)))
        workers = [_DecodeWorker(pending[w::n_workers], options, encoder.preprocess,
                                 pin=encoder.device.type == "cuda") for w in range(n_workers)]
        for worker in workers:
            worker.start()
        started = time.perf_counter()
        with tqdm(total=len(jobs), initial=summary.skipped, unit="video", disable=not progress,
                  dynamic_ncols=True, desc="extract") as bar, \
                (logging_redirect_tqdm() if progress else contextlib.nullcontext()):
            try:
                for k, job in enumerate(pending):
                    worker = workers[k % n_workers]   # worker w owns videos w, w+W, ...: output stays in order
                    first = _next(worker)
                    if isinstance(first, _Fail):
                        rows, frames_encoded, reason = None, 0, first.reason
                    else:
                        rows, frames_encoded, reason = _encode_video(first, worker, encoder, options)
                    _record(store, job, first, rows, frames_encoded, reason, options, summary)
                    elapsed = time.perf_counter() - started
                    bar.set_postfix_str(f"{summary.snippets / max(elapsed, 1e-9):.1f} snippets/s, "
                                        f"{len(summary.failed)} failed", refresh=False)
                    bar.update(1)
            finally:
                summary.seconds = time.perf_counter() - started
                stop_decoders(workers)
    return summary


def stop_decoders(workers) -> None:
    """Stop the decode threads and wait for them: one still inside the decoder when the interpreter exits can
    abort the process ("terminate called without an active exception") after a run that succeeded."""
    for worker in workers:
        worker.stop.set()
    for worker in workers:
        worker.join()


def prompt_ensemble(encoder, classes: list[str], templates: list[str]) -> np.ndarray:
    """[K, D]: per class, the L2-normalised mean of its L2-normalised prompt embeddings, one prompt per
    template (CLIP's prompt ensembling); the bare class names when there is no template."""
    if not templates:
        return encoder.encode_texts(list(classes))
    emb = encoder.encode_texts([t.format(c) for t in templates for c in classes])
    mean = emb.reshape(len(templates), len(classes), -1).mean(axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


# Encoder provenance a vocabulary repeats: where its text tower's weights came from.
_TEXT_PROVENANCE = ("model_config_sha256", "init_seed", "quick_gelu", "weights_format", "checkpoint_file", "towers",
                    "text_checkpoint_file", "text_checkpoint_sha256")


def extract_vocabulary(store_path, encoder, name: str, classes: list[str], templates=None) -> np.ndarray:
    """Embed class names (one template, a prompt ensemble, or bare names) with the encoder that made the store;
    refuse any other encoder."""
    from features.store import open_store

    templates = [templates] if isinstance(templates, str) else list(templates or [])
    if encoder.text_missing:
        raise ExtractError(encoder.text_missing)
    with open_store(store_path, mode="a") as store:
        prov = store.provenance
        mine = encoder.provenance()
        differing = differing_keys(prov, mine, ENCODER_KEYS)
        if differing:
            key = differing[0]
            raise ExtractError(
                f"{store_path}: features were made by {prov.get('encoder')}/{prov.get('pretrained')} "
                f"({key}={prov.get(key)!r}), not {encoder.model_name}/{encoder.pretrained} ({key}="
                f"{mine.get(key)!r}); text embeddings must come from the same encoder")
        if store.dim != encoder.dim:
            raise ExtractError(f"{store_path}: store dim {store.dim} != text embedding dim {encoder.dim}")
        embeddings = prompt_ensemble(encoder, classes, templates)
        vocab_prov = {"encoder": encoder.model_name, "pretrained": encoder.pretrained,
                      **{k: mine[k] for k in _TEXT_PROVENANCE if k in mine}, "templates": templates,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        if len(templates) > 1:
            vocab_prov["ensemble"] = "mean of L2-normalised prompt embeddings, L2-normalised"
        store.add_vocabulary(name, classes, embeddings, template=templates[0] if len(templates) == 1 else None,
                             provenance=vocab_prov)
    return embeddings
