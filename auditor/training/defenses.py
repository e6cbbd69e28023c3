"""The training objective of each defense, recorded in the checkpoint so that checkpoints can be compared.

``none``
    plain cross-entropy.
``pgd-at``
    Madry et al. 2018: cross-entropy on PGD examples (L-inf ``eps``, ``steps``
    steps of ``step_size`` x eps, random start), made by this tool's ``pgd``.
``trades``
    Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x') || f(x)), x' maximising
    that KL within eps (torchattacks' TPGD, the TRADES inner maximisation).
``pgd-at`` on text (token ids)
    Miyato et al. 2017's adversarial training in embedding space: cross-entropy on the token embeddings moved
    by ``embedding-pgd-l2`` (:mod:`attacks.text`; each non-special token's embedding within L2 ``eps`` x r, r
    the mean norm of the vocabulary's non-special embedding rows, ``steps`` steps of ``step_size`` x the
    radius, random start). The perturbation is added to the embeddings the loss differentiates, so the table
    learns too. Embeddings are not normalised first (Miyato et al. normalise them).
``attention-consistency``
    adversarial training as ``pgd-at`` plus lambda * JSD between the clean and
    the perturbed attention distribution: the one the audit measures,
    :func:`detectors.maths.attention_distribution_of` (the CLS row of the last
    layer, mean over heads), so the defense protects what the stability metrics
    read. With sparse attention (sparsemax, entmax15) the JSD term has no
    gradient through tokens outside the support of either distribution: only
    the supported tokens are pulled together.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from attacks import Domain, TokenDomain, make_attack
from auditor.training.config import DefenseConfig
from detectors.base import Detector
from detectors.maths import attention_distribution_of, jensen_shannon


class DefenseLoss:
    """The training objective of one defense.

    ``model`` returns (logits, attentions) and is what gradients flow through
    (wrapped for DDP when there are several processes); adversarial examples
    are crafted on the bare ``module`` in eval mode, with no gradient sync.
    """

    def __init__(self, config: DefenseConfig, input_shape: tuple[int, ...], seed: int, *,
                 frozen: torch.Tensor | None = None) -> None:
        self.config, self.seed = config, seed
        self.domain = Domain.unit(input_shape, frozen=frozen)
        self.pgd = make_attack("pgd", steps=config.steps, step_size=config.step_size, restarts=1, schedule="constant")
        self.embedding_pgd = make_attack("embedding-pgd-l2", steps=config.steps, step_size=config.step_size)

    def embedding_adversarial(self, module: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                              epoch: int) -> torch.Tensor:
        """Text: the embedding-space perturbation (N, T, dim), detached, zero on the special tokens."""
        from detectors.text_data import SPECIAL_TOKENS

        # the word-level tokeniser numbers its special tokens first (detectors.text_data)
        domain = TokenDomain(module.embedding.num_embeddings, tuple(range(len(SPECIAL_TOKENS))))
        adv = self.embedding_pgd(module, x, y, eps=self.config.eps, domain=domain, seed=self.seed * 100003 + epoch,
                                 index=index)
        with torch.no_grad():
            return adv - module.embed(x)

    def adversarial(self, module: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                    epoch: int) -> torch.Tensor:
        return self.pgd(module, x, y, eps=self.config.eps, domain=self.domain, seed=self.seed * 100003 + epoch,
                        index=index)

    def trades_examples(self, module: Detector, x: torch.Tensor) -> torch.Tensor:
        import torchattacks  # only TRADES needs it: the other defenses train without loading it

        was_training = module.training
        try:
            attack = torchattacks.TPGD(module, eps=self.config.eps, alpha=self.config.step_size * self.config.eps,
                                       steps=self.config.steps)
            x_adv = attack(x)
        finally:
            module.train(was_training)
        return self.domain.project(x_adv, x, eps=self.config.eps)

    def __call__(self, model: nn.Module, module: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                 epoch: int, autocast) -> torch.Tensor:
        name = self.config.name
        if name == "none":
            with autocast():
                return F.cross_entropy(model(x)[0], y)
        if name == "pgd-at" and not x.is_floating_point():  # token ids: adversarial training in embedding space
            delta = self.embedding_adversarial(module, x, y, index, epoch)
            with autocast():
                return F.cross_entropy(module.forward_embeddings(module.embed(x) + delta, module.attention_mask(x)), y)
        if name == "pgd-at":
            x_adv = self.adversarial(module, x, y, index, epoch)
            with autocast():
                return F.cross_entropy(model(x_adv)[0], y)
        if name == "trades":
            x_adv = self.trades_examples(module, x)
            with autocast():
                logits = model(torch.cat([x, x_adv]))[0]
                clean, adv = logits[: len(x)], logits[len(x):]
                robust = F.kl_div(F.log_softmax(adv.float(), 1), F.softmax(clean.float(), 1), reduction="batchmean")
                return F.cross_entropy(clean, y) + self.config.beta * robust
        x_adv = self.adversarial(module, x, y, index, epoch)
        with autocast():
            logits, attentions = model(torch.cat([x, x_adv]))
            p = attention_distribution_of([a[: len(x)].float() for a in attentions], module.token_map)
            q = attention_distribution_of([a[len(x):].float() for a in attentions], module.token_map)
            return F.cross_entropy(logits[len(x):], y) + self.config.lambda_attention * jensen_shannon(p, q).mean()
