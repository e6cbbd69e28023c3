"""Text data: the built-in ``phishing`` corpus, user ``.csv`` / ``.jsonl`` messages, and their tokeniser.

``phishing`` / ``phishing:N``
    synthetic messages generated from a seed (6,000 by default, 8-48 words, about 40 % phishing). A message
    is built from *frames* and class-independent filler sentences. A frame binds a verb to an object:
    a request frame (``please verify your password``) or a negation frame (``never verify your password``),
    the object either a credential (``password``, ``card number``) or a harmless object (``order``).
    A message is phishing exactly when a request frame binds a credential. The frame that decides the label
    (the request binding a credential, or in a negative the negation binding one) is recorded per message as
    its rationale (character spans; a negative without a credential frame has none).
    Bag of words is not enough by construction: 40 % of the messages hold one request and one negation frame
    whose bags of words are the same whether the credential sits in the request (phishing) or in the negation
    (benign), so only the binding tells them apart; fillers with negations and urgency words (``do not miss
    our sale``, ``urgent``) occur at the same rate in both classes.

User files: ``.csv`` with a header, or ``.jsonl`` (one JSON object a line), UTF-8, the text in
``--text-column`` (default ``text``) and the label in ``--label-column`` (any values: strings, numbers,
booleans). A bad row (empty text, a text or label of the wrong type, invalid UTF-8) is refused with its
line number.

Tokenisation: a word-level tokeniser of the ``tokenizers`` library (lower-cased, split on whitespace and
punctuation), trained on the training split alone, special tokens ``[PAD] [UNK] [CLS] [MASK]`` (ids 0-3),
``[CLS]`` prepended, padded with ``[PAD]`` to the checkpoint's ``max_length`` and truncated there. Its JSON
travels in the checkpoint's metadata; loading it parses JSON and runs no code.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from detectors.data import TEST_SHARE, VALIDATION_SHARE, _label_order
from detectors.table import Dataset, Splits
from detectors.errors import BadInputError
from detectors.inputs.text import position_names

TEXT_BUILTIN = ("phishing",)
PHISHING_DEFAULT_ROWS = 6_000
PHISHING_WORDS = (8, 48)
PAD, UNK, CLS, MASK = "[PAD]", "[UNK]", "[CLS]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, MASK)
MAX_LENGTH_CAP = 128  # tokens, [CLS] included: a user corpus's longer messages are truncated there

VERBS = ("verify", "confirm", "update", "enter", "send", "reset", "check", "share")
CREDENTIALS = ("password", "pin", "login", "bank details", "card number", "account details", "security code",
               "passcode")
HARMLESS = ("order", "subscription", "address", "calendar", "newsletter settings", "delivery slot",
            "profile photo", "meeting time")
REQUEST_FRAMES = ("please {verb} your {object}", "you must {verb} your {object}", "kindly {verb} your {object}",
                  "click the link to {verb} your {object}", "reply now to {verb} your {object}")
NEGATION_FRAMES = ("never {verb} your {object}", "do not {verb} your {object}",
                   "we will never ask you to {verb} your {object}", "there is no need to {verb} your {object}")
FILLERS = ("hello team", "thanks for your order", "your parcel ships today", "the meeting moved to friday",
           "urgent", "act now", "our office is closed on monday", "see the attached invoice",
           "this offer ends soon", "about your account", "security notice", "best regards", "have a nice day",
           "click the link below", "lunch is at noon", "a reminder from the bank", "the report is ready",
           "call us any time", "do not miss our sale", "never forget your umbrella", "hi there",
           "the team wishes you well", "your statement is available", "we value your business")
# message shapes and their shares: (label, frames as (kind, object class)); shares sum to 1
SHAPES = (
    (1, (("request", "credential"),), 0.20),
    (1, (("request", "credential"), ("negation", "harmless")), 0.20),
    (0, (("negation", "credential"), ("request", "harmless")), 0.20),
    (0, (("request", "harmless"),), 0.15),
    (0, (("negation", "credential"),), 0.10),
    (0, (), 0.15),
)


@dataclass
class TextTable:
    """Messages with labels; ``rationales[i]`` lists the (start, end) character spans deciding message i."""

    name: str
    texts: list[str]
    y: np.ndarray
    class_names: list[str]
    positive_class: int | None
    rationales: list[list[tuple[int, int]]] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def is_text_data(spec: str) -> bool:
    """Whether ``spec`` names text: the built-in corpus or a .jsonl file (a .csv is text when it has the text
    column, decided by the detector asked for)."""
    return spec.partition(":")[0] in TEXT_BUILTIN or spec.lower().endswith(".jsonl")


def load_text_table(spec: str, *, text_column: str = "text", label_column: str = "label",
                    positive_class: str | None = None, seed: int = 0) -> TextTable:
    """The built-in ``phishing[:N]`` corpus or a ``.csv`` / ``.jsonl`` file of messages."""
    name, _, size = spec.partition(":")
    if name == "phishing":
        rows = PHISHING_DEFAULT_ROWS
        if size:
            try:
                rows = int(size)
            except ValueError:
                raise BadInputError(f"expected a message count after 'phishing:', got {size!r} (e.g. phishing:2000)") \
                    from None
            if rows < 100:
                raise BadInputError(f"phishing needs at least 100 messages to split, got {rows}")
        table = make_phishing(rows, seed=seed)
    elif spec.lower().endswith(".csv"):
        table = read_text_csv(Path(spec), text_column=text_column, label_column=label_column)
    elif spec.lower().endswith(".jsonl"):
        table = read_text_jsonl(Path(spec), text_column=text_column, label_column=label_column)
    else:
        raise BadInputError(f"unknown text data {spec!r}: expected phishing, phishing:N, or a path ending in .csv "
                            "or .jsonl")
    if positive_class is not None:
        if positive_class not in table.class_names:
            raise BadInputError(f"--positive-class {positive_class!r} is not a class of {table.name}; classes are "
                                f"{', '.join(map(repr, table.class_names))}")
        table.positive_class = table.class_names.index(positive_class)
    return table


def make_phishing(rows: int = PHISHING_DEFAULT_ROWS, *, seed: int = 0) -> TextTable:
    """The synthetic phishing corpus (see the module docstring); the same seed gives the same messages."""
    rng = np.random.default_rng(seed)
    shares = np.array([share for _, _, share in SHAPES])
    shapes = rng.choice(len(SHAPES), size=rows, p=shares / shares.sum())
    texts, labels, rationales = [], [], []
    for shape in shapes:
        label, frames, _ = SHAPES[shape]
        text, spans = _phishing_message(rng, frames)
        texts.append(text)
        labels.append(label)
        rationales.append(spans)
    return TextTable(name="phishing" if rows == PHISHING_DEFAULT_ROWS else f"phishing:{rows}", texts=texts,
                     y=np.asarray(labels, dtype=np.int64), class_names=["benign", "phishing"], positive_class=1,
                     rationales=rationales)


def _phishing_message(rng: np.random.Generator, frames) -> tuple[str, list[tuple[int, int]]]:
    """One message: its frames in random order with fillers between them, 8-48 words; the deciding frame's span."""
    pieces = []  # (words, decides the label)
    for kind, object_class in frames:
        template = str(rng.choice(REQUEST_FRAMES if kind == "request" else NEGATION_FRAMES))
        thing = str(rng.choice(CREDENTIALS if object_class == "credential" else HARMLESS))
        words = template.format(verb=rng.choice(VERBS), object=thing).split()
        pieces.append((words, object_class == "credential"))
    order = rng.permutation(len(pieces))
    pieces = [pieces[i] for i in order]
    low, high = PHISHING_WORDS
    target = int(rng.integers(low, high + 1))
    length = sum(len(words) for words, _ in pieces)
    while True:
        filler = str(rng.choice(FILLERS)).split()
        if length + len(filler) > high or (length >= target and length >= low):
            if length >= low:
                break
            continue
        pieces.insert(int(rng.integers(0, len(pieces) + 1)), (filler, False))
        length += len(filler)
    text, spans = "", []
    for words, decides in pieces:
        start = len(text) + (1 if text else 0)
        text = f"{text} {' '.join(words)}" if text else " ".join(words)
        if decides:
            spans.append((start, len(text)))
    return text, spans


