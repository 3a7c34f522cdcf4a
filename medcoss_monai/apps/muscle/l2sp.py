"""L2-SP (Li et al., ICML 2018): a pull of the shared backbone toward its starting point.

MUSCLE's cross-task memorisation anchors L2-SP at the weights the multi-task step started from (the
MD-MoCo pre-trained backbone, ``pretrained_ckpt``), for the whole step: every visit is pulled toward
the same point, so no visit can drift far from what all tasks share. ``anchor="visit"`` re-anchors at
the start of every visit instead (this project's earlier behaviour), which only slows each visit.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskKeys
from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["ANCHORS", "L2SPPenalty", "l2sp_term"]

L2SP_LOSS = "l2sp_loss"
ANCHORS = ("start", "visit")
"""Where L2-SP anchors: the weights the step started from (MUSCLE), or those at each visit's start."""


def l2sp_term(module: torch.nn.Module, anchor: dict[str, torch.Tensor], weight: float) -> torch.Tensor:
    """``weight / 2 * sum ||w - w0||^2`` over the parameters of ``module`` named in ``anchor``.

    Args:
        module: the module whose parameters are pulled.
        anchor: parameter name -> starting value ``w0``.
        weight: the penalty's weight (L2-SP's alpha).

    Returns:
        A scalar tensor (differentiable in the parameters).

    Raises:
        BadInputError: no parameter of ``module`` is in ``anchor``.
    """
    terms = [((p - anchor[n]) ** 2).sum() for n, p in module.named_parameters() if n in anchor]
    if not terms:
        raise BadInputError("L2-SP: no parameter of the module is in the anchor.")
    return 0.5 * float(weight) * torch.stack(terms).sum()


class L2SPPenalty:
    """Pulls the shared backbone toward an anchor: its starting weights (default) or those of the visit's start.

    With ``anchor="start"`` the backbone's parameters are copied from ``network`` when the handler is
    built (in the bundle: after ``pretrained_ckpt`` was loaded, before a resumed run restores its
    checkpoint at ``STARTED``, so a resumed run keeps the same anchor), or, without ``network``, from
    the trainer's network at the first ``STARTED``. With ``anchor="visit"`` they are copied again at
    every ``EPOCH_STARTED`` (a visit starts). At every
    ``LOSS_COMPLETED`` the term :func:`l2sp_term` is added to the loss (``l2sp_loss`` in
    ``LOSS_TERMS``). Task heads are not penalised: each is trained only on its own task.

    Args:
        weight: the penalty's weight; 0 disables the handler.
        module_name: attribute of the network holding the shared backbone.
        anchor: ``"start"`` (MUSCLE) or ``"visit"``.
        network: the network whose backbone gives the ``"start"`` anchor now (the bundle's ``@network``).

    Raises:
        BadInputError: ``anchor`` is not one of :data:`ANCHORS`.
    """

    def __init__(
        self, weight: float, module_name: str = "backbone", anchor: str = "start", network: torch.nn.Module | None = None
    ) -> None:
        if anchor not in ANCHORS:
            raise BadInputError(f"l2sp_anchor '{anchor}' is not one of {ANCHORS}.")
        self.weight = float(weight)
        self.module_name = module_name
        self.anchor_at = anchor
        self.anchor: dict[str, torch.Tensor] = {}
        if network is not None and anchor == "start" and self.weight != 0:
            self.anchor = self._parameters(network)

    def _parameters(self, network: torch.nn.Module) -> dict[str, torch.Tensor]:
        module = getattr(unwrap_network(network), self.module_name)
        return {n: p.detach().clone() for n, p in module.named_parameters()}

    def _module(self, engine: Engine) -> torch.nn.Module:
        return getattr(unwrap_network(engine.network), self.module_name)

    def attach(self, engine: Engine) -> None:
        """Anchor at every ``EPOCH_STARTED`` (``"visit"``), or at ``STARTED`` when ``"start"`` has no anchor yet;
        add the term at ``LOSS_COMPLETED``. Nothing is attached when the weight is 0.

        Args:
            engine: the multi-task trainer.
        """
        if self.weight == 0:
            return
        if self.anchor_at == "visit":
            engine.add_event_handler(Events.EPOCH_STARTED, self.snapshot)
        elif not self.anchor:
            engine.add_event_handler(Events.STARTED, self._first_snapshot)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def snapshot(self, engine: Engine) -> None:
        """Keep the backbone's current parameters as the anchor."""
        self.anchor = self._parameters(engine.network)

    def _first_snapshot(self, engine: Engine) -> None:
        if not self.anchor:  # a second run() of the same trainer keeps the first anchor
            self.snapshot(engine)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        term = l2sp_term(self._module(engine), self.anchor, self.weight)
        out[MultiTaskKeys.LOSS_TERMS][L2SP_LOSS] = term
        out[MultiTaskKeys.LOSS] = out[MultiTaskKeys.LOSS] + term
