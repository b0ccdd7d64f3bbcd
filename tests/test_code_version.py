"""Cache keys follow the code that computes a result, not only its one-line task wrapper."""

from refusal_atlas.tasks.steps import prefect_tasks
from refusal_atlas.tasks.steps.code_version import CodeVersion, source_digest


def _code_packages(policy) -> tuple[str, ...]:
    return next(p.packages for p in policy.policies if isinstance(p, CodeVersion))


def test_extraction_and_clustering_keys_cover_their_wings():
    assert "refusal_atlas.tasks.engine" in _code_packages(prefect_tasks.EXTRACT_CACHE)
    assert "refusal_atlas.tasks.model" in _code_packages(prefect_tasks.EXTRACT_CACHE)
    assert "refusal_atlas.tasks.clustering" in _code_packages(prefect_tasks.CLUSTER_CACHE)


def test_editing_a_source_file_changes_the_key(tmp_path, monkeypatch):
    package = tmp_path / "fakewing"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "maths.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = CodeVersion(packages=("fakewing",)).compute_key(None, {}, {})
    (package / "maths.py").write_text("def f():\n    return 2\n")
    source_digest.cache_clear()
    after = CodeVersion(packages=("fakewing",)).compute_key(None, {}, {})
    assert before != after
