"""The MLflow model registry: register candidates, and move ``@champion`` only by a checked promotion.

Policy (the README's "Promotion" section says the same):

* The compare stage registers the run's best model as a new version of ``mlflow.registered_model``
  (a *candidate*), tagged with its evidence: the metric, its value, the test data's fingerprint
  and the scoring protocol.
* ``@champion`` moves only in :func:`promote`: the candidate must beat the current champion on the
  **same test data** (same fingerprint) under the **same protocol** and metric, or the promotion is
  forced with a reason, which is recorded on the version. The first version ever registered may
  become champion. An experiment (``dvc exp run``, which sets ``DVC_EXP_NAME``) never promotes;
  ``registry.promote: never`` turns the automatic promotion of ``dvc repro`` off.
* Every version carries tags saying whether and why it was or was not promoted, which is what
  ``mlflow ui`` shows on the version's page.
* The check and the move are one act: against a local store it holds a file lock beside the store,
  and in every case it re-reads the alias right before moving it and refuses if it changed, so two
  promotions at once cannot let the worse model win silently.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from retinaseg.core.config import Params
from retinaseg.core.errors import RetinasegError
from retinaseg.core.mlflow_store import CHAMPION_ALIAS, champion_uri
from retinaseg.inference.predictor import InferenceSettings
from retinaseg.serving import log_pyfunc_model
from retinaseg.tracking import use_experiment, use_store

# version tags: the evidence a promotion compares, and the decision taken
TAG_MODEL = "model_name"
TAG_THRESHOLD = "threshold"
TAG_METRIC = "metric"
TAG_VALUE = "metric_value"
TAG_FINGERPRINT = "test_fingerprint"
TAG_PROTOCOL = "protocol"
TAG_DATASET = "dataset"
TAG_EXPERIMENT = "dvc_exp_name"
TAG_PROMOTION = "promotion"  # champion | refused | not attempted | superseded
TAG_PROMOTION_REASON = "promotion_reason"
TAG_FORCE_REASON = "force_reason"


class PromotionError(RetinasegError, ValueError):
    """A promotion that cannot be carried out (unknown version, missing evidence, a race)."""


@dataclass(frozen=True)
class Evidence:
    """What a version's test score means: comparable only with the same metric, data and protocol."""

    metric: str
    value: float
    test_fingerprint: str
    protocol: str
    dataset: str = ""

    @classmethod
    def from_tags(cls, tags: dict[str, str], where: str) -> Evidence:
        missing = [t for t in (TAG_METRIC, TAG_VALUE, TAG_FINGERPRINT, TAG_PROTOCOL) if not tags.get(t)]
        if missing:
            raise PromotionError(
                f"{where} has no recorded {', '.join(missing)} (registered before promotion checks "
                "existed, or by hand): it cannot be compared; use --force --reason '...'"
            )
        return cls(
            tags[TAG_METRIC],
            float(tags[TAG_VALUE]),
            tags[TAG_FINGERPRINT],
            tags[TAG_PROTOCOL],
            tags.get(TAG_DATASET, ""),
        )

    def tags(self) -> dict[str, str]:
        return {
            TAG_METRIC: self.metric,
            TAG_VALUE: repr(float(self.value)),
            TAG_FINGERPRINT: self.test_fingerprint,
            TAG_PROTOCOL: self.protocol,
            TAG_DATASET: self.dataset,
        }


@dataclass(frozen=True)
class Promotion:
    """The outcome of :func:`promote` (also written to the version's tags)."""

    registered_model: str
    version: int
    promoted: bool
    message: str
    previous: int | None = None  # the champion version before the act

    @property
    def uri(self) -> str:
        return champion_uri(self.registered_model)


