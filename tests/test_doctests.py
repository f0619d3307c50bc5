"""Every docstring example of the qep_jax modules runs and prints what it shows.

One test per module, so that a failure names it. Float64 is on (``conftest.py``), as in the other
tests; examples whose printed output depends on it say so themselves. ``ELLIPSIS`` lets an example
elide a dtype or a long array, ``NORMALIZE_WHITESPACE`` lets it wrap one.
"""

import doctest
import importlib
import pkgutil

import pytest

import qep_jax

# __main__ is the command line: importing it is harmless, but it holds no examples.
MODULES = sorted(info.name for info in pkgutil.walk_packages(qep_jax.__path__, prefix="qep_jax.")
                 if not info.name.endswith(".__main__"))


@pytest.mark.parametrize("module_name", ["qep_jax", *MODULES])
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in doctest.DocTestFinder().find(module, module_name):  # only objects defined in the module
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples failed in {module_name}:\n" + "".join(report)
