"""Plain-text summary of stage results."""

from __future__ import annotations

from cion_dist.stage import StageResult


def print_results(results: list[StageResult]) -> None:
    for r in results:
        rows = ", ".join(f"{k}={v}" for k, v in r.rows.items())
        state = " (already complete)" if r.skipped else ""
        print(f"[{r.stage}]{state} {r.uri}  {rows}")
        for k, v in r.summary.items():
            if isinstance(v, (int, float, str)):
                print(f"    {k}: {v}")
        for k in ("notes", "plots"):  # explanations and figures, one per line
            for item in r.summary.get(k) or ():
                print(f"    {k[:-1]}: {item}")
