"""PII scrubbing and the FineWeb-Edu-style quality scorer."""

from __future__ import annotations

import numpy as np
import pytest

from labkit.data import (
    Accounting,
    Document,
    fit_quality_scorer,
    pii_scrub,
    precision_recall,
    predict_scores,
    quality_score_filter,
    run_pipeline,
    scrub_pii,
)
from labkit.errors import LabkitError


def test_emails_and_public_ips_are_replaced_private_ips_kept():
    text = ("Write to bob.smith+news@mail.example.co.uk or OPS@corp.io. DNS 8.8.8.8 and "
            "93.184.216.34; router 192.168.1.1, lan 10.0.0.5, vpn 172.16.3.4, local 127.0.0.1, "
            "docs 203.0.113.9, cgnat 100.64.1.1; version 1.2.3.4.5 and 999.1.1.1.")
    scrubbed, counts = scrub_pii(text)
    assert counts == {"pii_emails": 2, "pii_ips": 2}
    assert "@" not in scrubbed and "8.8.8.8" not in scrubbed and "93.184" not in scrubbed
    for kept in ("192.168.1.1", "10.0.0.5", "172.16.3.4", "127.0.0.1", "203.0.113.9",
                 "100.64.1.1", "1.2.3.4.5", "999.1.1.1"):
        assert kept in scrubbed
    assert scrubbed.startswith("Write to <EMAIL> or <EMAIL>. DNS <IP> and <IP>; router")


def test_pii_step_never_drops_and_counts_in_metadata():
    docs = [Document("a", "mail me: a@b.org from 1.1.1.1"), Document("b", "nothing here")]
    kept, table = run_pipeline([pii_scrub], docs)
    assert [d.text for d in kept] == ["mail me: <EMAIL> from <IP>", "nothing here"]
    assert [d.metadata["pii_emails"] + d.metadata["pii_ips"] for d in kept] == [2, 0]
    assert docs[0].text == "mail me: a@b.org from 1.1.1.1"  # steps do not mutate their input
    assert table.iloc[0]["dropped"] == 0


EDU = ("photosynthesis energy cells experiment theorem proof history century equation "
       "molecule climate evidence hypothesis analysis chapter lesson students learn").split()
SPAM = ("buy cheap deal click offer casino free winner discount limited subscribe now "
        "bonus celebrity gossip hot sale").split()


def labelled_corpus(n: int, seed: int):
    """Texts mixing educational and spammy words; the teacher scores the educational share."""
    rng = np.random.default_rng(seed)
    share = rng.uniform(0, 1, n)
    texts = [" ".join(np.where(rng.random(60) < u, rng.choice(EDU, 60), rng.choice(SPAM, 60)))
             for u in share]
    scores = np.clip(np.round(5 * share + rng.normal(0, 0.3, n)), 0, 5)
    return texts, scores


def test_scorer_learns_the_teacher_and_filters_with_good_precision_and_recall():
    train_texts, train_scores = labelled_corpus(300, seed=0)
    test_texts, test_scores = labelled_corpus(200, seed=1)
    model = fit_quality_scorer(train_texts, train_scores)
    predicted = predict_scores(model, test_texts)
    assert predicted.min() >= 0 and predicted.max() <= 5
    assert np.corrcoef(predicted, test_scores)[0, 1] > 0.9
    metrics = precision_recall(predicted >= 3, test_scores >= 3)
    # a regression shrinks towards the mean, so borderline 3s fall just short (recall < precision)
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.7 and metrics["f1"] > 0.8
    # the step keeps exactly the documents predicted >= threshold
    docs = [Document(str(i), t) for i, t in enumerate(test_texts)]
    accounting = Accounting()
    kept = list(quality_score_filter(docs, accounting, model, threshold=3.0))
    assert [d.id for d in kept] == [str(i) for i in np.flatnonzero(predicted >= 3)]
    assert all(d.metadata["edu_score"] >= 3 for d in kept)
    assert {r for *_, r in accounting.drops} == {"low_edu_score"}
    assert list(quality_score_filter([], Accounting(), model)) == []


def test_precision_recall_by_hand():
    m = precision_recall([True, True, False, False, True], [True, False, True, False, True])
    assert (m["tp"], m["fp"], m["fn"]) == (2, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert precision_recall([False], [False]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                                  "tp": 0, "fp": 0, "fn": 0}
    with pytest.raises(LabkitError, match="shape"):
        precision_recall([True], [True, False])
    with pytest.raises(LabkitError, match="two or more"):
        fit_quality_scorer(["a"], [1.0])
