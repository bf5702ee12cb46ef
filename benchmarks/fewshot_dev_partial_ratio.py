"""Round 15 of issue 22: the adapted student's score over a power of the generic student's, between the student
term (power 0) and round 14's likelihood ratio (power 1), on the widened development pool (no test split of a
reported fold is read).

Regenerate:  python benchmarks/fewshot_dev_partial_ratio.py
Writes benchmarks/results/fewshot_dev_partial_ratio.json (+ .md) in seconds from saved draws: the seed-0 draws
rounds 5, 10 and 14 saved (``fewshot_dev_gate.json``, ``fewshot_dev_tsd.json``, ``fewshot_dev_ratio.json``), and,
for a candidate only, the fresh seed-2 bank of ``fewshot_dev_margin.json``.

The term (``docs/METHODS.md``, round 15, stated before this ran): ``p_β(q) = a(q) / g(q)^β`` in units of the mean over
the supports of ``a_held_out(s) / g(s)^β`` (``fewshot_dev_ratio.ratio_term``).  Rows: support/mean + W × p_β +
round 10's T→S term (½ × T→S/nn at K ≤ 2) for β in ``POWERS`` and W in ``ROW_WEIGHTS``, and the default
(support/mean + ¼ × student/mean).  The rule: the best row with no pool task more than 1 point below PatchCore-K is a
candidate if its mean beats the default's by at least ``MIN_GAIN`` points; the default changes to a candidate only if,
on the seed-2 bank (where only the candidate and the default are computed), its mean beats the default's and its
worst task (Δ against PatchCore-K) is no lower than the default's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from fewshot_dev_learned import IMAGE_SIZE
from fewshot_dev_margin import ExtraRows, bank_records
from fewshot_dev_ratio import ratio_term
from fewshot_dev_research import POOL, summary
from fewshot_dev_tta import GUARD, guarded_best
from fewshot_dev_units import (DEFAULT_ROW, MIN_GAIN, per_k_differences, row_tables, saved_draws, saved_draws_parser)

from medad.results import BenchmarkResults, benchmark_command

POWERS = (0.25, 0.5, 0.75)
ROW_WEIGHTS = (0.25, 0.5, 1.0)


def parse_args() -> argparse.Namespace:
    parser = saved_draws_parser(__doc__, "fewshot_dev_partial_ratio")
    parser.add_argument("--ratio-results", default="benchmarks/results/fewshot_dev_ratio.json",
                        help="round 14's generic-student query scores (seed-0 queries)")
    parser.add_argument("--bank", default="benchmarks/results/fewshot_dev_margin.json", help="the seed-2 bank")
    return parser.parse_args()


def row_name(power: float, weight: float) -> str:
    return f"support/mean+p[β={power:g}] w={weight:g}"


def seed_0_bank(args: argparse.Namespace) -> dict[str, dict]:
    """The seed-0 draws rounds 5, 10 and 14 saved, in the bank's layout (``fewshot_dev_margin.run_task``)."""
    gate_data, tsd_data = saved_draws(args)
    generic = json.loads(Path(args.ratio_results).read_text())["generic_queries"]
    bank = {}
    for task in POOL:
        if not gate_data[task]["labels"] == tsd_data[task]["labels"] == generic[task]["labels"]:
            raise ValueError(f"{task}: the saved rounds scored different queries")
        bank[task] = {"labels": gate_data[task]["labels"], "tsd_queries": tsd_data[task]["queries"],
                      "generic_queries": generic[task]["scores"],
                      "draws": [{**g, **t} for g, t in zip(gate_data[task]["draws"], tsd_data[task]["draws"],
                                                           strict=True)]}
    return bank


def ratio_rows(rows: dict[str, tuple[float, float]]) -> ExtraRows:
    """``fewshot_dev_margin.bank_records``' further rows: each of ``rows`` (name → (β, W)) as support/mean + W × p_β +
    the default's T→S term."""
    def scores(draw: dict, terms: dict[str, np.ndarray], generic: np.ndarray) -> dict[str, np.ndarray]:
        base = terms["support/mean"] + terms["tsd"]
        return {row: base + weight * ratio_term(draw, generic, power) for row, (power, weight) in rows.items()}
    return scores


