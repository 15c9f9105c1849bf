"""The cleaning round: act on what the label audit found, then train again.

``plan_cleaning`` decides, per training row, whether its label is kept, dropped or changed to
the audited model's prediction (``train.clean``); ``write_cleaned_shards`` writes the train
split that is left as a new shards folder (val and test copied unchanged) with a
``cleaning.parquet`` that lists every row's action. ``clean_stage`` (the pipeline's ``clean``
stage) runs the rounds: plan, write, train the same backbone with the same recipe on the cleaned
folder, audit the new model.

A round that would empty a class or act on more than ``train.clean.max_fraction`` of the rows
stops with a message naming the field; classes left with fewer rows than one batch needs are
reported, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from logo_train.audit import (
    SUSPECTED_PARQUET,
    AuditResult,
    audit_model,
    backbones_to_clean,
    finished_audit,
)
from logo_train.config import CleanConfig, Config
from logo_train.data.shards import (
    MANIFEST,
    SPLITS,
    Manifest,
    is_incomplete,
    prepare_output,
    read_manifest,
    shard_schema,
    write_manifest,
    write_shard,
)
from logo_train.layout import CLEANING_JSON, CLEANING_PARQUET
from logo_train.progress import backbone_progress
from logo_train.raysetup import init_ray
from logo_train.storage import (
    absolute,
    exists,
    join,
    read_bytes,
    read_json,
    resolve,
    write_bytes,
    write_json,
)
from logo_train.train import BackboneResult, backbone_result, log_tracked, train_backbones
from logo_train.tune import SearchResult, tuned_configs

KEPT, DROPPED, RELABELLED = "kept", "dropped", "relabelled"


class CleaningError(ValueError):
    """A cleaning round that would remove too much (a whole class, too many rows)."""


class NothingToClean(CleaningError):
    """A round that would act on no label: training again on the same data is not done."""


@dataclass
class CleanPlan:
    """Per training row (aligned with the audit's rows): the action and the label to train on."""

    mode: str
    action: np.ndarray
    """'kept' / 'dropped' / 'relabelled' per row."""
    labels: np.ndarray
    """The label each kept or relabelled row trains on (the given one, or the prediction)."""
    suspected: np.ndarray
    """Rows the rule selected: each is dropped or relabelled."""
    rule: str
    """The selection rule, in words."""
    counts_before: list[int]
    counts_after: list[int]
    thin_classes: list[str] = field(default_factory=list)
    """Classes the round shrank to less than half their rows, or below one batch (reported;
    they are trained on as they are)."""

    @property
    def keep(self) -> np.ndarray:
        return self.action != DROPPED

    @property
    def dropped(self) -> int:
        return int((self.action == DROPPED).sum())

    @property
    def relabelled(self) -> int:
        return int((self.action == RELABELLED).sum())

    def line(self) -> str:
        n = len(self.action)
        return (
            f"{self.mode}: {self.dropped} of {n} rows dropped, {self.relabelled} relabelled "
            f"({self.rule})"
        )


def select_suspected(
    given: np.ndarray,
    given_prob: np.ndarray,
    trust: np.ndarray,
    predicted: np.ndarray,
    suspicion: np.ndarray,
    cfg: CleanConfig,
) -> tuple[np.ndarray, str]:
    """Which rows' labels a round acts on, and the rule in words: the ``cfg.fraction`` most
    suspect rows (by ``suspicion``), else the given label's probability below
    ``cfg.given_prob``, trust below ``cfg.threshold`` (rows without a trust score: never by
    trust) or, with ``cfg.disagree``, a prediction other than the given label."""
    n = len(given)
    if cfg.fraction > 0:
        k = int(round(cfg.fraction * n))
        chosen = np.zeros(n, bool)
        chosen[np.argsort(-np.asarray(suspicion), kind="stable")[:k]] = True
        return chosen, f"the {k} most suspect rows (train.clean.fraction {cfg.fraction:g})"
    chosen = np.asarray(given_prob) < cfg.given_prob
    rules = [f"p(given label) < {cfg.given_prob:g}"] if cfg.given_prob > 0 else []
    if cfg.threshold > 0:
        chosen |= np.nan_to_num(np.asarray(trust, np.float64), nan=1.0) < cfg.threshold
        rules.append(f"trust < {cfg.threshold:g}")
    if cfg.disagree:
        chosen |= np.asarray(predicted) != np.asarray(given)
        rules.append("the model predicts another class")
    return chosen, " or ".join(rules) or "nothing (train.clean: no rule set)"


def plan_cleaning(
    given: np.ndarray,
    given_prob: np.ndarray,
    trust: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    suspicion: np.ndarray,
    cfg: CleanConfig,
    class_names: Sequence[str],
    batch_size: int = 1,
) -> CleanPlan:
    """What a round does to each training row (``cfg.mode`` 'drop' or 'relabel').

    ``given_prob``: the audited model's probability of the given label; ``trust``: the trust
    head's score of it (NaN without one); ``predicted`` and ``confidence``: the model's class
    and its probability; ``suspicion``: the audit's
    ranking score (higher = more suspect). Raises ``CleaningError`` (naming the field) when the
    round would act on more than ``cfg.max_fraction`` of the rows or leave a class without a
    row."""
    if cfg.mode == "none":
        raise ValueError("train.clean.mode is 'none': nothing to plan")
    given = np.asarray(given, np.int64)
    predicted = np.asarray(predicted, np.int64)
    num_classes = len(class_names)
    chosen, rule = select_suspected(given, given_prob, trust, predicted, suspicion, cfg)
    action = np.full(len(given), KEPT, dtype=object)
    labels = given.copy()
    if cfg.mode == "relabel":
        change = chosen & (predicted != given) & (np.asarray(confidence) >= cfg.relabel_confidence)
        labels[change] = predicted[change]
        action[change] = RELABELLED
        action[chosen & ~change] = DROPPED
        rule += f"; relabelled where the prediction's probability >= {cfg.relabel_confidence:g}"
    else:
        action[chosen] = DROPPED
    before = np.bincount(given, minlength=num_classes)
    after = np.bincount(labels[action != DROPPED], minlength=num_classes)
    _check_round(int(chosen.sum()), len(given), before, after, class_names, rule, cfg)
    thin = [
        class_names[c]
        for c in range(num_classes)
        if 0 < after[c] < before[c]
        and (after[c] < before[c] / 2 or after[c] < batch_size <= before[c])
    ]
    return CleanPlan(
        mode=cfg.mode,
        action=action.astype(str),
        labels=labels,
        suspected=chosen,
        rule=rule,
        counts_before=before.tolist(),
        counts_after=after.tolist(),
        thin_classes=thin,
    )


def _check_round(acted, rows, before, after, class_names, rule: str, cfg: CleanConfig) -> None:
    """``CleaningError`` (naming the field) when a round acts on more than
    ``train.clean.max_fraction`` of the ``rows`` or leaves a class without a row."""
    if acted > cfg.max_fraction * rows:
        raise CleaningError(
            f"the cleaning round would act on {acted} of {rows} training rows "
            f"({acted / max(rows, 1):.0%}, rule: {rule}), more than "
            f"train.clean.max_fraction = {cfg.max_fraction:g}: the audit is not to be trusted "
            "that far (raise train.clean.max_fraction, or lower train.clean.fraction / "
            "train.clean.given_prob)"
        )
    emptied = [c for c, b, a in zip(class_names, before, after, strict=True) if b > 0 and a == 0]
    if emptied:
        raise CleaningError(
            f"the cleaning round would leave class(es) {emptied} without a training row "
            f"(rule: {rule}): lower train.clean.given_prob or train.clean.fraction, or set "
            "train.clean.mode: none"
        )


def round_loss(cfg: CleanConfig, own_loss: str, plan: CleanPlan) -> tuple[str, str]:
    """The loss a cleaned round trains with (``cfg.loss``; ``own_loss``: the backbone's
    ``train.loss``), and why, in words."""
    if cfg.loss != "auto":
        loss = cfg.loss or own_loss
        return loss, f"train.clean.loss {cfg.loss!r}" if cfg.loss else "the backbone's own"
    share = float(plan.suspected.mean()) if len(plan.suspected) else 0.0
    if share >= cfg.noisy_fraction:
        return own_loss, (
            f"train.clean.loss auto: the round acted on {share:.1%} of the rows, at least "
            f"train.clean.noisy_fraction {cfg.noisy_fraction:g}: noisy labels, the backbone's "
            "own loss"
        )
    return "ce_weighted", (
        f"train.clean.loss auto: the round acted on {share:.1%} of the rows, below "
        f"train.clean.noisy_fraction {cfg.noisy_fraction:g}: the labels look clean"
    )


def plan_from_audit(
    ranked: pa.Table, manifest: Manifest, cfg: CleanConfig, batch_size: int
) -> CleanPlan:
    """``plan_cleaning`` for an audit's ranked table (``suspected_labels.parquet``), aligned
    with its rows."""
    classes = list(manifest.classes)
    index = {name: i for i, name in enumerate(classes)}
    given = np.asarray([index[n] for n in ranked["given_label"].to_pylist()], np.int64)
    predicted = np.asarray([index[n] for n in ranked["predicted_label"].to_pylist()], np.int64)
    trust = np.asarray(ranked["trust"].to_numpy(zero_copy_only=False), np.float64)
    if "confidence" in ranked.column_names:
        confidence = np.asarray(ranked["confidence"].to_numpy(zero_copy_only=False))
    else:  # an audit from before the column existed: no relabelling by confidence
        confidence = np.zeros(len(given))
    given_prob = np.exp(-np.asarray(ranked["loss"].to_numpy(zero_copy_only=False), np.float64))
    suspicion = -np.asarray(ranked["rank"].to_numpy(zero_copy_only=False), np.float64)
    plan = plan_cleaning(
        given, given_prob, trust, predicted, confidence, suspicion, cfg, classes, batch_size
    )
    return plan


def cleaning_table(ranked: pa.Table, plan: CleanPlan, class_names: Sequence[str]) -> pa.Table:
    """The audit's ranked list with what the round did to each row: ``action`` and
    ``train_label`` (the label round 2 trained on; empty for dropped rows)."""
    train_label = [
        "" if a == DROPPED else class_names[int(c)]
        for a, c in zip(plan.action, plan.labels, strict=True)
    ]
    return ranked.append_column("action", pa.array(plan.action.tolist())).append_column(
        "train_label", pa.array(train_label)
    )


def write_cleaned_shards(
    shards_uri: str,
    out_uri: str,
    ids: Sequence[str],
    plan: CleanPlan,
    *,
    overwrite: bool = True,
) -> Manifest:
    """A shards folder at ``out_uri``: the train split of ``shards_uri`` with the plan applied
    (rows matched by ``id``; dropped rows left out, relabelled rows with their new label and,
    on the embedded data, ``is_noisy`` recomputed), shard for shard; val and test copied."""
    manifest = read_manifest(shards_uri)
    prepare_output(out_uri, overwrite=overwrite)
    by_id = {str(i): k for k, i in enumerate(ids)}
    if len(by_id) != len(ids):
        raise ValueError(f"the audit of {shards_uri} lists a row id twice")
    classes = list(manifest.classes)
    schema = shard_schema(manifest.has_truth)
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    counts = {s: dict(manifest.counts.get(s, {})) for s in SPLITS}
    noisy = dict(manifest.noisy_counts)
    kept_labels, train_noisy, seen = [], 0, 0
    for name in manifest.files.get("train", []):
        fs, path = resolve(join(shards_uri, name))
        table = pq.read_table(path, filesystem=fs)
        table, rows, new = _clean_shard(table, by_id, plan, manifest, shards_uri)
        if manifest.has_truth:
            train_noisy += int(np.asarray(table["is_noisy"].to_pylist()).sum())
        write_shard(join(out_uri, name), table.select(schema.names).cast(schema))
        files["train"].append(name)
        kept_labels.append(new)
        seen += rows
    if seen != len(ids):
        raise ValueError(
            f"the audit lists {len(ids)} training rows, {shards_uri} has {seen}: the audit was "
            "made on other shards"
        )
    per_class = np.bincount(
        np.concatenate(kept_labels or [[]]).astype(np.int64), minlength=len(classes)
    )
    train_counts = {c: int(n) for c, n in zip(classes, per_class, strict=True)}
    counts["train"] = train_counts
    if manifest.has_truth:
        noisy["train"] = train_noisy
    for split in ("val", "test"):
        for name in manifest.files.get(split, []):
            write_bytes(join(out_uri, name), read_bytes(join(shards_uri, name)))
            files[split].append(name)
    cleaning = {k: getattr(plan, k) for k in ("mode", "rule", "dropped", "relabelled")}
    cleaned = Manifest(
        source=shards_uri,
        classes=classes,
        counts=counts,
        files=files,
        params={**manifest.params, "cleaned_from": shards_uri, "cleaning": cleaning},
        has_truth=manifest.has_truth,
        noisy_counts=noisy,
        clean_counts=manifest.clean_counts,
        files_seen=manifest.files_seen,
    )
    write_manifest(out_uri, cleaned)
    return cleaned


def _clean_shard(table: pa.Table, by_id: dict[str, int], plan: CleanPlan, manifest, shards_uri):
    """One train shard with the plan applied: (the rows kept, with their new labels and, on
    the embedded data, ``is_noisy`` recomputed; the rows it had; the kept rows' labels)."""
    try:
        rows = np.asarray([by_id[i] for i in table["id"].to_pylist()], np.int64)
    except KeyError as e:
        raise ValueError(
            f"training row {e.args[0]!r} of {shards_uri} is not in the audit: the audit was "
            "made on other shards"
        ) from None
    keep = plan.action[rows] != DROPPED
    new = plan.labels[rows][keep]
    table = table.filter(pa.array(keep))
    columns = {
        "label": pa.array(new, pa.int32()),
        "label_name": pa.array([manifest.classes[c] for c in new]),
    }
    if manifest.has_truth:
        wrong = new != np.asarray(table["clean_label"].to_pylist(), np.int64)
        columns["is_noisy"] = pa.array(wrong)
    for column, values in columns.items():
        table = table.set_column(table.schema.get_field_index(column), column, values)
    return table, len(rows), new


def write_cleaning(out_uri: str, table: pa.Table, summary: dict) -> tuple[str, str]:
    """``cleaning.parquet`` (every row: rank, scores, action, train label) and
    ``cleaning.json`` (the counts) under ``out_uri``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    parquet, summary_uri = join(out_uri, CLEANING_PARQUET), join(out_uri, CLEANING_JSON)
    write_bytes(parquet, sink.getvalue().to_pybytes())
    write_json(summary_uri, summary, default=float)
    return parquet, summary_uri


# --- the pipeline's clean stage -------------------------------------------------------------


def clean_stage(
    cfg: Config,
    shards_uri: str,
    models: list[BackboneResult],
    searches: dict[str, SearchResult],
) -> tuple[list[BackboneResult], dict[str, AuditResult]]:
    """``train.clean``: for the best backbone on validation (or ``train.clean.backbones``),
    ``rounds`` times: act on the last audit, write the cleaned train split to
    ``<run>/clean/<backbone>/round<r>/data``, train the backbone again with its recipe (and
    tuned parameters; ``train.clean.loss`` when set) there, and audit the new model on the
    cleaned split. A round the cleaning refuses (it would empty a class, or act on more than
    ``train.clean.max_fraction``), or that would act on no row (the labels look clean: training
    again on the same data is time for nothing), is printed with the reason and recorded in
    ``clean/summary.json``; the run goes on with the models trained so far."""
    by_backbone = {m.backbone: m for m in models}
    missing = [b for b in cfg.train.clean.backbones if b not in by_backbone]
    if missing:
        raise ValueError(f"train.clean.backbones {missing} were not trained in this run")
    if not models:
        raise ValueError("stage 'clean' needs trained backbones (stage 'train')")
    found = finished_cleaning(cfg)
    if found:
        print(f"[clean] the rounds finished before ({cfg.layout.clean_summary}); kept")
        return found
    chosen = backbones_to_clean(cfg, models)
    tuned = tuned_configs(cfg, searches) if searches else {}
    results, audits, refused = [], {}, []
    for backbone in chosen:
        own = tuned.get(backbone) or cfg.for_backbone(backbone)
        done, found_audits, refusal = _clean_rounds(cfg, own, by_backbone[backbone], shards_uri)
        results += done
        audits.update(found_audits)
        refused += [refusal] if refusal else []
    write_json(
        cfg.layout.clean_summary,
        {"results": [asdict(r) for r in results], "refused": refused},
    )
    return results, audits


def finished_cleaning(
    cfg: Config,
) -> tuple[list[BackboneResult], dict[str, AuditResult]] | None:
    """The clean stage's models and audits when it finished before (``clean/summary.json``,
    written last, and each round's audit still there), else None."""
    if not exists(cfg.layout.clean_summary):
        return None
    results = [BackboneResult(**r) for r in read_json(cfg.layout.clean_summary)["results"]]
    audits = {}
    for r in results:
        audit = finished_audit(cfg.layout.audit(r.backbone, r.round), r.checkpoint)
        if audit is None:
            return None
        audits[r.label] = audit
    return results, audits


def _clean_rounds(
    cfg: Config, own: Config, model: BackboneResult, shards_uri: str
) -> tuple[list[BackboneResult], dict[str, AuditResult], dict | None]:
    """One backbone's rounds (``own``: its config), each on the last round's data and audit;
    returns the new models, their audits and the refusal that ended the rounds, if one did."""
    models, audits = [], {}
    source, loss_before = shards_uri, own.train.loss
    for round in range(2, cfg.train.clean.rounds + 2):
        manifest = read_manifest(source)
        fs, path = resolve(join(cfg.layout.audit(model.backbone, model.round), SUSPECTED_PARQUET))
        ranked = pq.read_table(path, filesystem=fs)
        try:
            plan = _round_plan(ranked, manifest, cfg.train.clean, own.train.batch_size)
        except CleaningError as e:  # the round stops; the models trained so far stand
            verb = "not trained" if isinstance(e, NothingToClean) else "refused"
            print(f"[clean] {model.backbone} round {round} {verb}: {e}")
            return models, audits, {"backbone": model.backbone, "round": round, "reason": str(e)}
        data_uri = cfg.layout.round_data(model.backbone, round)
        written = _written_round(cfg, model.backbone, round)
        if written:  # a resumed run: the same audit gives the same plan
            cleaned, summary = written
            print(f"[clean] {model.backbone} round {round}: cleaned shards written before "
                  f"({data_uri}); kept")  # fmt: skip
        else:
            cleaned = write_cleaned_shards(source, data_uri, ranked["id"].to_pylist(), plan)
            summary = cleaning_summary(plan, ranked, manifest, cleaned, model, source)
            loss, why = round_loss(cfg.train.clean, own.train.loss, plan)
            summary.update(loss_before=loss_before, loss=loss, loss_why=why)
            write_cleaning(
                cfg.layout.clean_round(model.backbone, round),
                cleaning_table(ranked, plan, manifest.classes),
                summary,
            )
        round_cfg = round_config(own, cfg.train.clean, summary["loss"], model.checkpoint)
        _print_round(model.backbone, round, plan, summary, cleaned, round_cfg, summary["loss_why"])
        model = _train_round(cfg, round_cfg, model.backbone, round, data_uri, cleaned)
        model.cleaning = summary
        acted_on = round <= cfg.train.clean.rounds  # the next round cleans by this audit
        audits[model.label] = audit_model(cfg, model, data_uri, acted_on)
        models.append(model)
        source, loss_before = data_uri, round_cfg.train.loss
    return models, audits, None


def round_config(own: Config, cc: CleanConfig, loss: str, last_checkpoint: str) -> Config:
    """A round's training config: the backbone's own (``own``) with the round's loss and, when
    ``train.clean.epochs`` > 0, continuing from the last round's best checkpoint for that many
    epochs at ``lr_scale`` x its peak learning rate (no search in a round: ``tune`` off)."""
    if cc.epochs <= 0:
        return own.with_train(loss=loss)
    own = replace(own, tune=replace(own.tune, enabled=False))
    return own.with_train(
        loss=loss,
        start_from=last_checkpoint,
        epochs=cc.epochs,
        lr=own.train.lr * cc.lr_scale,
        min_steps=0,
        trust_warmup_epochs=0,  # the model has learned: no plain-CE epochs first
    )


def _written_round(cfg: Config, backbone: str, round: int) -> tuple[Manifest, dict] | None:
    """A round's cleaned shards and counts when both were written before (``cleaning.json``
    comes after the shards' manifest), else None."""
    data_uri = cfg.layout.round_data(backbone, round)
    summary_uri = join(cfg.layout.clean_round(backbone, round), CLEANING_JSON)
    if not exists(summary_uri) or not exists(join(data_uri, MANIFEST)) or is_incomplete(data_uri):
        return None
    return read_manifest(data_uri), read_json(summary_uri)


def _round_plan(ranked: pa.Table, manifest: Manifest, cc: CleanConfig, batch_size: int):
    """``plan_from_audit``, refused (``CleaningError``) when it acts on no label: the same
    data again, nothing to learn."""
    plan = plan_from_audit(ranked, manifest, cc, batch_size)
    if plan.dropped + plan.relabelled == 0:
        raise NothingToClean(f"the audit acts on no label ({plan.line()}): the data is unchanged")
    return plan


def _print_round(backbone, round, plan, summary, cleaned, round_cfg, why) -> None:
    print(f"[clean] {backbone} round {round}: {plan.line()}")
    print(f"[clean] {backbone} round {round} trains with {round_cfg.train.loss} ({why})")
    if "flipped_acted_on" in summary:
        print(
            f"[clean] {backbone} round {round}: {summary['flipped_acted_on']} of the "
            f"{summary['flipped_before']} flipped labels dropped or relabelled "
            f"({summary['relabelled_right']} of {plan.relabelled} relabelled to the true "
            f"class); wrong labels left: {summary['flipped_after']} of "
            f"{cleaned.split_rows('train')}"
        )
    if plan.thin_classes:
        print(
            f"[clean] {backbone} round {round}: class(es) {plan.thin_classes} lost more "
            f"than half their rows or fell below one batch ({round_cfg.train.batch_size}); "
            "trained on as they are"
        )


def round_run(cfg: Config, backbone: str, round: int) -> str:
    """The Ray Train run of a cleaning round, ``<round_train>/round<r>`` (absolute: Ray Train
    takes no relative path); stable, so a resumed run finds it."""
    return join(absolute(cfg.layout.round_train(backbone, round)), f"round{round}")


def _train_round(
    cfg: Config, round_cfg: Config, backbone: str, round: int, data_uri: str, cleaned: Manifest
) -> BackboneResult:
    """The backbone trained again on a round's cleaned shards, in a Ray Train run of its own
    (``round<r>``: a resumed run finds it, or keeps the model it finished)."""
    run_uri = round_run(cfg, backbone, round)
    if backbone_progress(join(run_uri, backbone), backbone).done:
        model = backbone_result(
            backbone, join(run_uri, backbone), round_cfg.model.image_size, cleaned
        )
        model.round = round
        print(f"[clean] {model.label}: trained before ({model.run_path}); kept")
        log_tracked(round_cfg, backbone, model.run_path, {"stage": "clean", "round": str(round)})
        return model
    init_ray()
    done, failures = train_backbones(
        {backbone: round_cfg},
        data_uri,
        cleaned,
        name=run_uri.rsplit("/", 1)[1],
        storage_path=cfg.layout.round_train(backbone, round),
        echo=print,
        tensorboard_uri=cfg.layout.tensorboard_of(f"{backbone}-round{round}"),
        track={"stage": "clean", "round": str(round)},
    )
    if failures:
        raise RuntimeError(f"cleaning round {round} of {backbone} failed: {failures}")
    model = done[0]
    model.round = round
    print("[clean] " + model.line())
    return model


def cleaning_summary(plan, ranked, manifest, cleaned, trained, source: str) -> dict:
    """The counts of a cleaning round (and, on the embedded data, how many of its actions hit
    a really wrong label)."""
    out = {
        "mode": plan.mode,
        "rule": plan.rule,
        "rows_before": len(plan.action),
        "rows_after": cleaned.split_rows("train"),
        "dropped": plan.dropped,
        "relabelled": plan.relabelled,
        "thin_classes": plan.thin_classes,
        "from_model": trained.label,
        "from_shards": source,
    }
    if manifest.has_truth and "is_noisy" in ranked.column_names:
        noisy = np.asarray(ranked["is_noisy"].to_pylist(), bool)
        index = {n: i for i, n in enumerate(manifest.classes)}
        truth = np.asarray([index[n] for n in ranked["true_label"].to_pylist()])
        relabelled = plan.action == "relabelled"
        out.update(
            flipped_before=int(noisy.sum()),
            flipped_acted_on=int((plan.suspected & noisy).sum()),
            clean_acted_on=int((plan.suspected & ~noisy).sum()),
            relabelled_right=int((relabelled & (plan.labels == truth)).sum()),
            flipped_after=int(cleaned.noisy_counts.get("train", 0)),
        )
    return out
