"""Figures of the text detector (issue 16), printed as JSON: not part of ``make test`` or ``make bench``.

``python -m bench.text_figures --model phishing.safetensors`` (a checkpoint from ``audit train --detector
text --data phishing``) prints, on the checkpoint's own split:

- the detector's test accuracy;
- that of bag-of-words logistic regressions (scikit-learn ``CountVectorizer`` unigram and unigram + bigram
  counts, ``LogisticRegression(C=10, max_iter=5000)``) trained on the same training split: what a model
  blind to word order (or seeing pairs of neighbours only) reaches;
- for the built-in ``phishing`` corpus, the accuracy of the generator's own rule read off the text (a request
  frame binding a credential, found by a regular expression): 1.0 when the labels are consistent.
"""

from __future__ import annotations

import argparse
import json
import re

import torch
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from detectors.checkpoint import load_checkpoint
from detectors.text_data import CREDENTIALS, REQUEST_FRAMES, VERBS, load_text_table, split_text_table


def request_rule(texts: list[str]) -> list[int]:
    """1 where a request frame binds a credential (the phishing corpus's definition), else 0."""
    verbs, objects = "|".join(VERBS), "|".join(CREDENTIALS)
    frames = "|".join(frame.format(verb=f"(?:{verbs})", object=f"(?:{objects})") for frame in REQUEST_FRAMES)
    pattern = re.compile(rf"(?:^| )(?:{frames})(?: |$)")
    return [int(bool(pattern.search(text))) for text in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    options = parser.parse_args()
    checkpoint = load_checkpoint(options.model)
    data = checkpoint.metadata["data"]
    table = load_text_table(data["name"], text_column=data.get("text_column", "text"),
                            label_column=data["label_column"])
    splits = split_text_table(table, seed=data["split_seed"])
    x, y = torch.as_tensor(splits.test.x), torch.as_tensor(splits.test.y)
    figures = {"data": data["name"], "test_messages": len(y),
               "training_seconds": checkpoint.metadata["training"]["seconds"]}
    with torch.no_grad():
        figures["test_accuracy"] = round(float((checkpoint.detector(x).argmax(1) == y).float().mean()), 4)
    train = [table.texts[i] for i in splits.train.row_index]
    test = [table.texts[i] for i in splits.test.row_index]
    for name, ngrams in (("bag_of_words_unigram", (1, 1)), ("bag_of_words_uni_bigram", (1, 2))):
        words = CountVectorizer(ngram_range=ngrams).fit(train)
        fitted = LogisticRegression(max_iter=5000, C=10).fit(words.transform(train), splits.train.y)
        figures[name] = round(float(fitted.score(words.transform(test), splits.test.y)), 4)
    if data["name"].partition(":")[0] == "phishing":
        rule = request_rule(test)
        figures["generator_rule"] = round(sum(int(r == t) for r, t in zip(rule, splits.test.y)) / len(test), 4)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
