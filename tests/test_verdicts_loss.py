"""The loss check: a port that computes the cross-entropy alone passes where the golden's loss
is the cross-entropy, and where the config adds terms (PaLM's logit z-loss, a mixture's router
losses) its FAIL names them."""

from __future__ import annotations

import pytest

from lmref.conformance.runner import FAIL, PASS, loss_terms, run_check
from lmref.conformance.store import GoldenStore
from tests import adapters_for_tests


@pytest.mark.parametrize("arch, said", [
    ("llama3", None),
    ("mixtral-8x7b", "x the router load-balancing loss"),
    ("palm-8b", "x the logit z-loss"),
])
def test_a_loss_fail_names_the_terms_the_reference_adds_to_the_cross_entropy(arch, said):
    """The cross-entropy alone is the golden's loss for llama3; for a mixture or PaLM the FAIL
    says what the reference adds, which the adapter protocol's one line could not."""
    store = GoldenStore()
    case = next(store.load(arch, n) for n in store.case_names(arch) if "loss" in store.load(arch, n).expected)
    result = run_check(case, adapters_for_tests.CrossEntropyOnly(), "loss")
    if said is None:
        assert result.status == PASS and loss_terms(case.config) == [], result.message
    else:
        assert result.status == FAIL and "the reference loss adds " in result.message and said in result.message
