"""``medad export``: a checkpoint's scoring as one self-contained ONNX or TorchScript graph (:mod:`medad.export`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medad import __version__, console
from medad.cli.common import add_quiet_option
from medad.cli.errors import CliError
from medad.engine.run_folder import RunFolder
from medad.engine.scorers import DEFAULT_EXPORT_METHOD, FEWSHOT_METHODS
from medad.io_utils import write_json
from medad.models.registry import methods

#: what ``medad.export.FORMATS`` lists (named here too: the parser is built without torch)
FORMATS = ("onnx", "torchscript")
#: exported scores that differ from eager scoring by more than this are reported
TOLERANCE = 1e-4


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="write a checkpoint's scoring as an ONNX or TorchScript graph",
        description="Write a self-contained graph from a batch of [0, 1] images (B×3×S×S, S the checkpoint's "
                    "image size, B dynamic) to the anomaly maps (B×S×S) and image scores (B), and a JSON "
                    "description beside it (OUT.json). ONNX uses opset 17. Few-shot checkpoints: --support "
                    "bakes the supports' features in; without it they are further inputs of the graph.")
    export.add_argument("--method", choices=FEWSHOT_METHODS,
                        help="without --checkpoint: d24fad_nn (medad's bundled few-shot model) or patchcore "
                             "(PatchCore-K on the teacher, training-free); adapted_student cannot be exported "
                             f"(default: {DEFAULT_EXPORT_METHOD})")
    export.add_argument("--checkpoint", help="run folder, demo folder or model.safetensors, of any method (default: "
                                             "--method)")
    export.add_argument("--format", choices=FORMATS, default="onnx", help="graph format")
    export.add_argument("--out", required=True, help="file to write (e.g. model.onnx, model.pt)")
    export.add_argument("--support", nargs="+", metavar="IMAGE_OR_DIR",
                        help="few-shot checkpoints: normal reference images, or folders of them, baked into the "
                             "graph (default: the supports' features are graph inputs)")
    export.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_quiet_option(export)
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from medad.cli.inputs import drop_duplicate_supports, load_inputs
    from medad.data.io import MissingDependencyError
    from medad.engine.fewshot import auto_threshold
    from medad.export import export_graph, scoring_graph, verify_export
    from medad.engine.scorers import checkpoint_file, load_scorer
    from medad.models.factory import load_trained_model

    out = Path(args.out)
    description = out.with_name(out.name + ".json")
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give the file to write, e.g. {out / 'model.onnx'}")
    if (out.exists() or description.exists()) and not args.overwrite:
        raise CliError(f"--out {out} already exists; pass --overwrite to replace it, or choose another --out")
    RunFolder(out.parent, flag="--out").check_writable()
    if args.checkpoint and args.method:
        raise CliError("--method chooses a model when there is no --checkpoint; give one of them")
    if args.method == "adapted_student":
        raise CliError("--method adapted_student fine-tunes a student on the references when it scores, so it has no "
                       "fixed graph to export; export d24fad_nn or patchcore")
    if args.checkpoint:  # any method's checkpoint, one-class ones too
        model, meta = load_trained_model(checkpoint_file(args.checkpoint), args.weights, device="cpu")
        console.info(f"model: {meta['method']} checkpoint {args.checkpoint}")
    else:
        scorer = load_scorer(args.method or DEFAULT_EXPORT_METHOD, None, args.weights, "cpu")
        model, meta = scorer.model, scorer.meta
        console.info(f"model: {scorer.name}")
    size = meta["image_size"]
    support_images, support_paths, threshold = None, [], None
    if args.support:
        if meta["method"] not in (*methods("few_shot"), "patchcore"):
            raise CliError(f"--support: {args.checkpoint} is a {meta['method']} checkpoint, which takes no support "
                           "images; drop --support")
        support = load_inputs(args.support, size, flag="--support")
        if support.volumes:
            raise CliError(f"--support: {support.volumes[0].source} is a volume; give normal 2-D reference images")
        support = drop_duplicate_supports(support, "--support")
        support_images = support.tensor()
        support_paths = [str(image.path) for image in support.images]
        threshold = auto_threshold(model, support_images, support_paths)
        if threshold.warning:
            console.warn(threshold.warning)
    graph = scoring_graph(model, size, support_images)
    result = export_graph(graph, out, args.format)
    try:
        verification = verify_export(graph, result)
    except (ImportError, MissingDependencyError):
        verification = None
        console.warn("not verified: onnxruntime is not installed (pip install onnxruntime)")
    write_json(description, {
        "format": args.format, "opset": result.opset, "medad_version": __version__,
        "checkpoint": str(args.checkpoint or meta["method"]),
        "method": meta["method"], "teacher": meta["teacher"], "image_size": size,
        "inputs": {"images": f"float32 B×3×{size}×{size}, values in [0, 1] (grey replicated to 3 channels); "
                             "B dynamic", **{name: "support bank tensor (model.prepare_supports(...).to_tensors()); "
                                                   "first dimension dynamic" for name in result.input_names[1:]}},
        "outputs": {"anomaly_map": f"float32 B×{size}×{size}", "score": "float32 B"},
        "support": support_paths, "threshold": threshold.record() if threshold is not None else None,
        "verification": verification})
    console.info(f"wrote {out} ({args.format}{f', opset {result.opset}' if result.opset else ''}; inputs "
                 f"{', '.join(result.input_names)}) and {description}")
    if verification is not None:
        console.info(f"verified against eager scoring on 3 random images: max |score difference| "
                     f"{verification['max_abs_score_difference']:.2e}, max |map difference| "
                     f"{verification['max_abs_map_difference']:.2e}")
        if verification["max_abs_score_difference"] > TOLERANCE:
            console.warn(f"the exported scores differ from eager scoring by more than {TOLERANCE:g}")
    return 0
