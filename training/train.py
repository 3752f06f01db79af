"""`emotion-train`: train the ResNet18 emotion classifier on FER2013.

Model selection uses the validation split only (PublicTest for FER2013); the
test split (PrivateTest) is never looked at here, only by `emotion-eval`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchvision.transforms import v2
from tqdm import tqdm

from server.device import resolve_device
from server.model.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    CropSpec,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from server.model.resnet import STEMS, build_resnet18
from server.pipeline.preprocess import normalize
from shared.emotions import EMOTIONS
from training.augment import AugmentConfig, augment_batch
from training.data import FaceDataset, concat, load_dataset
from training.scoring import predict_proba

MEAN, STD = 0.5, 0.25  # FER2013 pixel mean/std are 0.507/0.255; round numbers are recorded in the checkpoint

#: The network of a run from scratch when ``--stem`` / ``--input-size`` are left out.
DEFAULT_STEM = "s2"
DEFAULT_INPUT_SIZE = 48


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="FER2013 CSV, .tar.gz, or folder (see training/data.py)")
    p.add_argument("--out", default="runs/fer2013", help="output folder (checkpoints, logs, curves)")
    p.add_argument("--classes", default=",".join(EMOTIONS), help="comma list, e.g. happy,neutral,surprise")
    p.add_argument("--epochs", type=int, default=130)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--opt", choices=("sgd", "adamw"), default="sgd", help="SGD+Nesterov, or AdamW (faster start)"
    )
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    # No parser default (SUPPRESS: not shown as "None" either): resolve_network fills them in.
    p.add_argument(
        "--stem",
        choices=STEMS,
        default=argparse.SUPPRESS,
        help=f"default: the --init-from checkpoint's, else {DEFAULT_STEM}",
    )
    p.add_argument(
        "--input-size",
        type=int,
        default=argparse.SUPPRESS,
        help=f"default: the --init-from checkpoint's, else {DEFAULT_INPUT_SIZE}",
    )
    p.add_argument(
        "--train-sizes",
        default="",
        help="progressive resizing, e.g. 32,40,48: epochs split evenly, last size must equal --input-size",
    )
    p.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0 = off)")
    p.add_argument("--mix-prob", type=float, default=0.5, help="fraction of batches that get MixUp/CutMix")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights (0 = off)")
    p.add_argument("--class-weights", choices=("none", "inv-sqrt"), default="none")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--val-tta", choices=("none", "flip"), default="flip")
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="use at most N samples per split: one seeded random subset, the same every epoch "
        "(smoke tests; the model card's 8,000-face fine-tunes)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument(
        "--amp",
        choices=("auto", "bf16", "off"),
        default="auto",
        help="bf16 autocast; auto: on for CUDA and CPUs with native bf16 (AVX-512 BF16, AMX), ~1.75x faster",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (same arguments)")
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from these weights (same classes) with a fresh optimizer and schedule; their stem and "
        "input size unless --stem / --input-size are given",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop after N epochs of this invocation (time-boxed jobs); continue later with --resume",
    )
    p.add_argument(
        "--extra-train",
        metavar="DIR",
        help="more faces (e.g. python -m training.photo_crops output): its train split joins FER2013's; "
        "its public split is scored each epoch as val_acc_extra (model selection stays on --data)",
    )
    p.add_argument(
        "--extra-repeat", type=int, help="times the --extra-train faces appear per epoch (default 1)"
    )
    p.add_argument("--name", default="emotion-resnet18")
    return p


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def select_classes(ds: FaceDataset, classes: list[str]) -> FaceDataset:
    """Keep samples of ``classes`` and relabel them 0..k-1 in that order."""
    idx = [EMOTIONS.index(c) for c in classes]
    mask = np.isin(ds.labels, idx)
    remap = np.full(len(EMOTIONS), -1, dtype=np.int64)
    remap[idx] = np.arange(len(idx))
    return FaceDataset(ds.images[mask], remap[ds.labels[mask]], ds.splits[mask], ds.skipped)


def _sample(ds: FaceDataset, n: int, seed: int) -> FaceDataset:
    idx = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
    return FaceDataset(ds.images[idx], ds.labels[idx], ds.splits[idx], ds.skipped)


def size_for_epoch(epoch: int, epochs: int, sizes: list[int]) -> int:
    return sizes[min(epoch * len(sizes) // max(epochs, 1), len(sizes) - 1)]


def train_one_epoch(
    model: nn.Module,
    ema: AveragedModel | None,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    images: torch.Tensor,
    labels: torch.Tensor,
    args: argparse.Namespace,
    size: int,
    loss_weight: torch.Tensor | None,
    mixer: v2.Transform | None,
    gen: torch.Generator,
    epoch: int,
) -> dict[str, float]:
    model.train()
    device = images.device
    perm = torch.randperm(len(labels), generator=gen).to(device)
    steps = len(labels) // args.batch_size  # drop the ragged last batch: keeps BN statistics sane
    use_amp = args.amp_enabled
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(
        range(steps), desc=f"epoch {epoch + 1}/{args.epochs} @{size}px", leave=False, dynamic_ncols=True
    )
    for step in bar:
        idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
        x = images[idx].unsqueeze(1).float() / 255.0
        y = labels[idx]
        if not args.no_augment:
            x = augment_batch(x, AugmentConfig(), gen if device.type == "cpu" else None)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = normalize(x * 255.0, MEAN, STD).contiguous(memory_format=torch.channels_last)
        target: torch.Tensor = y
        if mixer is not None and torch.rand((), generator=gen).item() < args.mix_prob:
            x, target = mixer(x, y)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x)
        loss = F.cross_entropy(
            logits.float(), target, weight=loss_weight, label_smoothing=args.label_smoothing
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema is not None:
            ema.update_parameters(model)
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(
            loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.4f}"
        )
    return {"train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1)}


def evaluate(model: nn.Module, ds: FaceDataset, device: torch.device, tta: str, size: int) -> float:
    proba = predict_proba(model, ds.images, MEAN, STD, device=device, tta=tta, size=size)
    return float((proba.argmax(1) == ds.labels).mean())


def make_meta(
    args: argparse.Namespace,
    classes: list[str],
    fingerprint: str,
    metrics: dict[str, Any],
    crop: CropSpec | None = None,
) -> CheckpointMeta:
    return CheckpointMeta(
        name=args.name,
        version=time.strftime("%Y%m%d"),
        stem=args.stem,
        classes=classes,
        input_size=args.input_size,
        mean=MEAN,
        std=STD,
        crop=crop or CropSpec(),
        train_config={
            k: v for k, v in vars(args).items() if k not in {"resume", "stop_after", "amp_enabled"}
        },
        data_fingerprint=fingerprint,
        metrics=metrics,
    )


# Arguments that may change between a run and its resumption: where it runs, not what it trains.
RESUMABLE_CHANGES = frozenset({"data", "out", "device", "amp"})


def check_resume_args(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Refuse to resume with another recipe: the one-cycle schedule and the data order are fixed at start."""
    diff = {
        k: (saved.get(k), now.get(k))
        for k in saved.keys() | now.keys()
        if k not in RESUMABLE_CHANGES and saved.get(k) != now.get(k)
    }
    if saved and diff:
        raise SystemExit(f"--resume with arguments that differ from the run's (saved, now): {diff}")


