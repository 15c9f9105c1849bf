"""How far a backbone's training got, read from its files on the driver: ``Progress`` for a
resumed run (``result.json``, ``history.json`` under ``<run>/<backbone>``) and the ``[train]``
line per epoch with its estimate of the time left (``ProgressWatcher``, ``eta``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from logo_train import checkpoint as ckpt
from logo_train.storage import join, read_json
from logo_train.worker import RESULT_JSON, Job


@dataclass(frozen=True)
class Progress:
    """How far one backbone of a Ray Train run got, from its files (``result.json``,
    ``history.json``): what a resumed run keeps and where it goes on."""

    backbone: str
    epochs_done: int
    done: bool

    def words(self, epochs: int | None = None) -> str:
        if self.done:
            return f"{self.backbone} done"
        if self.epochs_done:
            of = f" of {epochs}" if epochs else ""
            return f"{self.backbone} stopped after epoch {self.epochs_done}{of}"
        return f"{self.backbone} to start"


def backbone_progress(output_uri: str, backbone: str) -> Progress:
    """``output_uri`` (``<run>/<backbone>``): finished (``result.json`` without an error), or
    the epochs its ``history.json`` lists."""
    try:
        summary = read_json(join(output_uri, RESULT_JSON))
    except (OSError, ValueError):  # not written (or half-written by a killed driver)
        summary = {"error": "not finished"}
    if "error" not in summary:
        return Progress(backbone, int(summary["epochs"]), True)
    return Progress(backbone, len(_history(output_uri)), False)


class ProgressWatcher:
    """One ``[train]`` line per epoch on the driver, read from the backbones' ``history.json``
    (rank 0 writes them; the driver only waits in ``fit()``). In a resumed run, the epochs on
    record before are not echoed again, and a line says from which epoch each backbone went
    on (its last registered checkpoint: the history may list one epoch more)."""

    def __init__(self, jobs: list[Job], echo, interval: float = 2.0):
        import threading

        self._jobs, self._echo, self._interval = jobs, echo, interval
        # an epoch's record as (epoch, restored_epoch): a redone epoch is a new one
        self._seen = {j.backbone: {_key(h) for h in _history(j.output_uri)} for j in jobs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        for index, job in enumerate(self._jobs):
            epochs, seen = job.config.train.epochs, self._seen[job.backbone]
            history = _history(job.output_uri)
            for h in history:
                if _key(h) in seen:
                    continue
                seen.add(_key(h))
                if h["restored_epoch"] and h["epoch"] == h["restored_epoch"] + 1:
                    self._echo(
                        f"[train] {job.backbone}: resumed from its checkpoint after epoch "
                        f"{h['restored_epoch']}"
                    )
                self._echo(
                    f"[train] {job.backbone:<22} epoch {h['epoch']}/{epochs}  train loss "
                    f"{h['train_loss']:.3f}  val macro-F1 {h['val_macro_f1']:.3f}  "
                    f"{h['train_images_per_s']:5.0f} img/s"
                    + eta(history, h["epoch"], epochs, len(self._jobs) - index - 1)
                )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._poll()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


def eta(history: list[dict[str, Any]], epoch: int, epochs: int, backbones_after: int) -> str:
    """The ``[train]`` line's estimate: this backbone's epochs left at the mean wall time of
    its epochs so far, and how many backbones of the group come after it."""
    took = [h["epoch_seconds"] for h in history if h["epoch"] <= epoch and "epoch_seconds" in h]
    left = epochs - epoch
    if not took or left <= 0:
        return f"  (then {backbones_after} more in this group)" if backbones_after else ""
    text = f"  ~{left * sum(took) / len(took):.0f} s left for it"
    return text + (f", then {backbones_after} more in this group" if backbones_after else "")


def _history(output_uri: str) -> list[dict[str, Any]]:
    """``<run>/<backbone>/history.json`` as it is now ([] when not written yet, or being
    written when the driver died)."""
    try:
        return read_json(join(output_uri, ckpt.HISTORY_JSON))
    except (OSError, ValueError):
        return []


def _key(record: dict[str, Any]) -> tuple[int, int]:
    return int(record["epoch"]), int(record.get("restored_epoch", 0))
