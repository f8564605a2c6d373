from tests.e2e.conftest import client, ledger, model_repository, pipeline  # noqa: F401
