"""Mixed-precision training (``SOLVER.AMP``) on CUDA and on the CPU.

Detectron2's ``AMPTrainer`` autocasts with ``torch.cuda.amp`` and asserts that CUDA is available.
:class:`DetrAMPTrainer` runs ``SimpleTrainer``'s step with the model's forward autocast on its
device type instead (:func:`autocast_forward`), in bfloat16 or float16 (``SOLVER.AMP.PRECISION``)
on CUDA and on the CPU (bfloat16 is fast on CPUs with AVX512-BF16 or AMX; float16 runs on the CPU
too, with a warning: it may be slower than float32 there). A gradient scaler is used for float16
only: bfloat16 has float32's exponent range, so its gradients do not underflow.
"""

import contextlib
import logging

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

from ..modeling.inference_opt import bf16_is_fast

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}

logger = logging.getLogger(__name__)


class _ScaledGradient(torch.autograd.Function):
    """The identity, whose backward multiplies the gradient by a ``GradScaler``'s scale."""

    @staticmethod
    def forward(ctx, loss, grad_scaler):
        ctx.grad_scaler = grad_scaler
        return loss.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.grad_scaler.scale(grad), None


def _scaled_losses(losses, grad_scaler):
    """``losses`` (a model's dict of losses, or one loss), of the same values, whose gradients
    ``grad_scaler`` scales: the backward of their sum is that of ``grad_scaler.scale(sum)``."""
    if isinstance(losses, torch.Tensor):
        return _ScaledGradient.apply(losses, grad_scaler) if losses.requires_grad else losses
    if not isinstance(losses, dict):  # None: the forward raised
        return losses
    return {
        k: _ScaledGradient.apply(v, grad_scaler) if v.requires_grad else v
        for k, v in losses.items()
    }


@contextlib.contextmanager
def autocast_forward(model, device_type, dtype, grad_scaler=None):
    """Within the block, each forward of ``model`` (its other hooks included) runs under
    ``torch.autocast(device_type, dtype)``, entered and left by a pre-hook and a hook of ``model``,
    so that the backward, outside the forward, does not; with an enabled ``grad_scaler``, the
    gradients of the losses the forward returns are scaled (:class:`_ScaledGradient`)."""
    autocast = contextlib.ExitStack()

    def enter(module, args):
        autocast.enter_context(torch.autocast(device_type, dtype=dtype))

    def leave(module, args, output):
        autocast.close()
        if grad_scaler is not None and grad_scaler.is_enabled():
            return _scaled_losses(output, grad_scaler)
        return None

    handles = [
        model.register_forward_pre_hook(enter, prepend=True),
        model.register_forward_hook(leave, always_call=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        autocast.close()


class DetrAMPTrainer(AMPTrainer):
    """``AMPTrainer`` on any device: ``SimpleTrainer``'s step (AMPTrainer's own autocasts with
    ``torch.cuda.amp`` and asserts CUDA) with ``torch.autocast(device_type, precision)`` around the
    model's forward (the losses included) and a ``torch.amp.GradScaler``, enabled for float16
    only, that scales the losses' gradients (:func:`autocast_forward`), unscales them before the
    optimizer's step (its full-model gradient clipping sees true gradients) and skips the step
    where they overflowed (:meth:`after_backward`), then updates its scale.

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
        """``SimpleTrainer.run_step`` within :func:`autocast_forward`, then the scale's update."""
        with autocast_forward(self.model, self.device_type, self.precision, self.grad_scaler):
            SimpleTrainer.run_step(self)
        self.grad_scaler.update()

    def after_backward(self):
        """As in AMPTrainer: the scale logged (``log_grad_scaler``), then the ``after_backward``
        hooks, which see the scaled gradients. Then, with the scaler enabled, the gradients
        unscaled for the optimizer's step, or none left where they overflowed: the step that
        ``GradScaler.step`` skips then has nothing to apply."""
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        super().after_backward()
        if not self.grad_scaler.is_enabled():
            return
        grads = [p.grad for g in self.optimizer.param_groups for p in g["params"]]
        grads = [g for g in grads if g is not None]
        # GradScaler's test: an inf or NaN among the scaled gradients
        overflow = bool(grads) and not torch.stack([g.isfinite().all() for g in grads]).all()
        self.grad_scaler.unscale_(self.optimizer)
        if overflow:
            self.optimizer.zero_grad(set_to_none=True)

    def load_state_dict(self, state_dict):
        SimpleTrainer.load_state_dict(self, state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def bf16_training_wins(device_type):
    """Where bf16 autocast is expected to train faster at no cost in quality: CUDA GPUs with bf16
    arithmetic, and CPUs with AMX tiles. Not on CPUs with AVX512-BF16 alone: there the toy
    recipe's stage 1 ran 0.88x the time per iteration but reached a lower PQ in the same minutes
    (docs/toy_recipe.md)."""
    if device_type == "cuda":
        return bf16_is_fast("cuda")
    if device_type != "cpu" or not hasattr(torch.cpu, "_is_amx_tile_supported"):
        return False
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except RuntimeError:
        return False


def amp_enabled(enabled, auto, precision, device):
    """Whether a run autocasts: ``enabled``, or with ``auto`` where :func:`bf16_training_wins` on
    ``device``, which the log says. ``auto`` turns bfloat16 on only."""
    if enabled or not auto:
        return bool(enabled)
    if precision != "bfloat16":
        raise ValueError(f"AMP auto turns bfloat16 autocast on; precision is {precision!r}")
    device_type = torch.device(device).type
    wins = bf16_training_wins(device_type)
    what = "AMX or a bf16 GPU" if wins else "neither AMX nor a bf16 GPU"
    logger.info(f"AMP auto: {device_type} has {what}: bfloat16 autocast {'on' if wins else 'off'}")
    return wins


def make_step_trainer(
    model, data_loader, optimizer, amp=False, precision="bfloat16", device="cpu", auto=False
):
    """The per-iteration trainer: ``SimpleTrainer``, or with ``amp`` (or ``auto`` where
    :func:`amp_enabled` says so) a :class:`DetrAMPTrainer` in ``precision`` ("bfloat16" /
    "float16") on the type of ``device``. Both config worlds build it (YACS:
    :func:`build_step_trainer`; LazyConfig: ``train.amp``)."""
    if not amp_enabled(amp, auto, precision, device):
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
    """:func:`make_step_trainer` of ``SOLVER.AMP.ENABLED`` / ``AUTO`` / ``PRECISION`` on
    ``MODEL.DEVICE``."""
    amp = cfg.SOLVER.AMP
    precision = amp.get("PRECISION", "bfloat16")
    if amp.ENABLED and precision not in AMP_DTYPES:
        raise ValueError(
            f"SOLVER.AMP.PRECISION must be one of {sorted(AMP_DTYPES)}, got {precision!r}"
        )
    return make_step_trainer(
        model, data_loader, optimizer, amp.ENABLED, precision, cfg.MODEL.DEVICE, amp.AUTO
    )