def read_text_csv(path: Path, *, text_column: str = "text", label_column: str = "label") -> TextTable:
    """Messages and labels from a UTF-8 CSV file with a header."""
    content = _read_utf8(path)
    reader = csv.reader(io.StringIO(content.removeprefix("\ufeff"), newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise BadInputError(f"{path}: empty file; expected a header row and data rows")
        header = [name.strip() for name in header]
        for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
            if column not in header:
                raise BadInputError(f"{path}: no column {column!r}; columns are {', '.join(map(repr, header[:10]))}"
                                    f"{' ...' if len(header) > 10 else ''}; name it with {flag}")
        text_at, label_at = header.index(text_column), header.index(label_column)
        texts, labels = [], []
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            line = reader.line_num
            if len(fields) != len(header):
                raise BadInputError(f"{path}, line {line}: {len(fields)} fields where the header has {len(header)}")
            texts.append(_check_text(fields[text_at], text_column, line, path))
            labels.append(_check_label(fields[label_at].strip(), label_column, line, path))
    except csv.Error as error:
        raise BadInputError(f"{path}: not a readable CSV file ({error})") from None
    return _table(path, texts, labels)


def read_text_jsonl(path: Path, *, text_column: str = "text", label_column: str = "label") -> TextTable:
    """Messages and labels from a UTF-8 JSON Lines file: one object a line, blank lines skipped."""
    texts, labels = [], []
    for line, raw in enumerate(_read_utf8(path).removeprefix("\ufeff").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise BadInputError(f"{path}, line {line}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict):
            raise BadInputError(f"{path}, line {line}: expected a JSON object, got {type(record).__name__}")
        for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
            if column not in record:
                raise BadInputError(f"{path}, line {line}: no key {column!r} (keys: "
                                    f"{', '.join(map(repr, list(record)[:10]))}); name it with {flag}")
        texts.append(_check_text(record[text_column], text_column, line, path))
        label = record[label_column]
        if isinstance(label, bool):
            label = str(label).lower()
        elif isinstance(label, (int, float, str)):
            label = str(label).strip()
        else:
            raise BadInputError(f"{path}, line {line}: label {label_column!r} is a {type(label).__name__}; expected "
                                "a string, number or boolean")
        labels.append(_check_label(label, label_column, line, path))
    return _table(path, texts, labels)


def _read_utf8(path: Path) -> str:
    if not path.is_file():
        raise BadInputError(f"data file {str(path)!r} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise BadInputError(f"{path}, line {line}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _check_text(value, column: str, line: int, path: Path) -> str:
    if not isinstance(value, str):
        raise BadInputError(f"{path}, line {line}: text {column!r} is a {type(value).__name__}; expected a string")
    if not value.strip():
        raise BadInputError(f"{path}, line {line}: empty text in {column!r}")
    return value


def _check_label(label: str, column: str, line: int, path: Path) -> str:
    if not label:
        raise BadInputError(f"{path}, line {line}: empty label in {column!r}")
    return label


def _table(path: Path, texts: list[str], labels: list[str]) -> TextTable:
    if not texts:
        raise BadInputError(f"{path}: no messages")
    class_names = sorted(set(labels), key=_label_order)
    index = {name: i for i, name in enumerate(class_names)}
    positive = class_names.index("1") if "1" in index else len(class_names) - 1
    return TextTable(name=str(path), texts=texts, y=np.array([index[v] for v in labels], dtype=np.int64),
                     class_names=class_names, positive_class=positive)


class TextTokenizer:
    """A ``tokenizers`` word-level tokeniser with [CLS] prepended and padding to ``max_length``.

    ``encode(texts)`` gives token ids (N, max_length) int64; padding is :attr:`pad_id` and the attention mask
    is ``ids != pad_id``. Build one with :meth:`train` (on training texts only) or :meth:`from_json`.
    """

    def __init__(self, tokenizer, max_length: int) -> None:
        self._tokenizer = tokenizer
        self.max_length = int(max_length)
        self._tokenizer.enable_truncation(self.max_length)
        self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=self.max_length)

    @classmethod
    def train(cls, texts: list[str], *, max_length: int | None = None) -> "TextTokenizer":
        """Learn the vocabulary (every word of ``texts``); ``max_length`` defaults to the longest text plus
        [CLS], capped at :data:`MAX_LENGTH_CAP`."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A", special_tokens=[(CLS, tokenizer.token_to_id(CLS))])
        if max_length is None:
            longest = max(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
            max_length = min(longest, MAX_LENGTH_CAP)
        return cls(tokenizer, max_length)

    @classmethod
    def from_json(cls, payload: str, max_length: int) -> "TextTokenizer":
        """Rebuild from :meth:`to_json` (a JSON description: no code runs)."""
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_str(payload)
        except Exception as error:  # tokenizers raises its own Exception type for malformed JSON
            raise BadInputError(f"the stored tokeniser cannot be read ({str(error).splitlines()[0]})") from None
        missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
        if missing:
            raise BadInputError(f"the stored tokeniser lacks the special tokens {missing}")
        return cls(tokenizer, max_length)

    def to_json(self) -> str:
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        try:
            return self._tokenizer.to_str()
        finally:
            self._tokenizer.enable_truncation(self.max_length)
            self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token=PAD, length=self.max_length)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self._tokenizer.token_to_id(PAD)

    @property
    def special_ids(self) -> list[int]:
        return [self._tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]

    def vocab(self) -> dict[str, int]:
        """Token -> id, special tokens included."""
        return self._tokenizer.get_vocab()

    def token_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def tokens(self, ids) -> list[str]:
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    def lengths(self, texts: list[str]) -> list[int]:
        """Each text's token count, [CLS] included, untruncated."""
        self._tokenizer.no_truncation()
        try:
            return [len(e.ids) for e in self._tokenizer.encode_batch(texts)]
        finally:
            self._tokenizer.enable_truncation(self.max_length)

    def encode(self, texts: list[str], rationales: list[list[tuple[int, int]]] | None = None
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """``(ids, rationale_mask, truncated)``: ids (N, max_length) int64; rationale_mask (N, max_length) bool,
        True on every token whose characters overlap a rationale span (None without rationales); truncated (N,)
        bool, whether the message lost tokens to ``max_length``."""
        full = self.lengths(texts)
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = None
        if rationales is not None:
            mask = np.zeros(ids.shape, dtype=bool)
            for row, (encoding, spans) in enumerate(zip(encodings, rationales)):
                for position, ((start, end), special) in enumerate(zip(encoding.offsets,
                                                                       encoding.special_tokens_mask)):
                    if not special and any(start < span_end and span_start < end for span_start, span_end in spans):
                        mask[row, position] = True
        return ids, mask, np.array(full) > self.max_length


@dataclass
class TextSplits(Splits):
    """Train / validation / test token ids (``Dataset.x`` int64, (N, max_length)) and the tokeniser fitted on
    the training texts; ``Dataset.relevant_mask`` holds the rationale tokens where the corpus has them."""

    tokenizer: TextTokenizer | None = None


def split_text_table(table: TextTable, *, seed: int) -> TextSplits:
    """Stratified train / validation / test split (the shares of :func:`detectors.data.split_table`); the
    tokeniser is trained on the training texts alone."""
    counts = np.bincount(table.y, minlength=len(table.class_names))
    if (counts > 0).sum() < 2:
        raise BadInputError(f"{table.name}: training needs at least two classes, found {int((counts > 0).sum())}")
    rows = np.arange(len(table))
    stratify = table.y if counts[counts > 0].min() >= 4 else None
    rest, test = train_test_split(rows, test_size=TEST_SHARE, random_state=seed, stratify=stratify)
    train, val = train_test_split(rest, test_size=VALIDATION_SHARE, random_state=seed,
                                  stratify=table.y[rest] if stratify is not None else None)
    train = np.sort(train)
    tokenizer = TextTokenizer.train([table.texts[i] for i in train])
    return TextSplits(train=text_dataset(table, train, tokenizer, "train"),
                      val=text_dataset(table, np.sort(val), tokenizer, "val"),
                      test=text_dataset(table, np.sort(test), tokenizer, "test"), scaler=None, seed=seed,
                      tokenizer=tokenizer)


def text_dataset(table: TextTable, rows: np.ndarray, tokenizer: TextTokenizer, split: str) -> Dataset:
    """Rows of ``table`` encoded with ``tokenizer`` as a :class:`~detectors.data.Dataset` of token ids."""
    texts = [table.texts[i] for i in rows]
    spans = [table.rationales[i] for i in rows] if table.rationales is not None else None
    ids, rationale, truncated = tokenizer.encode(texts, spans)
    # a message that fits holds as many tokens as its non-padding ids; only the truncated ones are counted again
    lengths = (ids != tokenizer.pad_id).sum(axis=1)
    if truncated.any():
        lengths[truncated] = tokenizer.lengths([text for text, cut in zip(texts, truncated) if cut])
    return Dataset(name=table.name, split=split, x=ids, y=table.y[rows].astype(np.int64),
                   feature_names=position_names(tokenizer.max_length), class_names=list(table.class_names),
                   positive_class=table.positive_class, row_index=np.asarray(rows), relevant_mask=rationale,
                   lengths=lengths)


def align_text_table(table: TextTable, *, tokenizer: TextTokenizer, class_names: list[str]) -> Dataset:
    """Messages read for auditing, encoded with a checkpoint's tokeniser and labelled with its classes."""
    unknown = sorted(set(table.class_names[i] for i in np.unique(table.y)) - set(class_names))
    if unknown:
        raise BadInputError(f"labels {', '.join(map(repr, unknown))} in {table.name} are not classes of the checkpoint "
                            f"({', '.join(map(repr, class_names))})")
    remap = np.array([class_names.index(name) if name in class_names else -1 for name in table.class_names])
    data = text_dataset(table, np.arange(len(table)), tokenizer, "all")
    data.y = remap[table.y].astype(np.int64)
    data.class_names = list(class_names)
    data.positive_class = None
    return data