def amp_enabled(mode: str, device: torch.device) -> bool:
    """Whether to train under bf16 autocast: only where bf16 matmuls run natively, else it is slower."""
    if mode != "auto":
        return mode == "bf16"
    if device.type == "cuda":
        return True
    native = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return device.type == "cpu" and bool(native)


def main(argv: list[str] | None = None) -> None:
    run(get_args_parser().parse_args(argv))


def resolve_network(args: argparse.Namespace) -> None:
    """Fill in ``--stem`` and ``--input-size`` left out: a fine-tune keeps its start's network
    (``--init-from``'s metadata), a run from scratch gets the defaults. Resolved before anything
    reads them, so the recipe saved for ``--resume`` holds the values the run used."""
    stem, size = getattr(args, "stem", None), getattr(args, "input_size", None)
    meta = None
    if args.init_from and (stem is None or size is None):
        try:
            meta = read_meta(args.init_from)
        except CheckpointError as exc:
            raise SystemExit(f"--init-from: {exc}") from None
    args.stem = stem if stem is not None else meta.stem if meta else DEFAULT_STEM
    args.input_size = size if size is not None else meta.input_size if meta else DEFAULT_INPUT_SIZE


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` say; returns the summary also written to OUT/summary.json."""
    resolve_network(args)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not classes or any(c not in EMOTIONS for c in classes):
        raise SystemExit(f"--classes must be names from {EMOTIONS}")
    sizes = [int(s) for s in args.train_sizes.split(",") if s.strip()] or [args.input_size]
    if sizes[-1] != args.input_size:
        raise SystemExit("--train-sizes must end with --input-size")
    device = torch.device(resolve_device(args.device))
    args.amp_enabled = amp_enabled(args.amp, device)
    gen = seed_everything(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = select_classes(load_dataset(args.data, size=args.input_size, seed=args.seed), classes)
    fingerprint = ds.fingerprint()
    train = ds.subset("train")
    val = ds.subset("public") if "public" in ds.splits else ds.subset("val")
    if args.limit:
        train, val = (_sample(d, args.limit, args.seed) for d in (train, val))
    if len(train) < args.batch_size or len(val) == 0:
        raise SystemExit(
            f"need >= {args.batch_size} training and >= 1 validation images, got {len(train)}/{len(val)}"
        )
    print(
        f"data {args.data}: {ds.split_counts()} fingerprint {fingerprint}; device {device}, "
        f"bf16 autocast {'on' if args.amp_enabled else 'off'}",
        flush=True,
    )

    extra_val = None
    if args.extra_train:
        extra = select_classes(load_dataset(args.extra_train, size=args.input_size, seed=args.seed), classes)
        fingerprint = hashlib.sha256(f"{fingerprint}+{extra.fingerprint()}".encode()).hexdigest()[:16]
        extra_train = extra.subset("train")
        train = concat([train, *[extra_train] * (args.extra_repeat or 1)])
        extra_val = extra.subset("public") if "public" in extra.splits else None
        print(
            f"extra {args.extra_train}: {extra.split_counts()}, train x{args.extra_repeat or 1}",
            flush=True,
        )
    images = torch.from_numpy(train.images).to(device)
    labels = torch.from_numpy(train.labels).to(device)
    model = build_resnet18(len(classes), 1, args.stem)
    crop = None  # a fine-tune keeps its start's measured crop framing: the FER2013 framing did not change
    if args.init_from:
        init, init_meta = load_checkpoint(args.init_from)
        if init_meta.classes != classes or init_meta.stem != args.stem:
            raise SystemExit(
                f"--init-from has classes {init_meta.classes} / stem {init_meta.stem}; this run needs "
                f"{classes} / {args.stem}"
            )
        if (init_meta.mean, init_meta.std) != (MEAN, STD):  # its weights expect other input values
            raise SystemExit(
                f"--init-from normalises its input with mean/std {init_meta.mean}/{init_meta.std}; "
                f"emotion-train feeds {MEAN}/{STD}"
            )
        model.load_state_dict(init.state_dict())
        crop = init_meta.crop
    model = model.to(device).to(memory_format=torch.channels_last)
    opt: torch.optim.Optimizer
    if args.opt == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            nesterov=True,
        )
    steps_per_epoch = len(train) // args.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.25
    )
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True)
        if args.ema
        else None
    )
    loss_weight = None
    if args.class_weights == "inv-sqrt":
        counts = np.bincount(train.labels, minlength=len(classes)).clip(min=1)
        w = 1.0 / np.sqrt(counts)
        loss_weight = torch.tensor(w / w.mean(), dtype=torch.float32, device=device)
    mixers = []
    if args.mixup > 0:
        mixers.append(v2.MixUp(alpha=args.mixup, num_classes=len(classes)))
    if args.cutmix > 0:
        mixers.append(v2.CutMix(alpha=args.cutmix, num_classes=len(classes)))
    mixer = v2.RandomChoice(mixers) if mixers else None

    start_epoch, best = 0, dict[str, Any](val_acc=-1.0)
    recipe = make_meta(args, classes, fingerprint, {}).train_config  # what --resume must match
    state_path = out / "last.pt"
    if args.resume and state_path.exists():
        # weights_only: resume state is our own, but never unpickle arbitrary objects anyway
        # on the CPU: random-generator states must be CPU tensors, and load_state_dict moves the rest
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        check_resume_args(state.get("args", {}), recipe)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:  # augmentation draws from it there
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, best = state["epoch"] + 1, state["best"]
        print(f"resumed from {state_path} at epoch {start_epoch}", flush=True)

    log_path = out / "log.jsonl"
    t_start = time.perf_counter()
    end_epoch = min(args.epochs, start_epoch + args.stop_after) if args.stop_after else args.epochs
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        size = size_for_epoch(epoch, args.epochs, sizes)
        row: dict[str, Any] = {"epoch": epoch + 1, "size": size, "lr": sched.get_last_lr()[0]}
        row |= train_one_epoch(
            model, ema, opt, sched, images, labels, args, size, loss_weight, mixer, gen, epoch
        )
        candidates: dict[str, nn.Module] = {"raw": model}
        if ema is not None:
            candidates["ema"] = ema.module
        for tag, m in candidates.items():
            row[f"val_acc_{tag}"] = evaluate(m, val, device, args.val_tta, size)
            if extra_val is not None:
                row[f"val_acc_extra_{tag}"] = evaluate(m, extra_val, device, args.val_tta, size)
        tag, acc = max(((t, row[f"val_acc_{t}"]) for t in candidates), key=lambda kv: kv[1])
        row["epoch_s"] = time.perf_counter() - t0
        # A model is only selectable once it trains at the size its checkpoint declares:
        # BN statistics and receptive fields from smaller epochs do not transfer to input_size.
        if size == args.input_size and acc > best["val_acc"]:
            best = {"val_acc": acc, "epoch": epoch + 1, "weights": tag, "val_tta": args.val_tta}
            meta = make_meta(args, classes, fingerprint, {"validation": best}, crop)
            save_checkpoint(out / "best.safetensors", candidates[tag], meta)
        row["best_val_acc"] = best["val_acc"]
        with log_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "generator": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "epoch": epoch,
                "best": best,
                "args": recipe,
            },
            state_path,
        )
    summary = {"best": best, "train_minutes": (time.perf_counter() - t_start) / 60, "device": str(device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        from training.report import plot_curves

        plot_curves(log_path, out / "curves.png")
    except ImportError:  # matplotlib is optional on training machines
        pass
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
