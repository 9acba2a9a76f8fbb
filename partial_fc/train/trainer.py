"""The training loop: a data-parallel backbone (DDP or DeepSpeed) feeding the model-parallel
partial-FC head, under torchrun or as a single process.

    torchrun --nproc_per_node 2 -m partial_fc.cli train --config configs/demo.yaml
    partial-fc train --config configs/ms1mv3_r50.yaml --set data.batch_size=64

Everything that can be checked before training starts is checked first (data path, label range,
world size, config, checkpoint compatibility), each as one clear error line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from partial_fc import kernels
from partial_fc.checkpoint import TrainerState, latest_checkpoint, load_checkpoint, save_checkpoint
from partial_fc.comm import Collectives, make_collectives
from partial_fc.config import dump_yaml, to_dict
from partial_fc.config.train import TrainConfig
from partial_fc.data.loaders.build import build_loader, prepare_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.formats.manifest import load_manifest
from partial_fc.engine import BackboneEngine, OptimizerSpec, build_engine
from partial_fc.head.class_weights import ShardedClassWeights
from partial_fc.optim.head_optimizer import HeadOptimizer
from partial_fc.optim.schedule import WarmupDecay
from partial_fc.optim.footprint import bytes_per_row
from partial_fc.train.criterion import build_criterion, build_head_optimizer
from partial_fc.train.logger import NullLogger, RunLogger, format_eta
from partial_fc.train.memory_check import check_head_memory
from partial_fc.train.position import Position, resume_position, steps_left
from partial_fc.train.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard
from partial_fc.train.verify import evaluate_pair_sets, load_pair_sets
from partial_fc.util.atomic import write_json_atomic


@dataclass
class Plan:
    """The run's length at this world size. The schedule and the data position are counted in
    samples (``total_samples``, ``warmup_samples``): whole optimizer steps of ``global_batch``
    here, but a run resumed at another global batch continues from its samples seen."""

    num_classes: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    warmup_steps: int
    global_batch: int  # samples per optimizer step, over all ranks and micro-steps
    lr: float
    micro_batch: int  # samples per micro-step over all ranks
    epoch_samples: int  # what the loader yields per epoch over all ranks: len(loader) micro-batches

    @property
    def total_samples(self) -> int:
        """epochs x samples per epoch (in whole optimizer steps), rounded up to a whole step."""
        return self.total_steps * self.global_batch

    @property
    def warmup_samples(self) -> int:
        return self.warmup_steps * self.global_batch


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
        seed=cfg.seed, shuffle_buffer=cfg.data.shuffle_buffer, flip=cfg.data.flip,
        ignore_signals=cfg.train.preemption_signals)
    micro_per_epoch = loader_cfg.steps_for(world_size)
    steps_per_epoch = max(1, micro_per_epoch // cfg.train.grad_accum)
    total = max(1, math.ceil(cfg.train.epochs * steps_per_epoch))
    micro_batch = cfg.data.batch_size * world_size
    global_batch = micro_batch * cfg.train.grad_accum
    return Plan(num_classes=num_classes, steps_per_epoch=steps_per_epoch, total_steps=total,
                warmup_steps=min(total, round(cfg.schedule.warmup_epochs * steps_per_epoch)),
                global_batch=global_batch, lr=cfg.optim.lr_for(global_batch), micro_batch=micro_batch,
                epoch_samples=micro_per_epoch * micro_batch), loader_cfg


@dataclass
class Run:
    """One training run on this rank: what ``_setup`` builds and ``_loop`` advances."""

    cfg: TrainConfig
    plan: Plan
    comm: Collectives
    device: torch.device
    run_dir: Path
    loader: Any
    pair_sets: list
    log: NullLogger
    engine: BackboneEngine
    criterion: torch.nn.Module
    head: ShardedClassWeights | None  # the criterion when it holds class weights
    head_opt: HeadOptimizer
    head_lr: float
    schedule: WarmupDecay
    fingerprint: dict  # what a checkpoint must match to be resumed by this run
    guard: PreemptionGuard  # preemption signals and the wall-clock checkpoint interval
    step: int = 0  # optimizer steps taken
    samples_seen: int = 0  # what the schedule and the data position are counted in
    position: Position = Position(epoch=0, skip=0, samples_seen=0)  # where the data continues
    total_steps: int = 0  # this run's last step: plan.total_steps, or the steps left after a resume
    skipped: int = 0  # steps skipped on an fp16 overflow
    metrics: dict = field(default_factory=dict)  # of the last log line and evaluation

    saved_step: int = -1  # the step of the last checkpoint this run wrote
    preempted: bool = False  # stopped at a preemption signal (after saving)

    @property
    def offloaded(self) -> bool:
        """The head's class table lives off the device (``head.offload`` host or mmap)."""
        return self.head is not None and self.head.offload != "none"

    @property
    def last_step(self) -> int:
        return self.cfg.train.max_steps or self.total_steps


