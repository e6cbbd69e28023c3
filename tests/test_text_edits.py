"""The label-preserving text attacks (attacks/text_edits.py), the protected words and the sparse substitution
table (attacks/text_domain.py): known answers on the hand-set Hinge model of test_text_attacks, and a detector
that reads look-alikes as the letters they imitate, which homoglyph must not break."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import TokenDomain
from attacks.text_edits import HOMOGLYPHS, WordCodec, homoglyph_variants, typo_variants
from auditor.stages.robustness import rationale_edits
from test_text_attacks import BAD, CLS, NAMES, PAD, SPECIAL, VOCAB, Hinge, correct, full_table, \
    hinge_tokenizer, messages, run


def _damerau_one(a: str, b: str) -> bool:
    """Whether b is one swap of neighbours, one drop, one insertion or one replacement away from a."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
                                  and a[diff[1]] == b[diff[0]])
    short, long = sorted((a, b), key=len)
    return len(long) == len(short) + 1 and any(long[:i] + long[i + 1:] == short for i in range(len(long)))


def test_every_variant_is_one_character_operation_away():
    for word in ("password", "verify", "pin", "bad"):
        typos = typo_variants(word)
        assert typos and word not in typos and all(_damerau_one(word, t) for t in typos)
        glyphs = homoglyph_variants(word)
        assert glyphs and all(len(g) == len(word) and sum(x != y for x, y in zip(word, g)) == 1 for g in glyphs)
    assert "psasword" in typo_variants("password") and "passwrd" in typo_variants("password")
    assert "pаssword" in homoglyph_variants("password") and "p4ssword" in homoglyph_variants("password")


def test_the_codec_splits_rows_into_words_and_never_edits_frame_unknown_or_short_words():
    codec = WordCodec(hinge_tokenizer())
    head, units, tail = codec.split([CLS, BAD, 1, 4, PAD, PAD])
    assert head == [CLS] and tail == [] and [u.text for u in units] == ["bad", "[UNK]", "ant"]
    assert [u.surface for u in units] == ["bad", None, "ant"]
    assert codec.pieces(["bda", "ant", "b@d"]) == [(1,), (4,), (1, 1, 1)]  # '@' splits the word
    assert codec.join(head, units, tail, 6) == [CLS, BAD, 1, 4, PAD, PAD]
    assert codec.join(head, units, tail, 3) is None  # what would push tokens out is refused, not truncated


@pytest.mark.parametrize("name", ["typo", "exhaustive-typo"])
def test_typo_known_answer_on_the_hinge(name):
    """A typo turns ``bad`` into [UNK] and never writes ``bad`` (no word of the vocabulary is one slip from it):
    at a budget of k words exactly the positives with at most k ``bad`` tokens break, no negative does."""
    model, (x, y) = Hinge(), messages()
    count = (x == BAD).sum(1)
    for budget in (0, 1, 2, 3):
        x_adv = run(name, model, x, y, budget)
        assert torch.equal(correct(model, x_adv, x, y), (y == 0) | (count > budget)), budget
        assert ((x_adv != x).sum(1) <= budget).all()  # typos keep one token per word here


