"""What the infra checks share: the templates as cfn-lint's decoder reads
them (short-form intrinsics), and the runner: every `test_*` function of a
module, each failure printed with its reason, exit 1 when any failed."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name):
    """infra/NAME, decoded; a template cfn-lint cannot read fails."""
    from cfnlint.decode import decode

    template, matches = decode(str(ROOT / "infra" / name))
    assert not matches, matches
    return template


def run(namespace):
    tests = [(n, f) for n, f in namespace.items() if n.startswith("test_") and callable(f)]
    failed = 0
    for name, f in tests:
        try:
            f()
            print(f"ok   {name}")
        except Exception as e:  # a failed assert, or a document without the key
            failed += 1
            print(f"FAIL {name}: {e!r}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
