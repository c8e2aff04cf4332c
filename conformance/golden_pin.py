"""The release golden set: the sha256 of the package store's MANIFEST.json (conformance/golden/).

`lmref golden` rewrites this file whenever it writes the package's own store, and nothing else
writes it.  The conformance suite refuses a default store whose MANIFEST.json has another
sha256, so a case added, removed or changed (its case.json tolerances loosened and its sha256
updated in the manifest, say) cannot pass as the release set; a store named with --golden-dir
runs as a "custom golden store".  tests/test_verdicts_store.py checks that this pin equals the
store.
"""

MANIFEST_SHA256 = "e26a67fe64a76005ff5dedbf1f8ef41ec11acb7959ec04039cf12fe83a0637b2"
