"""`python -m server pretrain`: train a model centrally on one site folder, with the training recipe."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from core.stages.central import PretrainJob, pretrain
from core.cli import add_data_arguments, add_shared_options, data_config_from_args
from core.data import AugmentConfig
from core.errors import ConfigError
from core.train.alpha import ALPHA_RULES
from core.train.loss import JointLossConfig
from core.model.heads import HEAD_INITS, HEAD_NAMES
from core.preprocess import REGION_NAMES, PreprocessConfig
from core.train.schedule import LR_SCHEDULES
from core.train.training import TrainConfig
from core.predict.tta import TTAConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `pretrain` on the `python -m server` command line."""
    train = commands.add_parser("pretrain", help="train a model centrally on one site folder")
    add_data_arguments(train)
    train.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    train.add_argument("--arch", choices=("tjnet", "resnet"), default="tjnet",
                       help="TJ-Net (joint loss) or the ResNet-style L1 regression baseline")
    train.add_argument("--epochs", type=int, default=PretrainJob.train.epochs,
                       help=f"training epochs, cosine schedule over all of them (default {PretrainJob.train.epochs}: about "
                            "23 CPU minutes at --image-size 96 --width 0.5 on rsna100's 8,056 training images, one thread)")
    train.add_argument("--image-size", type=int, default=128)
    train.add_argument("--width", type=float, default=0.5, help="channel multiplier (paper scale: 1.0)")
    train.add_argument("--head", choices=HEAD_NAMES, default=None,
                       help="output head: paper (77 classes of 3 months, joint loss), months (240 classes of 1 month), "
                            "regression (L1 on the age scaled to [-1, 1]); default paper for tjnet, regression for resnet")
    train.add_argument("--sex-specific", action="store_true",
                       help="one model per sex in one checkpoint; each image goes to the model of its sex")
    train.add_argument("--depth", type=int, default=18, help="ResNet depth for --arch resnet (18, 34, 50)")
    train.add_argument("--norm", choices=("group", "batch"), default="group")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=TrainConfig.lr,
                       help="AdamW learning rate (3e-4; the paper's 1e-3 stalls at the mean age: docs/benchmarks.md)")
    train.add_argument("--alpha-start", type=float, default=JointLossConfig.alpha_start,
                       help="joint loss: weight of the MAD term until the batch loss is stable")
    train.add_argument("--alpha-final", type=float, default=None,
                       help="joint loss: weight of the MAD term after that (default: 77, the paper's)")
    add_recipe_arguments(train)
    train.add_argument("--head-init", choices=HEAD_INITS, default=PretrainJob.head_init,
                       help="prior: start the output at the training ages' distribution (a class head's bias at the log "
                            "of the class frequencies, a regression head at the mean age); uniform: as built")
    add_shared_options(train, "seed", "device", "threads")
    train.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    train.add_argument("--no-cbam", action="store_true", help="ablation: remove the CBAM modules")
    train.add_argument("--no-residual", action="store_true", help="ablation: remove the IncRes shortcuts")
    train.add_argument("--no-joint-sex", action="store_true", help="ablation: remove the sex head and its loss")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--noise-sd", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                       help="training augmentation: additive Gaussian noise, its SD drawn per image between LOW and HIGH "
                            "(fractions of the full range of the model's input, after any --preprocess; off by default; "
                            "docs/benchmarks.md, \"Noise, the model's side\")")
    train.add_argument("--noise-p", type=float, default=None,
                       help=f"with --noise-sd: the share of images that get noise (default {AugmentConfig.noise_p})")
    train.add_argument("--preprocess", default="none",
                       help="none, default or default,key=value,... (docs/preprocessing.md); saved in the checkpoint "
                            "and applied by every command that reads images for the model")
    train.add_argument("--region", choices=REGION_NAMES, default=None,
                       help="train on this crop of the registered hand (switches registration on in --preprocess, "
                            "'default' when that is none); images whose registration fails are skipped")
    train.add_argument("--init", type=Path, default=None,
                       help="start from this checkpoint's weights, head included, instead of random ones (same "
                            "--arch and model settings: --image-size, --width, ...); e.g. to retrain an existing "
                            "source model briefly with --preprocess default")
    train.add_argument("--teacher", type=Path, default=None,
                       help="distil this file of server distill-targets (an ensemble's class probabilities per image) "
                            "into the model; needs --distill-weight")
    train.add_argument("--distill-weight", type=float, default=JointLossConfig.distill_weight,
                       help="weight of the distillation term beside the joint loss (1: the teacher's distribution "
                            "weighs as much as the label's class; 0: off)")
    train.add_argument("--distill-temperature", type=float, default=JointLossConfig.distill_temperature,
                       help="temperature of the teacher's and the model's distributions in that term")
    train.add_argument("--no-progress", action="store_true")

    train.set_defaults(handler=run_pretrain)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The training recipe (docs/benchmarks.md, "Training recipe"); defaults from the typed configs."""
    loss, train, tta = JointLossConfig(), TrainConfig(), PretrainJob.tta
    parser.add_argument("--alpha-rule", choices=ALPHA_RULES, default=loss.alpha_rule,
                        help="when alpha rises: mad (the model's MAD over the last batches beats the batches' mean "
                             "age by --alpha-mad-margin), loss (batch loss stable), val (val MAD stable), ramp (linear)")
    parser.add_argument("--alpha-mad-margin", type=float, default=loss.alpha_mad_margin,
                        help="--alpha-rule mad: raise once the training MAD is this fraction below the mean predictor's")
    parser.add_argument("--alpha-val-tolerance", type=float, default=loss.alpha_val_tolerance,
                        help="--alpha-rule val: raise once an epoch improves the val MAD by at most this fraction")
    parser.add_argument("--alpha-ramp-steps", type=int, default=loss.alpha_ramp_steps,
                        help="--alpha-rule ramp: steps from --alpha-start to --alpha-final")
    parser.add_argument("--label-sigma", type=float, default=loss.label_sigma_months,
                        help="class heads: Gaussian label smoothing over neighbouring classes, sigma in months (0: off)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=train.lr_schedule,
                        help="cosine to 1/1000, step (drop to 1/1000 at --lr-drop-at) or plateau (drop when the "
                             "val MAD stalls for --lr-patience epochs)")
    parser.add_argument("--lr-drop-at", type=float, default=train.lr_drop_at, help="step: fraction of the steps")
    parser.add_argument("--lr-patience", type=int, default=train.lr_patience, help="plateau: epochs without gain")
    parser.add_argument("--warmup-steps", type=int, default=train.warmup_steps, help="linear learning-rate warm-up")
    parser.add_argument("--early-stop", type=int, default=train.early_stop_patience,
                        help="stop after this many epochs without a val MAD gain (0: train all --epochs)")
    parser.add_argument("--ema-decay", type=float, default=train.ema_decay,
                        help="keep a moving average of the weights with this decay per step (e.g. 0.999; 0: off) "
                             "and save it as --out, with the best epoch's own weights beside it as OUT.raw.pt")
    parser.add_argument("--tta-shift", type=float, default=tta.shift,
                        help=f"test-time augmentation: average over shifts by this fraction of the side (default "
                             f"{tta.shift}; 0: none); saved in the checkpoint and applied by evaluate and predict")
    parser.add_argument("--tta-scale", type=float, default=tta.scale,
                        help=f"test-time augmentation: average over zooms by 1 +- this (default {tta.scale}; 0: none)")
    parser.add_argument("--no-tta", action="store_true",
                        help="record no test-time augmentation (one forward pass per image wherever the model is scored)")


def _model_config(args: argparse.Namespace) -> dict:
    config = {"image_size": args.image_size, "width": args.width, "norm": args.norm}
    if args.head is not None:
        config["head"] = args.head
    if args.arch == "tjnet":
        config.update(use_cbam=not args.no_cbam, use_residual=not args.no_residual, joint_sex=not args.no_joint_sex)
    else:
        config["depth"] = args.depth
    return config


def _preprocess(args: argparse.Namespace) -> PreprocessConfig | None:
    """--preprocess, switched to the --region crop of the registered hand when one is given."""
    preprocess = PreprocessConfig.parse(args.preprocess)
    if args.region is None:
        return preprocess
    return (preprocess or PreprocessConfig()).for_region(args.region)


def _augment(args: argparse.Namespace) -> AugmentConfig | None:
    """The training augmentation: none with --no-augment, else the defaults with --noise-sd/--noise-p's noise."""
    if args.noise_sd is None and args.noise_p is not None:
        raise ConfigError("--noise-p needs --noise-sd LOW HIGH")
    if args.no_augment:
        if args.noise_sd is not None:
            raise ConfigError("--noise-sd is a training augmentation: give it without --no-augment")
        return None
    if args.noise_sd is None:
        return AugmentConfig()
    noise_p = AugmentConfig.noise_p if args.noise_p is None else args.noise_p
    return AugmentConfig(noise_sd=(args.noise_sd[0], args.noise_sd[1]), noise_p=noise_p)


