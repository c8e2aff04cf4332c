"""Mutation testing of the torch and JAX twins (docs/mutation.md): a curated list of single-point
porting bugs (mutants.py), applied one at a time to a copy of the repository (sandbox.py), each
run through the property tests and the conformance suite (run.py), the score rendered into
docs/mutation.md (report.py)."""