def train(cfg: TrainConfig, *, resume: str | None = "auto") -> dict:
    """Run (or resume) training; returns the final metrics (the same dict on every rank)."""
    from partial_fc.comm.process_group import cleanup, init_distributed

    dist = init_distributed()
    if dist.is_distributed:
        os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))  # DeepSpeed reads it; srun does not set it
    try:
        run = _setup(cfg, resume=resume)
        summary = run.run_dir / "summary.json"
        if run.step >= run.last_step and summary.is_file():  # resumed a finished run: keep its final metrics
            metrics = json.loads(summary.read_text())
            run.log.info(f"done: already at step {run.step}/{run.last_step}; summary in {summary} kept")
        else:
            # signal handlers exist only in the main thread; elsewhere the guard keeps its clock
            main = threading.current_thread() is threading.main_thread()
            with run.guard if main else contextlib.nullcontext():
                wall_s = _loop(run)
            if run.preempted:
                run.log.info(f"preempted ({run.guard.signal_name or 'signal on another rank'}) at step {run.step}: "
                             f"checkpoint saved; exit code {PREEMPTED_EXIT_CODE} asks for a resume")
                run.log.close()
                cleanup(wait_for_all=True)
                raise SystemExit(PREEMPTED_EXIT_CODE)
            metrics = {**run.metrics, "steps": run.step, "samples_seen": run.samples_seen, "wall_s": wall_s}
            if run.comm.rank == 0:
                write_json_atomic(summary, metrics)
            run.log.info(f"done: {run.step} steps in {metrics['wall_s']:.0f} s; summary in {summary}")
        run.log.close()
        cleanup(wait_for_all=True)
        return metrics
    finally:
        cleanup()  # after an error: tear down without waiting for the other ranks


def _setup(cfg: TrainConfig, *, resume: str | None) -> Run:
    """Checks, data, logger, backbone engine, criterion and head optimizer; then the checkpoint."""
    comm = make_collectives()
    rank, world = comm.rank, comm.world_size
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    the_plan, loader_cfg = plan(cfg, world_size=world)
    # before anything is allocated: a head that cannot fit is one line, not an OOM kill minutes later
    memory_note = check_head_memory(cfg, num_classes=the_plan.num_classes, comm=comm, device=device) \
        if cfg.train.check_memory else None
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
    head_lr = the_plan.lr * cfg.optim.head_lr_scale
    run = Run(cfg=cfg, plan=the_plan, comm=comm, device=device, run_dir=run_dir, loader=loader, pair_sets=pair_sets,
              log=log, engine=engine, criterion=criterion,
              head=criterion if isinstance(criterion, ShardedClassWeights) else None,
              head_opt=build_head_optimizer(cfg, criterion, lr=head_lr, comm=comm), head_lr=head_lr,
              schedule=WarmupDecay(total_samples=the_plan.total_samples, warmup_samples=the_plan.warmup_samples,
                                   kind=cfg.schedule.kind, power=cfg.schedule.power,
                                   final_ratio=cfg.schedule.final_lr_ratio),
              fingerprint={"model": to_dict(cfg.model), "num_classes": the_plan.num_classes,
                           "embedding_dim": cfg.model.embedding_dim, "loss": cfg.loss.name},
              guard=PreemptionGuard(cfg.train.preemption_signals, checkpoint_every_minutes=cfg.train.checkpoint_every_minutes),
              total_steps=the_plan.total_steps)

    ckpt = latest_checkpoint(run_dir) if resume == "auto" else resume
    if ckpt:
        saved = load_checkpoint(ckpt, comm=comm, head=run.head, head_optimizer=_saved_head_opt(run),
                                expect_extra=run.fingerprint, seed=cfg.seed, logger=log, device=device)
        for line in run.head_opt.convert_loaded_state():  # a checkpoint of another head.optim_state
            log.info(line)
        state = TrainerState.from_dict(saved, path=Path(ckpt) / "trainer.pt")
        engine.load_state_dict(state.engine)
        _resume_at(run, step=state.step, samples_seen=state.samples_seen)

    owned = f" ({run.head.class_range[1] - run.head.class_range[0]:,} on rank 0)" if run.head is not None else ""
    batching = (f"{cfg.data.batch_size // cfg.data.images_per_identity} identities x {cfg.data.images_per_identity} images per rank"
                if cfg.sampler == "identity" else "streamed shards")
    log.info(f"partial-fc train: {world} rank(s) on {device}, loss {cfg.loss.name}, {the_plan.num_classes:,} classes"
             f"{owned}, global batch {the_plan.global_batch} ({batching}), "
             f"lr {the_plan.lr:g}, {the_plan.total_steps} steps ({the_plan.steps_per_epoch}/epoch)")
    if memory_note:
        log.info(memory_note)
    if run.head is not None and device.type == "cpu":
        log.info(f"head step on CPU: {kernels.describe()}")
    if run.offloaded:
        table, weight = run.head.weight.row_table, run.head.weight
        size = weight.shape[0] * bytes_per_row(dim=weight.shape[1], optim=cfg.optim.name, weight_dtype=cfg.head.state_dtype,
                                               state_dtype=cfg.head.optim_state, momentum=cfg.optim.momentum > 0)
        where = f"mapped files in {table.directory}" if table.mode == "mmap" else "host memory"
        log.info(f"class table offloaded ({cfg.head.offload}): {size / 1024**3:.2f} GiB of rows and optimizer "
                 f"state in {where} on rank 0; each step stages its sampled rows on {device}")
    return run