def run_pretrain(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        raise ConfigError("--epochs must be at least 1")
    job = PretrainJob(
        data=data_config_from_args(args),
        out=args.out,
        architecture=args.arch,
        model_config=_model_config(args),
        train=replace(PretrainJob.train, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, num_workers=args.workers, progress=not args.no_progress,
                      lr_schedule=args.lr_schedule, lr_drop_at=args.lr_drop_at, lr_patience=args.lr_patience,
                      warmup_steps=args.warmup_steps, early_stop_patience=args.early_stop,
                      ema_decay=args.ema_decay),
        augment=_augment(args),
        threads=args.threads,
        preprocess=_preprocess(args),
        sex_specific=args.sex_specific,
        loss=JointLossConfig(alpha_start=args.alpha_start, alpha_final=args.alpha_final, alpha_rule=args.alpha_rule,
                             alpha_val_tolerance=args.alpha_val_tolerance, alpha_ramp_steps=args.alpha_ramp_steps,
                             label_sigma_months=args.label_sigma, alpha_mad_margin=args.alpha_mad_margin,
                             distill_weight=args.distill_weight, distill_temperature=args.distill_temperature),
        head_init=args.head_init,
        tta=TTAConfig() if args.no_tta else TTAConfig(shift=args.tta_shift, scale=args.tta_scale),
        init=args.init,
        teacher=args.teacher,
    )
    pretrain(job)
    return 0


