"""The discovery / held-out split: disjoint, stratified, and stable when prompts are appended."""

import numpy as np

from refusal_atlas.tasks.evaluation.split import heldout_mask, split_counts


def _prompts(n: int, start: int = 0):
    ids = [f"p{i}" for i in range(start, start + n)]
    labels = ["harmful" if i % 2 else "harmless" for i in range(start, start + n)]
    categories = [f"cat{i % 3}" if i % 2 else None for i in range(start, start + n)]
    return ids, labels, categories


def test_each_prompt_is_on_exactly_one_side_at_about_the_asked_share():
    ids, labels, categories = _prompts(3000)
    held = heldout_mask(ids, 0.3, 7, labels, categories)
    assert held.dtype == bool and held.shape == (3000,)
    discovery = {i for i, h in zip(ids, held) if not h}
    heldout = {i for i, h in zip(ids, held) if h}
    assert not discovery & heldout and len(discovery | heldout) == 3000
    assert abs(held.mean() - 0.3) < 0.03


def test_every_label_and_category_is_split_at_the_same_rate():
    ids, labels, categories = _prompts(6000)
    counts = split_counts(heldout_mask(ids, 0.3, 0, labels, categories), labels, categories)
    assert set(counts) == {("harmless", None), ("harmful", "cat0"), ("harmful", "cat1"), ("harmful", "cat2")}
    for discovery, held in counts.values():
        assert discovery > 0 and held > 0
        assert abs(held / (discovery + held) - 0.3) < 0.04


def test_appending_prompts_never_moves_an_existing_one_and_the_seed_changes_the_split():
    ids, labels, categories = _prompts(500)
    before = heldout_mask(ids, 0.3, 1, labels, categories)
    more_ids, more_labels, more_categories = _prompts(300, start=500)
    after = heldout_mask(ids + more_ids, 0.3, 1, labels + more_labels, categories + more_categories)
    np.testing.assert_array_equal(after[:500], before)
    # Order does not matter either: each prompt's side is a function of its own id and the seed.
    np.testing.assert_array_equal(heldout_mask(ids[::-1], 0.3, 1, labels[::-1], categories[::-1]), before[::-1])
    assert (heldout_mask(ids, 0.3, 2, labels, categories) != before).any()
    assert not heldout_mask(ids, 0.0, 1, labels, categories).any()
