"""L2-SP (Li et al., ICML 2018) toward the shared backbone's weights at the start of each visit."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskKeys
from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["L2SPPenalty", "l2sp_term"]

L2SP_LOSS = "l2sp_loss"


def l2sp_term(module: torch.nn.Module, anchor: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """``weight / 2 * sum ||w - w0||^2`` over the parameters of ``module`` named in ``anchor``.

    Args:
        module: the module whose parameters are pulled.
        anchor: parameter name -> starting value ``w0``.
        weight: the penalty's weight (L2-SP's alpha).

    Returns:
        A scalar tensor (differentiable in the parameters).
    """
    terms = [((p - anchor[n]) ** 2).sum() for n, p in module.named_parameters() if n in anchor]
    if not terms:
        raise ValueError("L2-SP: no parameter of the module is in the anchor.")
    return 0.5 * float(weight) * torch.stack(terms).sum()


class L2SPPenalty:
    """Pulls the shared backbone toward its weights at the start of the current visit.

    At ``EPOCH_STARTED`` (a visit starts) the backbone's parameters are copied; at every
    ``LOSS_COMPLETED`` the term :func:`l2sp_term` is added to the loss (``l2sp_loss`` in
    ``LOSS_TERMS``). Task heads are not penalised: each is trained only on its own task.

    Args:
        weight: the penalty's weight; 0 disables the handler.
        module_name: attribute of the network holding the shared backbone.
    """

    def __init__(self, weight: float, module_name: str = "backbone") -> None:
        self.weight = float(weight)
        self.module_name = module_name
        self.anchor: dict[str, torch.Tensor] = {}

    def _module(self, engine: Engine) -> torch.nn.Module:
        return getattr(unwrap_network(engine.network), self.module_name)

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED`` and ``LOSS_COMPLETED`` (nothing when the weight is 0).

        Args:
            engine: the multi-task trainer.
        """
        if self.weight == 0:
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self.snapshot)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def snapshot(self, engine: Engine) -> None:
        """Keep the backbone's parameters as the anchor of the visit that starts."""
        self.anchor = {n: p.detach().clone() for n, p in self._module(engine).named_parameters()}

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        term = l2sp_term(self._module(engine), self.anchor, self.weight)
        out[MultiTaskKeys.LOSS_TERMS][L2SP_LOSS] = term
        out[MultiTaskKeys.LOSS] = out[MultiTaskKeys.LOSS] + term