def test_exhaustive_typo_breaks_all_that_greedy_breaks_on_a_trained_model():
    from detectors.text import TextTransformer

    torch.manual_seed(0)
    x, y = messages(256, length=8, seed=1)
    model = TextTransformer(VOCAB, 8, 2, pad_id=PAD, dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for i in range(0, len(x), 64):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            optimiser.step()
    model.eval()
    x, y = messages(40, length=8, seed=2)
    domain = TokenDomain(VOCAB, SPECIAL).with_protection(codec=WordCodec(hinge_tokenizer(8)))
    greedy = correct(model, run("typo", model, x, y, 1, domain=domain, words=1), x, y)
    best = correct(model, run("exhaustive-typo", model, x, y, 1, domain=domain), x, y)
    assert ((~greedy) <= (~best)).all()  # exact at one word: it breaks everything the greedy search breaks
    assert best.float().mean() < greedy.float().mean() + 1e-9


def test_homoglyph_cannot_break_a_detector_that_reads_look_alikes_as_letters():
    """The must-fail case: a tokeniser that maps every look-alike of the Hinge's letters back to the letter
    re-tokenises every homoglyph edit into the clean message, so robust accuracy is 1.0; without that
    normaliser the same attack breaks it."""
    from tokenizers import normalizers

    letters = set("".join(NAMES) + "bad")
    normalise = [normalizers.Replace(glyph, letter) for letter in sorted(letters) for glyph in HOMOGLYPHS[letter]]
    robust_codec = WordCodec(hinge_tokenizer(normalise=normalise))
    model, (x, y) = Hinge(), messages()
    for name in ("homoglyph", "exhaustive-homoglyph"):
        for budget in (1, 2):
            domain = TokenDomain(VOCAB, SPECIAL).with_protection(codec=robust_codec)
            x_adv = run(name, model, x, y, budget, domain=domain)
            assert correct(model, x_adv, x, y).float().mean() == 1.0 and torch.equal(x_adv, x)
            plain = TokenDomain(VOCAB, SPECIAL).with_protection(codec=WordCodec(hinge_tokenizer()))
            assert correct(model, run(name, model, x, y, budget, domain=plain), x, y).float().mean() < 1.0


@pytest.mark.parametrize("how", ["rationale", "protect"])
def test_protected_words_stop_every_attack_but_hotflip_any(how):
    """``bad`` decides the Hinge's label: protected (as the data's rationale, or by --protect) no attack that
    keeps the meaning may touch it, so every positive stays positive; hotflip-any, the upper bound, ignores it."""
    model, (x, y) = Hinge(), messages(16)
    protection = {"protected": x == BAD} if how == "rationale" else {"words": ["BAD"]}
    domain = full_table(**protection)
    for name in ("typo", "homoglyph", "hotflip", "exhaustive-substitution", "attention-guided-sub", "stealth-sub"):
        x_adv = run(name, model, x, y, 2, domain=domain)
        assert not (x_adv[y == 1] != x[y == 1])[x[y == 1] == BAD].any(), name
        assert correct(model, x_adv, x, y)[y == 1].all(), name
    x_any = run("hotflip-any", model, x, y, 2, domain=domain)
    assert not correct(model, x_any, x, y)[y == 1].all()
    touched = rationale_edits(x.numpy(), x_any.numpy(), (x == BAD).numpy(), PAD)
    assert touched[y == 1].any()


def test_hotflip_refuses_to_run_without_a_table():
    model, (x, y) = Hinge(), messages(4)
    with pytest.raises(ValueError, match="substitution table"):
        run("hotflip", model, x, y, 1, domain=TokenDomain(VOCAB, SPECIAL))
    assert not correct(model, run("hotflip-any", model, x, y, 1, domain=TokenDomain(VOCAB, SPECIAL)), x, y).all()


def test_rationale_edits_aligns_sequences_of_different_lengths():
    rationale = np.array([[False, False, True, True, False, False]])
    x = np.array([[CLS, 4, 5, 6, 7, PAD]])
    cases = {
        (CLS, 1, 5, 6, 7, PAD): False,  # a word before the rationale edited
        (CLS, 1, 1, 1, 5, 6): False,  # ... into three tokens: the rationale moves, untouched
        (CLS, 4, 1, 6, 7, PAD): True,  # a rationale token replaced
        (CLS, 4, 5, 1, 6, 7): True,  # something written inside the rationale
        (CLS, 4, 6, 7, PAD, PAD): True,  # a rationale token deleted
        (CLS, 4, 5, 6, 8, PAD): False,
    }
    for after, expected in cases.items():
        assert rationale_edits(x, np.array([after]), rationale, PAD).tolist() == [expected], after


def test_the_substitution_table_is_sparse_and_answers_as_a_dense_one():
    rng = np.random.default_rng(0)
    vocab = {f"t{i}": i for i in range(40)}
    table = {f"t{i}": [f"t{j}" for j in rng.choice(np.arange(4, 40), size=3, replace=False)] for i in range(4, 30)}
    domain = TokenDomain.from_substitutions(vocab, range(4), table)
    assert domain.pairs.numel() <= 3 * 26 and domain.pairs.dtype == torch.int64
    dense = torch.zeros(40, 40, dtype=torch.bool)
    for a, replacements in table.items():
        for b in replacements:
            dense[vocab[a], vocab[b]] = vocab[a] != vocab[b]
    ids = torch.as_tensor(rng.integers(0, 40, size=(5, 7)))
    mutable = ~torch.isin(ids, torch.arange(4)) & dense.any(1)[ids]
    assert torch.equal(domain.mutable(ids), mutable)
    assert torch.equal(domain.targets(ids), dense[ids] & mutable.unsqueeze(-1))
    new = torch.as_tensor(rng.integers(0, 40, size=(5, 7)))
    assert torch.equal(domain.allows(ids, new), dense[ids, new] & mutable)


def test_the_report_marks_an_edited_word_alone_when_it_changes_the_number_of_tokens():
    from auditor.report.html import counterparts

    clean = ["please", "verify", "your", "pin"]
    attacked = ["please", "[UNK]", "[UNK]", "[UNK]", "your", "pin"]  # "verify" -> "v3r!fy": three tokens
    assert counterparts(clean, attacked) == ["please", "[UNK] [UNK] [UNK]", "your", "pin"]
    assert counterparts(attacked, clean) == ["please", "verify", "verify", "verify", "your", "pin"]


def test_protect_files_are_one_word_a_line(tmp_path):
    from attacks.text_domain import load_protected_words
    from detectors.errors import BadInputError

    path = tmp_path / "protect.txt"
    path.write_text("# words that decide the label\nnever\n\nPIN  # credential\n", encoding="utf-8")
    assert load_protected_words(path) == ("never", "PIN")
    path.write_text("do not\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="line 1: 'do not' holds more than one word"):
        load_protected_words(path)
    with pytest.raises(BadInputError, match="no such file"):
        load_protected_words(tmp_path / "missing.txt")


def test_the_attention_attacks_by_word_edits_keep_their_goals_and_the_token_count():
    """On the Hinge every word edit yields [UNK] (one token): attention-shift-edit and -hijack-edit keep every
    prediction and move the attention; guided and stealth flip only positives (no edit writes ``bad``)."""
    from detectors.maths import jensen_shannon

    model, (x, y) = Hinge(), messages(16)
    for name in ("attention-shift-edit", "attention-hijack-edit"):
        x_adv = run(name, model, x, y, 2)
        assert ((x_adv != PAD).sum(1) == (x != PAD).sum(1)).all() and ((x_adv != x).sum(1) <= 2).all()
        with torch.no_grad():
            (clean, p), (adv, q) = (model.forward_with_attention(v) for v in (x, x_adv))
        assert torch.equal(clean.argmax(1), adv.argmax(1)), name
        assert (jensen_shannon(q[0][:, 0, 0, 1:], p[0][:, 0, 0, 1:]) > 0.01).any(), name
    for name in ("attention-guided-edit", "stealth-edit"):
        robust = correct(model, run(name, model, x, y, 1), x, y)
        assert robust[y == 0].all() and not robust[y == 1].all(), name
