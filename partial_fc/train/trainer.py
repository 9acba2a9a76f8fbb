"""The training loop: a data-parallel backbone (DDP or DeepSpeed) feeding the model-parallel
partial-FC head, under torchrun or as a single process.

    torchrun --nproc_per_node 2 -m partial_fc.cli train --config configs/demo.yaml
    partial-fc train --config configs/ms1mv3_r50.yaml --set data.batch_size=64

Everything that can be checked before training starts is checked first (data path, label range,
world size, config, checkpoint compatibility), each as one clear error line.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from partial_fc.comm import make_collectives
from partial_fc.config import dump_yaml, to_dict
from partial_fc.config.train import TrainConfig
from partial_fc.data.loaders.build import build_loader, prepare_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.formats.manifest import load_manifest
from partial_fc.optim.schedule import WarmupDecay
from partial_fc.train.criterion import build_criterion, build_head_optimizer, class_weights
from partial_fc.train.logger import NullLogger, RunLogger, format_eta
from partial_fc.train.verify import evaluate_pair_sets, load_pair_sets


@dataclass
class Plan:
    num_classes: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup_steps: int
    global_batch: int
    lr: float


def plan(cfg: TrainConfig, *, world_size: int) -> tuple[Plan, TrainLoaderConfig]:
    """Validate the config against the data and the world size; no training state is built."""
    data_dir = Path(cfg.data.train)
    if not (data_dir / "manifest.json").exists():
        raise ValueError(f"data.train: no manifest.json in {str(data_dir)!r}; create shards with "
                         "`partial-fc data synth` or `partial-fc data convert`")
    manifest = load_manifest(data_dir / "manifest.json")
    num_classes = cfg.head.num_classes or manifest.num_classes
    if manifest.num_classes > num_classes:
        raise ValueError(f"head.num_classes is {num_classes} but the data's labels reach {manifest.num_classes - 1} "
                         f"(manifest num_classes {manifest.num_classes}); raise head.num_classes or leave it null")
    if num_classes < world_size:
        raise ValueError(f"world size {world_size} exceeds the number of classes {num_classes}: every rank must own a class")
    if cfg.train.engine == "deepspeed" and cfg.train.precision == "fp16":
        raise ValueError("train.precision fp16 is not supported with train.engine deepspeed (the head's loss-scale "
                         "decision cannot join DeepSpeed's); set train.precision bf16")
    loader_cfg = TrainLoaderConfig.from_manifest(
        data_dir, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, image_size=cfg.model.input_size,
        seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer, flip=cfg.data.flip)
    micro_per_epoch = loader_cfg.steps_for(world_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.train.grad_accum)
    total = max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    global_batch = cfg.data.batch_size * world_size * cfg.train.grad_accum
    return Plan(num_classes=num_classes, steps_per_epoch=steps_per_epoch, total_steps=total,
                warmup_steps=min(total, round(cfg.schedule.warmup_epochs * steps_per_epoch)),
                global_batch=global_batch, lr=cfg.optim.lr_for(global_batch)), loader_cfg


def train(cfg: TrainConfig, *, resume: str | None = "auto") -> dict:
    """Run (or resume) training; returns the final metrics (the same dict on every rank)."""
    from partial_fc.comm.process_group import cleanup, init_distributed
    from partial_fc.engine import build_engine
    from partial_fc.engine.optim import OptimizerSpec
    from partial_fc.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint

    dist = init_distributed()
    if dist.is_distributed:
        os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))  # DeepSpeed reads it; srun does not set it
    try:
        comm = make_collectives()
        rank, world = comm.rank, comm.world_size
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        the_plan, loader_cfg = plan(cfg, world_size=world)
        prepare_loader(loader_cfg, sampler=cfg.sampler, comm=comm, device=device)
        # before the model: the identity sampler's checks (enough identities, K) fail fast
        loader = build_loader(loader_cfg, sampler=cfg.sampler, images_per_identity=cfg.data.images_per_identity,
                              rank=rank, world_size=world)
        pair_sets = load_pair_sets(cfg.eval.pairs)
        run_dir = Path(cfg.run_dir)
        log = RunLogger(run_dir, config=to_dict(cfg), wandb_cfg=cfg.wandb, progress_bar=cfg.train.progress_bar) if rank == 0 else NullLogger()
        if rank == 0:
            dump_yaml(cfg, run_dir / "config.yaml")

        torch.manual_seed(cfg.seed)  # the same backbone initialisation on every rank
        backbone = cfg.model.build().to(device)
        spec = OptimizerSpec(name=cfg.optim.name, lr=the_plan.lr, momentum=cfg.optim.momentum,
                             weight_decay=cfg.optim.weight_decay, betas=cfg.optim.betas, eps=cfg.optim.eps)
        engine = build_engine(cfg.train.engine, backbone, optimizer=spec, precision=cfg.train.precision,
                              grad_accum=cfg.train.grad_accum, max_grad_norm=cfg.optim.clip_grad_norm,
                              zero_stage=cfg.train.zero_stage, micro_batch_size=cfg.data.batch_size,
                              **({"device": device} if cfg.train.engine == "ddp" else {}))
        criterion = build_criterion(cfg, num_classes=the_plan.num_classes, device=device)
        head = class_weights(criterion)  # None for the pair losses
        head_lr = the_plan.lr * cfg.optim.head_lr_scale
        head_opt = build_head_optimizer(cfg, head, lr=head_lr)
        schedule = WarmupDecay(total_steps=the_plan.total_steps, warmup_steps=the_plan.warmup_steps, kind=cfg.schedule.kind,
                               power=cfg.schedule.power, final_ratio=cfg.schedule.final_lr_ratio)

        step, samples_seen = 0, 0
        fingerprint = {"model": to_dict(cfg.model), "num_classes": the_plan.num_classes, "embedding_dim": cfg.model.embedding_dim,
                       "loss": cfg.loss.name}
        ckpt = latest_checkpoint(run_dir) if resume == "auto" else resume
        if ckpt:
            state = load_checkpoint(ckpt, comm=comm, head=head, head_optimizer=head_opt, expect_extra=fingerprint,
                                    seed=cfg.seed, logger=log, device=device)
            engine.load_state_dict(state["engine"])
            step, samples_seen = int(state["step"]), int(state["samples_seen"])

        owned = f" ({head.class_range[1] - head.class_range[0]:,} on rank 0)" if head is not None else ""
        batching = (f"{cfg.data.batch_size // cfg.data.images_per_identity} identities x {cfg.data.images_per_identity} images per rank"
                   if cfg.sampler == "identity" else "streamed shards")
        log.info(f"partial-fc train: {world} rank(s) on {device}, loss {cfg.loss.name}, {the_plan.num_classes:,} classes"
                 f"{owned}, global batch {the_plan.global_batch} ({batching}), "
                 f"lr {the_plan.lr:g}, {the_plan.total_steps} steps ({the_plan.steps_per_epoch}/epoch)")
        last_steps = cfg.train.max_steps or the_plan.total_steps
        metrics: dict = {}
        if pair_sets and step == 0:  # the untrained backbone, for comparison with the trained one
            for name, row in _evaluate(engine.module, pair_sets, cfg, comm, device).items():
                log.info(f"eval {name} before training: accuracy {100 * row['accuracy']:.2f} +- {100 * row['accuracy_std']:.2f} "
                         f"auc {row['auc']:.4f} eer {100 * row['eer']:.2f}%")
                log.log(0, {f"eval/{name}/{k}": v for k, v in row.items()})
        epoch, skip = divmod(step * cfg.train.grad_accum, len(loader))
        t_window, data_wait, window_samples = time.perf_counter(), 0.0, 0
        t_start = time.perf_counter()
        skipped = 0
        fp16 = cfg.train.precision == "fp16"
        while step < last_steps:
            loader.set_epoch(epoch)
            batches = loader.iterate(skip)  # resume mid-epoch: the data order is deterministic
            skip = 0
            micro = 0
            t_data = time.perf_counter()
            for images, labels in batches:
                data_wait += time.perf_counter() - t_data
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                boundary = engine.is_boundary
                if boundary:
                    factor = schedule.factor(step)
                    engine.set_lr(the_plan.lr * factor)
                    for group in head_opt.param_groups if head_opt is not None else ():
                        group["lr"] = head_lr * factor
                loss = criterion(engine.forward(images), labels)
                engine.backward(loss)  # the engine averages over accumulation micro-steps
                window_samples += labels.shape[0] * world
                if boundary:
                    # only loss scaling can overflow: fp32/bf16 skip the flag's all-reduce and host sync
                    head_ok = _head_grads_finite(head.weight, comm, engine.loss_scale) if fp16 and head is not None else True
                    if head_ok and head is not None and cfg.optim.head_clip_grad_norm:
                        _clip_sparse_(head.weight, cfg.optim.head_clip_grad_norm, comm)
                applied = engine.step()
                if not boundary:
                    t_data = time.perf_counter()
                    continue
                if head_ok and applied:
                    if head_opt is not None:
                        head_opt.step()
                else:
                    skipped += 1
                if head_opt is not None:
                    head_opt.zero_grad(set_to_none=True)
                step += 1
                samples_seen += the_plan.global_batch
                log.progress(step, last_steps)

                if step % cfg.train.log_every == 0 or step == last_steps:
                    elapsed = time.perf_counter() - t_window
                    rate = window_samples / max(elapsed, 1e-9)
                    metrics = {"loss": float(loss.detach()), "lr": the_plan.lr * factor, "samples_per_s": rate,
                               "data_wait": data_wait / max(elapsed, 1e-9), "epoch": epoch,
                               "skipped_steps": skipped, "corrupt_samples": loader.stats.corrupt_samples}
                    grad_norm = engine.grad_norm
                    if grad_norm is not None:
                        metrics["grad_norm"] = grad_norm
                    eta = (last_steps - step) * elapsed / max(1, cfg.train.log_every)
                    log.info(f"step {step}/{last_steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.4g} "
                             f"{rate:,.0f} samples/s data-wait {100 * metrics['data_wait']:.0f}% eta {format_eta(eta)}")
                    log.log(step, metrics)
                    t_window, data_wait, window_samples = time.perf_counter(), 0.0, 0
                if pair_sets and (step % cfg.eval.every == 0 or step == last_steps):
                    results = _evaluate(engine.module, pair_sets, cfg, comm, device)
                    for name, row in results.items():
                        log.info(f"eval {name}: accuracy {100 * row['accuracy']:.2f} +- {100 * row['accuracy_std']:.2f} "
                                 f"auc {row['auc']:.4f} eer {100 * row['eer']:.2f}%")
                        log.log(step, {f"eval/{name}/{k}": v for k, v in row.items()})
                    metrics["eval"] = results
                if step % cfg.train.checkpoint_every == 0 or step == last_steps:
                    save_checkpoint(run_dir, step, comm=comm, head=head, head_optimizer=head_opt,
                                           trainer_state=TrainerState(engine=engine.state_dict(), step=step,
                                                                      samples_seen=samples_seen),
                                           meta_extra=fingerprint, keep_last=cfg.train.keep_last, logger=log, device=device)
                if step >= last_steps:
                    break
                t_data = time.perf_counter()
            epoch += 1
        metrics["steps"] = step
        metrics["wall_s"] = time.perf_counter() - t_start
        if rank == 0:
            _write_json_atomic(run_dir / "summary.json", metrics)
        log.info(f"done: {step} steps in {metrics['wall_s']:.0f} s; summary in {run_dir / 'summary.json'}")
        log.close()
        cleanup(wait_for_all=True)
        return metrics
    finally:
        cleanup()  # after an error: tear down without waiting for the other ranks


def _evaluate(model, pair_sets, cfg: TrainConfig, comm, device) -> dict:
    return evaluate_pair_sets(model, pair_sets, comm=comm, batch_size=cfg.eval.batch_size, image_size=cfg.model.input_size,
                              device=device, flip=cfg.eval.flip, far_targets=cfg.eval.far_targets)


def _write_json_atomic(path: Path, data: dict) -> None:
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float))
    os.replace(tmp, path)


def _head_grads_finite(weight: torch.Tensor, comm, loss_scale: float) -> bool:
    """Unscale the head's gradient by the engine's loss scale and decide, identically on every
    rank, whether it is finite. The backbone's overflow check sees all-reduced gradients and
    agrees across ranks by itself; the head's gradient is rank-local, so its flag is all-reduced."""
    from partial_fc.optim.row_sparse import sampled_rows

    if weight.grad is None:
        return True
    _, values = sampled_rows(weight.grad)
    if loss_scale != 1.0:
        values.mul_(1.0 / loss_scale)
    bad = (~torch.isfinite(values)).any().float().reshape(1)
    return not bool(comm.all_reduce_(bad, "max").item())


def _clip_sparse_(weight: torch.Tensor, max_norm: float, comm) -> None:
    """Clip the head's gradient by its global norm over all ranks' shards."""
    from partial_fc.optim.row_sparse import sampled_rows

    _, values = sampled_rows(weight.grad)
    sq = values.float().pow(2).sum().reshape(1)
    norm = comm.all_reduce_(sq, "sum").sqrt()
    values.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0).to(values.dtype))