def select(found: list[dict]) -> dict:
    """The candidate (module doc), if any."""
    rows = summary(found)[f"lite0@{IMAGE_SIZE}"]
    default_mean = rows[DEFAULT_ROW]["mean"]
    _, chosen = guarded_best(rows, (DEFAULT_ROW,))
    return {"rule": f"among rows with no pool task more than {GUARD:g} point below PatchCore-K, the best mean; a "
                    f"candidate if it beats the default's by at least {MIN_GAIN:g} point",
            "default_mean": default_mean, "chosen": chosen,
            "candidate": chosen is not None and rows[chosen]["mean"] >= default_mean + MIN_GAIN}


def confirm(bank: dict[str, dict], row: str, power_weight: tuple[float, float]) -> dict:
    """The candidate and the default on the fresh bank, and whether the default changes (module doc)."""
    rows = summary(bank_records(bank, ratio_rows({row: power_weight})))[f"lite0@{IMAGE_SIZE}"]
    candidates, _ = guarded_best(rows)
    out = {"patchcore": {"mean": rows["patchcore"]["mean"], "worst_task_difference": 0.0},
           **{name: {key: candidates[name][key] for key in ("mean", "worst_task_difference")}
              for name in (DEFAULT_ROW, row)}}
    out["changes"] = (out[row]["mean"] > out[DEFAULT_ROW]["mean"]
                      and out[row]["worst_task_difference"] >= out[DEFAULT_ROW]["worst_task_difference"])
    return out


def markdown(data: dict, found: list[dict]) -> str:
    rows = summary(found)[f"lite0@{IMAGE_SIZE}"]
    by_k = per_k_differences(found)
    lines = ["# Round 15: the adapted student over a power of the generic student (issue 22, development pool)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             "Time: seconds (from the draws rounds 5, 10 and 14 saved; no new scoring)", "",
             "Module doc of `benchmarks/fewshot_dev_partial_ratio.py`: EfficientNet-Lite0 at 128 px, the pool and "
             "seed-0 draws of `fewshot_dev_tta` (K 2/4/8 × 2 draws). `p[β]` = a query's adapted-student score over its "
             "generic-student score to the power β, in units of the supports' mean held-out score over their generic "
             "score to β; W = its weight. Every row adds round 10's ½ × T→S/nn term at K = 2, as the default "
             f"(`{DEFAULT_ROW}`) does. Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's on "
             f"the same supports; guard ✓ = no task more than {GUARD:g} point below PatchCore-K.", ""]
    lines += row_tables(rows, by_k)
    s = data["selection"]
    lines += ["", "## The pre-stated rule", "", f"{s['rule']}.", ""]
    if not s["candidate"]:
        best = f"best guarded row `{s['chosen']}`, {rows[s['chosen']]['mean']:.2f}" if s["chosen"] else "no row guarded"
        lines.append(f"{best}, against the default's {s['default_mean']:.2f} → **no candidate; the default is "
                     "unchanged and the seed-2 bank is not read**.")
    elif "confirmation" not in data:
        lines.append(f"Candidate `{s['chosen']}`; **its confirmation waits for the seed-2 bank** (`fewshot_dev_margin`).")
    else:
        c = data["confirmation"]
        lines += [f"Candidate `{s['chosen']}`. On the seed-2 bank (mean, worst task Δ against PatchCore-K):", "",
                  *[f"- `{name}`: {c[name]['mean']:.2f}, worst {c[name]['worst_task_difference']:+.1f}"
                    for name in ("patchcore", DEFAULT_ROW, s["chosen"])], "",
                  "→ " + ("**the default changes to the candidate**" if c["changes"]
                          else "**the default is unchanged**")]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_partial_ratio.py"),
                               keep=lambda record: False)
    rows = {row_name(p, w): (p, w) for p in POWERS for w in ROW_WEIGHTS}
    found = bank_records(seed_0_bank(args), ratio_rows(rows))
    results.records[:] = found
    selection = select(found)
    results.data.update(selection=selection, per_k=per_k_differences(found))
    bank_file = Path(args.bank)
    if selection["candidate"] and bank_file.is_file():
        bank = json.loads(bank_file.read_text())["draws"]
        if all(task in bank for task in POOL):
            results.data["confirmation"] = confirm(bank, selection["chosen"], rows[selection["chosen"]])
    results.save()
    results.write_markdown(markdown(results.data, found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
