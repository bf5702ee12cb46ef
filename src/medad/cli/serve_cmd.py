"""``medad serve``: the local web app of :mod:`medad.serve.app`, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
from pathlib import Path

from medad import console
from medad.cli.common import add_device_option, add_scorer_options, select_run_device
from medad.cli.errors import CliError
from medad.options import number_type

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="a local web app: score query images against K normal references in the browser",
        description="Serve a page where K normal reference images and query images (PNG, JPEG or DICOM) are "
                    "uploaded and scored as `medad fewshot score` scores them, with the adapted student (the default), "
                    "the learned model (medad's bundled D²4FAD-NN, or --checkpoint) or training-free PatchCore-K, as "
                    "the user picks: per "
                    "query the score, the verdict and a heat map, and the results as CSV. Uploads are kept in a "
                    "temporary folder that is removed when the app stops (Ctrl-C).")
    add_scorer_options(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on; anything but the loopback address exposes the app, which has no "
                            "login, to the network")
    serve.add_argument("--port", type=number_type("port"), default=8765, help="port (0: any free port, printed at start)")
    serve.add_argument("--max-file-mb", dest="max_file_mb", type=number_type("max_file_mb"), default=32,
                       help="largest file accepted, MiB")
    serve.add_argument("--max-references", dest="max_references", type=number_type("max_references"), default=32,
                       help="most reference images per request")
    serve.add_argument("--max-queries", dest="max_queries", type=number_type("max_queries"), default=64,
                       help="most query images per request")
    serve.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    add_device_option(serve)
    serve.set_defaults(func=run_serve)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def run_serve(args: argparse.Namespace) -> int:
    try:
        from werkzeug.serving import make_server

        from medad.serve.app import FewShotScorer, create_app
    except ImportError as error:
        raise CliError(f"medad serve needs Flask ({error}); install it with pip install 'medad[deploy]'") from None
    from medad.engine.scorers import DEFAULT_FEWSHOT_METHOD, load_scorer
    from medad.serve.uploads import Limits

    if args.checkpoint and args.method == "patchcore":
        raise CliError("--method patchcore is training-free and takes no --checkpoint; drop one of them "
                       "(the page offers both the checkpoint and patchcore when --checkpoint is given)")
    device = select_run_device(args.device)
    learned = load_scorer(None if args.checkpoint else "d24fad_nn", args.checkpoint, args.weights, device)
    scorers = {learned.meta["method"]: learned, "patchcore": load_scorer("patchcore", None, args.weights, device),
               "adapted_student": load_scorer("adapted_student", None, args.weights, device)}
    default = args.method or (learned.meta["method"] if args.checkpoint else DEFAULT_FEWSHOT_METHOD)
    for method, scorer in scorers.items():
        console.info(f"method {method}{' (default)' if method == default else ''}: {scorer.name}")
    limits = Limits(int(args.max_file_mb * 2**20), args.max_references, args.max_queries)
    workdir = Path(tempfile.mkdtemp(prefix="medad-serve-"))
    try:
        app = create_app(FewShotScorer(scorers, default), workdir, limits)
        try:
            server = make_server(args.host, args.port, app, threaded=True)
        except OSError as error:
            raise CliError(f"cannot listen on {args.host}:{args.port} ({error.strerror}); choose another --port") from None
        host = f"[{args.host}]" if ":" in args.host else args.host
        if args.host not in LOCAL_HOSTS:
            console.warn(f"listening on {args.host}: anyone who can reach this machine can use the app (no login)")
        console.info(f"medad serve: http://{host}:{server.server_port}/ (temporary files in {workdir}; Ctrl-C stops)")
        previous = signal.signal(signal.SIGTERM, _stop)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            server.server_close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    console.info(f"stopped; removed {workdir}")
    return 0
