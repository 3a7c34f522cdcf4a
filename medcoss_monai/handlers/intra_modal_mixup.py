"""Intra-modal mixup of rehearsal batches, applied before the forward pass."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.transforms import MixUp

from medcoss_monai.engines.pretext_trainer import TEXT_KEYS, PretextEvents, PretextKeys
from medcoss_monai.handlers.determinism import epoch_seed
from medcoss_monai.handlers.rehearsal import is_buffer_batch
from medcoss_monai.transforms import TextMixupd

__all__ = ["IntraModalMixupHandler"]


class IntraModalMixupHandler:
    """Mixes each buffer batch with a shuffled copy of itself (same modality), as MedCoSS does.

    Images: ``x' = lam * x + (1 - lam) * x[perm]`` with ``lam ~ Beta(1, 1) = U(0, 1)`` per sample
    (MONAI's ``MixUp``). Reports: one ``r ~ U(0, 1)`` per batch, then each
    token is the partner's with probability ``1 - r``; attention masks and MLM labels follow the same
    choice (:class:`~medcoss_monai.transforms.TextMixupd`). Current-modality batches are untouched.
    Register it after :class:`~medcoss_monai.handlers.RehearsalHandler` in ``train#handlers``.

    Args:
        seed: seed of the mixing draws.
        all_batches: mix current batches too (an ablation).
    """

    def __init__(self, seed: int = 0, all_batches: bool = False) -> None:
        self.seed = int(seed)
        self.image_mixup = MixUp(batch_size=1, alpha=1.0).set_random_state(seed)
        self.text_mixup = TextMixupd(keys=TEXT_KEYS).set_random_state(seed + 1)
        self.all_batches = all_batches

    def attach(self, engine: Engine) -> None:
        """Register on ``PretextEvents.INPUTS_PREPARED``, and re-seed on ``Events.EPOCH_STARTED``.

        Args:
            engine: the trainer.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self.set_epoch)
        engine.add_event_handler(PretextEvents.INPUTS_PREPARED, self)

    def set_epoch(self, engine: Engine) -> None:
        """Draw this epoch's mixing from ``(seed, epoch)``, so a resumed run mixes as the uninterrupted one.

        Args:
            engine: the trainer.
        """
        seed = epoch_seed(self.seed, engine.state.epoch)
        self.image_mixup.set_random_state(seed)
        self.text_mixup.set_random_state((seed + 1) % 0x7FFFFFFF)

    def __call__(self, engine: Engine) -> None:
        if not (self.all_batches or is_buffer_batch(engine)):
            return
        out = engine.state.output
        inputs, batch = out[PretextKeys.INPUTS], out[PretextKeys.BATCH]
        if out[PretextKeys.PRETEXT] == "mae":
            images = inputs[PretextKeys.X]
            self.image_mixup.batch_size = images.shape[0]  # MixUp draws for a fixed size; the last batch may be short
            self.image_mixup.randomize()
            lam, perm, corners = self.image_mixup._params  # where MixUp keeps its draw
            # MixUp draws lam on the CPU; torch does not broadcast a CPU (B, 1, ...) tensor with a GPU batch
            self.image_mixup._params = (lam.to(images.device), perm, corners)
            inputs[PretextKeys.X] = self.image_mixup.apply(images)
            out[PretextKeys.MIXUP_LAM] = self.image_mixup._params[0]
            return
        mixed = self.text_mixup({k: batch[k] for k in TEXT_KEYS if k in batch})
        inputs[PretextKeys.X] = mixed[PretextKeys.INPUT_IDS]
        inputs[PretextKeys.ATTENTION_MASK] = mixed[PretextKeys.ATTENTION_MASK]
        if PretextKeys.LABELS in mixed:
            # the MLM loss scores the labels of the inputs: they must follow the mixed tokens
            inputs[PretextKeys.LABELS] = batch[PretextKeys.LABELS] = mixed[PretextKeys.LABELS]
