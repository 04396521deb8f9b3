"""Mixed-precision training (``SOLVER.AMP``) on CUDA and on the CPU.

Detectron2's ``AMPTrainer`` autocasts with ``torch.cuda.amp`` and asserts that CUDA is available.
:class:`DetrAMPTrainer` autocasts on the model's device type instead, in bfloat16 or float16
(``SOLVER.AMP.PRECISION``) on CUDA and on the CPU (bfloat16 is fast on CPUs with AVX512-BF16 or
AMX; float16 runs on the CPU too, with a warning: it may be slower than float32 there). A gradient
scaler is used for float16 only: bfloat16 has float32's exponent range, so its gradients do not
underflow.
"""

import logging
import time

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

logger = logging.getLogger(__name__)


class DetrAMPTrainer(AMPTrainer):
    """``AMPTrainer`` on any device: ``torch.autocast(device_type, precision)`` around the model's
    forward (the losses included), a ``torch.amp.GradScaler`` that is enabled for float16 only.

    Checkpoints carry the scaler's state as AMPTrainer's do; one written without it (AMP off, or
    another trainer) resumes with a fresh scaler."""

    def __init__(
        self, model, data_loader, optimizer, precision=torch.bfloat16, device_type="cpu", **kwargs
    ):
        if precision not in AMP_DTYPES.values():
            raise ValueError(f"AMP precision must be bfloat16 or float16, got {precision}")
        if precision == torch.float16 and device_type == "cpu":
            logger.warning(
                "SOLVER.AMP.PRECISION float16 on the CPU: supported (with a gradient scaler), but "
                "it may be slower than float32; bfloat16 is the CPU's fast mixed precision"
            )
        scaler = torch.amp.GradScaler(device_type, enabled=precision == torch.float16)
        super().__init__(
            model, data_loader, optimizer, grad_scaler=scaler, precision=precision, **kwargs
        )
        self.device_type = device_type

    def run_step(self):
        """AMPTrainer.run_step with autocast on ``self.device_type`` (no CUDA requirement)."""
        assert self.model.training, "[DetrAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()

        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        # unscaled before the optimizer's step: its full-model gradient clipping sees true gradients
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def load_state_dict(self, state_dict):
        SimpleTrainer.load_state_dict(self, state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def make_step_trainer(model, data_loader, optimizer, amp=False, precision="bfloat16", device="cpu"):
    """The per-iteration trainer: ``SimpleTrainer``, or with ``amp`` a :class:`DetrAMPTrainer` in
    ``precision`` ("bfloat16" / "float16") on the type of ``device``. Both config worlds build it
    (YACS: :func:`build_step_trainer`; LazyConfig: ``train.amp``)."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    if precision not in AMP_DTYPES:
        raise ValueError(f"AMP precision must be one of {sorted(AMP_DTYPES)}, got {precision!r}")
    return DetrAMPTrainer(
        model,
        data_loader,
        optimizer,
        precision=AMP_DTYPES[precision],
        device_type=torch.device(device).type,
    )


def build_step_trainer(cfg, model, data_loader, optimizer):
    """:func:`make_step_trainer` of ``SOLVER.AMP.ENABLED`` / ``SOLVER.AMP.PRECISION`` on
    ``MODEL.DEVICE``."""
    amp = cfg.SOLVER.AMP
    precision = amp.get("PRECISION", "bfloat16")
    if amp.ENABLED and precision not in AMP_DTYPES:
        raise ValueError(
            f"SOLVER.AMP.PRECISION must be one of {sorted(AMP_DTYPES)}, got {precision!r}"
        )
    return make_step_trainer(
        model, data_loader, optimizer, amp.ENABLED, precision, cfg.MODEL.DEVICE
    )
