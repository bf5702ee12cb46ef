"""The web app of ``medad serve``: K normal references + query images → scores, verdicts, heat maps, CSV.

One page (``templates/index.html``, ``static/style.css``; no script, nothing from another site): a form
for the references, the queries and the threshold, then a table with each query's score, verdict and
heat-map figure, the threshold with the rule it came from, and a link to the results as CSV.  Scoring
is ``medad fewshot score``'s: the references are the supports, the default threshold is its ``auto``
rule (the highest leave-one-out score of the references).  The page offers the scorers the app was
started with (the learned model and training-free PatchCore-K, :mod:`medad.engine.scorers`); the user
picks one.  Every file the app writes goes into
``workdir`` (one sub-folder per request); the caller removes it when the app stops.
"""

from __future__ import annotations

import csv
import io
import re
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flask import Flask, abort, render_template, request, send_from_directory
from werkzeug.exceptions import RequestEntityTooLarge

from medad.data.io import max_pixels, read_image
from medad.engine.evaluate import predict_batches
from medad.engine.fewshot import auto_threshold
from medad.engine.scorers import ScoringModel, load_or_prepare_supports
from medad.engine.support_checks import distinct_supports
from medad.engine.thresholds import MIN_RELIABLE_K, NonFiniteScoreError, Threshold, check_scores
from medad.options import OptionError, parse_threshold
from medad.visualize import write_heatmaps
from medad.serve.uploads import ACCEPTED, Limits, PixelBudget, Upload, UploadError, read_upload, save_uploads

CSV_FILE = "scores.csv"
HEATMAPS = "heatmaps"
RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class QueryResult:
    name: str
    score: float
    abnormal: bool | None
    verdict: str
    heatmap: str  # file name in the request's heat-map folder


@dataclass
class Scoring:
    run_id: str
    model: str  # the scorer's name
    references: list[str]
    threshold: Threshold
    rows: list[QueryResult]
    #: references dropped as duplicates of others (what and why)
    dropped: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """The threshold's caveats in the page's terms (the CLI's names its flags), and the dropped references."""
        notes = [f"{note}; dropped" for note in self.dropped]
        if self.threshold.rule == "none":
            notes.append("no automatic threshold from a single reference, so no verdicts; give more references or a "
                         "number")
        elif self.threshold.warning and self.threshold.rule == "support-leave-one-out":
            notes.append(self.threshold.warning)
        return "; ".join(notes) or None


def form_threshold(text: str) -> float | None:
    """The form's threshold: empty or 'auto' → None (the references' rule), else a finite number."""
    try:
        value = parse_threshold(text, keywords=("", "auto"))
    except OptionError as error:
        raise UploadError(f"threshold: {error}") from None
    return None if isinstance(value, str) else value


class FewShotScorer:
    """Few-shot scorers by method name that score uploads into a folder (one request at a time: a lock
    serialises them); ``default`` is the method the page offers first."""

    def __init__(self, scorers: dict[str, ScoringModel], default: str) -> None:
        if default not in scorers:
            raise ValueError(f"default method {default!r} is not among {', '.join(scorers)}")
        self.scorers = scorers
        self.default = default
        self.lock = threading.Lock()
        self.pixels = PixelBudget(max_pixels())

    def choose(self, method: str) -> ScoringModel:
        """The scorer of a form's method (empty: the default)."""
        method = method or self.default
        if method not in self.scorers:
            raise UploadError(f"method: expected one of {', '.join(self.scorers)}, got {method!r}")
        return self.scorers[method]

    def score(self, method: str, references: list[Upload], queries: list[Upload], fixed: float | None,
              folder: Path) -> Scoring:
        scorer = self.choose(method)
        model = scorer.model
        support_images = torch.stack([read_upload(upload, scorer.image_size, self.pixels) for upload in references])
        kept, dropped = distinct_supports(support_images, [upload.name for upload in references])
        references, support_images = [references[i] for i in kept], support_images[kept]
        query_images = torch.stack([read_upload(upload, scorer.image_size, self.pixels) for upload in queries])
        with self.lock, torch.no_grad():
            supports = load_or_prepare_supports(scorer, support_images, None)
            maps, scores = predict_batches(lambda rows: model.predict(query_images[rows], supports),
                                           len(query_images), 16)
            threshold = (Threshold(fixed, "fixed", f"the fixed threshold {fixed:g} given in the form")
                         if fixed is not None else
                         auto_threshold(model, support_images, [upload.name for upload in references], supports,
                                        advice=f"give K ≥ {MIN_RELIABLE_K} references or a number"))
        check_scores(scores, [upload.name for upload in queries], scorer.name)
        names = [upload.path.name for upload in queries]
        write_heatmaps(folder / HEATMAPS, names, (read_image(upload.path) for upload in queries), maps, scores,
                       titles=[upload.name for upload in queries], threshold=threshold)
        rows = [QueryResult(upload.name, float(score), threshold.is_abnormal(score), threshold.verdict(score),
                            f"{upload.path.stem}.png") for upload, score in zip(queries, np.asarray(scores), strict=False)]
        _write_csv(folder / CSV_FILE, rows, threshold)
        return Scoring(folder.name, scorer.name, [upload.name for upload in references], threshold, rows,
                       [item.describe() for item in dropped])


def _write_csv(path: Path, rows: list[QueryResult], threshold: Threshold) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "score", "abnormal", "threshold", "threshold_rule"])
    for row in rows:
        writer.writerow([row.name, repr(row.score), "" if row.abnormal is None else row.abnormal,
                         "" if threshold.value is None else repr(threshold.value), threshold.rule])
    path.write_text(buffer.getvalue())


def create_app(scorer: FewShotScorer, workdir: Path, limits: Limits) -> Flask:
    """The Flask app; the page names each scorer (method, model, teacher, image size) and lets the user pick."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.max_request_bytes

    def page(status: int = 200, chosen: str = "", **values):
        return render_template("index.html", scorers=scorer.scorers, chosen=chosen or scorer.default, limits=limits,
                               accepted=ACCEPTED, **values), status

    @app.get("/")
    def index():
        return page()

    @app.post("/score")
    def score():
        folder = workdir / uuid.uuid4().hex
        method = request.form.get("method", "")
        try:
            fixed = form_threshold(request.form.get("threshold", ""))
            references = save_uploads([(f.filename, f.stream) for f in request.files.getlist("references")],
                                      folder / "references", "reference", 1, limits.max_references, limits)
            queries = save_uploads([(f.filename, f.stream) for f in request.files.getlist("queries")],
                                   folder / "queries", "query", 1, limits.max_queries, limits)
            return page(chosen=method, result=scorer.score(method, references, queries, fixed, folder))
        except UploadError as error:
            return page(400, chosen=method, error=str(error))
        except NonFiniteScoreError as error:
            return page(500, chosen=method, error=str(error))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error):
        return page(413, error=f"the upload is larger than the limit of {limits.max_request_bytes / 2**20:g} MiB "
                               "per request; send fewer or smaller files")

    def run_folder(run_id: str) -> Path:
        if not RUN_ID.fullmatch(run_id) or not (workdir / run_id).is_dir():
            abort(404)
        return workdir / run_id

    @app.get("/runs/<run_id>/scores.csv")
    def download(run_id: str):
        return send_from_directory(run_folder(run_id), CSV_FILE, as_attachment=True,
                                   download_name=f"medad_scores_{run_id[:8]}.csv", mimetype="text/csv")

    @app.get("/runs/<run_id>/heatmaps/<name>")
    def heatmap(run_id: str, name: str):
        return send_from_directory(run_folder(run_id) / HEATMAPS, name)

    return app
