"""Command-line entry points of the training package (see docs/training.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def _generate_data(args: argparse.Namespace) -> None:
    from shared.training.synthetic import SyntheticConfig, generate_dataset

    config = SyntheticConfig(image_size=args.image_size)
    start = time.perf_counter()
    summary = {}
    for split, identities, pairs in (
        ("train", args.train_identities, args.pairs_per_identity),
        ("holdout", args.holdout_identities, args.holdout_pairs_per_identity),
    ):
        meta = generate_dataset(
            args.out,
            split=split,
            num_identities=identities,
            pairs_per_identity=pairs,
            seed=args.seed,
            shard_size=args.shard_size,
            config=config,
            progress=True,
        )
        summary[split] = {"pairs": meta["num_pairs"], "sha256": meta["sha256"]}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary))


def _train(args: argparse.Namespace) -> None:
    from shared.training.trainer import TrainConfig, Trainer, init_distributed

    dist_info = init_distributed()
    config = TrainConfig.for_profile(
        args.profile,
        stage=args.stage,
        variant=args.variant,
        batch_size=args.batch_size,
        lr=args.lr,
        expression_from=args.expression_from,
        appearance_from=args.appearance_from,
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        vgg_weights=args.vgg_weights,
        lpips_backbone_weights=args.lpips_backbone_weights,
        lpips_lin_weights=args.lpips_lin_weights,
        lpips_net=args.lpips_net,
        threads=args.threads,
        opacity_weight=args.opacity_weight,
        gate_weight=args.gate_weight,
        expression_region_weight=args.expression_region_weight,
        init_partial=args.init_partial,
    )
    trainer = Trainer(
        config,
        args.run_dir,
        data_root=args.data,
        init_checkpoint=args.init,
        resume=args.resume,
        dist_info=dist_info,
        progress=not args.no_progress,
    )
    summary = trainer.fit()
    if args.export and dist_info.is_main:
        summary["model_version"] = trainer.export(args.export, extra={"summary": summary})
        summary["checkpoint"] = args.export
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    if dist_info.is_main:
        print(json.dumps(summary))


def _mouth_interior(args: argparse.Namespace) -> None:
    from shared.model.checkpoint import with_mouth_interior

    version = with_mouth_interior(args.checkpoint, args.out, enabled=not args.off, teeth=args.teeth)
    print(json.dumps({"model_version": version, "checkpoint": args.out}))


def _superres_generator(args: argparse.Namespace) -> None:
    from shared.model.checkpoint import with_superres_generator

    version = with_superres_generator(args.checkpoint, args.out, enabled=args.state == "on")
    print(json.dumps({"model_version": version, "checkpoint": args.out}))


def _evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from shared.training.evaluate import PretrainedMetrics, evaluate_real, evaluate_synthetic, to_markdown

    # Weight files are checked before the (slower) evaluation starts.
    pretrained = PretrainedMetrics.from_paths(
        lpips_backbone=args.lpips_backbone_weights,
        lpips_lin=args.lpips_lin_weights,
        lpips_net=args.lpips_net,
        fid_weights=args.fid_weights,
    )
    if args.real:
        report = evaluate_real(args.checkpoint, args.real, max_items=args.max_pairs, pretrained=pretrained)
        title = "Evaluation on a real-data folder"
    else:
        report = evaluate_synthetic(
            args.checkpoint,
            args.data,
            split=args.split,
            max_pairs=args.max_pairs,
            face_metrics=not args.no_face_metrics,
            pretrained=pretrained,
        )
        title = f"Evaluation on synthetic {args.split} identities"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{args.name}.md").write_text(to_markdown(report, title))
    print(json.dumps({"metrics": report["metrics"], "json": str(out / f"{args.name}.json")}))


def _preprocess(args: argparse.Namespace) -> None:
    from shared.training.realdata import preprocess

    meta = preprocess(
        args.inputs,
        args.out,
        image_size=args.image_size,
        every_nth_frame=args.every,
        max_frames_per_video=args.max_frames,
        morphable_model=args.morphable_model,
    )
    print(json.dumps({"items": len(meta["items"]), "skipped": len(meta["skipped"]), "out": args.out}))


def _ablation(args: argparse.Namespace) -> None:
    from shared.training.ablation import run_ablation

    result = run_ablation(
        args.data,
        args.out,
        profile=args.profile,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_pairs=args.eval_pairs,
        face_metrics=not args.no_face_metrics,
        jobs=args.jobs,
    )
    print(
        json.dumps(
            {
                v: {k: r["metrics"].get(k) for k in ("recon_lowres_psnr", "reenact_lowres_psnr")}
                for v, r in result["rows"].items()
            }
        )
    )


def _bench(args: argparse.Namespace) -> None:
    from shared.training.bench import bench

    print(
        json.dumps(
            bench(
                profile=args.profile, checkpoint=args.checkpoint, steps=args.steps, eval_pairs=args.eval_pairs
            )
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared.training")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine is shared)")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate-data", help="write the synthetic pair dataset (npz shards)")
    gen.add_argument("--out", required=True)
    gen.add_argument("--train-identities", type=int, default=120)
    gen.add_argument("--pairs-per-identity", type=int, default=4)
    gen.add_argument("--holdout-identities", type=int, default=12)
    gen.add_argument("--holdout-pairs-per-identity", type=int, default=4)
    gen.add_argument("--image-size", type=int, default=128)
    gen.add_argument("--shard-size", type=int, default=64)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate_data)

    train = sub.add_parser("train", help="train stage 1 or 2 (torchrun for several processes)")
    train.add_argument("--profile", default="tiny")
    train.add_argument("--stage", type=int, choices=(1, 2), default=1)
    train.add_argument(
        "--variant",
        default="full",
        choices=("full", "no_appearance", "linear_expression", "colour_gate", "superres_generator"),
    )
    train.add_argument("--data", required=True, help="folder written by generate-data")
    train.add_argument("--run-dir", required=True, help="state.pt, CSV logs and sample grids go here")
    train.add_argument("--init", help="start from this checkpoint / state (e.g. stage 1 for stage 2)")
    train.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state.pt")
    train.add_argument(
        "--init-partial",
        help="warm start from a checkpoint / state of a slightly different architecture: tensors whose "
        "name and shape match are loaded, those differing only in the first / last dimension get the "
        "overlap, the rest is skipped (the log says how many of each); the step starts at 0",
    )
    train.add_argument("--opacity-weight", type=float, help="weight of the opacity loss (default 1.0)")
    train.add_argument(
        "--gate-weight", type=float, help="weight of the source-colour gate's loss (default 0.2)"
    )
    train.add_argument(
        "--expression-region-weight",
        type=float,
        help="weight of the L1 inside the eyes/brows/mouth region alone (default 0: off)",
    )
    train.add_argument("--export", help="write the platform checkpoint (goha-checkpoint/1) here at the end")
    train.add_argument("--max-steps", type=int, help="absolute step to stop at")
    train.add_argument("--max-minutes", type=float, help="wall-time cap of this invocation")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--expression-from", type=int)
    train.add_argument("--appearance-from", type=int)
    train.add_argument("--sample-every", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--vgg-weights", help="torchvision-layout VGG-19 ImageNet state dict (local file)")
    train.add_argument(
        "--lpips-backbone-weights",
        help="torchvision AlexNet / VGG-16 ImageNet state dict (stage-1 LPIPS loss)",
    )
    train.add_argument("--lpips-lin-weights", help="lpips v0.1 lin-layer weights (alex.pth / vgg.pth)")
    train.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"))
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="metrics of a checkpoint (markdown + JSON)")
    ev.add_argument("--checkpoint", default="models/goha-tiny.pt")
    ev.add_argument("--data", help="synthetic dataset folder (generate-data)")
    ev.add_argument("--real", help="real-data folder (preprocess): reconstruction metrics only")
    ev.add_argument("--split", default="holdout")
    ev.add_argument("--max-pairs", type=int)
    ev.add_argument("--no-face-metrics", action="store_true", help="skip AKD / CSIM / AED / APD (dlib)")
    ev.add_argument("--out", default="runs/eval")
    ev.add_argument("--name", default="evaluation")
    ev.add_argument(
        "--lpips-backbone-weights",
        help="LPIPS backbone: torchvision ImageNet alexnet (or vgg16 with --lpips-net vgg) state dict",
    )
    ev.add_argument(
        "--lpips-lin-weights", help="LPIPS lin layers: the lpips package's v0.1 alex.pth / vgg.pth"
    )
    ev.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex")
    ev.add_argument(
        "--fid-weights", help="FID Inception-v3: pytorch-fid pt_inception-2015-12-05-6726825d.pth"
    )
    ev.set_defaults(func=_evaluate)

    pre = sub.add_parser("preprocess", help="build a real-data folder from images / videos (face stack)")
    pre.add_argument("inputs", nargs="+", help="image / video files or folders")
    pre.add_argument("--out", required=True)
    pre.add_argument("--image-size", type=int, default=128)
    pre.add_argument("--every", type=int, default=5, help="keep every n-th video frame")
    pre.add_argument("--max-frames", type=int, default=200, help="per video")
    pre.add_argument("--morphable-model", help="BFM .mat path (default: the procedural head)")
    pre.set_defaults(func=_preprocess)

    abl = sub.add_parser("ablation", help="Table-4 ablation: full / no appearance / linear expression")
    abl.add_argument("--data", required=True)
    abl.add_argument("--out", default="runs/ablation")
    abl.add_argument("--profile", default="tiny")
    abl.add_argument("--steps", type=int, default=600, help="stage-1 steps per variant (same for all)")
    abl.add_argument("--batch-size", type=int, default=4)
    abl.add_argument("--eval-pairs", type=int)
    abl.add_argument("--no-face-metrics", action="store_true")
    abl.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="variants trained in parallel processes (threads split between them)",
    )
    abl.set_defaults(func=_ablation)

    mouth = sub.add_parser(
        "mouth-interior",
        help="re-export a checkpoint with the weight-free mouth-interior map on (or --off); same weights",
    )
    mouth.add_argument("--checkpoint", required=True)
    mouth.add_argument("--out", required=True)
    mouth.add_argument("--off", action="store_true")
    mouth.add_argument("--teeth", action="store_true", help="with the upper teeth's band (mouth_teeth)")
    mouth.set_defaults(func=_mouth_interior)

    srg = sub.add_parser(
        "superres-generator",
        help="re-export a checkpoint with the SR's generator on or off (off: the served frame is the "
        "render's detail image); same weights",
    )
    srg.add_argument("state", choices=("on", "off"))
    srg.add_argument("--checkpoint", required=True)
    srg.add_argument("--out", required=True)
    srg.set_defaults(func=_superres_generator)

    ben = sub.add_parser("bench", help="training it/s + evaluation PSNRs; JSON last line")
    ben.add_argument("--profile", default="tiny")
    ben.add_argument("--checkpoint", default="models/goha-tiny.pt")
    ben.add_argument("--steps", type=int, default=12)
    ben.add_argument("--eval-pairs", type=int, default=16)
    ben.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        args.func(args)
    except Exception as exc:  # typed errors carry a machine-readable code
        code = getattr(exc, "code", None)
        if code is None:
            raise
        print(json.dumps({"error": code, "message": str(exc)}), file=sys.stderr)
        sys.exit(2)