def _resume_at(run: Run, *, step: int, samples_seen: int) -> None:
    """Continue from a checkpoint's step and samples seen. The schedule and the data position
    follow the samples, so at another global batch (another world size or batch size) the run
    continues the same lr curve over the same epochs, and ends when the planned total of samples
    is reached (``_loop`` counts the steps, ``steps_left`` how many remain)."""
    the_plan = run.plan
    pos = resume_position(samples_seen, epoch_samples=the_plan.epoch_samples, micro_batch=the_plan.micro_batch)
    run.step, run.samples_seen, run.position = step, pos.samples_seen, pos
    run.total_steps = step + steps_left(pos.samples_seen, total_samples=the_plan.total_samples,
                                        global_batch=the_plan.global_batch)
    where = (f"sample {pos.samples_seen:,} of {the_plan.total_samples:,} (epoch {pos.epoch}, batch {pos.skip} of "
             f"{the_plan.epoch_samples // the_plan.micro_batch})")
    if pos.repeated:
        run.log.info(f"resuming at {where}: the {samples_seen:,} samples seen are not a whole number of batches of "
                     f"{the_plan.micro_batch} into epoch {pos.epoch}; rounded down, {pos.repeated} samples are read "
                     f"twice; {run.total_steps - step} steps to go")
    else:
        run.log.info(f"resuming at {where}, step {step}; {run.total_steps - step} steps to go")


def _loop(run: Run) -> float:
    """Optimizer steps until ``run.last_step`` (or an agreed preemption stop), each the engine's
    step then the head's; returns the seconds they took."""
    cfg, engine, last = run.cfg, run.engine, run.last_step
    if run.pair_sets and run.step == 0:  # the untrained backbone, for comparison with the trained one
        _evaluate(run, when=" before training")
    t_start = time.perf_counter()
    epoch, skip = run.position.epoch, run.position.skip  # from the samples seen (resume_position)
    window = _Window()
    while run.step < last and not run.preempted:
        run.loader.set_epoch(epoch)
        for images, labels in _batches(run.loader, skip):  # resume mid-epoch: the data order is deterministic
            window.data_arrived()
            images, labels = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
            if run.offloaded:  # the step's class rows start towards the device while the backbone runs
                run.head.prefetch(labels)
            loss = run.criterion(engine.forward(images), labels)
            engine.backward(loss)  # the engine averages over accumulation micro-steps
            window.samples += labels.shape[0] * run.comm.world_size
            if not engine.is_boundary:
                engine.step()  # only counts the micro-step: the gradients accumulate
                window.wait_for_data()
                continue
            lr_factor = run.schedule.factor(run.samples_seen, batch=run.plan.global_batch)
            engine.set_lr(run.plan.lr * lr_factor)
            run.head_opt.set_lr(run.head_lr * lr_factor)
            loss_scale = engine.loss_scale  # what the gradients carry; the engine's step may change it
            applied = engine.step()
            applied = run.head_opt.step(loss_scale=loss_scale, backbone_applied=applied)
            run.step += 1
            run.samples_seen += run.plan.global_batch
            run.skipped += not applied
            run.log.progress(run.step, last)
            _after_step(run, loss=loss, lr=run.plan.lr * lr_factor, epoch=epoch, window=window)
            if run.step >= last or _preempted(run):
                break
            window.wait_for_data()
        skip = 0
        epoch += 1
    return time.perf_counter() - t_start


