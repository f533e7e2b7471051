"""README's bad-input table names tests that exist."""

import ast
import re

from tests.conftest import REPO


def test_every_row_of_the_bad_input_table_names_tests_that_exist():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| bad input | what happens | test |") :].split("\n\n")[0]
    rows = table.splitlines()[2:]
    assert rows
    for row in rows:
        named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", row.rsplit(" | ", 1)[-1])
        assert named, row
        for file, test in named:
            tree = ast.parse((REPO / "tests" / file).read_text())
            tests = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
            assert test in tests, f"{file}::{test}"
