"""One error hierarchy: every exception class the project defines derives from FedscoreError.

The test imports every module of the four packages (none skipped: a module that does not
import fails the test too) and checks each exception class defined in it, nested ones
included, so a new error class cannot forget its base or its gRPC code.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType

import grpc
import pytest

from fedscore.errors import FedscoreError

PACKAGES = ("fedscore", "platform_node", "bank_node", "coordinator")


def _modules() -> Iterator[str]:
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield name
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}.",
                                          onerror=_failed):
            yield info.name


def _failed(name: str) -> None:
    raise ImportError(f"{name} could not be imported while its package was walked")


def _exception_classes(module: ModuleType) -> Iterator[type[BaseException]]:
    todo = [v for v in vars(module).values() if isinstance(v, type)]
    while todo:
        cls = todo.pop()
        if cls.__module__ != module.__name__:
            continue  # imported here, defined elsewhere
        todo.extend(v for v in vars(cls).values() if isinstance(v, type))
        if issubclass(cls, BaseException):
            yield cls


MODULES = sorted(set(_modules()))


def test_the_walk_finds_every_room() -> None:
    some = {"fedscore.wire.status", "platform_node.server", "bank_node.scoring_service",
            "coordinator.strategy", "fedscore.crypto.psi", "fedscore.api.v1.psi_pb2"}
    assert some <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_exception_class_derives_from_fedscore_error(name: str) -> None:
    module = importlib.import_module(name)
    wrong = [c.__qualname__ for c in _exception_classes(module)
             if not issubclass(c, FedscoreError)]
    assert not wrong, f"{name}: {wrong} must derive from fedscore.errors.FedscoreError"
    for cls in _exception_classes(module):
        assert isinstance(cls.code, grpc.StatusCode) and cls.code != grpc.StatusCode.OK, cls