def _after_step(run: Run, *, loss: torch.Tensor, lr: float, epoch: int, window: _Window) -> None:
    """Log, evaluate and save when they are due."""
    cfg, step, last = run.cfg, run.step, run.last_step
    if step % cfg.train.log_every == 0 or step == last:
        elapsed = window.elapsed()
        data = run.loader.stats.summed(run.comm, device=run.device)  # over all ranks: one all-reduce
        m = run.metrics = {"loss": float(loss.detach()), "lr": lr, "samples_seen": run.samples_seen,
                           "samples_per_s": window.samples / elapsed,
                           "data_wait": window.data_wait / elapsed, "epoch": epoch, "skipped_steps": run.skipped,
                           "corrupt_samples": data["corrupt_samples"], "read_errors": data["read_errors"]}
        grad_norm = run.engine.grad_norm
        if grad_norm is not None:
            m["grad_norm"] = grad_norm
        eta = (last - step) * elapsed / max(1, cfg.train.log_every)
        run.log.info(f"step {step}/{last} loss {m['loss']:.4f} lr {lr:.4g} {m['samples_per_s']:,.0f} samples/s "
                     f"data-wait {100 * m['data_wait']:.0f}% corrupt {m['corrupt_samples']} read-errors {m['read_errors']} "
                     f"eta {format_eta(eta)}")
        run.log.log(step, run.metrics)
        window.restart()
    if run.pair_sets and (step % cfg.eval.every == 0 or step == last):
        run.metrics["eval"] = _evaluate(run)
    if step % cfg.train.checkpoint_every == 0 or step == last:
        _save(run)


def _preempted(run: Run) -> bool:
    """The guard's decision at this step boundary (one all-reduce, on every rank): save when a
    signal arrived on any rank or the wall-clock interval passed; True when the run must stop."""
    decision = run.guard.check(run.comm, run.device)
    if (decision.stop or decision.save) and run.saved_step != run.step:
        _save(run)
    run.preempted = decision.stop
    return decision.stop


def _evaluate(run: Run, *, when: str = "") -> dict:
    """Verification accuracy of the backbone on every pair set, logged at the current step."""
    cfg = run.cfg
    results = evaluate_pair_sets(run.engine.module, run.pair_sets, comm=run.comm, batch_size=cfg.eval.batch_size,
                                 image_size=cfg.model.input_size, device=run.device, flip=cfg.eval.flip,
                                 far_targets=cfg.eval.far_targets)
    for name, row in results.items():
        run.log.info(f"eval {name}{when}: accuracy {100 * row['accuracy']:.2f} +- {100 * row['accuracy_std']:.2f} "
                     f"auc {row['auc']:.4f} eer {100 * row['eer']:.2f}%")
        run.log.log(run.step, {f"eval/{name}/{k}": v for k, v in row.items()})
    return results


def _save(run: Run) -> None:
    save_checkpoint(run.run_dir, run.step, comm=run.comm, head=run.head, head_optimizer=_saved_head_opt(run),
                    trainer_state=TrainerState(engine=run.engine.state_dict(), step=run.step,
                                               samples_seen=run.samples_seen),
                    meta_extra=run.fingerprint, keep_last=run.cfg.train.keep_last, logger=run.log, device=run.device)
    run.saved_step = run.step
    run.guard.mark_saved()


def _saved_head_opt(run: Run) -> HeadOptimizer | None:
    """The head optimizer's state lives beside the class rows: there is none without them."""
    return run.head_opt if run.head is not None else None


def _batches(loader: Any, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The epoch's batches from ``start``. Starting the iterator does not advance torch's RNG:
    a DataLoader draws its base seed from it, and a resumed run starts its epoch's iterator
    after the RNG is restored, which would put dropout one draw ahead of the uninterrupted run.
    (The data order and augmentation come from the loader's own seeded generators.)"""
    batches = iter(loader.iterate(start))
    with torch.random.fork_rng(devices=[]):  # the CPU generator, the one the base seed comes from
        first = next(batches, None)
    if first is not None:
        yield first
        yield from batches


class _Window:
    """Throughput and data-wait time since the last log line."""

    def __init__(self) -> None:
        self.restart()
        self.wait_for_data()

    def restart(self) -> None:
        self.t_start, self.data_wait, self.samples = time.perf_counter(), 0.0, 0

    def wait_for_data(self) -> None:
        self.t_data = time.perf_counter()

    def data_arrived(self) -> None:
        self.data_wait += time.perf_counter() - self.t_data

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.t_start, 1e-9)
