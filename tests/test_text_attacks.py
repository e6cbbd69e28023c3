"""The text attacks (attacks/text.py, text_edits.py, text_embedding.py): a contract suite over TEXT_ATTACKS on a
hand-set model whose answer is known, and HotFlip against the exhaustive search on a tiny trained transformer."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from attacks import TEXT_ATTACKS, TokenDomain, make_attack
from attacks.text import EMBEDDING_NORMS, embedding_logits, embedding_scale, load_substitutions
from attacks.text_edits import WordCodec, WordEditSearch
from detectors.base import Detector, TokenMap
from detectors.errors import BadInputError

SPECIAL = (0, 1, 2, 3)  # [PAD] [UNK] [CLS] [MASK], as the tokeniser numbers them
PAD, CLS = 0, 2
BAD = 9  # the token the hand-set model hinges on
VOCAB = 10
NAMES = ("ant", "bee", "cat", "dog", "emu")  # ids 4..8: words a tokeniser spells, so the word edits apply
WORDS = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[MASK]": 3, **{name: i for i, name in enumerate(NAMES, start=4)},
         "bad": BAD}


class Hinge(Detector):
    """Positive iff the message holds the token ``bad``: logit_1 = 10 x (number of ``bad``) - 5, logit_0 = 0.
    The [CLS] row of its one attention map is a softmax over the real tokens of 3 x (the word's id / 10), so
    every substitution moves the attention. Hand-set: robust accuracy at a budget of k tokens is the share of
    positives holding more than k ``bad`` tokens (every negative is broken by writing one)."""

    kind = "text"

    def __init__(self, length: int = 6) -> None:
        super().__init__()
        self.n_classes, self.input_shape, self.pad_id = 2, (length,), PAD
        self.embedding = nn.Embedding(VOCAB, 2)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[BAD, 0] = 1.0
            self.embedding.weight[:, 1] = torch.arange(VOCAB) / 10
        self.token_map = TokenMap(token_of_input=torch.arange(length), n_tokens=length, cls_index=0)
        self.fail = False

    def attention_mask(self, ids):
        return ids != PAD

    def embed(self, ids):
        return self.embedding(ids)

    def forward_embeddings(self, embeddings, attention_mask, *, with_attention=False):
        if self.fail:
            raise RuntimeError("the model raised")
        real = attention_mask.clone()
        real[:, 0] = False
        count = (embeddings[..., 0] * real).sum(1)
        logits = torch.stack([torch.zeros_like(count), 10 * count - 5], dim=1)
        scores = (3 * embeddings[..., 1]).masked_fill(~real, -torch.inf)
        row = torch.softmax(scores, dim=1)
        attention = row[:, None, None, :].expand(-1, 1, embeddings.shape[1], -1)
        return (logits, [attention]) if with_attention else logits

    def forward_with_attention(self, ids, attention_mask=None):
        return self.forward_embeddings(self.embed(ids), self.attention_mask(ids), with_attention=True)

    def forward(self, ids, attention_mask=None):
        return self.forward_with_attention(ids)[0]


def messages(n: int = 40, length: int = 6, seed: int = 0):
    """[CLS] then 2..5 words (padding after), about half holding 1-3 ``bad`` tokens; labels from the rule."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, length, dtype=torch.long)
    ids[:, 0] = CLS
    for row in range(n):
        words = int(torch.randint(2, length, (1,), generator=generator))
        ids[row, 1:words + 1] = torch.randint(4, 9, (words,), generator=generator)
        if row % 2:
            count = 1 + row % 3 if words >= 3 else 1
            ids[row, 1:count + 1] = BAD
    return ids, (ids == BAD).any(1).long()


def hinge_tokenizer(length: int = 6, normalise=()):
    """The Hinge vocabulary as a word-level tokeniser ([CLS] first, lower-cased, split on whitespace and
    punctuation), each ``normalise`` (a tokenizers normaliser) applied first."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from detectors.text_data import TextTokenizer

    backend = Tokenizer(models.WordLevel(WORDS, unk_token="[UNK]"))
    backend.normalizer = normalizers.Sequence([*normalise, normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", CLS)])
    return TextTokenizer(backend, length)


def full_table(**protection) -> TokenDomain:
    """Every word may become every other (a table listing all of them), the Hinge tokeniser's words known."""
    table = {a: [b for b in (*NAMES, "bad") if b != a] for a in (*NAMES, "bad")}
    return TokenDomain.from_substitutions(WORDS, SPECIAL, table).with_protection(codec=WordCodec(hinge_tokenizer()),
                                                                                 **protection)


def run(name, model, x, y, eps, domain=None, index=None, seed=0, **params):
    domain = domain or full_table()
    index = torch.arange(len(x)) if index is None else index
    return make_attack(name, **params)(model, x, y, eps=eps, domain=domain, seed=seed, index=index)


def correct(model, x_adv, x, y):
    with torch.no_grad():
        logits = embedding_logits(model, x, x_adv) if x_adv.is_floating_point() else model(x_adv)
    return logits.argmax(1) == y


EDITS = sorted(name for name in TEXT_ATTACKS if issubclass(TEXT_ATTACKS[name], WordEditSearch))
SUBSTITUTION = sorted(name for name in TEXT_ATTACKS if TEXT_ATTACKS[name].norm not in EMBEDDING_NORMS
                      and name not in EDITS)
EMBEDDING = sorted(set(TEXT_ATTACKS) - set(SUBSTITUTION) - set(EDITS))


# --------------------------------------------------------------------------- the contract, over TEXT_ATTACKS

@pytest.mark.parametrize("name", SUBSTITUTION)
def test_substitutions_keep_the_budget_and_never_touch_special_tokens_or_padding(name):
    model, (x, y) = Hinge(), messages()
    for budget in (1, 2):
        x_adv = run(name, model, x, y, budget)
        changed = x_adv != x
        assert changed.sum(1).max() <= budget
        special = torch.isin(x, torch.tensor(SPECIAL))
        assert not changed[special].any()  # [CLS] and padding untouched
        assert not torch.isin(x_adv[changed], torch.tensor(SPECIAL)).any()  # nothing special written


@pytest.mark.parametrize("name", sorted(TEXT_ATTACKS))
def test_text_attacks_are_seeded_batch_independent_and_restore_the_mode(name):
    model, (x, y) = Hinge(), messages()
    whole = run(name, model, x, y, 1, seed=3)
    assert torch.equal(whole, run(name, model, x, y, 1, seed=3))
    parts = torch.cat([run(name, model, x[i:i + 7], y[i:i + 7], 1, index=torch.arange(i, min(i + 7, len(x))), seed=3)
                       for i in range(0, len(x), 7)])
    assert torch.allclose(whole.float(), parts.float(), atol=1e-6)
    model.train()
    model.fail = True
    with pytest.raises(RuntimeError, match="the model raised"):
        run(name, model, x[:4], y[:4], 1)
    assert model.training


@pytest.mark.parametrize("name", sorted(TEXT_ATTACKS))
def test_text_attacks_refuse_a_non_token_domain_and_a_fractional_budget(name, tiny_detector):
    from attacks import Domain

    model, (x, y) = Hinge(), messages(4)
    with pytest.raises(ValueError, match="TokenDomain"):
        run(name, model, x, y, 1, domain=Domain.unit((6,)))
    with pytest.raises(ValueError, match="text detector"):
        run(name, tiny_detector, torch.rand(4, 6), y, 1)
    if name not in EMBEDDING:
        with pytest.raises(ValueError, match="whole number of tokens"):
            run(name, model, x, y, 0.5)


@pytest.mark.parametrize("name", ["hotflip", "exhaustive-substitution"])
def test_a_model_hinging_on_one_token_known_answer(name):
    """Budget k breaks every negative (write ``bad``) and every positive with at most k ``bad`` tokens."""
    model, (x, y) = Hinge(), messages()
    count = (x == BAD).sum(1)
    assert torch.equal(correct(model, x, x, y), torch.ones(len(x), dtype=torch.bool))
    for budget in (0, 1, 2, 3):
        robust = correct(model, run(name, model, x, y, budget), x, y)
        expected = count > budget if budget else torch.ones(len(x), dtype=torch.bool)
        assert torch.equal(robust, expected), budget


def test_a_substitution_table_restricts_what_may_change(tmp_path):
    """Only ``bad -> ant`` allowed: negatives can no longer be broken, positives with one ``bad`` still are."""
    model, (x, y) = Hinge(), messages()
    table = tmp_path / "subs.json"
    table.write_text(json.dumps({"bad": ["ant"]}))
    domain = load_substitutions(table, WORDS, SPECIAL)
    x_adv = run("hotflip", model, x, y, 1, domain=domain)
    changed = x_adv != x
    assert torch.equal(x[changed], torch.full_like(x[changed], BAD)) and (x_adv[changed] == 4).all()
    assert torch.equal(correct(model, x_adv, x, y), (y == 0) | ((x == BAD).sum(1) > 1))


@pytest.mark.parametrize("content,message", [
    (None, "no such file"), (b"{\"bad\": [", "invalid JSON at line 1"), (b"\xff\xfe", "not UTF-8"),
    (b"[\"bad\"]", "expected a JSON object"), (b"{\"bad\": \"ant\"}", "must map to a list of tokens"),
    (b"{\"bad\": [\"phish\"]}", "'phish' is not in the model's vocabulary"),
    (b"{\"bad\": [\"[PAD]\"]}", "'[PAD]' is a special token"),
])
def test_bad_substitution_files_are_one_clear_line(tmp_path, content, message):
    path = tmp_path / "subs.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_substitutions(path, WORDS, SPECIAL)


def test_attention_shift_by_substitution_moves_attention_and_keeps_every_prediction():
    from detectors.maths import jensen_shannon

    model, (x, y) = Hinge(), messages()
    x_adv = run("attention-shift-sub", model, x, y, 2)
    with torch.no_grad():
        (clean, p), (adv, q) = (model.forward_with_attention(v) for v in (x, x_adv))
    assert torch.equal(clean.argmax(1), adv.argmax(1))
    divergence = jensen_shannon(q[0][:, 0, 0, 1:], p[0][:, 0, 0, 1:])
    assert (divergence > 0.01).float().mean() > 0.9 and ((x_adv != x).sum(1) <= 2).all()


def test_attention_hijack_by_substitution_known_answer_and_a_case_it_must_fail():
    """Hinge's attention grows with the word's id. [CLS] emu emu bee (8 8 5): the 2 least-attended words are bee
    and the second emu (ties: the later position is the less attended); one substitution, emu -> ant (4) at
    position 1, puts them on top and keeps the prediction (nothing else does: bee..dog tie or exceed a target,
    ``bad`` flips it). [CLS] bad ant cannot be hijacked: position 1 would have to fall below ant and stop being
    ``bad``."""
    from attacks.text import TokenAttentionHijack

    model = Hinge()
    x = torch.tensor([[CLS, 8, 8, 5, PAD, PAD], [CLS, BAD, 4, PAD, PAD, PAD]])
    y = torch.tensor([0, 1])
    attack = TokenAttentionHijack()
    assert torch.equal(run("attention-hijack-sub", model, x, y, 0), x)
    for budget in (1, 2):
        x_adv = run("attention-hijack-sub", model, x, y, budget)
        assert torch.equal(x_adv, torch.tensor([[CLS, 4, 8, 5, PAD, PAD], [CLS, BAD, 4, PAD, PAD, PAD]])), budget
        assert attack.hijack_success(model, x, x_adv).tolist() == [True, False]
    assert attack.hijack_success(model, x, x).tolist() == [False, False]


def test_stealth_and_attention_guided_flip_within_their_budget():
    model, (x, y) = Hinge(), messages()
    for name in ("stealth-sub", "attention-guided-sub"):
        robust = correct(model, run(name, model, x, y, 1), x, y)
        assert robust.float().mean() <= ((x == BAD).sum(1) > 1).float().mean() + 0.25, name


@pytest.mark.parametrize("name", EMBEDDING)
def test_embedding_pgd_holds_its_budget_in_embedding_units_and_leaves_special_rows(name):
    model, (x, y) = Hinge(), messages()
    domain = TokenDomain(VOCAB, SPECIAL)
    eps = 0.5
    adv = run(name, model, x, y, eps)
    delta = adv - model.embed(x).detach()
    r = embedding_scale(model, SPECIAL)
    if name == "embedding-pgd":
        assert delta.abs().max() <= eps * r / 2 ** 0.5 + 1e-6
    else:
        assert delta.norm(dim=-1).max() <= eps * r + 1e-6
    assert (delta[~domain.mutable(x)] == 0).all()
    assert correct(model, adv, x, y).float().mean() < 0.9  # a large relaxation breaks the hinge


# --------------------------------------------------------------------------- HotFlip against the exact answer

@pytest.fixture(scope="module")
def trained():
    """A one-layer TextTransformer over 6 words trained (80 steps) on the hinge rule."""
    from detectors.text import TextTransformer

    torch.manual_seed(0)
    x, y = messages(512, length=8, seed=1)
    model = TextTransformer(VOCAB, 8, 2, pad_id=PAD, dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for i in range(0, len(x), 64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            optimiser.step()
    return model.eval(), messages(200, length=8, seed=2)


def test_hotflip_is_within_005_of_exhaustive_search_at_budget_one_and_never_below(trained):
    model, (x, y) = trained
    assert correct(model, x, x, y).float().mean() > 0.9
    hot = correct(model, run("hotflip", model, x, y, 1, candidates=8), x, y)
    best = correct(model, run("exhaustive-substitution", model, x, y, 1), x, y)
    assert ((~best) | hot).all()  # exhaustive search breaks everything HotFlip breaks
    assert 0.05 < best.float().mean() < 0.95  # the answer is neither trivial nor everything
    assert hot.float().mean() - best.float().mean() <= 0.05


def test_more_budget_and_more_search_never_find_less_on_the_trained_model(trained):
    model, (x, y) = trained
    at = [correct(model, run("hotflip", model, x, y, k), x, y).float().mean().item() for k in (0, 1, 2)]
    assert at == sorted(at, reverse=True) and at[2] < at[0]
    narrow = correct(model, run("hotflip", model, x, y, 1, candidates=2), x, y)
    wide = correct(model, run("hotflip", model, x, y, 1, candidates=16), x, y)
    assert ((~narrow) <= (~wide)).all()  # at budget 1 more candidates break a superset


# --------------------------------------------------------------------------- the audit's text plumbing

def test_text_masking_checks_known_answers():
    """A wider search that breaks fewer messages is a sign of masking; one that breaks more, non-convergence;
    a robust accuracy rising with the token budget fails monotonicity."""
    import numpy as np

    from auditor.stages.masking import evaluate_text_checks, text_masking_rows
    from auditor.metrics import MetricValue

    attacks = {"hotflip": make_attack("hotflip")}
    grids = {"tokens": [1, 2]}

    def status(hotflip, wider):
        metrics = {f"robust.accuracy.hotflip@{b}": MetricValue(v) for b, v in zip((1, 2), hotflip)}
        rows = {f"wider@{b}": np.full(100, v) for b, v in zip((1, 2), wider)}
        return {c.name: c.status for c in evaluate_text_checks(metrics, rows, attacks, grids, n=100)}

    assert status((0.5, 0.3), (0.5, 0.3)) == {"wider-search-finds-no-less": "passed",
                                             "wider-search-same-answer": "passed", "monotone-in-eps": "passed"}
    assert status((0.5, 0.3), (0.7, 0.3))["wider-search-finds-no-less"] == "failed"
    assert status((0.5, 0.3), (0.3, 0.3))["wider-search-same-answer"] == "failed"
    assert status((0.3, 0.5), (0.3, 0.5))["monotone-in-eps"] == "failed"
    model, (x, y) = Hinge(), messages()
    rows = text_masking_rows(model, x, y, attacks, [1, 2], domain=full_table(), seed=0, batch_size=64)
    assert np.array_equal(rows["wider@1"], ((x == BAD).sum(1) > 1).numpy().astype(float))  # the known answer
    # hotflip draws from a table: without one it does not run, and neither does its wider search
    assert text_masking_rows(model, x, y, attacks, [1, 2], domain=TokenDomain(VOCAB, SPECIAL), seed=0,
                             batch_size=64) == {}


def test_text_options_are_checked_against_the_model_kind():
    from auditor.run.config import AuditConfig

    config = AuditConfig.from_profile("quick")
    assert config.for_kind("text").attacks == ("typo", "homoglyph")  # label-preserving edits by default
    with pytest.raises(BadInputError, match="unknown attack pgd for text"):
        AuditConfig(attacks=("pgd",)).for_kind("text")
    with pytest.raises(BadInputError, match="unknown attack hotflip for this model's inputs"):
        AuditConfig(attacks=("hotflip",)).for_kind("tabular")
    with pytest.raises(BadInputError, match="apply to text models"):
        AuditConfig(token_budget=(3,)).for_kind("tabular")
    with pytest.raises(BadInputError, match="whole numbers of tokens"):
        AuditConfig(token_budget=(0,))
    bound = AuditConfig(token_budget=(4, 1)).for_kind("text")
    assert bound.token_budget == (1, 4) and bound.grid("tokens") == (1, 4) and bound.grid("embedding-l2") == bound.eps
    # a parameter of the profile's text attack is accepted before the kind is known, and checked once it is
    tuned = AuditConfig(attack_params=(("typo", "words", "2"),)).for_kind("text")
    assert tuned.build_attacks()["typo"].words == 2
    with pytest.raises(BadInputError, match="hotflip is not among the attacks run"):
        AuditConfig(attack_params=(("hotflip", "beam", "4"),)).for_kind("tabular")


def test_embedding_adversarial_training_perturbs_the_embeddings_and_trains_the_table():
    """pgd-at on token ids (Miyato et al. 2017): the loss is taken at embeddings moved within the budget (above
    the clean loss), and its gradient reaches the embedding table."""
    from auditor.training.config import DefenseConfig
    from auditor.training.defenses import DefenseLoss
    from detectors.text import TextTransformer

    torch.manual_seed(0)
    model = TextTransformer(VOCAB, 6, 2, pad_id=PAD, dim=8, depth=1, heads=2, mlp_dim=16, dropout=0.0)
    x, y = messages(16)
    objective = DefenseLoss(DefenseConfig(name="pgd-at", eps=0.5, steps=3), (6,), 0)
    loss = objective(None, model, x, y, torch.arange(16), 1, contextlib.nullcontext)
    clean = nn.functional.cross_entropy(model(x), y)
    assert torch.isfinite(loss) and loss > clean
    loss.backward()
    assert model.embedding.weight.grad[4:].abs().sum() > 0
