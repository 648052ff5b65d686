# A package, so that the plain `pytest` a user types imports `tests.conftest` helpers from the repo root.