def evidence_from_metrics(metrics: dict[str, Any], metric: str) -> Evidence:
    """The evidence in an evaluate metrics file (``reports/metrics/<model>.json``) for ``metric``."""
    protocol = metrics.get("protocol", {})
    value = metrics.get("fov", {}).get(metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise PromotionError(f"the metrics have no finite fov.{metric}")
    fingerprint = protocol.get("test_fingerprint")
    if not fingerprint:
        raise PromotionError("the metrics have no protocol.test_fingerprint (re-run the evaluate stage)")
    return Evidence(
        metric=metric,
        value=float(value),
        test_fingerprint=str(fingerprint),
        protocol=f"fov; threshold from {protocol.get('threshold_from', '?')}; test split",
        dataset=str(protocol.get("dataset", "")),
    )


# ------------------------------------------------------------------------------------------ register


def register_candidate(
    model_name: str,
    model_dir: str | Path,
    threshold: float | None,
    evidence: Evidence,
    registered_name: str,
    experiment: str,
    settings: InferenceSettings | None = None,
) -> int:
    """Log ``model_dir`` as the pyfunc model (a new run in ``experiment``), register it as a new
    version of ``registered_name`` tagged with ``evidence``, and return the version number.
    No alias moves here."""
    use_store()
    use_experiment(experiment)
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    with mlflow.start_run(run_name=f"{model_name}-candidate"):
        info = log_pyfunc_model(model_dir, threshold, settings)
        mlflow.set_tags({"candidate_model": model_name, TAG_EXPERIMENT: exp_name})
    version = int(mlflow.register_model(info.model_uri, registered_name).version)
    tags = {TAG_MODEL: model_name, TAG_EXPERIMENT: exp_name, **evidence.tags()}
    if threshold is not None:
        tags[TAG_THRESHOLD] = f"{float(threshold):.6f}"
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    return version


# ------------------------------------------------------------------------------------------- promote


def current_champion(client: MlflowClient, registered_name: str) -> int | None:
    """The version ``@champion`` points at, or None when the alias is not set."""
    try:
        return int(client.get_model_version_by_alias(registered_name, CHAMPION_ALIAS).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _version_tags(client: MlflowClient, registered_name: str, version: int) -> dict[str, str]:
    try:
        return dict(client.get_model_version(registered_name, str(version)).tags)
    except MlflowException:
        raise PromotionError(f"{registered_name} version {version} does not exist") from None


@contextlib.contextmanager
def _promotion_lock(store_uri: str) -> Iterator[None]:
    """Hold a file lock beside a local (sqlite) store; a server store has no shared file to lock,
    there the re-read of the alias inside :func:`promote` is the guard."""
    parsed = urlparse(store_uri)
    if parsed.scheme == "sqlite" and parsed.path not in ("", "/:memory:"):
        db = Path(store_uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{db}.promote.lock", timeout=120):
            yield
    else:
        yield


def _decide(
    client: MlflowClient, registered_name: str, version: int, champion: int | None, force: bool
) -> tuple[bool, str]:
    """(promote?, why) for ``version`` against the current ``champion`` version."""
    if champion == version:
        return False, f"version {version} is already the champion"
    candidate = Evidence.from_tags(
        _version_tags(client, registered_name, version), f"{registered_name} version {version}"
    )
    if champion is None:
        return True, (
            f"first champion: version {version} ({candidate.metric} {candidate.value:.4f}); "
            "no version held @champion before"
        )
    try:
        holder = Evidence.from_tags(
            _version_tags(client, registered_name, champion), f"the champion (version {champion})"
        )
    except PromotionError as exc:
        if force:
            return True, f"forced over version {champion}: {exc}"
        raise
    versus = (
        f"candidate version {version} {candidate.metric} {candidate.value:.4f} vs champion version "
        f"{champion} {holder.metric} {holder.value:.4f}"
    )
    if (candidate.metric, candidate.test_fingerprint, candidate.protocol) != (
        holder.metric,
        holder.test_fingerprint,
        holder.protocol,
    ):
        why = (
            f"not comparable: {versus}, but scored on different test data or protocol "
            f"(fingerprint {candidate.test_fingerprint[:12]} vs {holder.test_fingerprint[:12]}, "
            f"'{candidate.protocol}' vs '{holder.protocol}')"
        )
        return (True, f"forced; {why}") if force else (False, why)
    if candidate.value > holder.value:
        return True, f"better: {versus}"
    why = f"not better: {versus}"
    return (True, f"forced; {why}") if force else (False, why)


def promote(
    registered_name: str,
    version: int,
    force: bool = False,
    reason: str | None = None,
    client: MlflowClient | None = None,
) -> Promotion:
    """Point ``@champion`` at ``version`` if it beats the current champion (see the module doc).

    A refusal is an outcome, not an error: it is returned (``promoted=False``) with both numbers in
    its message, and written to the version's tags. ``force`` needs a ``reason``, recorded on the
    version. Raises :class:`PromotionError` for an unknown version, missing evidence (unless forced),
    or when the alias moved while this promotion was deciding."""
    if force and not (reason and reason.strip()):
        raise PromotionError("--force needs --reason '...': the reason is recorded on the version")
    store = use_store()
    client = client or MlflowClient(tracking_uri=store)
    with _promotion_lock(store):
        before = current_champion(client, registered_name)
        promoted, why = _decide(client, registered_name, version, before, force)
        if promoted:
            now = current_champion(client, registered_name)  # re-read inside the act
            if now != before:
                raise PromotionError(
                    f"the champion of {registered_name} changed from version {before} to {now} while "
                    f"version {version} was being checked; run the promotion again"
                )
            client.set_registered_model_alias(registered_name, CHAMPION_ALIAS, str(version))
            if before is not None:
                client.set_model_version_tag(
                    registered_name, str(before), TAG_PROMOTION, f"superseded by version {version}"
                )
        tags = {TAG_PROMOTION: "champion" if promoted else "refused", TAG_PROMOTION_REASON: why}
        if force:
            tags[TAG_FORCE_REASON] = reason.strip()  # type: ignore[union-attr]
        if promoted or why != f"version {version} is already the champion":
            for key, value in tags.items():
                client.set_model_version_tag(registered_name, str(version), key, value)
    return Promotion(registered_name, version, promoted, why, before)


def mark_not_promoted(registered_name: str, version: int, why: str) -> None:
    """Record on the version why no promotion was attempted (an experiment, or promote: never)."""
    client = MlflowClient(tracking_uri=use_store())
    client.set_model_version_tag(registered_name, str(version), TAG_PROMOTION, "not attempted")
    client.set_model_version_tag(registered_name, str(version), TAG_PROMOTION_REASON, why)


# ------------------------------------------------------------------------------- the compare stage


def register_and_maybe_promote(
    champion: dict[str, Any],
    metrics: dict[str, Any],
    params: Params,
    models_dir: str | Path = "models",
) -> tuple[int, Promotion | None, str]:
    """The compare stage's registry step: register the run's best model (``champion``, from
    :func:`~retinaseg.evaluation.compare.compare_models`; ``metrics`` its evaluate metrics file) as
    a candidate, then promote it when this is not an experiment and ``registry.promote`` is auto.
    Returns ``(version, promotion or None, a line for the user)``."""
    name = params.mlflow.registered_model
    evidence = evidence_from_metrics(metrics, params.compare.metric)
    version = register_candidate(
        champion["name"],
        Path(models_dir) / champion["name"],
        champion["threshold"],
        evidence,
        registered_name=name,
        experiment=params.mlflow.experiment,
        settings=InferenceSettings.from_params(params.evaluate),
    )
    exp_name = os.environ.get("DVC_EXP_NAME")
    if exp_name or params.registry.promote == "never":
        why = (
            f"experiment {exp_name!r}: experiments never move @champion"
            if exp_name
            else "registry.promote is never"
        )
        mark_not_promoted(name, version, why)
        line = (
            f"registered {name} version {version} ({champion['name']}); not promoted ({why}). "
            f"To promote it: retinaseg promote {version}"
        )
        return version, None, line
    result = promote(name, version)
    verb = "promoted to @champion" if result.promoted else "not promoted"
    return (
        version,
        result,
        f"registered {name} version {version} ({champion['name']}); {verb}: {result.message}",
    )
