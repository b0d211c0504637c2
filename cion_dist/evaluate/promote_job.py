"""The promote stage: move the ``champion`` alias to a candidate version only when it is measurably better.

The candidate (``promote.candidate``, else the newest version of ``promote.model_name``) and the current
champion are read from the registry. The candidate's newest evaluation record (for ``promote.protocol``, and
``promote.dataset_digest`` when given) fixes the settings; the champion is judged by its record with exactly
those settings (``cion_dist.mlflow_io.registry``), never by one made with other settings. ``promotion.decide`` makes
the call; this module applies it (aliases),
records why on the candidate version (``cion.promote.*`` tags) and logs a ``promote`` MLflow run.
"""

from __future__ import annotations

import time

from cion_dist.config.job import Job
from cion_dist.errors import ConfigError
from cion_dist.evaluate.promotion import CHALLENGER, CHAMPION, Decision, Evaluated, decide
from cion_dist.stage import PromoteResult, StageRun, locked_stage

STAGE = "promote"


def _candidate_uri(job: Job) -> str:
    cfg = job.promote
    c = cfg.candidate
    if c is None:
        return f"models:/{cfg.model_name}/latest"
    if c.startswith("models:/"):
        return c
    if c.strip().isdigit():
        return f"models:/{cfg.model_name}/{int(c)}"
    raise ConfigError(f"promote.candidate {c!r}: use a version number or a models:/ URI")


def apply_decision(
    name: str,
    candidate_version: str,
    decision: Decision,
    metric: str,
    digest: str | None,
    champion_version: str | None,
    mlflow_client,
    settings_key: str | None = None,
) -> None:
    """Move aliases and write the reason on the candidate version."""
    c = mlflow_client
    if decision.alias == CHAMPION:
        c.set_registered_model_alias(name, CHAMPION, candidate_version)
        from cion_dist.mlflow_io.registry import alias_version

        held = alias_version(name, CHALLENGER, c)
        if held is not None and str(held.version) == str(candidate_version):
            c.delete_registered_model_alias(name, CHALLENGER)
    elif decision.alias == CHALLENGER:
        c.set_registered_model_alias(name, CHALLENGER, candidate_version)
    tags = {
        "cion.promote.decision": "promoted" if decision.promote else (decision.alias or "unchanged"),
        "cion.promote.reason": decision.reason,
        "cion.promote.metric": metric,
        "cion.promote.dataset_digest": digest or "",
        "cion.promote.compared_to": champion_version or "",
        "cion.promote.settings_key": settings_key or "",
        "cion.promote.at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for k, v in tags.items():
        c.set_model_version_tag(name, candidate_version, k, v)


@locked_stage(STAGE)
def run(job: Job) -> PromoteResult:
    import mlflow

    from cion_dist.mlflow_io.mlflow_run import configure
    from cion_dist.mlflow_io.registry import (
        alias_version,
        evaluation_records,
        get_version,
        latest_eval_key,
        read_evaluation,
    )

    if not job.mlflow.enabled:
        raise ConfigError("promote works on the MLflow model registry; mlflow.enabled must be true")
    cfg = job.promote
    candidate_uri = _candidate_uri(job)
    configure(job)
    client = mlflow.MlflowClient()
    cand = get_version(candidate_uri, client)
    name, version = cand.name, str(cand.version)
    key = latest_eval_key(cand, cfg.protocol, cfg.dataset_digest)
    rec = evaluation_records(cand).get(key) if key else None
    digest = rec["settings"].get("dataset_digest") if rec else cfg.dataset_digest
    cand_eval = Evaluated(version, digest, read_evaluation(cand, key, cfg.metric) if key else None, key)
    champ = alias_version(name, CHAMPION, client)
    champ_eval = None
    if champ is not None:
        value = read_evaluation(champ, key, cfg.metric) if key else None
        champ_eval = Evaluated(str(champ.version), digest, value, key if value is not None else None)
    decision = decide(cand_eval, champ_eval, cfg.metric, cfg.margin, cfg.floor, cfg.allow_first_without_floor)
    champ_version = str(champ.version) if champ is not None else None
    summary = {
        "decision": "promoted" if decision.promote else (decision.alias or "unchanged"),
        "reason": decision.reason,
        "candidate_version": version,
        "champion_before": champ_version or "",
        "champion_after": version if decision.promote else (champ_version or ""),
        "metric": cfg.metric,
        "candidate_value": cand_eval.value,
        "champion_value": champ_eval.value if champ_eval else None,
        "dataset_digest": digest or "",
        "settings_key": key or "",
        "settings": (rec or {}).get("settings", {}),
    }
    inputs = (
        {"uri": f"models:/{name}/{version}", "stage": "model", "mlflow_run_id": cand.run_id, "digest": digest or ""},
    )
    st = StageRun(job, STAGE, cfg, inputs, writes_output=False)
    with st.tracking():
        apply_decision(name, version, decision, cfg.metric, digest, champ_version, client, key)
        mlflow.set_tags(
            {
                "cion.promote.decision": summary["decision"],
                "cion.promote.reason": decision.reason[:5000],
                "cion.promote.candidate": version,
                "cion.promote.champion_before": champ_version or "",
            }
        )
        record = st.finalize({}, summary)
    return PromoteResult.from_record(record, uri=f"models:/{name}@{CHAMPION}")
