"""One comparison of an ONNX output against its reference, as `lmref validate-onnx` prints it.

export/validate.py checks the decoder's logits with `Check`; export/validate_vision.py checks the
vision graph's hidden features with `FeaturesCheck`, whose line leaves out the logit-only gates
(KL, top-1)."""

from __future__ import annotations

from dataclasses import dataclass

from lmref.conformance.metrics import Metrics, describe


@dataclass(frozen=True)
class Check:
    """One comparison: `failed` lists the failed gates (empty: PASS)."""

    provider: str
    reference: str
    phase: str
    metrics: Metrics
    failed: list[str]

    @property
    def verdict(self) -> str:
        return "PASS" if not self.failed else "FAIL"

    def line(self) -> str:
        return self._with_failures(f"  {self.verdict} {self.phase} vs {self.reference}: {describe(self.metrics)}")

    def _with_failures(self, text: str) -> str:
        return text + "".join(f"\n       failed: {f}" for f in self.failed)


@dataclass(frozen=True)
class FeaturesCheck(Check):
    """A graph's hidden features (not logits) against the golden's."""

    def line(self) -> str:
        m = self.metrics
        return self._with_failures(
            f"  {self.verdict} {self.phase} vs {self.reference}: shape {list(m.shape)}, max_abs {m.max_abs:.3g} at "
            f"{list(m.max_abs_index)}, allclose violations {m.allclose_violations}, nmse {m.nmse:.3g}")
